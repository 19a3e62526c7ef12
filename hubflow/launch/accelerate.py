"""``accelerate launch``: several processes (DDP, FSDP, DeepSpeed), on GPUs or CPU (gloo)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

from hubflow.stage import Resources

if TYPE_CHECKING:
    from hubflow.launch.machines import Rank


def has_accelerator() -> bool:
    """Cheap check (no torch import) for an NVIDIA device."""
    return any(Path("/dev").glob("nvidia[0-9]*"))


def accelerate_command(
    resources: Resources, base_dir: Path, rank: Rank | None = None
) -> tuple[list[str], dict[str, str]]:
    """``python -m accelerate.commands.launch`` with the stage's resources (the worker module
    goes after it), and the environment it needs. ``rank``: one machine of a multi-node run
    (``--num_machines N --machine_rank i --main_process_ip --main_process_port``);
    ``resources.num_processes`` is per machine, accelerate's ``--num_processes`` the total."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    env: dict[str, str] = {}
    if resources.accelerate_config:
        cmd += ["--config_file", str((base_dir / resources.accelerate_config).resolve())]
    machines = rank.num_machines if rank is not None else 1
    total = resources.num_processes * machines
    cmd += ["--num_processes", str(total)]
    if rank is not None:
        cmd += ["--num_machines", str(rank.num_machines), "--machine_rank", str(rank.machine_rank)]
        cmd += ["--main_process_ip", rank.main_process_ip, "--main_process_port", str(rank.main_process_port)]
    elif total > 1 and not resources.accelerate_config:
        # one machine: its own port (0 = a free one, picked by accelerate), never the shared default 29500
        # that two DDP stages side by side (`hubflow run --jobs 2`) would both try to bind
        cmd += ["--main_process_port", str(resources.main_process_port or 0)]
    if resources.cpu or not has_accelerator():
        # `--cpu --num_processes N` starts one process; this gives N gloo processes.
        env["ACCELERATE_USE_CPU"] = "1"
        if total > 1:
            cmd.append("--multi_gpu")
    elif total > 1 and not resources.accelerate_config:
        cmd.append("--multi_gpu")
    if resources.mixed_precision != "auto":
        cmd += ["--mixed_precision", resources.mixed_precision]
    return cmd, env
