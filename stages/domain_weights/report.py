"""What a ``domain_weights`` stage publishes: ``weights.json`` (ᾱ and the run's settings), the
per-step table ``data/train-00000-of-00001.parquet`` (step, domain, weight α_t[i], excess loss
λ_t[i], proxy and reference loss), a plot of both over the steps, and a card section."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hubflow.stage import StageContext, StageResult
from stages.domain_weights.config import PLOT_FILE, Config
from stages.lib.weights_file import write_weights


def rows(trace: Any) -> list[dict[str, Any]]:
    out = []
    for t, (w, x, p, r) in enumerate(
        zip(trace.weights, trace.excess, trace.proxy_loss, trace.reference_loss, strict=True), start=1
    ):
        for i, d in enumerate(trace.domains):
            out.append(
                {
                    "step": t,
                    "domain": d,
                    "weight": w[i],
                    "excess_loss": x[i],
                    "proxy_loss": p[i],
                    "reference_loss": r[i],
                }
            )
    return out


def plot(trace: Any, average: dict[str, float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    steps = np.arange(1, len(trace.weights) + 1)
    w, x = np.asarray(trace.weights), np.asarray(trace.excess)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    for i, d in enumerate(trace.domains):
        (line,) = top.plot(steps, w[:, i], label=f"{d} (ᾱ={average[d]:.3f})")
        top.axhline(average[d], color=line.get_color(), linestyle="--", linewidth=0.8)
        bottom.plot(steps, x[:, i], color=line.get_color(), label=d)
    top.set_ylabel("domain weight α_t")
    top.set_ylim(0, 1)
    top.legend(fontsize=8)
    top.set_title("DoReMi: domain weights (dashed: average over steps, the output)")
    bottom.set_ylabel("excess loss λ_t (nats/token)")
    bottom.set_xlabel("proxy step t")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def card(cfg: Config, doc: dict[str, Any]) -> str:
    lines = [
        f"DoReMi domain weights (Xie et al. 2023, Algorithm 1) over {len(doc['domains'])} domains: "
        f"reference and proxy Llama models of {doc['parameters']} parameters, {doc['reference_steps']} "
        f"reference steps on α_ref, {doc['steps']} proxy steps, η = {cfg.eta:g}, c = {cfg.smoothing:g}.",
        "",
        "| domain | ᾱ (output) | α_T (last step) | α_ref | mean excess loss | reference loss (last 10% of steps) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for d in doc["domains"]:
        lines.append(
            f"| {d} | {doc['weights'][d]:.4f} | {doc['final_weights'][d]:.4f} | "
            f"{doc['reference_weights'][d]:.4f} | {doc['mean_excess_loss'][d]:.4f} | "
            f"{doc['reference_loss'][d]:.4f} |"
        )
    lines += [
        "",
        "Feed them to `curate` (`inputs: {domain_weights: THIS_STAGE, ...}`, `mix: {weights: from_input}`) "
        "or to `pretrain` (`inputs: {domain_weights: THIS_STAGE, ...}`); the dataset inputs there must be "
        "named as the domains here.",
    ]
    return "\n".join(lines)


def publish(ctx: StageContext, cfg: Config, trace: Any, info: dict[str, Any]) -> StageResult:
    import numpy as np

    from stages.lib.datasets import write_split

    out = Path(ctx.output)
    average = trace.average()
    domains = trace.domains
    tail = max(1, len(trace.weights) // 10)

    def per_domain(values: list[list[float]], last: int | None = None) -> dict[str, float]:
        arr = np.asarray(values[-last:] if last else values, dtype=np.float64).mean(axis=0)
        return {d: float(v) for d, v in zip(domains, arr, strict=True)}

    doc = {
        "method": "doremi",
        "final_weights": dict(zip(domains, trace.weights[-1], strict=True)),
        "reference_weights": cfg.reference_mix(),
        "mean_excess_loss": per_domain(trace.excess),
        "reference_loss": per_domain(trace.reference_loss, tail),
        "proxy_loss": per_domain(trace.proxy_loss, tail),
        "eta": cfg.eta,
        "smoothing": cfg.smoothing,
        "steps": cfg.max_steps,
        "reference_steps": cfg.total_reference_steps(),
        "per_domain_batch_size": cfg.per_domain_batch_size,
        "context_length": cfg.architecture.context_length,
        "parameters": info["parameters"],
    }
    write_weights(out, average, **doc)
    doc = {"domains": domains, "weights": average, **doc}
    write_split(out, "train", rows(trace))
    plot(trace, average, out / PLOT_FILE)
    metrics: dict[str, Any] = {f"weight/{d}": average[d] for d in domains}
    metrics.update({f"mean_excess_loss/{d}": doc["mean_excess_loss"][d] for d in domains})
    metrics.update(
        {k: info[k] for k in ("parameters", "reference_train_loss", "reference_seconds", "proxy_seconds")}
    )
    return StageResult(
        metrics=metrics,
        card_sections={"Domain weights": card(cfg, doc)},
        images={"Domain weights over the proxy's steps": PLOT_FILE},
    )
