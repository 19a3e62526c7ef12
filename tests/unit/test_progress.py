"""Progress lines of a training stage: step/total, the main values, rate and time left, rate-limited."""

from __future__ import annotations

from hubflow.stage import Progress


def test_progress_lines():
    p = Progress(min_seconds=1.0)
    assert p.line(1, 100, {"loss": 2.5}, now=10.0) == "step 1/100 · loss 2.5000"
    assert p.line(2, 100, {"loss": 2.4}, now=10.5) is None  # at most one line a second
    line = p.line(11, 100, {"loss": 1.23456, "learning_rate": 2e-4, "grad_norm": 3.0}, now=12.0)
    assert line == "step 11/100 · loss 1.2346 · learning_rate 0.0002 · 5.00 steps/s · 18s left"
    assert p.line(100, 100, {"reward": 0.5, "kl": 1.5}, now=12.1).startswith(
        "step 100/100 · reward 0.5000 · kl 1.5000"
    )
    q = Progress()
    assert q.line(5, None, {"loss": 1.0}, now=0.0) == "step 5 · loss 1.0000"
