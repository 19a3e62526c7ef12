"""``resources.launcher: ray``: a stage's worker runs as a Ray task on any node of a cluster.

The launcher (``hubflow run``) keeps everything it does for a local stage: it makes the attempt
folder and the spec, and afterwards checks and publishes the outputs through the same path (one
commit per output). Only the process moves:

- the task (:func:`_stage_task`) gets the spec's text and writes it again into a fresh folder on
  its node, with the outputs, ``result.json`` / ``error.json`` and the log folder pointed there;
- inputs: a spec path that exists on the node (a shared filesystem) is used as it is; otherwise
  the node snapshots the input's exact revision from the hub itself (``hub_settings``: a local
  store on a shared filesystem, or the `hf` backend, e.g. ``hubflow serve`` as the endpoint);
- the task runs the worker with :func:`hubflow.launch.process.run_attempt` (its own session,
  stopped whatever happens), streaming each output line to the launcher through a Ray queue;
- it returns the exit status and a tar of the outputs, result/error files and the metrics
  curve, which the launcher unpacks into its attempt folder: publishing never sees a
  difference. Ctrl-C in the launcher cancels the task (its process group is stopped).
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from hubflow import constants
from hubflow.errors import HubflowError
from hubflow.launch.process import Cancelled
from hubflow.stage import Resources

POLL_SECONDS = 0.1
SHIPPED = ("outputs", "result.json", "error.json", "logs/metrics.jsonl", "logs/runs")
"""What travels back from the node, relative to the task's folder (``logs/runs``: the TensorBoard events)."""


class RayUnavailable(HubflowError):
    """Ray is not installed, or no cluster answers at the address."""


def cluster_address(manifest_address: str | None) -> str:
    """The manifest's ``cluster.address``, else RAY_ADDRESS, else ``auto`` (a cluster on this machine)."""
    return manifest_address or constants.env_ray_address() or "auto"


def task_options(resources: Resources) -> dict[str, Any]:
    """Ray's ``.options(...)`` for one stage: CPUs, GPUs and memory from its ``resources``."""
    opts: dict[str, Any] = {
        "num_cpus": resources.cpus,
        "num_gpus": resources.gpus,
        "max_retries": 0,  # a failed stage is reported, never re-run behind the user's back
    }
    if resources.memory_gb:
        opts["memory"] = int(resources.memory_gb * (1 << 30))
    return opts


def connect(address: str) -> Any:
    """``ray.init(address=...)`` once per process; an error naming the address and the fix."""
    try:
        import ray
    except ImportError as exc:
        raise RayUnavailable(
            "a stage has `resources.launcher: ray` but the ray package is not installed",
            hint="pip install 'hubflow[ray]' (or `pip install ray`), or set `launcher: local`",
        ) from exc
    with _CONNECT:  # `--jobs N` launches stages from several threads; ray.init once
        if not ray.is_initialized():
            _init(ray, address)
    return ray


_CONNECT = threading.Lock()


def _init(ray: Any, address: str) -> None:
    try:
        ray.init(address=address, log_to_driver=False, logging_level="ERROR")
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise RayUnavailable(
            f"no Ray cluster answers at {address!r}: {exc}",
            hint="start one (`ray start --head`), or set the manifest's `cluster.address` (or "
            "RAY_ADDRESS) to a running cluster",
        ) from None


def run_on_ray(
    spec_path: Path,
    attempt: Path,
    log: BinaryIO,
    *,
    resources: Resources,
    env: dict[str, str],
    address: str,
    hub_settings: dict[str, Any],
    timeout: float | None,
    on_line: Callable[[bytes], None],
    stop: threading.Event | None = None,
) -> int | None:
    """Run the stage of ``spec_path`` as a Ray task and wait; unpack what it made into ``attempt``.
    Returns the worker's exit status, None when ``timeout`` passed (the task is cancelled). ``stop``
    set (the run was interrupted, from another thread) cancels the task and raises Cancelled."""
    import time

    ray = connect(address)
    from ray.util.queue import Empty, Queue

    lines = Queue(actor_options={"num_cpus": 0})
    task = ray.remote(_stage_task).options(**task_options(resources))
    ref = task.remote(spec_path.read_text(encoding="utf-8"), env, hub_settings, lines)
    deadline = None if timeout is None else time.monotonic() + timeout

    def drain() -> None:
        while True:
            try:
                batch = lines.get_nowait_batch(max(1, lines.qsize()))
            except Empty:
                return
            if not batch:
                return
            for line in batch:
                log.write(line)
                on_line(line)
            log.flush()

    try:
        while True:
            done, _ = ray.wait([ref], timeout=POLL_SECONDS)
            drain()
            if done:
                break
            if stop is not None and stop.is_set():
                raise Cancelled("the run was interrupted")
            if deadline is not None and time.monotonic() > deadline:
                ray.cancel(ref, force=True)
                return None
        try:
            code, archive = ray.get(ref)
        except ray.exceptions.RayTaskError as exc:  # the task itself failed (not the stage): say why
            drain()
            log.write(f"\nhubflow: the Ray task failed on its node: {exc}\n".encode())
            return 1
        drain()
    except BaseException:  # Ctrl-C, SIGTERM, an error here: the remote stage stops too
        ray.cancel(ref, force=False)
        raise
    finally:
        ray.kill(lines.actor)
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r") as tar:
        tar.extractall(attempt, filter="data")
    log_dir = Path(json.loads(spec_path.read_text(encoding="utf-8"))["log_dir"])
    for name in ("metrics.jsonl", "runs"):  # the curve and its TensorBoard events, where a local run has them
        if (attempt / "logs" / name).exists():
            os.replace(attempt / "logs" / name, log_dir / name)
    return code


