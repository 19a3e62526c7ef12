"""Pretraining objectives (seed §1.2) on hand-checked examples, and the data order they are fed in."""

from __future__ import annotations

import numpy as np
import pytest

from stages.pretrain import data as D
from stages.pretrain import objectives as O

A, B, C, D_, E, F = 11, 12, 13, 14, 15, 16
EOS, S0, S1, S2 = 2, 100, 101, 102


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# -- MLM (§1.2.2) -------------------------------------------------------------------


def test_apply_mlm_by_hand():
    tokens = np.array([A, B, C, D_, E, F])
    inputs, labels = O.apply_mlm(
        tokens,
        positions=np.array([1, 3, 4]),
        actions=np.array([O.MASK, O.RANDOM, O.KEEP]),
        random_tokens=np.array([7, 8, 9]),
        mask_id=99,
    )
    assert inputs.tolist() == [A, 99, C, 8, E, F]
    assert labels.tolist() == [-100, B, -100, D_, E, -100]
    assert tokens.tolist() == [A, B, C, D_, E, F]  # the chunk itself is untouched


def test_mlm_chooses_15_percent_of_non_special_tokens_80_10_10():
    special = [0, 1, 2]
    pool = np.arange(3, 50)
    tokens = np.tile(np.array([1, 5, 6, 7, 8, 9, 10, 11, 12, 2]), 20)  # 160 eligible of 200
    counts = np.zeros(3)
    for seed in range(400):
        positions, actions, random_tokens = O.mlm_decisions(
            tokens, rng(seed), special_ids=special, random_pool=pool
        )
        assert len(positions) == 24  # round(0.15 · 160)
        assert not np.isin(tokens[positions], special).any()
        assert len(set(positions.tolist())) == 24
        assert np.isin(random_tokens, pool).all()
        counts += np.bincount(actions, minlength=3)
    share = counts / counts.sum()
    assert share[O.MASK] == pytest.approx(0.8, abs=0.02)
    assert share[O.RANDOM] == pytest.approx(0.1, abs=0.015)
    assert share[O.KEEP] == pytest.approx(0.1, abs=0.015)

    inputs, labels = O.mlm_example(tokens, rng(1), mask_id=99, special_ids=special, random_pool=pool)
    chosen = labels != O.IGNORE_INDEX
    assert chosen.sum() == 24 and (labels[chosen] == tokens[chosen]).all()
    assert (inputs[~chosen] == tokens[~chosen]).all()


def test_mlm_always_labels_at_least_one_token_and_never_a_special_one():
    inputs, labels = O.mlm_example(
        np.array([1, 5, 2]), rng(), mask_id=99, special_ids=[1, 2], random_pool=np.arange(3, 9)
    )
    assert labels.tolist() == [-100, 5, -100]
    inputs, labels = O.mlm_example(
        np.array([1, 2]), rng(), mask_id=99, special_ids=[1, 2], random_pool=np.arange(3, 9)
    )
    assert (labels == -100).all() and inputs.tolist() == [1, 2]


# -- span corruption (§1.2.3) ------------------------------------------------------------


def test_span_corrupt_by_hand():
    tokens = np.array([A, B, C, D_, E, F])
    noise = np.array([0, 1, 1, 0, 0, 1], dtype=bool)
    inputs, targets = O.span_corrupt(tokens, noise, [S0, S1, S2], EOS)
    assert inputs.tolist() == [A, S0, D_, E, S1, EOS]
    assert targets.tolist() == [S0, B, C, S1, F, EOS]


def test_span_corrupt_needs_enough_sentinels():
    with pytest.raises(ValueError, match="2 noise spans but only 1 sentinel"):
        O.span_corrupt(np.array([A, B, C, D_]), np.array([0, 1, 0, 1], dtype=bool), [S0], EOS)


def test_noise_counts_follow_t5():
    assert O.noise_counts(64, 0.15, 3.0) == (10, 3)  # round(9.6), round(10 / 3)
    assert O.noise_counts(64, 0.5, 12.0) == (32, 3)
    assert O.noise_counts(10, 0.01, 3.0) == (1, 1)  # at least one noise token
    assert O.noise_counts(4, 0.99, 1.0) == (3, 1)  # at least one kept token, spans ≤ kept tokens
    assert O.sentinels_needed(64, [(0.15, 3.0), (0.5, 12.0), (0.15, 8.0)]) == 3


@pytest.mark.parametrize(("length", "density", "span"), [(64, 0.15, 3.0), (100, 0.5, 12.0), (7, 0.3, 1.0)])
def test_random_spans_noise_mask(length, density, span):
    num_noise, num_spans = O.noise_counts(length, density, span)
    for seed in range(20):
        mask = O.random_spans_noise_mask(length, rng(seed), noise_density=density, mean_span_length=span)
        assert mask.shape == (length,) and mask.sum() == num_noise and not mask[0]
        starts = mask & ~np.concatenate([[False], mask[:-1]])
        assert starts.sum() == num_spans
    a = O.random_spans_noise_mask(length, rng(3), noise_density=density, mean_span_length=span)
    b = O.random_spans_noise_mask(length, rng(3), noise_density=density, mean_span_length=span)
    assert (a == b).all()


def test_span_corruption_example_round_trips():
    tokens = np.arange(20, 84)
    sentinels = list(range(200, 210))
    inputs, targets = O.span_corruption_example(tokens, rng(5), sentinel_ids=sentinels, eos_id=EOS)
    # fill each sentinel of the input with the span that follows it in the target
    spans: dict[int, list[int]] = {}
    current = None
    for t in targets[:-1].tolist():
        if t in sentinels:
            current = t
            spans[t] = []
        else:
            spans[current].append(t)
    rebuilt = [x for t in inputs[:-1].tolist() for x in (spans[t] if t in sentinels else [t])]
    assert rebuilt == tokens.tolist()
    assert inputs[-1] == targets[-1] == EOS
    assert len(targets) - 1 - len(spans) == 10  # round(0.15 · 64) noise tokens


