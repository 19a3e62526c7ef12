"""The curation funnel: counts read from datatrove's per-task stats, the report JSON, plot and card text."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

TOKENS_METHOD = "UTF-8 bytes of text / 4"
BYTES_PER_TOKEN = 4


def merged_stats(logging_dir: Path) -> list[Any]:
    """datatrove's per-task stats (``stats/NNNNN.json``, one per finished task, kept across resumes), summed."""
    from datatrove.utils.stats import MetricStatsDict, PipelineStats

    total = PipelineStats()
    for path in sorted((logging_dir / "stats").glob("*.json")):
        with open(path, encoding="utf-8") as fh:
            task = PipelineStats.from_json(json.load(fh))
        for block in task.stats:  # raw JSON values -> MetricStats, so sums and means are exact
            block.stats = MetricStatsDict.from_dict(dict(block.stats))
        total += task
    return total.stats


def count(stats: Any, label: str) -> int:
    """Total of one stat of a step's merged stats (0 if the step never recorded it)."""
    if stats is None or label not in stats.stats:
        return 0
    return int(stats.stats[label].total)


_count = count


def funnel_rows(plans: list[Any], logs_root: Path) -> list[dict[str, Any]]:
    """One row per funnel step (read, each filter, exact / MinHash dedup, perplexity), in order."""
    rows: list[dict[str, Any]] = []
    for plan in plans:
        if not plan.funnel:
            continue
        stats = merged_stats(logs_root / plan.name)
        for step in plan.funnel:
            st = stats[step.index] if step.index < len(stats) else None
            if step.kind == "read":
                docs_out, empty = _count(st, "documents"), _count(st, "empty_text")
                row = {"docs_in": docs_out + empty, "docs_out": docs_out, "removed": empty}
                row["reasons"] = {"empty_text": empty} if empty else {}
                row["bytes"] = _count(st, "bytes")
            elif step.kind == "format":
                total = _count(st, "total")
                row = {"docs_in": total, "docs_out": total, "removed": 0, "reasons": {}}
            elif step.kind == "substring":
                row = {
                    "docs_in": _count(st, "total"),
                    "docs_out": _count(st, "forwarded"),
                    "removed": _count(st, "dropped"),
                    "reasons": {"emptied": _count(st, "dropped_emptied")}
                    if _count(st, "dropped_emptied")
                    else {},
                    "spans_removed": _count(st, "spans_removed"),
                    "bytes_removed": _count(st, "bytes_removed"),
                    "documents_changed": _count(st, "documents_changed"),
                }
            else:
                row = {
                    "docs_in": _count(st, "total"),
                    "docs_out": _count(st, "forwarded"),
                    "removed": _count(st, "dropped"),
                }
                row["reasons"] = {
                    k.removeprefix("dropped_"): int(v.total)
                    for k, v in (st.stats.items() if st is not None else [])
                    if k.startswith("dropped_")
                }
                if step.kind == "perplexity" and st is not None and "perplexity" in st.stats:
                    m = st.stats["perplexity"]
                    row["perplexity"] = {
                        "n": m.n,
                        "mean": m.mean,
                        "std": m.standard_deviation,
                        "min": m.min,
                        "max": m.max,
                    }
            rows.append({"step": step.label, "kind": step.kind, **row})
    return rows


def plot_funnel(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = ["input rows"] + [r["step"] for r in rows]
    values = [rows[0]["docs_in"] if rows else 0] + [r["docs_out"] for r in rows]
    start = max(values[0], 1)
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(labels) + 1.2))
    bars = ax.barh(range(len(labels)), values, color="#4C72B0")
    ax.set_yticks(range(len(labels)), labels)
    ax.invert_yaxis()
    ax.set_xlabel("documents remaining")
    ax.set_title("Curation funnel")
    for bar, value in zip(bars, values, strict=True):
        ax.text(
            bar.get_width(),
            bar.get_y() + bar.get_height() / 2,
            f" {value:,} ({value / start:.1%})",
            va="center",
        )
    ax.set_xlim(0, max(values + [1]) * 1.35)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


def card_markdown(report: dict[str, Any]) -> str:
    docs, byts = report["documents"], report["bytes"]
    start = max(docs["in"], 1)
    lines = [
        f"Curated {docs['in']:,} documents ({_mb(byts['in'])} of text) into {docs['out']:,} "
        f"({_mb(byts['out'])}), {docs['out'] / start:.1%} of the input. "
        f"Token estimate: {report['tokens_estimate']['out']:,} ({TOKENS_METHOD}).",
        "",
        "| step | documents in | documents out | removed | kept of input |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in report["funnel"]:
        lines.append(
            f"| {r['step']} | {r['docs_in']:,} | {r['docs_out']:,} | {r['removed']:,} | {r['docs_out'] / start:.1%} |"
        )
    mix = report["mix"]
    lines += [
        "",
        f"Mix ({mix['rule']}, seed {mix['seed']}):",
        "",
        "| input | available | drawn | target share | realised share |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, m in mix["per_input"].items():
        lines.append(
            f"| {name} | {m['available']:,} | {m['drawn']:,} | {m['target_proportion']:.3f} | "
            f"{m['realised_proportion']:.3f} |"
        )
    for r in report["funnel"]:
        if r["kind"] == "substring":
            lines += [
                "",
                f"Exact-substring dedup cut {r['spans_removed']:,} repeated spans ({_mb(r['bytes_removed'])}) "
                f"out of {r['documents_changed']:,} documents; {r['removed']:,} documents were left empty.",
            ]
    ppl = report.get("perplexity")
    if ppl:
        lines += [
            "",
            f"Perplexity of the documents scored: mean {ppl['mean']:.1f} ± {ppl['std']:.1f} "
            f"(min {ppl['min']:.1f}, max {ppl['max']:.1f}, n={ppl['n']:,}); kept range "
            f"[{ppl['bounds'][0]}, {ppl['bounds'][1]}].",
        ]
    return "\n".join(lines)
