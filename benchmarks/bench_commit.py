"""Benchmark: LocalHub.commit_folder of a large folder against ``cp -r`` of the same files.

    python benchmarks/bench_commit.py [--size-mib 1024] [--rounds 3] [--work-dir DIR]

Generates ``--size-mib`` of random data (8 equal large files plus 64 small ones) under
``benchmarks/.work/`` (same filesystem as the stores), then times, in ``--rounds``
interleaved rounds (so that load from other processes hits every variant alike):

* ``cp -r`` of the folder (the baseline);
* ``commit_folder`` into a fresh store with ``link_sources=True`` (the default), each
  round from a fresh copy of the folder, because linking adopts the source files;
* the same with ``link_sources=False`` (copy), and with ``fsync_blobs=True``;
* a re-commit of identical content into an existing store, with the bytes it added.

Before every timed run the sources are in the page cache and ``sync`` has flushed all
dirty pages, so no run pays for an earlier one's writeback. Reports the median and the
min of each variant (min estimates the unloaded time), and the CPU seconds it used
(user + system, all threads; little affected by other load). The table goes to stderr, JSON to
stdout. Exit status 1 when commit is slower than 0.8x cp or the re-commit
wrote blob bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from hubflow.hub.local import LocalHub
from hubflow.refs import RepoRef

REPO = RepoRef("model", "bench/model")
MiB = 1 << 20
MIN_RATIO = 0.8


def generate(folder: Path, size_mib: int) -> int:
    """8 large random files sharing ``size_mib`` plus 64 small ones; return total bytes."""
    folder.mkdir(parents=True)
    total = 0
    big = size_mib * MiB // 8
    for i in range(8):
        with open(folder / f"model-{i:05d}-of-00008.safetensors", "wb") as f:
            left = big
            while left:
                chunk = os.urandom(min(left, 16 * MiB))
                f.write(chunk)
                left -= len(chunk)
        total += big
    for i in range(64):
        path = folder / "small" / f"config-{i:02d}.json"
        path.parent.mkdir(exist_ok=True)
        data = json.dumps({"i": i, "pad": os.urandom(2000).hex()}).encode()
        path.write_bytes(data)
        total += len(data)
    return total


def warm(folder: Path) -> None:
    """Read every file once so that each timed run reads from the page cache."""
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb", buffering=0) as f:
                while f.read(16 * MiB):
                    pass


def disk_usage(folder: Path) -> int:
    return sum(p.lstat().st_blocks * 512 for p in folder.rglob("*") if p.is_file())


def rmtree(path: Path) -> None:
    if path.exists():
        subprocess.run(["chmod", "-R", "u+w", str(path)], check=True)  # blobs are read-only
        shutil.rmtree(path)


def nothing() -> None:
    pass


def cpu_seconds() -> float:
    """User + system CPU time of this process (all threads) and its reaped children."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def timed_round(
    prepare: Callable[[], None], run: Callable[[], None], cleanup: Callable[[], None]
) -> tuple[float, float]:
    """Wall and CPU seconds of ``run``."""
    prepare()
    os.sync()
    c0, t0 = cpu_seconds(), time.perf_counter()
    run()
    elapsed, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    cleanup()
    return elapsed, cpu


