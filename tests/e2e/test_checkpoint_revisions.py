"""Checkpoints as revisions through `hubflow run`: a pretrain stage with `checkpoints: {every: 3}` publishes
step-3 and step-6 on its repo's `checkpoints` branch while `main` gets one commit; an `evaluate` stage reading
`lm@step-3` scores exactly that commit (its lineage says so) and is re-run when the producer changes; a
label the producer cannot publish fails when the manifest loads; `hubflow report` tabulates and plots the
checkpoints. (The tokenizer and data are imported, so only the two stages under test start processes.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

pytest.importorskip("torch")

MANIFEST = """
stages:
  - name: lm
    kind: pretrain
    inputs: {tokenizer: "model:demo/tok", data: "dataset:demo/pairs"}
    text_column: completion
    architecture: {hidden_size: 32, num_layers: 1, num_heads: 2, context_length: 16}
    max_steps: 6
    per_device_train_batch_size: 4
    learning_rate: LR
    warmup_steps: 1
    logging_steps: 1
    save_steps: null
    checkpoints: {every: 3}
    output: model:demo/lm
  - name: eval-3
    kind: evaluate
    inputs: {model: LABEL, tokenizer: "model:demo/tok", pairs: "dataset:demo/pairs"}
    max_examples: 4
    max_new_tokens: 2
    output: dataset:demo/eval-3
"""


def import_inputs(tmp: Path, manifest: Path, cli) -> None:
    """A tiny tokenizer and a prompt/completion dataset (train and test), imported into the hub."""
    from stages.lib.testing import tiny_tokenizer, write_dataset

    rows = [{"prompt": f"add {i} and {i + 1}", "completion": f" {2 * i + 1} is the sum"} for i in range(24)]
    tiny_tokenizer([r["prompt"] + r["completion"] for r in rows], vocab_size=300).save_pretrained(tmp / "tok")
    write_dataset(tmp / "pairs", rows[:16], rows[16:])
    assert cli("import", tmp / "tok", "model:demo/tok", "--manifest", manifest)[0] == 0
    assert cli("import", tmp / "pairs", "dataset:demo/pairs", "--manifest", manifest)[0] == 0


def manifest_text(lr: str = "0.003", label: str = "lm@step-3") -> str:
    return MANIFEST.replace("LR", lr).replace("LABEL", label)


def test_checkpoints_are_revisions_a_later_stage_reads(tmp_path: Path, write_manifest, cli, monkeypatch):
    from hubflow.project import Project
    from hubflow.refs import RepoRef

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    bad = write_manifest(manifest_text(label="lm@step-4"), name="bad.yaml")
    code, out, err = cli("validate", bad)
    assert code != 0
    assert "stage 'eval-3', input 'model' reads lm@step-4" in err + out
    assert "every 3 steps: step-4 is not one (try step-3 or step-6)" in err + out

    manifest = write_manifest(manifest_text())
    import_inputs(tmp_path, manifest, cli)
    code, out, err = cli("plan", manifest)
    assert code == 0, out + err
    code, out, err = cli("run", manifest, "--quiet")
    assert code == 0, out + err
    assert "lm: step-3 -> model:demo/lm@" in out and "(branch checkpoints, tag step-6-" in out

    project = Project.load(manifest)
    hub, repo = project.hub, RepoRef("model", "demo/lm")
    lock = yaml.safe_load((tmp_path / "hubflow.lock").read_text())["stages"]
    fp12 = lock["lm"]["fingerprint"][:12]
    tags = hub.list_refs(repo).tags
    assert {f"step-3-{fp12}", f"step-6-{fp12}"} <= set(tags)
    assert len(hub.list_commits(repo, "main")) == 1  # main: one commit per completed stage
    history = [c.message for c in hub.list_commits(repo, "checkpoints")]
    assert history[:2] == ["hubflow: stage lm (pretrain) step-6", "hubflow: stage lm (pretrain) step-3"]
    files = {f.path for f in hub.list_files(repo, tags[f"step-3-{fp12}"])}
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= files  # a loadable model

    # the evaluate stage scored exactly that commit, and its lineage names it
    step3 = f"model:demo/lm@{tags[f'step-3-{fp12}']}"
    assert lock["eval-3"]["inputs"]["model"] == step3
    eval_ref = lock["eval-3"]["outputs"]["output"]
    lineage = json.loads(
        hub.read_file(RepoRef("dataset", "demo/eval-3"), "lineage.json", eval_ref.split("@")[1])
    )
    assert lineage["inputs"]["model"]["revision"] == tags[f"step-3-{fp12}"]
    assert lineage["inputs"]["model"]["revision_label"] == "step-3"
    # a checkpoint loads the way the final output does
    from hubflow.errors import HubflowError
    from stages.lib.published import load_stage_model

    model, tok = load_stage_model(manifest, "lm", revision="step-3")
    final, _ = load_stage_model(manifest, "lm")
    assert tok is not None and model.num_parameters() == final.num_parameters()
    assert any((a != b).any() for a, b in zip(model.parameters(), final.parameters(), strict=True))
    with pytest.raises(HubflowError, match="no revision 'step-9'"):
        load_stage_model(manifest, "lm", revision="step-9")

    # the report: a row per checkpoint with the evaluate that read it, the logged metrics plotted by step
    code, out, err = cli("report", manifest, "--out", tmp_path / "rep")
    assert code == 0, err
    report = (tmp_path / "rep" / "report.md").read_text()
    assert "lm-checkpoints.png" in report and (tmp_path / "rep" / "lm-checkpoints.png").is_file()
    row = next(line for line in report.splitlines() if line.startswith("| lm | 3 |"))
    assert "eval-3" in row and tags[f"step-3-{fp12}"][:8] in row
    assert next(line for line in report.splitlines() if line.startswith("| lm | 6 |"))

    # up to date: nothing runs again; a changed producer re-runs its checkpoint's consumers
    code, out, err = cli("run", manifest, "--quiet")
    assert code == 0 and "0 of 2 stage(s) to run" in out, out

    # a result-neutral code change accepted: the checkpoints are revisions of the accepted result too, so
    # eval-3 (reading lm@step-3) stays up to date, on the same commit
    import stages.pretrain

    monkeypatch.setattr(stages.pretrain, "VERSION", stages.pretrain.VERSION + "-refactor")
    code, out, err = cli("accept", manifest, "lm", "--reason", "refactor")
    assert code == 0, out + err
    assert "revisions step-3, step-6 with it" in out
    new12 = yaml.safe_load((tmp_path / "hubflow.lock").read_text())["stages"]["lm"]["fingerprint"][:12]
    tags = hub.list_refs(repo).tags
    assert new12 != fp12 and tags[f"step-3-{new12}"] == tags[f"step-3-{fp12}"]
    after = {sp.name: sp for sp in Project.load(manifest).plan()}
    assert after["eval-3"].action == "skip", after["eval-3"].reasons
    changed = write_manifest(manifest_text(lr="0.002"), name="changed.yaml")
    plan = {sp.name: sp for sp in Project.load(changed).plan()}
    assert plan["lm"].action == "run" and plan["eval-3"].action == "run"
    assert plan["eval-3"].reasons == ["input model will be re-made by stage lm"]
