"""Ray's overhead per stage: the same 8 independent tiny `python` stages with `launcher: local`
(a process on this machine) and `launcher: ray` (a Ray task on a local cluster started here,
`ray start --head --num-cpus 2` on 127.0.0.1, killed after), side by side, `hubflow run` each.

Each stage sleeps 0.5 s and writes one file, so what differs is the launch: for Ray, the task's
scheduling, the queue that streams the log, the tar of the outputs and its unpacking. Prints the
wall time of each and (ray - local) / 8 seconds per stage. With `--jobs N` (once `hubflow run`
has it) pass `--jobs N` here to run both side by side in parallel.

    python benchmarks/bench_ray.py [--jobs N] [--stages 8]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STEP = """
import time
def make(inputs, output, params):
    time.sleep(0.5)
    (output / "x.txt").write_text(str(params["i"]))
"""


def manifest(n: int, launcher: str, address: str) -> str:
    lines = [f'cluster: {{address: "{address}"}}', "stages:"]
    for i in range(n):
        lines.append(
            f'  - {{name: s{i}, kind: python, function: "steps:make", params: {{i: {i}, l: {launcher}}}, '
            f'output: "dataset:b/{launcher}-{i}", resources: {{launcher: {launcher}}}}}'
        )
    return "\n".join(lines) + "\n"


def run(folder: Path, text: str, jobs: int | None, env: dict[str, str]) -> float:
    folder.mkdir()
    (folder / "steps.py").write_text(STEP)
    (folder / "hubflow.yaml").write_text(text)
    cmd = [str(Path(sys.executable).with_name("hubflow")), "run", "hubflow.yaml", "--quiet"]
    if jobs:
        cmd += ["--jobs", str(jobs)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(proc.stdout + proc.stderr)
    return wall


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--stages", type=int, default=8)
    ap.add_argument("--jobs", type=int, default=None)
    args = ap.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    work = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32), "RAY_USAGE_STATS_ENABLED": "0"}
    env = {**os.environ, **auth, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    ray = str(Path(sys.executable).with_name("ray"))
    head = subprocess.Popen(
        [ray, "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(port),
         "--num-cpus", "2", "--include-dashboard=false", "--disable-usage-stats", "--temp-dir", str(work / "ray")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True,
    )  # fmt: skip
    try:
        time.sleep(5)
        address = f"127.0.0.1:{port}"
        results = {}
        for launcher in ("local", "ray", "local", "ray"):  # interleaved: a busy machine hits both
            wall = run(
                work / f"{launcher}-{len(results)}", manifest(args.stages, launcher, address), args.jobs, env
            )
            results.setdefault(launcher, []).append(wall)
            print(f"{launcher:5s} {args.stages} stages: {wall:.2f} s", flush=True)
        local, ray_t = min(results["local"]), min(results["ray"])
        print(f"best of 2: local {local:.2f} s, ray {ray_t:.2f} s, ratio {ray_t / local:.2f}")
        print(f"Ray's overhead per stage: {(ray_t - local) / args.stages:.2f} s")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGKILL)
        head.wait()
        subprocess.run(["rm", "-rf", str(work)])


if __name__ == "__main__":
    main()
