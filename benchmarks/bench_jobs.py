#!/usr/bin/env python
"""Parallel ready stages: `hubflow run --jobs 1` against `--jobs 2` on a manifest of independent stages.

Generates a manifest of ``--stages`` (default 8) independent `python` stages, each burning
``--seconds`` (default 2) of real CPU in pure Python (one core each), and times a fresh
`hubflow run --force --quiet` with ``--jobs 1`` and ``--jobs 2``, alternating, best of ``--repeats``.
On 2 free cores the ratio should be near 2; the gap is each stage's process start-up and publishing.

Usage: python benchmarks/bench_jobs.py [--stages 8] [--seconds 2] [--repeats 2] [--workdir DIR]
stdout: a table, then one JSON object.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

STEPS = """
import time


def burn(inputs, output, params):
    end = time.process_time() + params["seconds"]
    n = 0
    while time.process_time() < end:
        n += 1
    (output / "n.txt").write_text(str(n > 0))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stages", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=ROOT / "benchmarks" / ".work" / "jobs")
    args = parser.parse_args()
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    (work / "steps.py").write_text(STEPS)
    lines = ["stages:"] + [
        f"  - {{name: s{i}, kind: python, function: 'steps:burn', params: {{seconds: {args.seconds}}}, "
        f"output: 'dataset:bench/jobs-{i}'}}"
        for i in range(args.stages)
    ]
    (work / "hubflow.yaml").write_text("\n".join(lines) + "\n")
    exe = [sys.executable, "-m", "hubflow.cli", "run", "hubflow.yaml", "--force", "--quiet"]
    best: dict[int, float] = {}
    for _ in range(args.repeats):
        for jobs in (1, 2):
            start = time.perf_counter()
            proc = subprocess.run([*exe, "--jobs", str(jobs)], cwd=work, capture_output=True, text=True)
            seconds = time.perf_counter() - start
            if proc.returncode != 0:
                print(proc.stdout + proc.stderr, file=sys.stderr)
                return 2
            best[jobs] = min(best.get(jobs, seconds), seconds)
    cpu = args.stages * args.seconds
    print(f"{'--jobs':8} {'wall s':>8}  ({args.stages} stages x {args.seconds} s CPU = {cpu:.0f} s of work)")
    for jobs, seconds in sorted(best.items()):
        print(f"{jobs:<8} {seconds:8.2f}")
    ratio = best[1] / best[2]
    print(f"speed-up --jobs 2 / --jobs 1: {ratio:.2f}x")
    print(
        json.dumps({"stages": args.stages, "seconds": args.seconds, "wall": best, "speedup": round(ratio, 3)})
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
