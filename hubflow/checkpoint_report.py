"""The checkpoints part of ``hubflow report``: held-out scores across a training stage's checkpoints.

A training stage with ``checkpoints: {every: K}`` publishes revisions ``step-N`` on its output repo's
``checkpoints`` branch, each commit carrying the metrics the stage logged there (its held-out loss when
it evaluated at that step). ``evaluate`` stages that read those revisions (``train@step-400``) scored
them. For each stage whose current result (the lock's fingerprint) has revisions this module gathers,
per revision, both kinds of numbers, and writes a table (one row per checkpoint) and a figure (x: the
step, y: each metric). Nothing is re-run: the commits' metadata and the evaluate stages' published
metrics are read.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hubflow import constants
from hubflow.errors import RepoNotFound, RevisionNotFound
from hubflow.refs import parse_ref

CHECKPOINT_BRANCH = "checkpoints"
_LABEL = re.compile(r"^([A-Za-z][A-Za-z0-9_]*)-([0-9]+)$")
SKIP_LOGGED = {"step", "tokens"}


@dataclass
class CheckpointPoint:
    """One published revision of a stage's current result."""

    stage: str
    label: str
    axis: str
    """What the number counts (``step``, ``round``)."""
    number: int
    commit: str
    logged: dict[str, float] = field(default_factory=dict)
    """Metrics the training stage recorded with the revision."""
    scores: dict[str, float] = field(default_factory=dict)
    """Metrics of the evaluate stages that read it (``METRIC`` or, with several, ``STAGE:METRIC``)."""
    evaluations: list[str] = field(default_factory=list)


def _numbers(values: dict[str, Any]) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in values.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))
    }


def checkpoint_points(
    project: Any, records: list[Any], learning_keys: tuple[str, ...]
) -> dict[str, list[CheckpointPoint]]:
    """Stage -> its current result's revisions in order, with logged metrics and evaluate scores."""
    hub, lock = project.hub, project.lock().stages
    by_commit: dict[str, CheckpointPoint] = {}
    out: dict[str, list[CheckpointPoint]] = {}
    for rec in records:
        entry = lock.get(rec.name)
        if entry is None or not entry.fingerprint:
            continue
        for text in rec.outputs.values():
            repo = parse_ref(text).repo
            try:
                history = hub.list_commits(repo, CHECKPOINT_BRANCH)
            except (RepoNotFound, RevisionNotFound):
                continue
            for commit in reversed(history):  # oldest first
                meta = commit.metadata.get(constants.METADATA_KEY) or {}
                if not isinstance(meta, dict) or meta.get("stage") != rec.name:
                    continue
                if meta.get("fingerprint") != entry.fingerprint:
                    continue
                m = _LABEL.match(str(meta.get("revision", "")))
                if m is None or commit.commit_id in by_commit:
                    continue
                point = CheckpointPoint(
                    rec.name,
                    m[0],
                    m[1],
                    int(m[2]),
                    commit.commit_id,
                    logged={
                        k: v for k, v in _numbers(meta.get("metrics") or {}).items() if k not in SKIP_LOGGED
                    },
                )
                by_commit[commit.commit_id] = point
                out.setdefault(rec.name, []).append(point)
    readers: dict[str, list[Any]] = {}
    for rec in records:
        if rec.kind != "evaluate":
            continue
        for ref in rec.inputs.values():
            commit = str(ref).rpartition("@")[2]
            if commit in by_commit:
                readers.setdefault(commit, []).append(rec)
    for commit, evals in readers.items():
        point = by_commit[commit]
        for rec in evals:
            point.evaluations.append(rec.name)
            for key, value in _numbers(rec.metrics).items():
                if key.rsplit("/", 1)[-1] in learning_keys:
                    point.scores[key] = value
    for points in out.values():
        points.sort(key=lambda p: p.number)
    return out


def _fmt(value: Any) -> str:
    return "" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def checkpoint_table(points: list[CheckpointPoint]) -> list[str]:
    """Markdown rows: one per revision, with its evaluations' scores and its logged metrics."""
    scores = sorted({k for p in points for k in p.scores})
    logged = sorted({k for p in points for k in p.logged})
    axis = points[0].axis if points else "step"
    head = ["stage", axis, "commit", "evaluated by", *scores, *(f"logged {k}" for k in logged)]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for p in points:
        cells = [p.stage, str(p.number), f"`{p.commit[:8]}`", ", ".join(p.evaluations)]
        cells += [_fmt(p.scores.get(k)) for k in scores] + [_fmt(p.logged.get(k)) for k in logged]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def plot_checkpoints(points: list[CheckpointPoint], path: Path) -> bool:
    """Each metric (evaluate scores first, then the logged ones) against the step; False when no metric
    has two checkpoints."""
    series: dict[str, list[tuple[int, float]]] = {}
    for p in points:
        for key, value in p.scores.items():
            series.setdefault(key, []).append((p.number, value))
    for p in points:
        for key, value in p.logged.items():
            series.setdefault(f"logged {key}", []).append((p.number, value))
    keys = [k for k, v in series.items() if len(v) >= 2][:6]
    if not keys:
        return False
    from hubflow.plots import plot_series

    plot_series(
        {k: [(float(x), float(y)) for x, y in v] for k, v in series.items()},
        keys,
        title=f"{points[0].stage}: scores across its checkpoints",
        xlabel=points[0].axis,
        path=path,
        marker="o",
    )
    return True


def checkpoint_section(
    project: Any, records: list[Any], learning_keys: tuple[str, ...], out_dir: Path
) -> list[str]:
    """The report's ``## Checkpoints`` section (empty when no stage published revisions)."""
    found = checkpoint_points(project, records, learning_keys)
    if not found:
        return []
    lines = ["## Checkpoints", ""]
    for stage, points in found.items():
        if plot_checkpoints(points, out_dir / f"{stage}-checkpoints.png"):
            lines += [f"![{stage}: scores across checkpoints]({stage}-checkpoints.png)", ""]
        lines += [*checkpoint_table(points), ""]
    return lines
