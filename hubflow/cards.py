"""Model / dataset cards (README.md with YAML metadata) and ``lineage.json``."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import yaml

from hubflow import __version__, constants
from hubflow.refs import RepoRef, parse_ref


def lineage(
    *,
    stage: str,
    kind: str,
    fingerprint: str,
    components: Mapping[str, Any],
    inputs: Mapping[str, str],
    outputs: Mapping[str, str],
    revisions: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The machine-readable record of what made an artifact. ``revisions``: input name -> the revision
    label (``step-400``) of an input that is another stage's intermediate revision (its commit is in
    the input's record, as for every input)."""
    labels = revisions or {}
    return {
        "hubflow_version": __version__,
        "schema": constants.SCHEMA_VERSION,
        "stage": stage,
        "kind": kind,
        "fingerprint": fingerprint,
        "inputs": {
            name: {**_ref_record(ref), **({"revision_label": labels[name]} if name in labels else {})}
            for name, ref in sorted(inputs.items())
        },
        "outputs": dict(outputs),
        "config": components.get("config", {}),
        "stage_version": components.get("version"),
        "libraries": components.get("code", {}),
        "dependencies": components.get("extra", {}),
    }


def _ref_record(text: str) -> dict[str, Any]:
    ref = parse_ref(text)
    return {
        "ref": str(ref.repo),
        "repo_type": ref.repo_type,
        "repo_id": ref.repo_id,
        "revision": ref.revision,
    }


def card(
    repo: RepoRef,
    record: Mapping[str, Any],
    *,
    metrics: Mapping[str, Any] | None = None,
    sections: Mapping[str, str] | None = None,
    extra_metadata: Mapping[str, Any] | None = None,
    images: Mapping[str, str] | None = None,
) -> str:
    """A Hub card: YAML metadata (base_model, datasets, tags) + lineage and metrics sections."""
    inputs = record["inputs"]
    models = sorted({i["repo_id"] for i in inputs.values() if i["repo_type"] == "model"})
    datasets = sorted({i["repo_id"] for i in inputs.values() if i["repo_type"] == "dataset"})
    meta: dict[str, Any] = {"tags": ["hubflow", f"hubflow-{record['kind']}"]}
    if models and repo.repo_type == "model":
        meta["base_model"] = models[0] if len(models) == 1 else models
    if datasets:
        meta["datasets"] = datasets
    meta.update(extra_metadata or {})
    meta = {k: v for k, v in meta.items() if v is not None}  # a stage may drop a key (base_model: None)
    meta[constants.METADATA_KEY] = {
        "stage": record["stage"],
        "kind": record["kind"],
        "fingerprint": record["fingerprint"],
    }
    lines = [
        "---",
        yaml.safe_dump(meta, sort_keys=False).rstrip(),
        "---",
        "",
        f"# {repo.repo_id}",
        "",
        f"Produced by the hubflow stage `{record['stage']}` (kind `{record['kind']}`).",
        "",
    ]
    for alt, path in (images or {}).items():
        lines += [f"![{alt}]({path})", ""]
    if metrics:
        lines += ["## Metrics", "", "| metric | value |", "| --- | --- |"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in metrics.items() if not isinstance(v, (dict, list))]
        lines.append("")
    for title, body in (sections or {}).items():
        lines += [f"## {title}", "", body.rstrip(), ""]
    lines += ["## Lineage", "", "| input | repo | revision |", "| --- | --- | --- |"]
    lines += [f"| {name} | {i['ref']} | `{i['revision']}` |" for name, i in inputs.items()]
    if not inputs:
        lines.append("| (none) | | |")
    lines += [
        "",
        f"Fingerprint: `{record['fingerprint']}`",
        "",
        "Stage config:",
        "",
        "```yaml",
        yaml.safe_dump(record["config"], sort_keys=True).rstrip(),
        "```",
        "",
        "The full record is in `lineage.json`.",
        "",
    ]
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n"
