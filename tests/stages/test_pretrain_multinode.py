"""Multi-node training on loopback through the real CLI and runner: a pretrain stage with
``resources: {num_machines: 2, num_processes: 1}`` (two ``accelerate launch`` process groups on
127.0.0.1, gloo DDP) ends with the same weights as one process with the same global batch.

Why the single-process baseline is ``per_device_train_batch_size: 4`` on one process: the pretrain
loop (stages/pretrain/data.py, ``example_positions``) gives optimizer step ``s`` of a world of ``W``
processes the global example positions ``[s·B·W, (s+1)·B·W)`` and process ``r`` the slice
``[s·B·W + r·B, s·B·W + (r+1)·B)``. With B=2, W=2 the two ranks together take exactly the 4
positions that one process with B=4 takes, in the same order; every chunk is a full
``context_length`` row, so the mean of the two ranks' mean losses (DDP averages gradients) is the
mean over the 4 rows, and clipping sees the same averaged gradient. Initial weights come from the
same seed (and DDP broadcasts rank 0's). What differs is only float summation order
(gloo's all-reduce vs one batch's sum). With Adam's default epsilon (1e-8) that noise is magnified
on entries whose gradient is near zero: the update there is about lr·sign(g), and a sign flip from
float noise moves an entry by 2·lr (a clean-clone CI run failed this way at atol 1e-4). So both
stages use ``adam_epsilon: 1e-3``: gradients far below it get an update proportional to them (no
sign amplification), those above it still get Adam's normalised step. The weights then agree to
float noise, and atol 1e-4 is a hundredth of one step's move (lr 0.01); a different data order or
global batch moves weights by ~1e-2.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from test_pretrain import docstrings, train_tokenizer

pytest.importorskip("torch")
pytest.importorskip("accelerate")

STAGE = """
  - name: {name}
    kind: pretrain
    inputs: {{tokenizer: "model:demo/tok", data: corpus}}
    architecture: {{hidden_size: 32, num_layers: 2, num_heads: 2, context_length: 32, vocab_size: 512}}
    max_steps: 4
    per_device_train_batch_size: {batch}
    learning_rate: 0.01
    adam_epsilon: 1.0e-3
    warmup_steps: 1
    logging_steps: 2
    save_steps: null
    eval_batches: 1
    resources: {resources}
    output: model:demo/{name}
"""

MANIFEST = (
    """
stages:
  - name: corpus
    kind: ingest
    source:
      - {paths: ["data/train.jsonl"], split: train}
      - {paths: ["data/test.jsonl"], split: test}
    output: dataset:demo/corpus
"""
    + STAGE.format(name="two-nodes", batch=2, resources="{num_machines: 2, num_processes: 1, threads: 1}")
    + STAGE.format(name="one-node", batch=4, resources="{threads: 1}")
)


@pytest.fixture
def project(tmp_path: Path, write_manifest, cli, monkeypatch):
    monkeypatch.setenv("HUBFLOW_CACHE_DIR", str(tmp_path / "cache"))
    docs = docstrings()
    (tmp_path / "data").mkdir()
    for name, part in (("train", docs[:400]), ("test", docs[-30:])):
        (tmp_path / "data" / f"{name}.jsonl").write_text(
            "".join(json.dumps({"text": d}) + "\n" for d in part)
        )
    manifest = write_manifest(MANIFEST)
    train_tokenizer(tmp_path / "tok", docs)
    code, _, err = cli("import", tmp_path / "tok", "model:demo/tok", "--manifest", manifest)
    assert code == 0, err
    return manifest


def _weights(cli, project: Path, stage: str, dest: Path) -> dict:
    from safetensors.torch import load_file

    lock = yaml.safe_load((project.parent / project.with_suffix(".lock").name).read_text())
    code, _, err = cli(
        "pull", lock["stages"][stage]["outputs"]["output"], "--to", dest, "--manifest", project
    )
    assert code == 0, err
    metrics = json.loads((dest / "metrics.json").read_text())
    return {"metrics": metrics, "tensors": load_file(dest / "model.safetensors")}


@pytest.mark.slow
def test_two_loopback_nodes_match_one_process(project, cli, tmp_path):
    import torch

    code, out, err = cli("run", project, "--jobs", "1")
    assert code == 0, out + err
    assert "two-nodes | [m1] " in out  # the second machine rank's lines reach the console, prefixed
    log = next((project.parent / ".hubflow" / "logs" / "two-nodes").glob("*/stage.log")).read_text()
    assert "--num_machines 2 --machine_rank 1 --main_process_ip 127.0.0.1" in log
    assert "2 machine ranks on this host" in log

    two = _weights(cli, project, "two-nodes", tmp_path / "two")
    one = _weights(cli, project, "one-node", tmp_path / "one")
    assert two["metrics"]["world_size"] == 2 and one["metrics"]["world_size"] == 1
    assert two["metrics"]["tokens"] == one["metrics"]["tokens"] == 4 * 4 * 32
    assert two["metrics"]["tokens_per_process"] == [4 * 2 * 32, 4 * 2 * 32]  # both machines trained
    assert two["tensors"].keys() == one["tensors"].keys()
    curve = [json.loads(x) for x in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines() if x]
    losses = [r["loss"] for r in curve if r["split"] == "train"]
    assert len(losses) == 2 and losses[1] < losses[0]  # it trained: not two copies of one initial state
    for key, value in two["tensors"].items():
        assert torch.allclose(value, one["tensors"][key], rtol=0, atol=1e-4), key
    assert two["metrics"]["train_loss"] == pytest.approx(one["metrics"]["train_loss"], rel=1e-5)
    # no attempt or machine rank left behind
    assert not list((project.parent / ".hubflow" / "work").glob("two-nodes-*/a-*"))
