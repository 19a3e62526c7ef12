"""Over-optimisation monitoring (seed §4.12): proxy and gold reward against KL, early stopping, the plot.

Training is cut into windows of ``eval_steps`` optimizer steps. When a window closes, the monitor takes
the mean proxy reward and the mean gold reward over every completion sampled in it (from the
:class:`~stages.lib.reinforce.scoring.RolloutStore`, summed over processes) and the KL(π‖π_ref) per
sequence measured on its last generation batch. Two rules may stop training there:

- ``stop_when_gold_drops {patience, min_delta}``: the gold reward of ``patience`` consecutive windows is
  below the best window's by more than ``min_delta`` (mitigation 3, early stopping on the gold evaluation);
- ``kl_budget δ``: the window's KL exceeds δ nats per sequence (mitigation 4, a hard KL budget).

The rules read only the recorded completions, so a resumed run replays the windows it had closed and
decides exactly as the uninterrupted run would.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stages.lib.reinforce.scoring import SUMMARY_FIELDS, RolloutStore


@dataclass(frozen=True)
class Window:
    """One closed window: steps (first, last], its mean rewards and its KL."""

    first: int
    step: int
    completions: int
    proxy: float
    gold: float | None
    kl: float | None
    """KL(π‖π_ref) in nats per sequence on the window's last measured batch (None: not measured)."""

    def as_log(self) -> dict[str, float]:
        out = {"monitor/proxy_reward": round(self.proxy, 6)}
        if self.gold is not None:
            out["monitor/gold_reward"] = round(self.gold, 6)
        if self.kl is not None:
            out["monitor/kl_per_sequence"] = round(self.kl, 6)
        return out


def _sum_vectors(vector: list[float]) -> list[float]:
    return vector


@dataclass
class Monitor:
    store: RolloutStore
    eval_steps: int | None
    patience: int | None = None
    min_delta: float = 0.0
    kl_budget: float | None = None
    reduce: Callable[[list[float]], list[float]] = _sum_vectors
    """Sums a vector over processes (identity on one process)."""
    history: list[Window] = field(default_factory=list)
    start: Window | None = None
    stop_reason: str | None = None
    stop_step: int | None = None
    _closed: int = 0
    _best: Window | None = None
    _below: list[Window] = field(default_factory=list)

    def close(self, step: int) -> Window | None:
        """Close the window (last closed step, ``step``]; None when it holds no completion."""
        if step <= self._closed:
            return None
        first, self._closed = self._closed, step
        steps = sorted(k for k in self.store.summaries if first < k <= step)
        totals = [0.0] * len(SUMMARY_FIELDS)
        for k in steps:
            totals[:4] = [
                a + b for a, b in zip(totals[:4], self.store.summaries[k].as_list()[:4], strict=True)
            ]
        measured = [k for k in steps if self.store.summaries[k].kl_n]
        if measured:
            totals[4:] = self.store.summaries[measured[-1]].as_list()[4:]
        if self.start is None and 1 in self.store.summaries and first == 0:
            self.start = _window(0, 1, self.reduce(self.store.summaries[1].as_list()))
        window = _window(first, step, self.reduce(totals))
        if window is None:
            return None
        self.history.append(window)
        self._check(window)
        return window

    def replay(self, upto: int) -> None:
        """Close the windows a run had closed by step ``upto`` (after a resume)."""
        if not self.eval_steps:
            return
        for k in range(self.eval_steps, upto + 1, self.eval_steps):
            self.close(k)

    def _check(self, w: Window) -> None:
        if self.stop_reason is not None:
            return
        if self.kl_budget is not None and w.kl is not None and w.kl > self.kl_budget:
            self.stop_reason = (
                f"KL {w.kl:.3f} nats/sequence at step {w.step} exceeds kl_budget {self.kl_budget:g}"
            )
            self.stop_step = w.step
            return
        if self.patience is None or w.gold is None:
            return
        if self._best is None or w.gold > self._best.gold:  # type: ignore[operator]
            self._best, self._below = w, []
            return
        if w.gold < self._best.gold - self.min_delta:  # type: ignore[operator]
            self._below.append(w)
        else:
            self._below = []
        if len(self._below) >= self.patience:
            golds = ", ".join(f"{b.gold:.3f}" for b in self._below)
            self.stop_reason = (
                f"gold reward stayed below its best ({self._best.gold:.3f} at step {self._best.step}) by more "
                f"than min_delta {self.min_delta:g} for {self.patience} window(s): {golds}"
            )
            self.stop_step = w.step

    @property
    def best(self) -> Window | None:
        return self._best


def _window(first: int, step: int, totals: list[float]) -> Window | None:
    n, proxy_sum, gold_n, gold_sum, kl_n, kl_sum = totals
    if n <= 0:
        return None
    return Window(
        first=first,
        step=step,
        completions=int(n),
        proxy=proxy_sum / n,
        gold=gold_sum / gold_n if gold_n else None,
        kl=kl_sum / kl_n if kl_n else None,
    )


def monitor_callback(monitor: Monitor, log: Callable[..., None]) -> Any:
    """A TrainerCallback: close a window every ``eval_steps`` steps (and at the last step), log it, stop when a
    rule fires; and forward every TRL log line to ``log`` (the stage's metrics.jsonl)."""
    from transformers import TrainerCallback

    class MonitorCallback(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> Any:
            every = monitor.eval_steps
            last = bool(state.max_steps) and state.global_step >= state.max_steps
            if (every and state.global_step % every == 0) or last:
                window = monitor.close(state.global_step)
                if window is not None and state.is_world_process_zero:
                    log(step=state.global_step, **window.as_log())
                if monitor.stop_reason is not None:
                    control.should_training_stop = True
                    control.should_log = True
            if last:
                control.should_log = True  # the last step's metrics are always logged
            if control.should_save or last or control.should_training_stop:
                monitor.store.flush()  # before the checkpoint: a resume finds every batch up to it
            return control

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            if state.is_world_process_zero and logs:
                log(step=state.global_step, **{k: v for k, v in logs.items() if isinstance(v, (int, float))})

    return MonitorCallback()


def plot_overoptimization(monitor: Monitor, path: Path, title: str, *, proxy_label: str) -> bool:
    """Proxy and gold reward per window against KL per sequence (against the step when KL was not measured);
    False when there is nothing to draw."""
    points = ([monitor.start] if monitor.start is not None else []) + list(monitor.history)
    if not points:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_kl = all(p.kl is not None for p in points)
    xs = [p.kl if by_kl else p.step for p in points]
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    ax.plot(xs, [p.proxy for p in points], "o-", color="tab:blue", label=proxy_label)
    if all(p.gold is not None for p in points) and proxy_label != "gold reward":
        ax.plot(xs, [p.gold for p in points], "s-", color="tab:orange", label="gold reward")
    if monitor.stop_step is not None:
        stop = next(p for p in points if p.step == monitor.stop_step)
        ax.axvline(stop.kl if by_kl else stop.step, color="tab:red", ls="--", label="stopped")
    ax.set_xlabel("KL(π‖π_ref), nats per sequence" if by_kl else "step (KL not measured)")
    ax.set_ylabel("mean reward per completion")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True
