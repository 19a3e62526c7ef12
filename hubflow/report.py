"""``hubflow report``: a Markdown report with PNG plots of what a manifest's stages published.

Nothing is re-run and nothing is recomputed: the report reads the lock (which revision each stage
produced, how long it took) and, from the hub, each output's ``metrics.json`` (the stage's summary),
``metrics.jsonl`` (its training curve: one record per logged step) and the images its card shows. It
works for any manifest, showing what its stages published:

- the DAG (a PNG of the stages by dependency depth) and each stage's kind, output, revision and wall time;
- every training curve: the loss (train and held-out) of pretrain / sft / dpo / reward..., and the
  rewards of RL stages; for a stage that logs a KL with a proxy and a gold reward, the reward against KL
  (over-optimisation, seed §4.12: proxy rises while gold falls as KL grows);
- the figures the stages published (the curation funnel, loss curves, reward-vs-KL plots);
- the learning table: the evaluation metrics of every ``evaluate`` stage side by side, with the model
  each one scored, so base, SFT, DPO and RL models compare at a glance;
- checkpoints (:mod:`hubflow.checkpoint_report`): for a stage that published revisions (``step-N``), the
  scores of the evaluate stages that read them and the metrics it logged there, against the step.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hubflow.checkpoint_report import checkpoint_section
from hubflow.errors import EntryNotFound, HubflowError, RepoNotFound, RevisionNotFound

LEARNING_KEYS = (
    "exact_match",
    "judge_accuracy",
    "sampled_judge_accuracy",
    "logp_accuracy",
    "implicit_reward_accuracy",
    "implicit_margin_mean",
    "reward_accuracy",
    "reward_ece",
    "reward_mean",
    "loss",
)
"""Metrics of an evaluate stage shown in the learning table, in this order (those present; an evaluate
of several datasets prefixes them ``DATASET/``)."""
CURVE_PRIORITY = ("loss", "eval_loss", "reward", "gold_reward", "kl", "rewards/margins", "rewards/accuracies")
SKIP_CURVE = {"step", "epoch", "split", "learning_rate", "tokens", "tokens_per_s", "mfu", "total_flos"}


@dataclass
class StageRecord:
    name: str
    kind: str
    outputs: dict[str, str]
    seconds: float | None
    metrics: dict[str, Any] = field(default_factory=dict)
    curve: list[dict[str, Any]] = field(default_factory=list)
    images: dict[str, bytes] = field(default_factory=dict)
    inputs: dict[str, str] = field(default_factory=dict)


def _read(hub: Any, ref_text: str, path: str) -> bytes | None:
    from hubflow.refs import parse_ref

    ref = parse_ref(ref_text)
    try:
        return hub.read_file(ref.repo, path, ref.revision or "main")
    except (EntryNotFound, RepoNotFound, RevisionNotFound):
        return None


def collect(project: Any) -> list[StageRecord]:
    """One record per stage in the lock, in the manifest's order (stages never run are left out)."""
    lock = project.lock().stages
    hub = project.hub
    out = []
    for name in project.graph.order:
        entry = lock.get(name)
        if entry is None:
            continue
        rec = StageRecord(
            name, entry.kind, dict(entry.outputs), getattr(entry, "seconds", None), inputs=entry.inputs
        )
        first = next(iter(entry.outputs.values()), None)
        if first:
            raw = _read(hub, first, "metrics.json")
            rec.metrics = json.loads(raw) if raw else {}
            raw = _read(hub, first, "metrics.jsonl")
            if raw:
                rec.curve = [json.loads(line) for line in raw.decode("utf-8").splitlines() if line.strip()]
            for ref_text in entry.outputs.values():
                for image in _card_images(hub, ref_text):
                    data = _read(hub, ref_text, image)
                    if data:
                        rec.images[image] = data
        out.append(rec)
    return out


def _card_images(hub: Any, ref_text: str) -> list[str]:
    """PNG files a card links (``![...](file.png)``) and the output holds."""
    import re

    raw = _read(hub, ref_text, "README.md")
    if not raw:
        return []
    return sorted({m for m in re.findall(r"!\[[^\]]*\]\(([^)\s]+\.png)\)", raw.decode("utf-8", "replace"))})


def _numeric_series(curve: list[dict[str, Any]]) -> dict[str, list[tuple[float, float]]]:
    series: dict[str, list[tuple[float, float]]] = {}
    for i, record in enumerate(curve):
        step = record.get("step", i)
        if not isinstance(step, (int, float)):
            continue
        prefix = "eval_" if record.get("split") in ("eval", "test", "heldout") else ""
        for key, value in record.items():
            if key in SKIP_CURVE or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if math.isfinite(float(value)):
                name = key if key.startswith("eval_") else prefix + key
                series.setdefault(name, []).append((float(step), float(value)))
    return {k: v for k, v in series.items() if len(v) >= 2 and len({y for _, y in v}) > 1}  # no constants


