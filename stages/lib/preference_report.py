"""Metrics and card lines of the offline preference kinds (dpo, kto, orpo): the training loop's first
and last logged statistics (seed §4.7 step 3.5), the held-out scores, memory and warnings."""

from __future__ import annotations

from typing import Any

_NOT_STATS = ("step", "epoch", "learning_rate")


def loop_metrics(loop: Any) -> dict[str, Any]:
    """Steps, timing, and the first / last logged window of the loop's history."""
    first, last = loop.first or {}, loop.last or {}
    mean_step = loop.mean_step_seconds()
    return {
        "steps": loop.steps,
        "steps_per_epoch": loop.steps_per_epoch,
        "resumed_from_step": loop.resumed_from_step,
        "train_seconds": round(loop.seconds, 3),
        "step_seconds_mean": round(mean_step, 6) if mean_step is not None else None,
        "train_loss_first": first.get("loss"),
        "train_loss_last": last.get("loss"),
        "first_step": {k: v for k, v in first.items() if k not in _NOT_STATS},
        "last_logged": {k: v for k, v in last.items() if k not in _NOT_STATS},
        "device": loop.device,
    }


def _num(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def card_lines(m: dict[str, Any]) -> list[str]:
    """Markdown lines: training, monitoring table, held-out table, memory, warnings."""
    lines = [
        "",
        f"Steps: {m['steps']} ({m['steps_per_epoch']} per epoch); training loss {_num(m['train_loss_first'])} -> "
        f"{_num(m['train_loss_last'])}; {_num(m['step_seconds_mean'])} s per step on {m['device']}.",
    ]
    first, last = m.get("first_step") or {}, m.get("last_logged") or {}
    keys = [k for k in first if k in last and k != "loss"]
    if keys:
        lines += ["", "| monitored (seed §4.7 step 3.5) | first step | last logged |", "| --- | --- | --- |"]
        lines += [f"| {k} | {_num(first[k])} | {_num(last[k])} |" for k in keys]
    evals = {k: v for k, v in m.items() if k.startswith("eval_") and not k.endswith("_before")}
    if evals:
        lines += ["", "| held-out | before | after |", "| --- | --- | --- |"]
        lines += [f"| {k[5:]} | {_num(m.get(k + '_before', ''))} | {_num(v)} |" for k, v in evals.items()]
    lines += [
        "",
        f"Peak memory ({m.get('memory')}): {m.get('peak_memory_mb')} MB. Held: "
        + "; ".join(m.get("models_held") or [])
        + ".",
    ]
    for warning in m.get("warnings") or []:
        lines += ["", f"**Warning**: {warning}."]
    return lines