def _stage_task(spec_text: str, env: dict[str, str], hub_settings: dict[str, Any], lines: Any) -> tuple:
    """Runs on a Ray node: the worker in a fresh folder there; returns (exit status, tar bytes)."""
    from hubflow.launch import launch_command
    from hubflow.launch.process import new_attempt, run_attempt, runner_identity

    spec = json.loads(spec_text)
    base_dir = Path(spec["base_dir"])
    home = Path(tempfile.mkdtemp(prefix=f"hubflow-ray-{spec['stage']}-"))
    folder = new_attempt(home, Path(spec["base_dir"]))
    outputs = {name: folder / "outputs" / name for name in spec["outputs"]}
    for d in outputs.values():
        d.mkdir(parents=True)
    (folder / "logs").mkdir()
    resume = Path(spec["resume_dir"])
    if not resume.is_dir():  # no shared filesystem: a resume folder that lives as long as the task
        resume = folder / "resume"
        resume.mkdir()
    trackers = Path(spec.get("trackers_dir") or folder / "trackers")
    if not trackers.parent.is_dir():  # no shared filesystem: local tracker folders live as long as the task
        trackers = folder / "trackers"
    spec.update(
        trackers_dir=str(trackers),
        inputs=_materialise(spec, hub_settings, folder / "inputs"),
        outputs={k: str(v) for k, v in outputs.items()},
        resume_dir=str(resume),
        log_dir=str(folder / "logs"),
        result_path=str(folder / "result.json"),
        error_path=str(folder / "error.json"),
        runner=runner_identity(),  # this task's process: the worker stops when the task dies
    )
    spec_path = folder / "spec.json"
    spec_path.write_text(json.dumps(spec, indent=2), encoding="utf-8")
    cmd, cmd_env = launch_command(Resources.model_validate(spec["resources"]), spec_path, base_dir)

    def send(line: bytes) -> None:
        lines.put_nowait(line)

    with open(folder / "stage.log", "wb") as log:
        code = run_attempt(
            cmd,
            {**os.environ, **cmd_env, **env, "PYTHONUNBUFFERED": "1"},
            folder,
            log,
            timeout=None,
            on_line=send,
        )
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for rel in SHIPPED:
            if (folder / rel).exists():
                tar.add(folder / rel, arcname=rel)
    from hubflow.files import rmtree

    rmtree(home)
    return code, buf.getvalue()


def _materialise(spec: dict[str, Any], hub_settings: dict[str, Any], dest: Path) -> dict[str, str]:
    """Input name -> a folder on this node: the launcher's copy where this node sees it (a shared
    filesystem), else a snapshot of the exact revision from the hub."""
    from hubflow.refs import parse_ref

    out: dict[str, str] = {}
    hub = None
    for name, path in spec["inputs"].items():
        if Path(path).is_dir():
            out[name] = path
            continue
        if hub is None:
            hub = _open_hub(hub_settings)
        ref = parse_ref(spec["input_refs"][name])
        hub.snapshot(ref.repo, ref.revision or "main", dest / name)
        out[name] = str(dest / name)
    return out


def _open_hub(settings: dict[str, Any]) -> Any:
    from hubflow.hub import open_hf, open_local

    if settings["backend"] == "local":
        root = Path(settings["root"])
        if not root.is_dir():
            raise HubflowError(
                f"the local store {root} is not on this Ray node, and the stage's inputs are not either",
                hint="put the store on a filesystem every node mounts at the same path, or use the `hf` "
                "backend (e.g. `hubflow serve` as the endpoint); see docs/scale-out.md",
            )
        return open_local(root)
    return open_hf(settings.get("endpoint"), private=settings.get("private", True))
