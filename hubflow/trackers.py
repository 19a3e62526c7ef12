"""``report_to``: a training stage's logged steps, also as TensorBoard events and in the trackers it names.

One mechanism for every kind. A stage logs each training step with ``ctx.log_metrics(step, ...)`` (its
``metrics.jsonl``); on the main process the worker gives the stage's context a :class:`Trackers`, and
``log_metrics`` forwards each step's numbers to it. The trackers are accelerate's own integrations
(``accelerate.tracking``), created once per stage process and started at the first logged step:

- TensorBoard, always: event files under ``log_dir/runs/<run>/``, which the runner publishes as each
  output's ``runs/`` folder, where Hub model repos keep them (the Hub shows a "Training metrics" tab);
- trackio, MLflow, W&B when ``report_to`` lists them, offline first: trackio and MLflow write to
  ``.hubflow/trackers/`` beside the manifest unless the user pointed them elsewhere (``TRACKIO_DIR``,
  ``MLFLOW_TRACKING_URI``); W&B only when the user configured it (``wandb login``, ``WANDB_API_KEY`` or
  ``WANDB_MODE``).

:func:`check` runs in the worker before the stage's ``run``: a tracker whose package is missing, or W&B
without a configuration, fails the stage before any training with the fix. A TRL / transformers Trainer
inside a stage keeps ``report_to="none"``: its logs reach these trackers through ``ctx.log_metrics``.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hubflow import constants
from hubflow.errors import HubflowError

TRACKER_NAMES = ("tensorboard", "trackio", "mlflow", "wandb")
"""What ``report_to`` may list."""
RUNS_DIR = "runs"
"""The TensorBoard folder of a published output (and of a stage's log folder)."""
PACKAGES: dict[str, tuple[str, str]] = {
    "tensorboard": ("tensorboard", "tensorboard"),
    "trackio": ("trackio", "trackio"),
    "mlflow": ("mlflow", "mlflow-skinny"),
    "wandb": ("wandb", "wandb"),
}
"""Tracker -> (the module it imports, the package to pip install)."""


class TrackerUnavailable(HubflowError):
    """A tracker ``report_to`` names cannot log on this machine (its package is missing, W&B is not
    configured). Raised before the stage trains."""


def check(report_to: Sequence[str]) -> None:
    """Fail before training when a tracker of ``report_to`` (or TensorBoard, always on) cannot log here."""
    for name in dict.fromkeys(["tensorboard", *report_to]):
        if name not in PACKAGES:
            raise TrackerUnavailable(
                f"report_to lists {name!r}, which is not a tracker",
                hint=f"report_to takes {', '.join(TRACKER_NAMES)}",
            )
        if name == "wandb" and constants.wandb_configuration() is None:
            raise TrackerUnavailable(
                "report_to lists 'wandb' but W&B is not configured for this user",
                hint="run `wandb login` (or set WANDB_API_KEY); or set WANDB_MODE=offline to keep the runs in "
                f".hubflow/{constants.TRACKERS_DIR}/wandb; or remove 'wandb' from report_to",
            )
        module, package = PACKAGES[name]
        if importlib.util.find_spec(module) is None:
            listed = "TensorBoard events (always written)" if name == "tensorboard" else f"report_to {name!r}"
            raise TrackerUnavailable(
                f"{listed} needs the {package} package, which is not installed",
                hint=f"pip install {package}"
                + (
                    ""
                    if name == "tensorboard"
                    else f" (or hubflow[trackers]), or remove {name!r} from report_to"
                ),
            )


def tensorboard_run_name() -> str:
    """A run folder under ``runs/``, unique per stage process: ``<UTC time>_<host>_<pid>`` (the Hub's
    model repos hold ``runs/<date>_<host>`` folders, as transformers names them)."""
    return f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}_{socket.gethostname()}_{os.getpid()}"


