"""Pretraining objectives as pure functions on token arrays (seed §1.2).

Every function takes a 1-D integer array (one ``context_length`` chunk of the
corpus) and, where it is random, a ``numpy.random.Generator``; the stage seeds
one generator per example from ``(seed, example index)``, so an example's
corruption never depends on the process count or on a resume.

- causal (§1.2.1): the chunk is both input and label (the model shifts).
- MLM (§1.2.2): 15% of the non-special tokens are chosen; of those 80% become
  the mask token, 10% a random token, 10% stay; only chosen positions are labelled.
- span corruption (§1.2.3, T5): noise spans are replaced by sentinels in the
  encoder input; the decoder target lists each sentinel followed by its span.
- UL2 (§1.2.4): per example, one of the R / S / X denoisers (by weight); a mode
  token [R] / [S] / [X] leads the encoder input; S is prefix-LM (prefix in,
  suffix out), R and X are span corruption with their own span length and rate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

IGNORE_INDEX = -100
"""Label of positions that carry no loss (what transformers' losses skip)."""

MASK, RANDOM, KEEP = 0, 1, 2
"""What MLM does to a chosen position."""


# -- MLM ------------------------------------------------------------------------


def apply_mlm(
    tokens: np.ndarray,
    positions: np.ndarray,
    actions: np.ndarray,
    random_tokens: np.ndarray,
    mask_id: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Apply chosen MLM decisions: ``actions[i]`` (MASK / RANDOM / KEEP) at ``positions[i]``;
    RANDOM uses ``random_tokens[i]``. Returns (inputs, labels); labels are IGNORE_INDEX
    except at the chosen positions, where they hold the original token."""
    tokens = np.asarray(tokens, dtype=np.int64)
    inputs = tokens.copy()
    labels = np.full_like(tokens, IGNORE_INDEX)
    positions = np.asarray(positions, dtype=np.int64)
    actions = np.asarray(actions)
    labels[positions] = tokens[positions]
    masked = positions[actions == MASK]
    inputs[masked] = mask_id
    randomised = actions == RANDOM
    inputs[positions[randomised]] = np.asarray(random_tokens, dtype=np.int64)[randomised]
    return inputs, labels


def mlm_decisions(
    tokens: np.ndarray,
    rng: np.random.Generator,
    *,
    special_ids: Sequence[int],
    random_pool: np.ndarray,
    probability: float = 0.15,
    mask_ratio: float = 0.8,
    random_ratio: float = 0.1,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Choose ``round(probability · #eligible)`` positions (at least one) among the
    non-special tokens, and for each MASK (80%) / RANDOM (10%) / KEEP (10%).
    Returns (positions sorted, actions, random replacement tokens)."""
    tokens = np.asarray(tokens)
    eligible = np.flatnonzero(~np.isin(tokens, np.asarray(list(special_ids), dtype=tokens.dtype)))
    if eligible.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    k = min(eligible.size, max(1, int(round(probability * eligible.size))))
    positions = np.sort(rng.choice(eligible, size=k, replace=False))
    u = rng.random(k)
    actions = np.where(u < mask_ratio, MASK, np.where(u < mask_ratio + random_ratio, RANDOM, KEEP))
    random_tokens = np.asarray(random_pool)[rng.integers(0, len(random_pool), size=k)]
    return positions, actions, random_tokens


def mlm_example(
    tokens: np.ndarray,
    rng: np.random.Generator,
    *,
    mask_id: int,
    special_ids: Sequence[int],
    random_pool: np.ndarray,
    probability: float = 0.15,
) -> tuple[np.ndarray, np.ndarray]:
    """One MLM example: (inputs, labels)."""
    positions, actions, random_tokens = mlm_decisions(
        tokens, rng, special_ids=special_ids, random_pool=random_pool, probability=probability
    )
    return apply_mlm(tokens, positions, actions, random_tokens, mask_id)


# -- span corruption ---------------------------------------------------------------


def noise_counts(length: int, noise_density: float, mean_span_length: float) -> tuple[int, int]:
    """(noise tokens, noise spans) of a ``length``-token chunk, as T5 computes them."""
    if length < 2:
        raise ValueError(f"span corruption needs at least 2 tokens, got {length}")
    num_noise = min(max(int(round(length * noise_density)), 1), length - 1)
    num_spans = max(int(round(num_noise / mean_span_length)), 1)
    num_spans = min(num_spans, num_noise, length - num_noise)
    return num_noise, num_spans


def _segmentation(rng: np.random.Generator, num_items: int, num_segments: int) -> np.ndarray:
    """Split ``num_items`` into ``num_segments`` random non-empty parts (lengths)."""
    first = np.zeros(num_items, dtype=bool)
    cuts = (
        rng.choice(np.arange(1, num_items), size=num_segments - 1, replace=False) if num_segments > 1 else []
    )
    first[0] = True
    first[np.asarray(cuts, dtype=np.int64)] = True
    segment_id = np.cumsum(first)
    return np.bincount(segment_id)[1:]


def random_spans_noise_mask(
    length: int, rng: np.random.Generator, *, noise_density: float = 0.15, mean_span_length: float = 3.0
) -> np.ndarray:
    """T5's noise mask: ``round(length·density)`` noise tokens in ``≈ noise/mean`` spans,
    interleaved with non-noise spans; the chunk starts with non-noise."""
    num_noise, num_spans = noise_counts(length, noise_density, mean_span_length)
    noise_lengths = _segmentation(rng, num_noise, num_spans)
    keep_lengths = _segmentation(rng, length - num_noise, num_spans)
    mask = np.zeros(length, dtype=bool)
    pos = 0
    for keep, noise in zip(keep_lengths, noise_lengths, strict=True):
        pos += int(keep)
        mask[pos : pos + int(noise)] = True
        pos += int(noise)
    return mask


def span_corrupt(
    tokens: np.ndarray, noise_mask: np.ndarray, sentinel_ids: Sequence[int], eos_id: int
) -> tuple[np.ndarray, np.ndarray]:
    """Replace each noise span by the next sentinel. Returns (encoder input, decoder target):
    ``a b c d e f`` with noise ``b c`` and ``f`` -> input ``a <s0> d e <s1> </s>``,
    target ``<s0> b c <s1> f </s>``."""
    tokens = np.asarray(tokens, dtype=np.int64)
    noise_mask = np.asarray(noise_mask, dtype=bool)
    starts = noise_mask & ~np.concatenate([[False], noise_mask[:-1]])
    num_spans = int(starts.sum())
    if num_spans > len(sentinel_ids):
        raise ValueError(f"{num_spans} noise spans but only {len(sentinel_ids)} sentinel tokens")
    span_index = np.cumsum(starts) - 1
    sentinels = np.asarray(sentinel_ids, dtype=np.int64)
    inputs: list[int] = []
    targets: list[int] = []
    for i, tok in enumerate(tokens):
        if noise_mask[i]:
            if starts[i]:
                inputs.append(int(sentinels[span_index[i]]))
                targets.append(int(sentinels[span_index[i]]))
            targets.append(int(tok))
        else:
            inputs.append(int(tok))
    inputs.append(eos_id)
    targets.append(eos_id)
    return np.asarray(inputs, dtype=np.int64), np.asarray(targets, dtype=np.int64)


def span_corruption_example(
    tokens: np.ndarray,
    rng: np.random.Generator,
    *,
    sentinel_ids: Sequence[int],
    eos_id: int,
    noise_density: float = 0.15,
    mean_span_length: float = 3.0,
) -> tuple[np.ndarray, np.ndarray]:
    mask = random_spans_noise_mask(
        len(tokens), rng, noise_density=noise_density, mean_span_length=mean_span_length
    )
    return span_corrupt(tokens, mask, sentinel_ids, eos_id)


# -- UL2 ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DenoiserSpec:
    """One UL2 denoiser: mode R / S / X, sampling weight, and (R, X) span settings."""

    mode: str
    weight: float
    noise_density: float = 0.15
    mean_span_length: float = 3.0


def prefix_lm(tokens: np.ndarray, split: int, mode_id: int, eos_id: int) -> tuple[np.ndarray, np.ndarray]:
    """S-denoiser: input ``[S] x[:split] </s>``, target ``x[split:] </s>``."""
    tokens = np.asarray(tokens, dtype=np.int64)
    if not 1 <= split < len(tokens):
        raise ValueError(f"prefix split {split} must be in [1, {len(tokens) - 1}]")
    inputs = np.concatenate([[mode_id], tokens[:split], [eos_id]]).astype(np.int64)
    targets = np.concatenate([tokens[split:], [eos_id]]).astype(np.int64)
    return inputs, targets


def ul2_example(
    tokens: np.ndarray,
    rng: np.random.Generator,
    *,
    denoisers: Sequence[DenoiserSpec],
    mode_ids: dict[str, int],
    sentinel_ids: Sequence[int],
    eos_id: int,
) -> tuple[np.ndarray, np.ndarray, str]:
    """One UL2 example: (encoder input led by its mode token, decoder target, mode)."""
    weights = np.asarray([d.weight for d in denoisers], dtype=np.float64)
    spec = denoisers[int(rng.choice(len(denoisers), p=weights / weights.sum()))]
    mode_id = mode_ids[spec.mode]
    if spec.mode == "S":
        split = int(rng.integers(1, len(tokens)))
        inputs, targets = prefix_lm(tokens, split, mode_id, eos_id)
        return inputs, targets, spec.mode
    inputs, targets = span_corruption_example(
        tokens,
        rng,
        sentinel_ids=sentinel_ids,
        eos_id=eos_id,
        noise_density=spec.noise_density,
        mean_span_length=spec.mean_span_length,
    )
    return np.concatenate([[mode_id], inputs]).astype(np.int64), targets, spec.mode


def sentinels_needed(length: int, settings: Sequence[tuple[float, float]]) -> int:
    """The most noise spans any (noise_density, mean_span_length) produces on ``length`` tokens."""
    return max((noise_counts(length, density, span)[1] for density, span in settings), default=0)


# -- batching ---------------------------------------------------------------------


def pad_batch(rows: Sequence[np.ndarray], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad rows to the longest: (ids, attention mask)."""
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
    return ids, mask
