"""``report_to`` and the TensorBoard events of every training stage (hubflow/trackers.py): the logged
steps reach the event files and MLflow's local folder; each tracker that cannot log here fails before
training with its fix."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from hubflow import trackers
from hubflow.stage import StageContext
from hubflow.trackers import RUNS_DIR, Trackers, TrackerUnavailable, read_scalars
from stages import pretrain

PRETRAIN = {
    "name": "p",
    "kind": "pretrain",
    "inputs": {"tokenizer": "model:a/t", "data": "dataset:a/d"},
    "max_steps": 4,
    "output": "model:a/p",
}
STEPS = [
    {"step": 1, "split": "train", "loss": 2.5, "learning_rate": 0.001, "flag": True},
    {"step": 2, "split": "train", "loss": 2.25, "learning_rate": 0.002},
    {"step": 2, "split": "eval", "eval_loss": 2.75},
    {"step": 3, "split": "train", "loss": 2.0, "learning_rate": 0.003},
]


@pytest.fixture(autouse=True)
def _no_accelerate_state_left():
    """Trackers start accelerate's PartialState when no stage did: leave none to the next test."""
    from accelerate.state import PartialState

    fresh = not PartialState._shared_state
    yield
    if fresh:
        PartialState._reset_state()


def _ctx(tmp_path: Path, report_to: list[str]) -> StageContext:
    (tmp_path / "logs").mkdir()
    ctx = StageContext(
        stage_name="train",
        fingerprint="f" * 64,
        inputs={},
        outputs={},
        resume_dir=tmp_path / "resume",
        base_dir=tmp_path,
        log_dir=tmp_path / "logs",
    )
    ctx.trackers = Trackers(
        report_to,
        runs_dir=ctx.log_dir / RUNS_DIR,
        local_dir=tmp_path / "trackers",
        project="demo",
        run_name="train",
        config={"stage": "train"},
        cpu=True,
    )
    return ctx


def _curve(path: Path) -> dict[str, list[tuple[int, float]]]:
    """metrics.jsonl's numeric series of the records with a step: tag -> [(step, value)]."""
    out: dict[str, list[tuple[int, float]]] = {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        step = record.pop("step", None)
        for key, value in record.items():
            if step is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
                out.setdefault(key, []).append((step, value))
    return out


def test_logged_steps_become_tensorboard_scalars(tmp_path):
    ctx = _ctx(tmp_path, [])
    ctx.log_metrics(STEPS[0]["step"], total=3, **{k: v for k, v in STEPS[0].items() if k != "step"})
    ctx.replay_metrics(STEPS[1:3])  # a resumed run's kept records: in the file and the events alike
    ctx.log_metrics(**STEPS[3])
    ctx.log_metrics(round=1, pairs=8)  # no step: a summary, not a point of the curve
    ctx.trackers.finish()
    (run,) = (ctx.log_dir / RUNS_DIR).iterdir()
    assert list(run.glob("events.out.tfevents.*"))
    scalars = read_scalars(run)
    curve = _curve(ctx.log_dir / "metrics.jsonl")
    assert set(scalars) == set(curve) == {"loss", "learning_rate", "eval_loss"}  # strings and flags left out
    for tag, points in curve.items():
        assert [s for s, _ in scalars[tag]] == [s for s, _ in points], tag
        assert [v for _, v in scalars[tag]] == pytest.approx([v for _, v in points], rel=1e-6), tag
    assert "round" not in scalars and json.loads(
        (ctx.log_dir / "metrics.jsonl").read_text().splitlines()[-1]
    ) == {
        "round": 1,
        "pairs": 8,
    }


def test_mlflow_logs_to_its_local_folder(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # what hubflow sets; restored after the test
    ctx = _ctx(tmp_path, ["mlflow"])
    (line,) = ctx.trackers.where()
    uri = (tmp_path / "trackers" / "mlflow").resolve().as_uri()
    assert f"report_to mlflow: experiment 'demo' at {uri}" in line
    try:
        for record in STEPS:
            ctx.log_metrics(**record)
        ctx.trackers.finish()
    finally:
        mlflow.set_tracking_uri(None)
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("demo").experiment_id])
    assert run.info.run_name == "train" and run.data.params == {"stage": "train"}
    history = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "loss")]
    assert history == [(1, 2.5), (2, 2.25), (3, 2.0)]


