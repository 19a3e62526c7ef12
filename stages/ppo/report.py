"""What a PPO run reports: the per-step record (TRL's metric names), the rollout rows, the card section and
the over-optimisation plot (seed §4.12: proxy and gold reward against KL)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

PLOT = "reward_vs_kl.png"


def step_record(exp: Any, step: int, *, kl: float, learning_rate: float) -> dict[str, Any]:
    """The rollout half of a step's log line (seed §4.5 step 5.4: reward, KL, length, β)."""
    import torch

    from stages.lib.masked import masked_sum

    mask = exp.mask
    lengths = mask.sum(dim=1).float()
    kl_rows = masked_sum(exp.kl, mask, dim=1)
    non_score = -exp.beta * kl_rows
    record: dict[str, Any] = {
        "step": step,
        "split": "train",
        "episode": step * len(exp),
        "objective/scores": float(exp.raw_scores.mean()),
        "objective/scores_std": float(exp.raw_scores.std()) if len(exp) > 1 else 0.0,
        "objective/normalized_scores": float(exp.scores.mean()),
        "objective/kl": kl,
        "objective/kl_per_token": float(masked_sum(exp.kl, mask) / mask.sum()),
        "objective/entropy": float(masked_sum(exp.entropy, mask) / mask.sum()),
        "objective/non_score_reward": float(non_score.mean()),
        "objective/rlhf_reward": float((exp.scores + non_score).mean()),
        "response_length": float(lengths.mean()),
        "val/num_eos_tokens": int(exp.rollout.ended.sum()),
        "kl_coef": exp.beta,
        "learning_rate": learning_rate,
        "time/rollout": exp.timings["rollout"],
        "time/scoring": exp.timings["scoring"],
    }
    if exp.gold is not None:
        record["objective/gold_scores"] = float(torch.tensor(exp.gold).mean())
    if exp.member_scores is not None and exp.member_scores.shape[0] > 1:
        record["objective/ensemble_spread"] = float(
            (exp.member_scores.max(dim=0).values - exp.member_scores.min(dim=0).values).mean()
        )
    return record


def rollout_rows(exp: Any, step: int, prompts: Any) -> list[dict[str, Any]]:
    """One row per sampled response: what it answered, its scores and its KL."""
    from stages.lib.masked import masked_sum

    kl_rows = masked_sum(exp.kl, exp.mask, dim=1).tolist()
    lengths = exp.mask.sum(dim=1).tolist()
    raw, scores, ended = exp.raw_scores.tolist(), exp.scores.tolist(), exp.rollout.ended.tolist()
    members = exp.member_scores.t().tolist() if exp.member_scores is not None else None
    out = []
    for i, row in enumerate(exp.prompt_rows):
        out.append(
            {
                "step": step,
                "prompt_row": row,
                "prompt": prompts.prompts[row],
                "family": prompts.families[row] if prompts.families is not None else None,
                "completion": exp.texts[i],
                "response_tokens": int(lengths[i]),
                "ended": bool(ended[i]),
                "score": float(raw[i]),
                "reward": float(scores[i]),
                "gold_reward": float(exp.gold[i]) if exp.gold is not None else None,
                "kl": float(kl_rows[i]),
                "kl_coef": exp.beta,
                "member_scores": members[i] if members is not None else None,
            }
        )
    return out


def plot_reward_vs_kl(records: list[dict[str, Any]], path: Path, *, title: str) -> bool:
    """Proxy (and gold) reward of each step's rollouts against its KL (nats per sequence); False if empty."""
    train = [r for r in records if r.get("split") == "train" and "objective/kl" in r]
    if not train:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kl = [r["objective/kl"] for r in train]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(kl, [r["objective/scores"] for r in train], "o-", ms=3, label="proxy reward (optimised)")
    if all("objective/gold_scores" in r for r in train):
        ax.plot(kl, [r["objective/gold_scores"] for r in train], "s-", ms=3, label="gold reward (judge)")
    ax.set_xlabel("KL(π_θ ‖ π_ref), nats per sequence")
    ax.set_ylabel("mean reward of the rollout batch")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def card_section(cfg: Any, metrics: dict[str, Any], notes: list[str]) -> str:
    """The ``PPO`` card section: settings, first vs last step, the stop, the models held, memory."""
    kl = cfg.kl_control
    beta = (
        f"fixed β = {kl.kl_coef:g}"
        if kl.type == "fixed"
        else f"adaptive β from {kl.init_kl_coef:g} toward {kl.target:g} nats per sequence "
        f"(horizon {kl.horizon})"
    )
    lines = [
        f"Estimator **{cfg.advantage_estimator}**"
        + (f" with critic `{metrics['critic']}`" if metrics.get("critic") else " (no critic)")
        + f", policy layout `{metrics['policy_layout']}`, reward "
        + ("the gold judge" if cfg.reward == "synthetic" else f"model ({cfg.reward_aggregate} over members)")
        + f". {metrics['steps']} PPO steps × {cfg.rollout_batch_size} prompts, {cfg.num_ppo_epochs} epochs × "
        f"{cfg.num_mini_batches} minibatches, {beta}, ε = {cfg.cliprange:g}, γ = {cfg.gamma:g}, "
        f"λ = {cfg.lam:g}, T = {cfg.temperature:g}.",
        "",
        "KL is in nats per sequence: Σ_t (log π_old − log π_ref) over a response, averaged over the batch.",
        "",
        "| | first step | last step |",
        "| --- | --- | --- |",
    ]
    for key, label in (
        ("scores", "proxy reward"),
        ("gold_scores", "gold reward"),
        ("kl", "KL (nats/seq)"),
        ("response_length", "response length"),
    ):
        if f"first_{key}" in metrics:
            lines.append(f"| {label} | {_fmt(metrics[f'first_{key}'])} | {_fmt(metrics[f'last_{key}'])} |")
    if "eval_gold_before" in metrics:
        lines.append(
            f"| held-out gold (greedy) | {_fmt(metrics['eval_gold_before'])} | {_fmt(metrics['eval_gold_after'])} |"
        )
    lines += ["", f"Stopped by **{metrics['stopped_by']}** at step {metrics['stopped_at_step']}."]
    lines += notes
    lines += ["", "| model | what | parameters | trainable |", "| --- | --- | --- | --- |"]
    lines += [
        f"| {h['role']} | {h['what']} | {h['parameters']:,} | {h['trainable']:,} |"
        for h in metrics["models_held"]
    ]
    lines += [
        "",
        f"Distinct parameters in memory: {metrics['distinct_parameters']:,}; peak memory "
        f"{metrics['peak_memory_mb']:.0f} MB ({metrics['peak_memory_source']}).",
        f"Time per step: rollout {metrics['time_rollout_s']:.3g} s, scoring {metrics['time_scoring_s']:.3g} s, "
        f"optimisation {metrics['time_optimization_s']:.3g} s.",
    ]
    return "\n".join(lines)


def peak_memory() -> tuple[float, str]:
    """(peak MB, what was measured): CUDA's peak allocation, else the process's peak resident set."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.max_memory_allocated() / 2**20, "torch.cuda.max_memory_allocated"
    import resource
    import sys

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (rss / 2**20 if sys.platform == "darwin" else rss / 1024), "peak RSS of the stage process"
