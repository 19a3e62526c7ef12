"""How a stage's process starts: the command (plain Python, or ``accelerate launch``), and
the process itself (:mod:`hubflow.launch.process`; :mod:`hubflow.launch.guard` inside it)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

from hubflow.launch.accelerate import accelerate_command, has_accelerator
from hubflow.stage import Resources

if TYPE_CHECKING:
    from hubflow.launch.machines import Rank

__all__ = ["WORKER_BOOT", "has_accelerator", "launch_command"]

WORKER_BOOT = (
    "import sys; sys.path[:] = [p for p in sys.path if p not in ('', '.')]; "
    "from hubflow.worker import main; sys.exit(main())"
)
"""``python -c`` program that starts the worker with the current folder off ``sys.path``: a
``hubflow.py`` or ``stages.py`` where `hubflow run` was started must not shadow hubflow's own
packages (``python -m`` would put that folder first)."""

SAFE_PATH_ENV = {"PYTHONSAFEPATH": "1"}
"""Python >= 3.11: the same for every process ``accelerate launch`` starts (``-m`` included)."""


def launch_command(
    resources: Resources, spec: Path, base_dir: Path, rank: Rank | None = None
) -> tuple[list[str], dict[str, str]]:
    """The command that runs one stage, and the environment it adds: plain Python, or
    ``accelerate launch`` when the stage asks for several processes or an accelerate config.
    ``rank``: one machine rank of a multi-node stage (its own ``accelerate launch``)."""
    if rank is None and resources.num_processes == 1 and not resources.accelerate_config:
        return [sys.executable, "-c", WORKER_BOOT, str(spec)], dict(SAFE_PATH_ENV)
    cmd, env = accelerate_command(resources, base_dir, rank)
    return [*cmd, "-m", "hubflow.worker", str(spec)], {**SAFE_PATH_ENV, **env}
