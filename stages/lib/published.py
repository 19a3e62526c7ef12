"""Loading what a manifest's stage published, in two lines of Python::

    from stages.lib.published import load_stage_model
    model, tokenizer = load_stage_model("manifests/quickstart.yaml", "ppo")

The stage's output revision comes from the manifest's lock (exactly what the last run produced); it is
copied out of the hub once into ``.hubflow/pulled/`` beside the manifest. An adapter is loaded on the
base it records in its ``lineage.json`` (the ``base`` input, else the ``model`` / ``policy`` input it
was trained from), fetched the same way. Nothing reaches a network unless the manifest's hub is one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hubflow.errors import HubflowError


def _pull(project: Any, ref_text: str) -> Path:
    from hubflow.refs import parse_ref

    ref = parse_ref(ref_text)
    if ref.revision is None:
        raise HubflowError(
            f"{ref_text} names no revision", hint="give a ref with @COMMIT (the lock has them)"
        )
    folder = (
        project.manifest.base_dir
        / ".hubflow"
        / "pulled"
        / f"{ref.repo.repo_id.replace('/', '--')}@{ref.revision[:12]}"
    )
    if not (folder / ".complete").exists():
        project.hub.snapshot(ref.repo, ref.revision, folder)
        (folder / ".complete").write_text("", encoding="utf-8")
    return folder


def stage_output(
    manifest: str | Path, stage: str, output: str | None = None, revision: str | None = None
) -> tuple[Any, str]:
    """(project, ``TYPE:NS/NAME@COMMIT``) of a stage's output as the lock records it; with ``revision``
    (``step-400``) that intermediate revision of the same result (the commit tagged
    ``step-400-<fingerprint[:12]>`` on its ``checkpoints`` branch)."""
    from hubflow.project import Project

    project = Project.load(manifest)
    entry = project.lock().stages.get(stage)
    if entry is None:
        raise HubflowError(
            f"stage {stage!r} has no result in {project.manifest.lock_path.name}",
            hint=f"run it first: `hubflow run {manifest} {stage}`",
        )
    cfg = project.manifest.stages.get(stage)
    name = (
        output
        or (getattr(cfg, "POLICY_OUTPUT", None) if cfg is not None else None)
        or next(iter(entry.outputs))
    )
    if name not in entry.outputs:
        raise HubflowError(
            f"stage {stage!r} has no output {name!r}", hint=f"outputs: {sorted(entry.outputs)}"
        )
    if revision is None:
        return project, entry.outputs[name]
    from hubflow.graph import revision_tag
    from hubflow.refs import parse_ref

    repo = parse_ref(entry.outputs[name]).repo
    tags = project.hub.list_refs(repo).tags
    tag = revision_tag(revision, entry.fingerprint)
    if tag not in tags:
        suffix = "-" + entry.fingerprint[:12]
        have = sorted(t[: -len(suffix)] for t in tags if t.endswith(suffix))
        raise HubflowError(
            f"stage {stage!r} published no revision {revision!r} of {repo} for its last result",
            hint=f"its revisions: {', '.join(have) or 'none'} (a training stage publishes step-N with "
            "`checkpoints: {every: K}`)",
        )
    return project, f"{repo}@{tags[tag]}"


def load_stage_model(
    manifest: str | Path,
    stage: str,
    *,
    output: str | None = None,
    revision: str | None = None,
    **load_kw: Any,
) -> tuple[Any, Any]:
    """(model in eval mode, tokenizer) of what ``stage`` published; ``revision="step-400"``: that
    checkpoint of it instead of the final model (an adapter checkpoint loads on the base its final
    output records). ``load_kw`` go to :func:`stages.lib.models.load_model` (``task``, ``device``,
    ``dtype``, ``merge``...)."""
    from stages.lib.models import is_adapter, load_model
    from stages.lib.tokenizers import load_tokenizer, tokenizer_folder

    project, ref_text = stage_output(manifest, stage, output, revision)
    folder = _pull(project, ref_text)
    base = None
    if is_adapter(folder):
        record_folder = (
            folder if revision is None else _pull(project, stage_output(manifest, stage, output)[1])
        )
        lineage = json.loads((record_folder / "lineage.json").read_text(encoding="utf-8"))
        inputs = lineage.get("inputs") or {}
        record = next((inputs[n] for n in ("base", "model", "policy") if n in inputs), None)
        if record is None:
            raise HubflowError(
                f"stage {stage!r} published an adapter whose lineage names no base model",
                hint="load it with stages.lib.models.load_model(folder, base=BASE_FOLDER)",
            )
        base = _pull(project, f"{record['repo_type']}:{record['repo_id']}@{record['revision']}")
    model = load_model(folder, base=base, **load_kw)
    found = tokenizer_folder(("model", folder), ("base", base))
    return model, load_tokenizer(found[1]) if found else None
