"""Which stages start next when ``hubflow run --jobs N`` runs independent stages at once: pure decisions.

A stage is *ready* when every stage it depends on is done (ran, or its result was reused). It takes
``resources.cpus`` of the run's N CPU slots (at most N: a stage bigger than the run starts alone) and
``resources.gpus`` of the machine's GPUs, which it gets to itself through ``CUDA_VISIBLE_DEVICES``.
The runner starts ready stages in plan order while their slots and GPUs are free, so it never
oversubscribes either; a ready stage that does not fit waits, and the ready stages behind it wait
with it (so a big stage is never starved by small ones). These functions hold no
state and touch nothing: the runner (:mod:`hubflow.runner`) calls them and does the work.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Need:
    """What one stage takes while it runs."""

    cpus: int = 1
    gpus: int = 0


@dataclass
class Pool:
    """The run's free CPU slots and free GPU ids."""

    cpus: int
    gpus: list[str] = field(default_factory=list)

    def fits(self, need: Need, jobs: int) -> bool:
        return min(need.cpus, jobs) <= self.cpus and need.gpus <= len(self.gpus)


def blocked_by(
    name: str, upstream: Mapping[str, Sequence[str]], failed: set[str], blocked: Mapping[str, str]
) -> str | None:
    """The failed stage that ``name`` depends on (directly or through a blocked stage), else None."""
    bad = sorted(u for u in upstream.get(name, ()) if u in failed or u in blocked)
    if not bad:
        return None
    return bad[0] if bad[0] in failed else blocked[bad[0]]


def ready(
    waiting: Sequence[str],
    upstream: Mapping[str, Sequence[str]],
    done: set[str],
) -> list[str]:
    """The stages of ``waiting`` (in its order) whose every upstream stage is done."""
    return [n for n in waiting if all(u in done for u in upstream.get(n, ()))]


def to_start(
    candidates: Sequence[str],
    needs: Mapping[str, Need],
    pool: Pool,
    jobs: int,
) -> list[tuple[str, list[str]]]:
    """Which ready ``candidates`` start now, in order, each with the GPU ids it gets.

    In plan order over the free slots and GPUs (``pool``: what the running stages do not hold);
    the first candidate that does not fit stops the choice, so a big stage is never overtaken
    forever by small ones behind it. A stage asking for more CPU slots than the run has takes all
    of them (it runs alone)."""
    free = Pool(pool.cpus, list(pool.gpus))
    chosen: list[tuple[str, list[str]]] = []
    for name in candidates:
        need = needs.get(name, Need())
        if not free.fits(need, jobs):
            break
        gpus, free.gpus = free.gpus[: need.gpus], free.gpus[need.gpus :]
        free.cpus -= min(need.cpus, jobs)
        chosen.append((name, gpus))
    return chosen


def gpu_env(assigned: Sequence[str], need: Need) -> dict[str, str]:
    """The environment a stage gets for its GPUs: exactly its own when it reserved some;
    unchanged when it reserved none (it may use what the machine shows it, as with ``--jobs 1``)."""
    if need.gpus > 0:
        return {"CUDA_VISIBLE_DEVICES": ",".join(assigned)}
    return {}


def machine_gpus(visible: str | None) -> list[str]:
    """The GPU ids stages can be given: ``CUDA_VISIBLE_DEVICES`` when it is set (its entries, as
    they are), else one per line of ``nvidia-smi -L`` (``0``, ``1``, ...), else none. Torch is not
    imported (`hubflow run` starts stages; only stages import torch)."""
    if visible is not None:
        return [v.strip() for v in visible.split(",") if v.strip() and v.strip() != "-1"]
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.SubprocessError):
        return []
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("GPU ")] if out.returncode == 0 else []
    return [str(i) for i in range(len(lines))]


def default_jobs(cores: int, env_value: int | None) -> int:
    """``--jobs`` when it is not given: ``HUBFLOW_JOBS``, else one per usable core."""
    return max(1, env_value if env_value is not None else cores)
