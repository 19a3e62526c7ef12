"""``accelerate launch``: several processes (DDP, FSDP, DeepSpeed), on GPUs or CPU (gloo)."""

from __future__ import annotations

import sys
from pathlib import Path

from hubflow.stage import Resources


def has_accelerator() -> bool:
    """Cheap check (no torch import) for an NVIDIA device."""
    return any(Path("/dev").glob("nvidia[0-9]*"))


def accelerate_command(resources: Resources, base_dir: Path) -> tuple[list[str], dict[str, str]]:
    """``python -m accelerate.commands.launch`` with the stage's resources (the worker module
    goes after it), and the environment it needs."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    env: dict[str, str] = {}
    if resources.accelerate_config:
        cmd += ["--config_file", str((base_dir / resources.accelerate_config).resolve())]
    cmd += ["--num_processes", str(resources.num_processes)]
    if resources.cpu or not has_accelerator():
        # `--cpu --num_processes N` starts one process; this gives N gloo processes.
        env["ACCELERATE_USE_CPU"] = "1"
        if resources.num_processes > 1:
            cmd.append("--multi_gpu")
    elif resources.num_processes > 1 and not resources.accelerate_config:
        cmd.append("--multi_gpu")
    if resources.mixed_precision != "auto":
        cmd += ["--mixed_precision", resources.mixed_precision]
    return cmd, env
