"""kill -9 mid-run, run again: the run resumes from its last checkpoint and ends with the
same weights as a run that was never interrupted (bitwise, on CPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from test_pretrain import TINY, corpus, records  # noqa: F401  (corpus is a fixture)

from hubflow.trackers import RUNS_DIR, read_scalars, series

pytest.importorskip("torch")

REPO = Path(__file__).resolve().parents[2]

CONFIG: dict[str, Any] = {
    "name": "pt",
    "kind": "pretrain",
    "inputs": {"tokenizer": "tok", "data": "corpus"},
    "output": "model:demo/pt",
    "architecture": {**TINY, "hidden_size": 96, "num_layers": 3},
    "max_steps": 36,
    "per_device_train_batch_size": 8,
    "learning_rate": 3e-3,
    "warmup_steps": 4,
    "logging_steps": 2,
    "save_steps": 6,
    "eval_steps": 12,
}


def _spec(tmp: Path, data: dict[str, Path]) -> Path:
    work = tmp / "work"
    for d in ("out", "resume", "logs"):
        (tmp / d).mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    spec = {
        "stage": "pt",
        "kind": "pretrain",
        "config": CONFIG,
        "fingerprint": "e" * 64,
        "inputs": {"tokenizer": str(data["tokenizer"]), "data": str(data["data"])},
        "input_refs": {},
        "outputs": {"output": str(tmp / "out")},
        "resume_dir": str(tmp / "resume"),
        "base_dir": str(tmp),
        "log_dir": str(tmp / "logs"),
        "resources": {},
        "result_path": str(work / "result.json"),
        "error_path": str(work / "error.json"),
    }
    path = work / "spec.json"
    path.write_text(json.dumps(spec))
    return path


def _worker(spec: Path, tmp: Path) -> subprocess.Popen[bytes]:
    """The stage's own process, as the runner starts it."""
    with open(tmp / "worker.log", "ab") as log:  # the child keeps its own descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "hubflow.worker", str(spec)],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "HUBFLOW_CACHE_DIR": str(tmp / "cache"), "OMP_NUM_THREADS": "1"},
        )


def _weights(folder: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


@pytest.mark.slow
def test_kill_9_then_resume_equals_uninterrupted(corpus, tmp_path):  # noqa: F811
    straight = tmp_path / "straight"
    proc = _worker(_spec(straight, corpus), straight)

    killed = tmp_path / "killed"
    spec = _spec(killed, corpus)
    victim = _worker(spec, killed)
    ckpts = killed / "resume" / "checkpoints"
    deadline = time.monotonic() + 600
    while not list(ckpts.glob("step-*")) and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    victim.kill()  # SIGKILL: no cleanup, no atexit, mid-step
    assert victim.wait() == -9, (killed / "worker.log").read_text()[-2000:]
    assert not (killed / "work" / "result.json").exists()
    at_kill = sorted(p.name for p in ckpts.glob("step-*"))
    assert at_kill and at_kill[-1] < "step-00000036"

    resumed = _worker(spec, killed)
    assert resumed.wait(timeout=900) == 0, (killed / "worker.log").read_text()[-3000:]
    assert proc.wait(timeout=900) == 0, (straight / "worker.log").read_text()[-3000:]

    log = (killed / "worker.log").read_text()
    assert "resumed from step-" in log
    result = json.loads((killed / "work" / "result.json").read_text())["metrics"]
    assert result["resumed_from_step"] >= 6 and result["resumed_from_step"] % 6 == 0

    a, b = _weights(straight / "out"), _weights(killed / "out")
    assert a.keys() == b.keys()
    for name in a:
        assert (a[name] == b[name]).all(), name  # bitwise

    # the published history is one run's: each step logged once, same losses as the straight run
    hist_a, hist_b = records(straight / "out" / "metrics.jsonl"), records(killed / "out" / "metrics.jsonl")
    steps_b = [(r["split"], r["step"]) for r in hist_b]
    assert steps_b == [(r["split"], r["step"]) for r in hist_a] and len(set(steps_b)) == len(steps_b)
    for ra, rb in zip(hist_a, hist_b, strict=True):
        key = "loss" if ra["split"] == "train" else "eval_loss"
        assert ra[key] == rb[key], (ra, rb)

    # the resumed attempt's TensorBoard run (the one the runner publishes as runs/) is the whole run too
    first, resumed_run = sorted((killed / "logs" / RUNS_DIR).iterdir())
    scalars = read_scalars(resumed_run)
    assert set(scalars) == set(series(hist_b)) and [s for s, _ in scalars["loss"]] == [
        r["step"] for r in hist_b if r["split"] == "train"
    ]
    for tag, points in series(hist_b).items():
        assert [s for s, _ in scalars[tag]] == [s for s, _ in points], tag
        assert [v for _, v in scalars[tag]] == pytest.approx([v for _, v in points], rel=1e-6), tag
    assert len(read_scalars(first)["loss"]) < len(scalars["loss"])
