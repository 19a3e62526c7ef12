"""A pretrain stage through the real CLI and runner: `hubflow plan` shows N, D and 6ND
without importing torch, and a 2-process DDP run (gloo on CPU via accelerate launch)
publishes a model that loads from a pulled snapshot with AutoModelForCausalLM."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_pretrain import docstrings, records, train_tokenizer

from hubflow.trackers import read_scalars

pytest.importorskip("torch")
pytest.importorskip("accelerate")

MANIFEST = """
stages:
  - name: corpus
    kind: ingest
    source:
      - {paths: ["data/train.jsonl"], split: train}
      - {paths: ["data/test.jsonl"], split: test}
    output: dataset:demo/corpus
  - name: lm
    kind: pretrain
    inputs: {tokenizer: "model:demo/tok", data: corpus}
    architecture: {hidden_size: 64, num_layers: 2, num_heads: 2, context_length: 64, vocab_size: 512}
    max_steps: 12
    per_device_train_batch_size: 4
    learning_rate: 0.005
    warmup_steps: 2
    logging_steps: 3
    save_steps: 6
    eval_steps: 6
    resources: {num_processes: 2}
    output: model:demo/lm
"""


@pytest.fixture
def project(tmp_path: Path, write_manifest, cli, monkeypatch):
    monkeypatch.setenv("HUBFLOW_CACHE_DIR", str(tmp_path / "cache"))
    docs = docstrings()
    (tmp_path / "data").mkdir()
    for name, part in (("train", docs[:-60]), ("test", docs[-60:])):
        (tmp_path / "data" / f"{name}.jsonl").write_text(
            "".join(json.dumps({"text": d}) + "\n" for d in part)
        )
    manifest = write_manifest(MANIFEST)
    train_tokenizer(tmp_path / "tok", docs)
    code, out, err = cli("import", tmp_path / "tok", "model:demo/tok", "--manifest", manifest)
    assert code == 0, err
    return manifest


PLAN_PROBE = """
import sys
from hubflow.cli import main
code = main(["plan", sys.argv[1]])
print("HEAVY", [m for m in ("torch", "transformers", "accelerate") if m in sys.modules])
sys.exit(code)
"""


@pytest.mark.slow
def test_plan_then_two_process_ddp_run(project, cli, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", PLAN_PROBE, str(project)], capture_output=True, text=True, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout
    assert "N = 140k parameters (vocab 512)" in proc.stdout  # 32768 embedding + 2 blocks of 53376 + norm
    assert "D = 6.14k tokens (12 steps × 512 tokens/step)" in proc.stdout  # 4 seqs × 2 processes × 64
    assert "C = 6·N·D = 5.15e+09 FLOPs" in proc.stdout
    assert "time: unknown until a run measures tokens/s" in proc.stdout

    code, out, err = cli("run", project)
    assert code == 0, out + err
    assert "training llama: 139584 parameters, 12 steps × 512 tokens, 2 process(es)" in out

    lock = yaml.safe_load((project.parent / "hubflow.lock").read_text())
    ref = lock["stages"]["lm"]["outputs"]["output"]
    code, _, err = cli("pull", ref, "--to", tmp_path / "pulled", "--manifest", project)
    assert code == 0, err
    pulled = tmp_path / "pulled"
    metrics = json.loads((pulled / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    assert metrics["tokens_per_process"] == [12 * 4 * 64, 12 * 4 * 64]  # both processes trained
    assert metrics["tokens"] == 12 * 512 and math.isfinite(metrics["eval_loss"])
    history = records(pulled / "metrics.jsonl")
    assert {r["world_size"] for r in history if r["split"] == "train"} == {2}
    assert [r["step"] for r in history if r["split"] == "eval"] == [6, 12]
    (run,) = (pulled / "runs").iterdir()  # TensorBoard events from the main process only: one run
    assert [step for step, _ in read_scalars(run)["loss"]] == [
        r["step"] for r in history if r["split"] == "train"
    ]

    card = (pulled / "README.md").read_text()
    assert "![Training loss](loss_curve.png)" in card and "## Pretraining" in card
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["pipeline_tag"] == "text-generation" and meta["datasets"] == ["demo/corpus"]
    assert "base_model" not in meta  # trained from scratch: the tokenizer repo is not a base model
    files = {p.name for p in pulled.iterdir()}
    assert "model.safetensors" in files and not [f for f in files if f.endswith((".bin", ".pt", ".pkl"))]

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(pulled), use_safetensors=True, local_files_only=True)
    assert sum(p.numel() for p in model.parameters()) == metrics["parameters"] == 139_584

    # the resume folder is gone once published; the plan now has a measured throughput
    assert not list((project.parent / ".hubflow" / "resume").glob("lm-*"))
    code, out, _ = cli("plan", project)
    assert "skip  lm" in out and "tokens/s (measured by the last run of this shape here)" in out

    # a bad input under accelerate launch still reaches the user with its message and fix
    project.write_text(project.read_text().replace("vocab_size: 512", "vocab_size: 500"))
    code, out, err = cli("run", project, "--quiet")
    assert code == 2
    assert "architecture.vocab_size is 500 but the tokenizer input has 512 tokens" in err
    assert "fix: set architecture.vocab_size: 512" in err
