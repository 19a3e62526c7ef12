"""`hubflow report`: a Markdown report with PNG plots from the lock and the published metrics only."""

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
    families: [copy, max]
    num_examples: 60
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
    warmup_steps: 1
    logging_steps: 1
    save_steps: null
    output: model:demo/lm
  - name: eval-lm
    kind: evaluate
    inputs: {model: lm, tokenizer: tok, tasks: tasks.instructions}
    max_examples: 6
    max_new_tokens: 4
    output: dataset:demo/eval-lm
"""


def test_report_from_the_lock_and_published_metrics(tmp_path: Path, write_manifest, cli, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    manifest = write_manifest(MANIFEST)
    code, out, err = cli("report", manifest)
    assert code == 2 and "nothing to report" in err and "hubflow run" in err  # before any run
    code, out, err = cli("run", manifest, "--quiet")
    assert code == 0, out + err
    code, out, err = cli("report", manifest, "--out", tmp_path / "rep")
    assert code == 0, err
    report = (tmp_path / "rep" / "report.md").read_text()
    pngs = sorted(p.name for p in (tmp_path / "rep").glob("*.png"))
    assert {"dag.png", "lm-curves.png"} <= set(pngs)
    for name in pngs:
        assert (tmp_path / "rep" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # valid PNGs
        assert f"({name})" in report  # every plot is shown
    lock = yaml.safe_load((tmp_path / "hubflow.lock").read_text())
    for stage in ("tasks", "tok", "lm", "eval-lm"):
        assert f"| {stage} |" in report and lock["stages"][stage]["seconds"] > 0
    # the learning table holds the published numbers
    pulled = tmp_path / "eval"
    assert cli("pull", "dataset:demo/eval-lm", "--to", pulled, "--manifest", manifest)[0] == 0
    metrics = json.loads((pulled / "metrics.json").read_text())
    row = next(line for line in report.splitlines() if line.startswith("| eval-lm | demo/lm |"))
    assert f"{metrics['exact_match']:.4g}" in row and f"{metrics['loss']:.4g}" in row
