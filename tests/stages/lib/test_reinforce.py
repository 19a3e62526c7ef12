"""stages.lib.reinforce without training: the monitor's windows and stopping rules, the rollout store across a
resume, the KL probe against a hand computation, and the kinds' import-time lightness."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from stages.lib.reinforce.monitor import Monitor
from stages.lib.reinforce.scoring import RolloutStore


def _rows(step: int, proxy: list[float], gold: list[float] | None, kl: float | None = None) -> list[dict]:
    return [
        {
            "step": step,
            "reward": p,
            "gold_reward": None if gold is None else gold[i],
            "kl": kl,
        }
        for i, p in enumerate(proxy)
    ]


def _store(tmp_path: Path, golds: list[float], kls: dict[int, float] | None = None) -> RolloutStore:
    """One batch of two completions per step; the proxy keeps rising while the gold follows ``golds``."""
    store = RolloutStore(tmp_path / "rollouts")
    for step, gold in enumerate(golds, start=1):
        store.add(step, _rows(step, [0.1 * step, 0.1 * step], [gold, gold], (kls or {}).get(step)))
    return store


def test_windows_average_every_completion_and_take_the_last_measured_kl(tmp_path):
    store = _store(tmp_path, [0.0, 1.0, 1.0, 1.0], kls={1: 0.0, 2: 0.4, 4: 1.2})
    mon = Monitor(store, eval_steps=2)
    w1, w2 = mon.close(2), mon.close(4)
    assert (w1.first, w1.step, w1.completions) == (0, 2, 4)
    assert w1.proxy == pytest.approx(0.15) and w1.gold == pytest.approx(0.5) and w1.kl == pytest.approx(0.4)
    assert w2.proxy == pytest.approx(0.35) and w2.gold == 1.0 and w2.kl == pytest.approx(1.2)
    assert mon.start is not None and mon.start.kl == 0.0 and mon.start.step == 1
    assert mon.close(4) is None  # a window closes once


def test_gold_drop_stops_after_patience_windows_below_the_best(tmp_path):
    golds = [0.5, 0.6, 0.7, 0.8, 0.75, 0.72, 0.7, 0.6, 0.5, 0.5]  # proxy rises throughout: over-optimisation
    mon = Monitor(_store(tmp_path, golds), eval_steps=1, patience=3, min_delta=0.06)
    for step in range(1, 11):
        mon.close(step)
        if mon.stop_reason:
            break
    # 0.75 is within min_delta of the best 0.8; 0.72, 0.70, 0.60 are more than 0.06 below: stop at step 8
    assert mon.stop_step == 8 and mon.best.step == 4
    assert "below its best (0.800 at step 4)" in mon.stop_reason and "0.720, 0.700, 0.600" in mon.stop_reason


def test_a_window_back_near_the_best_resets_the_patience(tmp_path):
    golds = [0.8, 0.5, 0.5, 0.79, 0.5, 0.5]
    mon = Monitor(_store(tmp_path, golds), eval_steps=1, patience=3, min_delta=0.05)
    for step in range(1, 7):
        mon.close(step)
    assert mon.stop_reason is None


def test_the_kl_budget_stops_at_the_first_window_over_it(tmp_path):
    mon = Monitor(_store(tmp_path, [1.0] * 6, kls={2: 1.0, 4: 6.5, 6: 7.0}), eval_steps=2, kl_budget=6.0)
    for step in (2, 4, 6):
        mon.close(step)
    assert mon.stop_step == 4 and "KL 6.500 nats/sequence at step 4 exceeds kl_budget 6" in mon.stop_reason


def test_the_store_keeps_flushed_batches_and_a_resume_drops_later_ones(tmp_path):
    store = _store(tmp_path, [1.0, 0.0, 1.0])
    assert store.rows() == []  # nothing written until a flush (a checkpoint, or the end)
    store.flush()
    store.add(4, _rows(4, [1.0], [1.0]))
    again = RolloutStore(tmp_path / "rollouts")  # a new process after a crash
    assert sorted(again.summaries) == [1, 2, 3]  # step 4 was never flushed
    again.truncate(2)  # the checkpoint was at step 2: steps 3+ are sampled again
    assert sorted(again.summaries) == [1, 2] and [r["step"] for r in again.rows()] == [1, 1, 2, 2]
    mon = Monitor(again, eval_steps=1)
    mon.replay(2)
    assert [w.step for w in mon.history] == [1, 2] and mon.history[1].gold == 0.0


def test_the_kl_probe_is_the_sum_of_log_ratios_over_the_completion():
    torch = pytest.importorskip("torch")
    from stages.lib.reinforce.evaluation import sequence_kl
    from stages.lib.testing import tiny_llama

    policy, reference = (
        tiny_llama(50, hidden=16, layers=1, heads=2, seed=1),
        tiny_llama(50, hidden=16, layers=1, heads=2, seed=2),
    )
    prompts, completions = [[3, 4, 5], [6, 7]], [[8, 9], [10, 11, 12]]
    got = sequence_kl(policy, reference, prompts, completions, pad_id=0, temperature=0.7)
    for p, c, value in zip(prompts, completions, got, strict=True):
        ids = torch.tensor([p + c])
        with torch.no_grad():
            lp = (policy(input_ids=ids).logits[0] / 0.7).log_softmax(-1)
            lr = (reference(input_ids=ids).logits[0] / 0.7).log_softmax(-1)
        want = sum(float(lp[len(p) - 1 + t, tok] - lr[len(p) - 1 + t, tok]) for t, tok in enumerate(c))
        assert value == pytest.approx(want, abs=1e-5)


def test_the_kinds_import_only_pydantic():
    probe = (
        "import sys, stages.grpo, stages.rloo; "
        "print([m for m in ('torch', 'transformers', 'trl', 'peft', 'datasets', 'pyarrow', 'matplotlib') "
        "if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
