"""How many CPU threads a stage's process gives torch (``resources.threads``): hubflow's job, not the user's.

Measured on this project's 2-core machine (``benchmarks/bench_threads.py``, BENCHMARKS.md "Threads"):
training a Llama of 0.4M to 89M parameters, two threads are 1.6–1.8× faster than one on a quiet machine,
and 2–12× *slower* than one while another CPU-bound process holds a core (the second thread spins
waiting for a core that is not free). So a stage should use exactly the cores that are free, whatever the
model's size. ``threads: auto`` (the default) therefore picks

    threads = max(1, min(cores, round(cores − busy)))

where ``busy`` is how many cores other processes kept busy during a short sample of ``/proc/stat`` just
before the stage starts (the runner is idle then; a load average would still count the stage that just
finished). A number in ``resources.threads`` is taken as it is; an ``OMP_NUM_THREADS`` set in the
environment wins over ``auto`` (the user asked). The choice and its reason go to the stage's log.

With ``hubflow run --jobs N`` (N > 1) other stages may run beside this one, so ``auto`` takes at
most the stage's CPU slots (``resources.cpus``, default 1): the cores free at its start are the
ones a sibling that starts a moment later will use, and two stages each taking "all free cores"
would spin against each other.

The sample is taken once: a CPU-bound job that starts while a multi-threaded stage runs slows that stage
down. On a machine shared with jobs that come and go, set ``threads: 1``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping

THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
SAMPLE_SECONDS = 0.3


def choose_threads(
    requested: int | str,
    *,
    cores: int,
    busy: float,
    env: Mapping[str, str] | None = None,
    slots: int | None = None,
) -> tuple[int, str]:
    """(threads, the reason in words) for a stage; pure, see the module docstring for the rule.

    ``slots``: the CPU slots the stage holds when `hubflow run --jobs N` (N > 1) may run other
    stages beside it; ``auto`` then takes at most those, since cores free now are the ones a
    sibling starting next will use."""
    env = env or {}
    if requested != "auto":
        return int(requested), f"{requested} (resources.threads)"
    if env.get("OMP_NUM_THREADS", "").isdigit() and int(env["OMP_NUM_THREADS"]) > 0:
        n = int(env["OMP_NUM_THREADS"])
        return n, f"{n} (OMP_NUM_THREADS in the environment)"
    cores = max(1, cores)
    free = max(1, min(cores, round(cores - busy)))
    why = f"{free} of {cores} cores free; other processes kept {busy:.1f} busy"
    if slots is not None and slots < free:
        return max(
            1, slots
        ), f"{max(1, slots)} (auto: its {slots} CPU slot(s) of --jobs, beside other stages; {why})"
    return free, f"{free} (auto: {why})"


def _cpu_times() -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs from /proc/stat, or None where there is no /proc."""
    try:
        with open("/proc/stat", encoding="ascii") as fh:
            fields = [int(x) for x in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def machine_state(sample_seconds: float = SAMPLE_SECONDS) -> tuple[int, float]:
    """(usable cores, cores kept busy by other processes over a short sample)."""
    cores = usable_cores()
    before = _cpu_times()
    if before is None:
        try:
            return cores, os.getloadavg()[0]
        except OSError:
            return cores, 0.0
    time.sleep(sample_seconds)
    after = _cpu_times()
    assert after is not None
    total = after[1] - before[1]
    if total <= 0:
        return cores, 0.0
    return cores, (os.cpu_count() or cores) * (after[0] - before[0]) / total


def thread_env(n: int) -> dict[str, str]:
    return dict.fromkeys(THREAD_ENV, str(n))