def _chosen_series(series: dict[str, list[tuple[float, float]]], limit: int = 6) -> list[str]:
    first = [k for k in CURVE_PRIORITY if k in series]
    rest = sorted(k for k in series if k not in first)
    return (first + rest)[:limit]


def _plot_curves(rec: StageRecord, path: Path) -> bool:
    return plot_metrics(rec.curve, f"{rec.name} ({rec.kind})", path)


def plot_metrics(curve: list[dict[str, Any]], title: str, path: Path | Any) -> bool:
    """Plot a published ``metrics.jsonl`` (its numeric, non-constant series, up to six) as a PNG at
    ``path`` (a path or a binary file object); False when there is nothing to plot. Used by
    `hubflow report` and by the web view of `hubflow serve`."""
    series = _numeric_series(curve)
    keys = _chosen_series(series)
    if not keys:
        return False
    from hubflow.plots import plot_series

    plot_series(series, keys, title=title, xlabel="step", path=path)
    return True


def _reward_vs_kl(rec: StageRecord) -> dict[str, list[tuple[float, float]]]:
    points: dict[str, list[tuple[float, float]]] = {}
    for record in rec.curve:
        kl = record.get("kl")
        if not isinstance(kl, (int, float)):
            continue
        for key in ("reward", "gold_reward"):
            value = record.get(key)
            if isinstance(value, (int, float)) and math.isfinite(float(value)):
                points.setdefault(key, []).append((float(kl), float(value)))
    return points if "reward" in points or "gold_reward" in points else {}