class Trackers:
    """The trackers of one stage process (main process only): TensorBoard plus those of ``report_to``."""

    def __init__(
        self,
        report_to: Sequence[str],
        *,
        runs_dir: Path,
        local_dir: Path,
        project: str,
        run_name: str,
        config: dict[str, Any] | None = None,
        cpu: bool = False,
    ) -> None:
        self.names = list(dict.fromkeys(["tensorboard", *report_to]))
        self.runs_dir = runs_dir
        self.local_dir = local_dir
        self.project = project
        self.run_name = run_name
        self.config = dict(config or {})
        self.cpu = cpu
        self.tensorboard_run = tensorboard_run_name()
        self._live: list[Any] | None = None

    def where(self) -> list[str]:
        """One line per tracker besides TensorBoard: where its runs go and how to look at them."""
        lines = []
        if "trackio" in self.names:
            folder = os.environ.get("TRACKIO_DIR") or self.local_dir / "trackio"
            lines.append(f"report_to trackio: project {self.project!r} in {folder} (`trackio show`)")
        if "mlflow" in self.names:
            uri = self._mlflow_uri()
            lines.append(
                f"report_to mlflow: experiment {self.project!r} at {uri} (`mlflow ui --backend-store-uri {uri}`)"
            )
        if "wandb" in self.names:
            lines.append(
                f"report_to wandb: project {self.project!r} ({constants.wandb_configuration()}; "
                f"local files in {self.local_dir / 'wandb'})"
            )
        return lines

    def _mlflow_uri(self) -> str:
        return constants.env_mlflow_tracking_uri() or (self.local_dir / "mlflow").resolve().as_uri()

    def _start(self) -> list[Any]:
        from accelerate import PartialState
        from accelerate.tracking import MLflowTracker, TensorBoardTracker, TrackioTracker, WandBTracker

        if not PartialState._shared_state:  # accelerate's trackers log through its state; a kind training
            PartialState(cpu=self.cpu)  # without accelerate (or logging before it starts) gets one here

        live: list[Any] = [TensorBoardTracker(self.tensorboard_run, self.runs_dir)]
        if "trackio" in self.names:
            constants.use_local_trackio_dir(self.local_dir / "trackio")
            live.append(TrackioTracker(self.project, name=self.run_name))
        if "mlflow" in self.names:
            import mlflow

            if constants.env_mlflow_tracking_uri() is None:
                constants.allow_mlflow_file_store()
                (self.local_dir / "mlflow").mkdir(parents=True, exist_ok=True)
                mlflow.set_tracking_uri(self._mlflow_uri())
            live.append(MLflowTracker(experiment_name=self.project, run_name=self.run_name))
        if "wandb" in self.names:
            (self.local_dir / "wandb").mkdir(parents=True, exist_ok=True)
            live.append(WandBTracker(self.project, name=self.run_name, dir=str(self.local_dir / "wandb")))
        for tracker in live:
            tracker.main_process_only = False  # this object exists on the main process only
            tracker.start()
            if self.config and tracker.name != "tensorboard":  # add_hparams would add a second TB run
                tracker.store_init_configuration(self.config)
        return live

    def log(self, values: dict[str, Any], step: int) -> None:
        """Send one step's numbers (strings and flags are left out) to every tracker."""
        numbers = _numbers(values)
        if not numbers:
            return
        if self._live is None:
            self._live = self._start()
        for tracker in self._live:
            tracker.log(numbers, step=step)

    def finish(self) -> None:
        """Close every started tracker (flushes the event files)."""
        for tracker in self._live or []:
            tracker.finish()
        self._live = []


def read_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """The scalars of the TensorBoard event files in ``folder`` (a run folder under ``runs/``): tag ->
    [(step, value)] in the order written, read by TensorBoard's own loader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})  # 0: keep every point
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _numbers(values: dict[str, Any]) -> dict[str, int | float]:
    return {k: v for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def series(records: Sequence[dict[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    """What the trackers receive of ``metrics.jsonl`` records: the numbers of each record with a step,
    as tag -> [(step, value)] (the shape of :func:`read_scalars`)."""
    out: dict[str, list[tuple[int, float]]] = {}
    for record in records:
        step = record.get("step")
        if isinstance(step, int):
            for key, value in _numbers({k: v for k, v in record.items() if k != "step"}).items():
                out.setdefault(key, []).append((step, value))
    return out
