"""Reward-model diagnostics on held-out pairs (seed §4.4): pair accuracy and calibration.

Accuracy is the share of pairs with r(x, y_w) > r(x, y_l) (a tie counts half:
:func:`stages.lib.preference.pair_accuracy`). Calibration compares the Bradley–Terry probability with
how often it is right: the model predicts "chosen" with confidence σ(|r_w − r_l|), and
ECE = Σ_b (n_b/N)·|acc_b − conf_b| over equal-width confidence bins on [0.5, 1]
(:func:`stages.lib.preference.expected_calibration_error`, which also gives the reliability table).
For an ensemble (§4.12 item 2) the same is reported per member and for the min and mean aggregates.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


def score_pairs(model: Any, pairs: Sequence[Any], *, pad_id: int, batch_size: int) -> tuple[Any, Any]:
    """([N] rewards of prompt ⊕ chosen, [N] of prompt ⊕ rejected): right-padded batches, each score read at
    the last real token with explicit position ids (:func:`stages.lib.logprobs.last_token_scores`)."""
    import torch

    from stages.lib.generation import right_pad
    from stages.lib.logprobs import last_token_scores

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: dict[str, list[Any]] = {"chosen": [], "rejected": []}
    with torch.no_grad():
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start : start + batch_size]
            for side in ("chosen", "rejected"):
                ids, mask = right_pad([p.prompt_ids + getattr(p, f"{side}_ids") for p in chunk], pad_id)
                out[side].append(last_token_scores(model, ids.to(device), mask.to(device)).float().cpu())
    model.train(was_training)
    return torch.cat(out["chosen"]), torch.cat(out["rejected"])


def summarize(chosen: Any, rejected: Any, *, n_bins: int) -> dict[str, Any]:
    """Accuracy, ECE with its reliability bins, mean margin and the reward scale on held-out pairs."""
    import torch

    from stages.lib.preference import expected_calibration_error, pair_accuracy

    calibration = expected_calibration_error(chosen, rejected, n_bins=n_bins)
    both = torch.cat([chosen, rejected])
    return {
        "pairs": int(chosen.shape[0]),
        "accuracy": round(pair_accuracy(chosen, rejected), 6),
        "ece": round(calibration["ece"], 6),
        "margin_mean": round(float((chosen - rejected).mean()), 6),
        "reward_mean": round(float(both.mean()), 6),
        "reward_std": round(float(both.std()), 6) if both.numel() > 1 else 0.0,
        "calibration_bins": calibration["bins"],
    }


def ensemble_summaries(
    chosen: Sequence[Any], rejected: Sequence[Any], *, n_bins: int
) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """(one summary per member, {"min": ..., "mean": ...} of the aggregated rewards)."""
    import torch

    members = [summarize(c, r, n_bins=n_bins) for c, r in zip(chosen, rejected, strict=True)]
    c, r = torch.stack(list(chosen)), torch.stack(list(rejected))
    aggregates = {
        "min": summarize(c.min(dim=0).values, r.min(dim=0).values, n_bins=n_bins),
        "mean": summarize(c.mean(dim=0), r.mean(dim=0), n_bins=n_bins),
    }
    return members, aggregates


def reliability_table(bins: Sequence[dict[str, Any]]) -> list[str]:
    """Markdown rows of a reliability table: confidence bin, pairs, mean confidence, accuracy."""
    lines = ["| confidence bin | pairs | mean confidence | accuracy |", "| --- | --- | --- | --- |"]
    for b in bins:
        conf = "" if b["confidence"] is None else f"{b['confidence']:.3f}"
        acc = "" if b["accuracy"] is None else f"{b['accuracy']:.3f}"
        lines.append(f"| [{b['lower']:.2f}, {b['upper']:.2f}) | {b['count']} | {conf} | {acc} |")
    return lines


def plot_reliability(curves: dict[str, Sequence[dict[str, Any]]], path: Path) -> bool:
    """A reliability diagram (accuracy against confidence per bin, the diagonal is perfect calibration)."""
    points = {k: [(b["confidence"], b["accuracy"]) for b in v if b["count"]] for k, v in curves.items()}
    if not any(points.values()):
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.4, 4.0), dpi=100)
    ax.plot([0.5, 1.0], [0.5, 1.0], "--", color="grey", label="calibrated")
    for label, pts in points.items():
        if pts:
            ax.plot(*zip(*pts, strict=True), "o-", label=label)
    ax.set_xlim(0.5, 1.0)
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel("confidence σ(|r_w − r_l|)")
    ax.set_ylabel("share of pairs ranked right")
    ax.set_title("Held-out reliability")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True