def test_report_to_names_only_known_trackers_and_stays_out_of_the_fingerprint():
    with pytest.raises(ValidationError) as err:
        pretrain.Config(**PRETRAIN, report_to=["tensorbord"])
    assert "'tensorboard', 'trackio', 'mlflow' or 'wandb'" in str(err.value)
    with pytest.raises(TrackerUnavailable) as raised:
        trackers.check(["tensorbord"])
    assert "report_to lists 'tensorbord', which is not a tracker" in str(raised.value)
    assert raised.value.hint == "report_to takes tensorboard, trackio, mlflow, wandb"
    every = pretrain.Config(**PRETRAIN, report_to=["tensorboard", "trackio", "mlflow", "wandb"])
    assert every.settings() == pretrain.Config(**PRETRAIN).settings()


def _no_wandb_login(monkeypatch, tmp_path: Path) -> None:
    for name in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))


def test_wandb_needs_a_configuration(tmp_path, monkeypatch):
    _no_wandb_login(monkeypatch, tmp_path)
    with pytest.raises(TrackerUnavailable) as err:
        trackers.check(["wandb"])
    assert "report_to lists 'wandb' but W&B is not configured for this user" in err.value.message
    assert "wandb login" in err.value.hint and "WANDB_MODE=offline" in err.value.hint
    (tmp_path / "netrc").write_text("machine api.wandb.ai\n  login user\n  password secret\n")
    if importlib.util.find_spec("wandb") is None:  # configured now: the missing package is what is said
        with pytest.raises(TrackerUnavailable) as err:
            trackers.check(["wandb"])
        assert "needs the wandb package" in err.value.message and "pip install wandb" in err.value.hint
    else:
        trackers.check(["wandb"])


def test_a_missing_tracker_package_is_named():
    if importlib.util.find_spec("trackio"):
        pytest.skip("trackio is installed here")
    with pytest.raises(TrackerUnavailable) as err:
        trackers.check(["tensorboard", "trackio"])
    assert "report_to 'trackio' needs the trackio package, which is not installed" in err.value.message
    assert err.value.hint.startswith("pip install trackio")


def test_the_worker_fails_before_the_stage_runs(tmp_path, monkeypatch):
    """The check is the worker's, before ``run``: no input exists, so a stage that started would fail
    differently; the user error (exit 3) is recorded for the runner with its fix."""
    _no_wandb_login(monkeypatch, tmp_path)
    spec = {
        "stage": "p",
        "kind": "pretrain",
        "config": {**PRETRAIN, "report_to": ["wandb"]},
        "fingerprint": "f" * 64,
        "inputs": {},
        "input_refs": {},
        "outputs": {"output": str(tmp_path / "out")},
        "resume_dir": str(tmp_path / "resume"),
        "base_dir": str(tmp_path),
        "log_dir": str(tmp_path / "logs"),
        "resources": {},
        "result_path": str(tmp_path / "result.json"),
        "error_path": str(tmp_path / "error.json"),
        "runner": None,
    }
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    proc = subprocess.run(
        [sys.executable, "-m", "hubflow.worker", str(tmp_path / "spec.json")],
        capture_output=True,
        text=True,
        env={**os.environ, "NETRC": str(tmp_path / "netrc")},
        cwd=tmp_path,
    )
    assert proc.returncode == 3, proc.stdout + proc.stderr
    error = json.loads((tmp_path / "error.json").read_text())
    assert error["type"] == "TrackerUnavailable" and "W&B is not configured" in error["message"]
    assert not (tmp_path / "result.json").exists() and not (tmp_path / "logs" / RUNS_DIR).exists()
