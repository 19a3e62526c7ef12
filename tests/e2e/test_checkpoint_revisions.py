"""Checkpoints as revisions through `hubflow run`: a pretrain stage with `checkpoints: {every: 3}` publishes
step-3 and step-6 on its repo's `checkpoints` branch while `main` gets one commit; an `evaluate` stage reading
`lm@step-3` scores exactly that commit (its lineage says so), is re-run when the producer changes, and a
label the producer cannot publish fails when the manifest loads. `hubflow report` plots the held-out
scores across checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

pytest.importorskip("torch")

MANIFEST = """
stages:
  - name: tasks
    kind: synthetic
    families: [copy]
    num_examples: 40
    outputs: {instructions: dataset:demo/tasks}
  - name: tok
    kind: tokenizer
    inputs: {data: tasks.instructions}
    text_column: output
    vocab_size: 300
    output: model:demo/tok
  - name: lm
    kind: pretrain
    inputs: {tokenizer: tok, data: tasks.instructions}
    text_column: output
    architecture: {hidden_size: 32, num_layers: 1, num_heads: 2, context_length: 32}
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
    inputs: {model: LABEL, tokenizer: tok, tasks: tasks.instructions}
    max_examples: 4
    max_new_tokens: 2
    output: dataset:demo/eval-3
  - name: eval-6
    kind: evaluate
    inputs: {model: "model:demo/lm@step-6", tokenizer: tok, tasks: tasks.instructions}
    max_examples: 4
    max_new_tokens: 2
    output: dataset:demo/eval-6
"""


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

    # the evaluate stages scored exactly those commits, and their lineage names them
    step3 = f"model:demo/lm@{tags[f'step-3-{fp12}']}"
    assert lock["eval-3"]["inputs"]["model"] == step3
    assert lock["eval-6"]["inputs"]["model"] == f"model:demo/lm@{tags[f'step-6-{fp12}']}"
    eval_ref = lock["eval-3"]["outputs"]["output"]
    lineage = json.loads(
        hub.read_file(RepoRef("dataset", "demo/eval-3"), "lineage.json", eval_ref.split("@")[1])
    )
    assert lineage["inputs"]["model"]["revision"] == tags[f"step-3-{fp12}"]
    assert lineage["inputs"]["model"]["revision_label"] == "step-3"
    # a checkpoint loads the way the final output does
    from transformers import AutoModelForCausalLM

    from stages.lib.published import _pull

    folder = _pull(project, step3)
    assert AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True).num_parameters() > 0

    # the report plots held-out scores across the checkpoints the evaluate stages read
    code, out, err = cli("report", manifest, "--out", tmp_path / "rep")
    assert code == 0, err
    report = (tmp_path / "rep" / "report.md").read_text()
    assert "lm-checkpoints.png" in report and (tmp_path / "rep" / "lm-checkpoints.png").is_file()
    row = next(line for line in report.splitlines() if line.startswith("| lm | 3 |"))
    assert "eval-3" in row

    # up to date: nothing runs again; a changed producer re-runs its checkpoint's consumers
    code, out, err = cli("run", manifest, "--quiet")
    assert code == 0 and "0 of 5 stage(s) to run" in out, out
    changed = write_manifest(manifest_text(lr="0.002"))
    code, out, err = cli("run", changed, "--quiet")
    assert code == 0, out + err
    assert "3 of 5 stage(s) to run" in out and "eval-3 (evaluate): running" in out
    lock2 = yaml.safe_load((tmp_path / "hubflow.lock").read_text())["stages"]
    fp12b = lock2["lm"]["fingerprint"][:12]
    assert fp12b != fp12
    assert (
        lock2["eval-3"]["inputs"]["model"] == f"model:demo/lm@{hub.list_refs(repo).tags[f'step-3-{fp12b}']}"
    )
    assert len(hub.list_commits(repo, "main")) == 2
