"""Benchmark: what it costs that a stage cannot damage the store through its inputs.

    python benchmarks/bench_input_protection.py [--size-mib 1024] [--rounds 5] [--work-dir DIR]

A stage's inputs used to be hardlinks to the store's blobs, so a stage writing to one (root
ignores read-only modes) changed the stored artifact. Snapshots are now private copies
(``LocalHub.snapshot``: a reflink where the filesystem has them, else an in-kernel copy,
hashed after copying). This times, on ``--size-mib`` of input (8 large files plus 64 small
ones) committed to a store under ``benchmarks/.work/`` and warm in the page cache, in
``--rounds`` interleaved rounds:

* ``link``: ``snapshot(..., link=True)``, the old way: hash every blob, hardlink it;
* ``copy``: ``snapshot(...)``, the default now: copy every blob, hash the copy;
* ``cp -r`` of the same files, for reference.

``sync`` runs before each timed run so none pays for an earlier one's writeback; the
snapshot folder is removed (outside the timing) after each. Reports median and min wall
seconds and CPU seconds; the table goes to stderr, JSON to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bench_commit import generate, warm  # same data as the commit benchmark

from hubflow.files import rmtree
from hubflow.hub.local import LocalHub
from hubflow.refs import RepoRef

REPO = RepoRef("dataset", "bench/input")
MiB = 1 << 20


def cpu_seconds() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    subprocess.run(["sync"], check=True)
    c0, t0 = cpu_seconds(), time.perf_counter()
    fn()
    return time.perf_counter() - t0, cpu_seconds() - c0


def filesystem(path: Path) -> str:
    out = subprocess.run(["df", "-T", str(path)], capture_output=True, text=True).stdout.splitlines()
    return out[1].split()[1] if len(out) > 1 else "unknown"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--work-dir", type=Path, default=Path(__file__).parent / ".work" / "input-protection")
    args = ap.parse_args()

    work = args.work_dir
    rmtree(work)
    src = work / "src"
    total = generate(src, args.size_mib)
    hub = LocalHub(work / "store", link_sources=False)
    hub.create_repo(REPO)
    hub.commit_folder(REPO, src, message="input")
    warm(hub.layout.objects)

    dest = work / "snapshot"
    variants: dict[str, Callable[[], object]] = {
        "link (hardlinks, the old inputs)": lambda: hub.snapshot(REPO, "main", dest, link=True),
        "copy (private copies, now)": lambda: hub.snapshot(REPO, "main", dest),
        "cp -r (reference)": lambda: subprocess.run(["cp", "-r", str(src), str(dest)], check=True),
    }
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, fn in variants.items():
            times[name].append(timed(fn))
            rmtree(dest)

    gib = total / (1 << 30)
    rows = {}
    for name, runs in times.items():
        walls, cpus = [w for w, _ in runs], [c for _, c in runs]
        rows[name] = {
            "median_s": statistics.median(walls),
            "min_s": min(walls),
            "cpu_s": statistics.median(cpus),
        }
    base = rows["link (hardlinks, the old inputs)"]["median_s"]
    print(
        f"input: {total / MiB:.0f} MiB on {filesystem(work)}; {args.rounds} rounds; load {os.getloadavg()}",
        file=sys.stderr,
    )
    print(
        f"{'variant':36} {'median s':>9} {'min s':>7} {'CPU s':>6} {'s per GiB':>9} {'vs link':>8}",
        file=sys.stderr,
    )
    for name, r in rows.items():
        print(
            f"{name:36} {r['median_s']:9.3f} {r['min_s']:7.3f} {r['cpu_s']:6.2f} "
            f"{r['median_s'] / gib:9.3f} {r['median_s'] / base:7.2f}x",
            file=sys.stderr,
        )
    extra = rows["copy (private copies, now)"]["median_s"] - base
    print(
        f"protection costs {extra:+.3f} s per {gib:.2f} GiB of input (median copy - median link)",
        file=sys.stderr,
    )
    json.dump(
        {"bytes": total, "filesystem": filesystem(work), "machine": platform.machine(), "rows": rows},
        sys.stdout,
        indent=2,
    )
    print()
    rmtree(work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
