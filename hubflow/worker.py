"""The entry point of a stage's own process (started by :func:`hubflow.launch.launch_command`).

The runner writes the spec (config, input folders, staging folders, the runner's identity);
the worker stops itself if that runner dies (:mod:`hubflow.launch.guard`), validates the
config again, calls the kind's ``run`` and writes ``result.json`` (metrics and card parts)
or ``error.json`` (a user error with its fix and exit code; the runner reports it, once).
Under ``accelerate launch`` every process runs this; only rank 0 writes the result.

``sys.path``: the current folder is never on it (see the launch command), and neither is
the manifest's folder: its modules are found after every installed package (a finder at the
end of ``sys.meta_path``), so a ``stages.py`` or ``hubflow.py`` beside a manifest cannot
shadow one. `python` stages import their module under a private package name
(:mod:`hubflow.usercode`).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from hubflow import constants
from hubflow.errors import HubflowError
from hubflow.launch.guard import guard
from hubflow.registry import get_kind
from hubflow.stage import Resources, StageContext, StageResult
from hubflow.trackers import RUNS_DIR, Trackers
from hubflow.trackers import check as check_trackers
from hubflow.usercode import search_manifest_folder_last

USER_ERROR_EXIT = 3
"""Exit status of a worker whose stage raised a HubflowError (bad input, with a fix)."""


def _result(value: Any) -> StageResult:
    if value is None:
        return StageResult()
    if isinstance(value, StageResult):
        return value
    if isinstance(value, dict):
        return StageResult(metrics=dict(value))
    raise TypeError(f"a stage's run() must return StageResult, dict or None, not {type(value).__name__}")


def _is_main_process() -> bool:
    return os.environ.get("RANK", "0") == "0"


def _trackers(spec: dict[str, Any], cfg: Any, ctx: StageContext) -> Trackers | None:
    """A training stage's trackers (its config has ``report_to``; hubflow/trackers.py): checked on every
    process, before the stage trains; created on the main process only."""
    report_to = getattr(cfg, "report_to", None)
    if report_to is None:
        return None
    check_trackers(report_to)
    if not _is_main_process():
        return None
    trackers = Trackers(
        report_to,
        runs_dir=ctx.log_dir / RUNS_DIR,
        local_dir=Path(spec.get("trackers_dir") or ctx.log_dir / constants.TRACKERS_DIR),
        project=ctx.base_dir.name or "hubflow",
        run_name=ctx.stage_name,
        config={"stage": ctx.stage_name, "kind": spec["kind"], "fingerprint": ctx.fingerprint},
        cpu=ctx.resources.cpu,
    )
    for line in trackers.where():  # said once, at the stage's start
        print(f"hubflow: {line}", flush=True)
    return trackers


QUIET_LOGGERS = ("bitsandbytes", "httpx", "datasets", "accelerate.utils.other")


def main(argv: list[str] | None = None) -> int:
    parent = os.getppid()
    args = sys.argv[1:] if argv is None else argv
    spec = json.loads(Path(args[0]).read_text(encoding="utf-8"))
    guard(spec.get("runner"), parent)
    base_dir = Path(spec["base_dir"])
    search_manifest_folder_last(base_dir)  # plain sibling imports work; installed packages win
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stdout,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    for noisy in QUIET_LOGGERS:  # optional-kernel notices, not the user's business
        logging.getLogger(noisy).setLevel(logging.ERROR)
    kind = get_kind(spec["kind"])
    cfg = kind.config_cls.model_validate(spec["config"])
    ctx = StageContext(
        stage_name=spec["stage"],
        fingerprint=spec["fingerprint"],
        inputs={k: Path(v) for k, v in spec["inputs"].items()},
        input_refs=dict(spec["input_refs"]),
        outputs={k: Path(v) for k, v in spec["outputs"].items()},
        resume_dir=Path(spec["resume_dir"]),
        base_dir=base_dir,
        log_dir=Path(spec["log_dir"]),
        resources=Resources.model_validate(spec["resources"]),
        logger=logging.getLogger(f"hubflow.stage.{spec['stage']}"),
    )
    try:
        ctx.trackers = _trackers(spec, cfg, ctx)
        try:
            result = _result(kind.run(ctx, cfg))
        finally:
            if ctx.trackers is not None:
                ctx.trackers.finish()
    except HubflowError as exc:
        if _is_main_process():
            record = {"type": type(exc).__name__, "message": exc.message, "hint": exc.hint}
            Path(spec["error_path"]).write_text(json.dumps({**record, "exit_code": exc.exit_code}), "utf-8")
        if spec.get("runner") is None:  # started by hand: say it here (the runner says it otherwise)
            print(f"error: {exc}", file=sys.stderr)
        return USER_ERROR_EXIT
    if _is_main_process():
        Path(spec["result_path"]).write_text(json.dumps(asdict(result), default=str), encoding="utf-8")
    _leave_process_group()
    return 0


def _leave_process_group() -> None:
    """Destroy torch.distributed's process group before exit: a gloo rank of a multi-node run that
    exits with it alive aborts ("terminate called without an active exception"), and the other
    machine's torchrun then waits out its exit barrier (300 s)."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
