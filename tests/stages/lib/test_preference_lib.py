"""The shared pieces of dpo / kto / orpo: KL groups, the loop's schedule (epochs, accumulation), a crash
resumed from the checkpoint gives the weights of an uninterrupted run, and the chosen-log-prob pitfall."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("accelerate")

from hubflow.errors import StageInputError  # noqa: E402
from stages.lib.preference_data import EncodedPoint, kl_completions, kl_groups  # noqa: E402
from stages.lib.preference_loop import (  # noqa: E402
    _plan,
    chosen_falls_while_margin_grows,
    shuffled_batches,
    shuffled_groups,
    train,
)
from stages.lib.testing import stage_context  # noqa: E402


def config(**kw):
    from stages import dpo

    return dpo.Config(name="d", kind="dpo", inputs={"model": "m", "data": "p"}, output="model:a/d", **kw)


def test_kl_groups_rotate_completions_within_consecutive_groups():
    assert kl_groups(7, 3) == [[0, 1, 2], [3, 4, 5, 6]]  # a last group of one joins the one before
    assert kl_groups(6, 3) == [[0, 1, 2], [3, 4, 5]] and kl_groups(2, 8) == [[0, 1]]
    rows = [EncodedPoint([1, 2], [10 + i], True, i) for i in range(5)]
    assert kl_completions(rows, 2, max_length=100) == [[11], [10], [14], [12], [13]]
    long = [EncodedPoint([1, 2, 3], [7, 8, 9], True, 0), EncodedPoint([1], [5, 6, 7, 8], False, 1)]
    assert kl_completions(long, 2, max_length=5) == [[5, 6], [7, 8, 9]]  # cut to fit after the row's prompt
    with pytest.raises(ValueError, match="at least 2 rows"):
        kl_groups(4, 1)


def test_the_schedule_spans_epochs_and_accumulates():
    batches = shuffled_batches(10, 3, seed=1)
    assert sorted(i for b in batches(0) for i in b) == list(range(10)) and batches(0) != batches(1)
    plan, per_epoch = _plan(
        batches, config(max_steps=3, gradient_accumulation_steps=2, per_device_train_batch_size=3), 1, 0
    )
    assert per_epoch == 2 and len(plan) == 3 and all(len(step) == 2 for step in plan)
    assert plan[2] == batches(1)[:2]  # the third step starts the second, reshuffled epoch
    two, _ = _plan(batches, config(num_train_epochs=1.0, per_device_train_batch_size=3), 2, 1)
    assert two == [[batches(0)[1]], [batches(0)[3]]]  # process 1 of 2 takes every other micro-batch
    with pytest.raises(StageInputError, match="fewer than one optimizer step needs"):
        _plan(batches, config(gradient_accumulation_steps=8, per_device_train_batch_size=3), 1, 0)
    groups = shuffled_groups([[0, 1], [2, 3], [4, 5, 6]], seed=0)
    assert sorted(map(tuple, groups(3))) == [(0, 1), (2, 3), (4, 5, 6)]


class Crash(RuntimeError):
    pass


def _run(tmp, *, crash_at: int | None = None, save_steps: int | None = None):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    x = torch.randn(12, 4)
    y = x.sum(dim=1, keepdim=True)
    calls = {"n": 0}

    def step(m, rows):
        calls["n"] += 1
        if crash_at is not None and calls["n"] == crash_at:
            raise Crash("killed")
        loss = ((m(x[rows]) - y[rows]) ** 2).mean()
        return loss, {"rows": float(len(rows))}

    ctx = stage_context(tmp, {})
    cfg = config(
        max_steps=6, per_device_train_batch_size=4, learning_rate=0.05, logging_steps=1, save_steps=save_steps
    )
    return train(ctx, cfg, model, batches=shuffled_batches(12, 4, seed=3), step=step), ctx


def test_a_crashed_run_resumes_at_its_checkpoint_with_the_same_weights(tmp_path):
    straight, _ = _run(tmp_path / "straight")
    with pytest.raises(Crash):
        _run(tmp_path / "resumed", crash_at=5, save_steps=2)
    resumed, ctx = _run(tmp_path / "resumed", save_steps=2)
    assert resumed.resumed_from_step == 4 and [h["step"] for h in resumed.history] == [1, 2, 3, 4, 5, 6]
    for a, b in zip(straight.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    assert [h["loss"] for h in resumed.history] == pytest.approx(
        [h["loss"] for h in straight.history], abs=1e-6
    )
    assert resumed.history[0]["learning_rate"] == straight.history[0]["learning_rate"]


def test_the_pitfall_is_found_when_chosen_log_probs_fall_as_the_margin_grows():
    falling = [{"logps/chosen": -1.0 - i, "rewards/margins": 0.1 * i} for i in range(8)]
    message = chosen_falls_while_margin_grows(falling)
    assert message and "fell (-1.5000 -> -7.5000) while the margin grew" in message
    rising = [{"logps/chosen": -5.0 + i, "rewards/margins": 0.1 * i} for i in range(8)]
    assert chosen_falls_while_margin_grows(rising) is None
    assert chosen_falls_while_margin_grows(falling[:1]) is None