def _plot_reward_vs_kl(rec: StageRecord, path: Path) -> bool:
    points = _reward_vs_kl(rec)
    if not points or max(len(v) for v in points.values()) < 2:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.4))
    for key, label in (("reward", "proxy reward"), ("gold_reward", "gold reward")):
        if key in points:
            xs, ys = zip(*points[key], strict=True)
            ax.plot(xs, ys, marker="o", markersize=3, label=label)
    ax.set_xlabel("KL(π ‖ π_ref), nats per sequence")
    ax.set_ylabel("reward")
    ax.set_title(f"{rec.name}: reward against KL")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def _plot_dag(project: Any, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    graph = project.graph
    depth: dict[str, int] = {}
    for name in graph.order:
        ups = graph.nodes[name].upstream
        depth[name] = 1 + max((depth[u] for u in ups if u in depth), default=-1)
    layers: dict[int, list[str]] = {}
    for name, d in depth.items():
        layers.setdefault(d, []).append(name)
    pos = {n: (d, -i + (len(names) - 1) / 2) for d, names in layers.items() for i, n in enumerate(names)}
    width = max(layers) + 1 if layers else 1
    height = max((len(v) for v in layers.values()), default=1)
    fig, ax = plt.subplots(figsize=(max(6, 1.9 * width), max(3.0, 1.4 * height)))
    for name in graph.order:
        for up in graph.nodes[name].upstream:
            (x0, y0), (x1, y1) = pos[up], pos[name]
            ax.annotate(
                "",
                xy=(x1 - 0.32, y1),
                xytext=(x0 + 0.32, y0),
                arrowprops={"arrowstyle": "->", "color": "0.5"},
            )
    kinds = {n: c.kind for n, c in project.manifest.stages.items()}
    for name, (x, y) in pos.items():
        ax.text(
            x,
            y,
            f"{name}\n({kinds.get(name, '?')})",
            ha="center",
            va="center",
            fontsize=8,
            bbox={"boxstyle": "round", "facecolor": "#e8f0fe", "edgecolor": "#5a7bd8"},
        )
    ax.set_xlim(-0.6, width - 0.4)
    ax.set_ylim(-height / 2 - 0.2, height / 2 + 0.2)
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    return f"{seconds:.1f}s" if seconds < 60 else f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


KL_KEYS = ("last_kl", "kl_per_sequence_last", "kl_final", "kl")
"""Where a training stage's metrics say how far it moved from its reference (nats per sequence)."""


def _producer_kl(records: list[StageRecord], model_ref: str) -> Any:
    """The KL its training stage reached, for the stage that published ``model_ref``."""
    for r in records:
        if model_ref in r.outputs.values():
            return next((r.metrics[k] for k in KL_KEYS if isinstance(r.metrics.get(k), (int, float))), None)
    return None


def learning_table(records: list[StageRecord]) -> list[str]:
    """Markdown rows: every evaluate stage's headline metrics, with the model it scored (and the KL from
    its reference that the model's training stage reached, where it reports one)."""
    evals = [r for r in records if r.kind == "evaluate"]
    if not evals:
        return []
    found = {k for r in evals for k in r.metrics if k.rsplit("/", 1)[-1] in LEARNING_KEYS}
    keys = sorted(found, key=lambda k: (LEARNING_KEYS.index(k.rsplit("/", 1)[-1]), k))
    kls = {r.name: _producer_kl(records, r.inputs.get("model", "")) for r in evals}
    kl_col = any(v is not None for v in kls.values())
    head = ["evaluation", "model", *keys] + (["KL reached (nats/seq)"] if kl_col else [])
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in evals:
        model = r.inputs.get("model", "")
        model = model.split(":", 1)[-1].split("@")[0] if model else ""
        cells = [r.name, model, *(_fmt(r.metrics.get(k)) for k in keys)] + (
            [_fmt(kls[r.name])] if kl_col else []
        )
        lines.append("| " + " | ".join(cells) + " |")
    return lines


SWEEP_METRICS = 4
"""Metrics per stage of a sweep shown in its table (the learning metrics first, then losses, then the rest)."""


def _key_metrics(records: list[StageRecord]) -> list[str]:
    found = {
        k
        for r in records
        for k, v in r.metrics.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step"
    }

    def rank(key: str) -> tuple[int, int, str]:
        last = key.rsplit("/", 1)[-1]
        if last in LEARNING_KEYS:
            return (0, LEARNING_KEYS.index(last), key)
        return (1 if "loss" in last or "reward" in last or "accuracy" in last else 2, 0, key)

    return sorted(found, key=rank)[:SWEEP_METRICS]


def sweep_tables(project: Any, records: list[StageRecord]) -> list[str]:
    """Markdown: one table per matrix sweep, one row per member: its matrix values, its key metrics and
    those of the stages that follow the sweep (an ``evaluate`` over ``SWEEP[*]``), side by side."""
    sweeps = getattr(project.manifest, "sweeps", {}) or {}
    by_name = {r.name: r for r in records}
    lines: list[str] = []
    for root in (s for s in sweeps.values() if s.follows is None):
        family = [root]
        for sweep in sweeps.values():  # followers, and followers of followers, in manifest order
            if sweep.follows in {f.name for f in family}:
                family.append(sweep)
        columns: list[tuple[int, str]] = []  # (index in family, metric)
        for i, sweep in enumerate(family):
            ran = [by_name[m] for m in sweep.member_names if m in by_name]
            columns += [(i, k) for k in _key_metrics(ran)]
        head = ["member", *root.keys] + [f"{family[i].name}: {k}" for i, k in columns]
        lines += [f"### sweep `{root.name}`", "", "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
        for j, member in enumerate(root.members):
            cells = [member.name, *(_fmt(member.values[k]) for k in root.keys)]
            for i, k in columns:
                rec = by_name.get(family[i].members[j].name)
                cells.append(_fmt(rec.metrics.get(k)) if rec else "not run")
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def write_report(project: Any, out_dir: Path) -> Path:
    """Write ``report.md`` and its PNGs into ``out_dir``; returns the Markdown file."""
    records = collect(project)
    if not records:
        raise HubflowError(
            f"nothing to report: the lock {project.manifest.lock_path} records no stage",
            hint=f"run the manifest first: `hubflow run {project.manifest.path}`",
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = [
        f"# hubflow report: `{project.manifest.path.name}`",
        "",
        f"From the lock `{project.manifest.lock_path.name}` and the metrics the stages published (nothing re-run).",
        "",
        "## Pipeline",
        "",
    ]
    _plot_dag(project, out_dir / "dag.png")
    lines += [
        "![the stages](dag.png)",
        "",
        "| stage | kind | output | wall time |",
        "| --- | --- | --- | --- |",
    ]
    total = 0.0
    for r in records:
        outputs = "<br>".join(
            f"`{v.split('@')[0]}@{v.split('@')[1][:8]}`" if "@" in v else f"`{v}`" for v in r.outputs.values()
        )
        lines.append(f"| {r.name} | {r.kind} | {outputs} | {_duration(r.seconds)} |")
        total += r.seconds or 0.0
    lines += ["", f"Total wall time recorded: {_duration(total)}.", ""]
    table = learning_table(records)
    if table:
        lines += ["## Learning", "", *table, ""]
    lines += checkpoint_section(project, records, LEARNING_KEYS, out_dir)
    sweeps = sweep_tables(project, records)
    if sweeps:
        lines += ["## Sweeps", "", *sweeps]
    lines += ["## Stages", ""]
    for r in records:
        section = [f"### {r.name} ({r.kind})", ""]
        if _plot_curves(r, out_dir / f"{r.name}-curves.png"):
            section += [f"![{r.name} training curves]({r.name}-curves.png)", ""]
        if _plot_reward_vs_kl(r, out_dir / f"{r.name}-reward-kl.png"):
            section += [f"![{r.name}: proxy and gold reward against KL]({r.name}-reward-kl.png)", ""]
        for image, data in r.images.items():
            name = f"{r.name}-{Path(image).name}"
            (out_dir / name).write_bytes(data)
            section += [f"![{r.name}: {image}]({name})", ""]
        headline = {
            k: v for k, v in r.metrics.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)
        }
        if headline:
            shown = list(headline.items())[:12]
            section += (
                ["| metric | value |", "| --- | --- |"] + [f"| {k} | {_fmt(v)} |" for k, v in shown] + [""]
            )
        if len(section) > 2:
            lines += section
    path = out_dir / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
