"""What a pretrain run leaves besides the weights: the metrics history, the loss curve, the card text."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from stages.pretrain.scaling import human


class History:
    """``metrics.jsonl`` in the resume folder: the whole run's log across resumes.

    On resume, records after the checkpoint's step (logged by the killed run past its
    last checkpoint) are dropped, so the published history is that of one run.
    """

    def __init__(self, path: Path, *, keep_until: int, enabled: bool) -> None:
        self.path = path
        self.enabled = enabled
        if not enabled:
            return
        kept: list[str] = []
        if keep_until > 0 and path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    if json.loads(line).get("step", 0) <= keep_until:
                        kept.append(line)
                except ValueError:
                    continue  # a line cut by the kill
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")

    def append(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")

    def records(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text(encoding="utf-8").splitlines() if line]


def plot_loss(records: list[dict[str, Any]], path: Path, title: str) -> bool:
    """Train (and held-out) loss against tokens; False when there is nothing to draw."""
    train = [(r["tokens"], r["loss"]) for r in records if r.get("split") == "train"]
    evals = [(r["tokens"], r["eval_loss"]) for r in records if r.get("split") == "eval"]
    if not train:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    ax.plot(*zip(*train, strict=True), label="train", color="tab:blue")
    if evals:
        ax.plot(*zip(*evals, strict=True), "o-", label="held-out", color="tab:orange")
    ax.set_xlabel("tokens")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def card_section(cfg: Any, metrics: dict[str, Any], model_config: dict[str, Any]) -> str:
    rows = [
        ("objective", cfg.objective),
        ("model", f"{model_config.get('model_type')} ({human(metrics['parameters'])} parameters)"),
        ("tokens", f"{human(metrics['tokens'])} ({metrics['steps']} steps)"),
        ("tokens / parameter", f"{metrics['tokens_per_parameter']:.3g} (Chinchilla ≈ 20)"),
        ("compute 6·N·D", f"{metrics['compute_flops']:.3g} FLOPs"),
        (
            "batch",
            f"{cfg.per_device_train_batch_size} × {cfg.gradient_accumulation_steps} accumulation × {metrics['world_size']} process(es) "
            f"× {cfg.architecture.context_length} tokens",
        ),
        (
            "learning rate",
            f"{cfg.learning_rate:g} peak, warmup {cfg.warmup_for(metrics['steps'])}, cosine to "
            f"{metrics['min_lr']:g}",
        ),
        ("precision", metrics["mixed_precision"]),
        ("throughput", f"{human(metrics['tokens_per_s'])} tokens/s, MFU {metrics['mfu']:.1%}"),
    ]
    if metrics.get("resumed_from_step"):
        rows.append(("resumed", f"from the checkpoint at step {metrics['resumed_from_step']}"))
    lines = ["| | |", "| --- | --- |", *(f"| {k} | {v} |" for k, v in rows)]
    lines += ["", "The full log (loss, perplexity, gradient norm, lr, tokens/s, MFU) is in `metrics.jsonl`."]
    return "\n".join(lines)