def bench(work: Path, size_mib: int, rounds: int) -> dict:
    loadavg = Path("/proc/loadavg").read_text().split()[0] if Path("/proc/loadavg").exists() else "?"
    src = work / "src"
    total = generate(src, size_mib)
    warm(src)
    copy, store = work / "copy", work / "store"

    def fresh_copy() -> None:
        subprocess.run(["cp", "-r", str(src), str(copy)], check=True)
        warm(copy)

    def new_repo() -> None:
        LocalHub(store).create_repo(REPO)  # setup, not timed

    def copy_and_repo() -> None:
        fresh_copy()
        new_repo()

    def commit(source: Path, **kwargs: bool) -> Callable[[], None]:
        def run() -> None:
            LocalHub(store, **kwargs).commit_folder(REPO, source, message="bench")

        return run

    def drop() -> None:
        rmtree(store)
        rmtree(copy)

    # Variants alternate within each round, so that load from other processes hits all alike.
    variants: dict[str, tuple[Callable[[], None], Callable[[], None], Callable[[], None]]] = {
        "cp -r": (nothing, lambda: subprocess.run(["cp", "-r", str(src), str(copy)], check=True), drop),
        "commit (link_sources=True)": (copy_and_repo, commit(copy), drop),
        "commit (link_sources=False)": (new_repo, commit(src, link_sources=False), drop),
        "commit (link, fsync_blobs=True)": (copy_and_repo, commit(copy, fsync_blobs=True), drop),
    }
    rows: dict[str, list[float]] = {label: [] for label in variants}
    cpu: dict[str, list[float]] = {label: [] for label in variants}
    for _ in range(rounds):
        for label, (prepare, run, cleanup) in variants.items():
            wall, used = timed_round(prepare, run, cleanup)
            rows[label].append(wall)
            cpu[label].append(used)

    # Re-commit identical content (from a fresh copy, so nothing is shared by inode).
    hub = LocalHub(store)
    hub.create_repo(REPO)
    hub.commit_folder(REPO, src, message="first")
    fresh_copy()
    os.sync()
    blobs_before, store_before = disk_usage(store / "objects"), disk_usage(store)
    t0 = time.perf_counter()
    hub.commit_folder(REPO, copy, message="again")
    recommit_s = time.perf_counter() - t0
    blob_bytes_written = disk_usage(store / "objects") - blobs_before
    store_bytes_written = disk_usage(store) - store_before
    drop()

    cp_s = statistics.median(rows["cp -r"])
    out = {
        "size_bytes": total,
        "cpus": len(os.sched_getaffinity(0)),
        "rounds": rounds,
        "loadavg_before": loadavg,
        "runs": {
            label: {
                "times_s": [round(t, 4) for t in times],
                "median_s": round(statistics.median(times), 4),
                "min_s": round(min(times), 4),
                "gib_per_s": round(total / (1 << 30) / statistics.median(times), 3),
                "speed_vs_cp": round(cp_s / statistics.median(times), 3),
                "speed_vs_cp_min": round(min(rows["cp -r"]) / min(times), 3),
                "cpu_s": round(statistics.median(cpu[label]), 4),
            }
            for label, times in rows.items()
        },
        "recommit": {
            "seconds": round(recommit_s, 4),
            "blob_bytes_written": blob_bytes_written,
            "store_bytes_written": store_bytes_written,
        },
    }
    out["ok"] = (
        out["runs"]["commit (link_sources=True)"]["speed_vs_cp"] >= MIN_RATIO and blob_bytes_written == 0
    )
    return out


def table(out: dict) -> str:
    lines = [
        f"{out['size_bytes'] / MiB:.0f} MiB, {out['cpus']} CPUs, {out['rounds']} interleaved rounds, "
        f"load average {out['loadavg_before']} before"
    ]
    lines.append(
        f"{'run':<34}{'median s':>10}{'GiB/s':>8}{'vs cp':>8}{'min s':>8}{'vs cp (min)':>13}{'cpu s':>8}"
    )
    for label, run in out["runs"].items():
        lines.append(
            f"{label:<34}{run['median_s']:>10.3f}{run['gib_per_s']:>8.2f}{run['speed_vs_cp']:>8.2f}"
            f"{run['min_s']:>8.3f}{run['speed_vs_cp_min']:>13.2f}{run['cpu_s']:>8.3f}"
        )
    re = out["recommit"]
    lines.append(
        f"re-commit identical content: {re['seconds']:.3f} s, {re['blob_bytes_written']} blob bytes, "
        f"{re['store_bytes_written']} store bytes written"
    )
    lines.append(
        f"requirement (commit >= {MIN_RATIO}x cp speed, re-commit writes 0 blob bytes): {'PASS' if out['ok'] else 'FAIL'}"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work-dir", type=Path, default=Path(__file__).resolve().parent / ".work")
    parser.add_argument("--keep", action="store_true", help="keep the generated folder")
    args = parser.parse_args(argv)
    work = args.work_dir / f"bench-{os.getpid()}"
    try:
        out = bench(work, args.size_mib, args.rounds)
    finally:
        if not args.keep:
            rmtree(work)
    print(table(out), file=sys.stderr)
    print(json.dumps(out, indent=2))
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