# -- UL2 (§1.2.4) ------------------------------------------------------------------------

MODES = {"R": 300, "S": 301, "X": 302}


def test_prefix_lm_by_hand():
    inputs, targets = O.prefix_lm(np.array([A, B, C, D_]), 1, MODES["S"], EOS)
    assert inputs.tolist() == [MODES["S"], A, EOS]
    assert targets.tolist() == [B, C, D_, EOS]
    with pytest.raises(ValueError):
        O.prefix_lm(np.array([A, B]), 2, MODES["S"], EOS)


def test_ul2_mode_tokens_and_denoisers():
    tokens = np.arange(20, 84)
    sentinels = list(range(200, 210))
    kw = {"mode_ids": MODES, "sentinel_ids": sentinels, "eos_id": EOS}
    s_only = [O.DenoiserSpec("S", 1.0)]
    inputs, targets, mode = O.ul2_example(tokens, rng(), denoisers=s_only, **kw)
    assert mode == "S" and inputs[0] == MODES["S"]
    assert inputs[1:-1].tolist() + targets[:-1].tolist() == tokens.tolist()  # prefix + suffix

    x_only = [O.DenoiserSpec("X", 1.0, noise_density=0.5, mean_span_length=12.0)]
    inputs, targets, mode = O.ul2_example(tokens, rng(), denoisers=x_only, **kw)
    assert mode == "X" and inputs[0] == MODES["X"]
    n_sentinels = int(np.isin(targets, sentinels).sum())
    assert n_sentinels == 3 and len(targets) == 32 + n_sentinels + 1  # half the chunk is predicted

    mix = [O.DenoiserSpec("R", 0.5), O.DenoiserSpec("S", 0.25), O.DenoiserSpec("X", 0.25, 0.5, 12.0)]
    modes = [O.ul2_example(tokens, rng(i), denoisers=mix, **kw)[2] for i in range(2000)]
    assert modes.count("R") / 2000 == pytest.approx(0.5, abs=0.04)
    assert modes.count("S") / 2000 == pytest.approx(0.25, abs=0.04)


def test_pad_batch():
    ids, mask = O.pad_batch([np.array([1, 2, 3]), np.array([4])], pad_id=0)
    assert ids.tolist() == [[1, 2, 3], [4, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]


# -- data order (§1.6 steps 1.5–1.6) -------------------------------------------------------


def test_example_positions_shard_every_global_batch():
    seen: list[int] = []
    for step in range(3):
        for micro in range(2):
            for rank in range(4):
                seen += list(D.example_positions(step, micro, rank, batch_size=5, grad_accum=2, world=4))
    assert seen == list(range(3 * 2 * 4 * 5))  # disjoint, contiguous, in order
    assert list(D.example_positions(1, 0, 1, batch_size=5, grad_accum=2, world=4)) == list(range(45, 50))


def test_chunks_are_a_seeded_permutation_per_epoch():
    tokens = np.arange(103)
    chunks = D.Chunks(tokens, 10, seed=7)
    assert len(chunks) == 10  # the last 3 tokens do not fill a chunk
    epoch0 = [int(chunks.at(p)[0]) // 10 for p in range(10)]
    epoch1 = [int(chunks.at(p)[0]) // 10 for p in range(10, 20)]
    assert sorted(epoch0) == sorted(epoch1) == list(range(10))
    assert epoch0 != epoch1 and epoch0 != list(range(10))
    assert chunks.at(3).tolist() == list(range(epoch0[3] * 10, epoch0[3] * 10 + 10))
    again = D.Chunks(tokens, 10, seed=7)
    assert [int(again.at(p)[0]) for p in range(20)] == [int(chunks.at(p)[0]) for p in range(20)]


def test_batcher_is_a_pure_function_of_positions():
    tokens = np.arange(20, 84)
    kw = {"seed": 0, "eos_id": EOS, "pad_id": 0}
    causal = D.Batcher("causal", **kw).build([tokens, tokens], [0, 1])
    assert (causal["input_ids"] == causal["labels"]).all() and causal["input_ids"].shape == (2, 64)

    t5 = D.Batcher("span_corruption", sentinel_ids=tuple(range(200, 210)), **kw)
    a = t5.build([tokens, tokens], [5, 6])
    b = t5.build([tokens, tokens], [5, 6])
    assert all((a[k] == b[k]).all() for k in a)
    assert not (a["input_ids"][0] == a["input_ids"][1]).all()  # each example its own corruption
    held_out = t5.build([tokens, tokens], [5, 6], stream=2)
    assert not (held_out["input_ids"] == a["input_ids"]).all()

    ul2 = D.Batcher(
        "ul2",
        sentinel_ids=tuple(range(200, 210)),
        mode_ids=MODES,
        denoisers=(O.DenoiserSpec("S", 1.0), O.DenoiserSpec("X", 1.0, 0.5, 12.0)),
        **kw,
    )
    batch = ul2.build([tokens] * 8, list(range(8)))
    assert set(batch["input_ids"][:, 0].tolist()) <= {MODES["S"], MODES["X"]}
    pad = batch["attention_mask"] == 0
    assert (batch["input_ids"][pad] == 0).all()
    assert ((batch["labels"] == -100) | (batch["labels"] >= 0)).all()
