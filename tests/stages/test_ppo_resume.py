"""kill -9 mid-run, run again: the ppo stage resumes from its last checkpoint (policy and critic weights,
optimizer, KL controller, reward moments, generators, step) and ends with the same weights, rollouts and
history as a run that was never interrupted (bitwise, CPU, one thread)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from ppo_helpers import OUTPUTS

pytest.importorskip("torch")

REPO = Path(__file__).resolve().parents[2]
STEPS, SAVE = 24, 4


def _config() -> dict[str, Any]:
    return {
        "name": "rl",
        "kind": "ppo",
        "reward": "synthetic",
        "inputs": {"policy": "sft", "prompts": "tasks.prompts"},
        "outputs": dict(OUTPUTS),
        "max_steps": STEPS,
        "save_steps": SAVE,
        "per_device_train_batch_size": 8,
        "num_mini_batches": 2,
        "learning_rate": 5e-4,
        "response_length": 8,
        "temperature": 1.0,
        "kl_control": {"type": "adaptive", "init_kl_coef": 0.1, "target": 0.5, "horizon": 100},
        "logging_steps": 4,
    }


def _spec(tmp: Path, inputs: dict[str, Path]) -> Path:
    work = tmp / "work"
    for d in ("policy", "rollouts", "resume", "logs", "work"):
        (tmp / d).mkdir(parents=True, exist_ok=True)
    spec = {
        "stage": "rl",
        "kind": "ppo",
        "config": _config(),
        "fingerprint": "f" * 64,
        "inputs": {k: str(v) for k, v in inputs.items()},
        "input_refs": {},
        "outputs": {"policy": str(tmp / "policy"), "rollouts": str(tmp / "rollouts")},
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
    with open(tmp / "worker.log", "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "hubflow.worker", str(spec)],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"},
        )


def _history(folder: Path) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    for r in rows:  # wall-clock timings differ between runs; everything else must not
        for key in [k for k in r if k.startswith("time/")]:
            del r[key]
    return rows


@pytest.mark.slow
def test_kill_9_then_resume_equals_uninterrupted(tmp_path, policy_factory, synthetic_tasks):
    from safetensors.torch import load_file

    inputs = {"policy": policy_factory(), "prompts": synthetic_tasks["prompts"]}
    straight = tmp_path / "straight"
    proc = _worker(_spec(straight, inputs), straight)

    killed = tmp_path / "killed"
    spec = _spec(killed, inputs)
    victim = _worker(spec, killed)
    ckpts = killed / "resume" / "checkpoints"
    deadline = time.monotonic() + 600
    while not list(ckpts.glob("step-*")) and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    victim.kill()  # SIGKILL: no cleanup, mid-step
    assert victim.wait() == -9, (killed / "worker.log").read_text()[-3000:]
    assert not (killed / "work" / "result.json").exists()
    at_kill = sorted(p.name for p in ckpts.glob("step-*"))
    assert at_kill and at_kill[-1] < f"step-{STEPS:08d}"

    resumed = _worker(spec, killed)
    assert resumed.wait(timeout=900) == 0, (killed / "worker.log").read_text()[-3000:]
    assert proc.wait(timeout=900) == 0, (straight / "worker.log").read_text()[-3000:]
    assert "resumed from step-" in (killed / "worker.log").read_text()
    result = json.loads((killed / "work" / "result.json").read_text())["metrics"]
    assert result["resumed_from_step"] >= SAVE and result["resumed_from_step"] % SAVE == 0

    a, b = (
        load_file(str(straight / "policy" / "model.safetensors")),
        load_file(str(killed / "policy" / "model.safetensors")),
    )
    assert a.keys() == b.keys()
    for name in a:
        assert torch_equal(a[name], b[name]), name  # bitwise
    import pyarrow.parquet as pq

    rollouts = [
        pq.read_table(d / "rollouts" / "data" / "train-00000-of-00001.parquet") for d in (straight, killed)
    ]
    assert rollouts[0].num_rows == STEPS * 16 and rollouts[0].equals(rollouts[1])
    assert _history(straight / "policy") == _history(killed / "policy")  # losses, KL, β: one run's history


def torch_equal(x: Any, y: Any) -> bool:
    import torch

    return bool(torch.equal(x, y))
