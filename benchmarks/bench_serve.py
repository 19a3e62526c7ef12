"""`hubflow serve` throughput: a 1 GiB model pulled and pushed over loopback HTTP.

Side by side with what users would otherwise do with the same bytes:

- pull: ``huggingface_hub.snapshot_download`` from `hubflow serve` (and hubflow's own
  hf backend snapshot, which also checks every file's hash) vs a plain ``shutil.copytree``
  of the same files on the same disk;
- push: the hf backend's ``commit_folder`` to `hubflow serve` (preupload, LFS batch, one
  PUT per file, the NDJSON commit, the server hashing and storing it) vs the same plain
  copy, and vs ``LocalHub.commit_folder`` (the embedded backend).

The server runs as its own process (`hubflow serve`), as users run it. Page cache is warm
for every variant (the source was just written). Loopback only; every wait is bounded.

    python benchmarks/bench_serve.py [--size-mib 1024] [--repeat 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

TOKEN = "bench-serve-token-0d2c"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_model(folder: Path, size_mib: int) -> None:
    """A safetensors-sized blob in 8 shards-worth of random 64 MiB blocks, plus a config."""
    folder.mkdir(parents=True)
    block = os.urandom(64 << 20)
    with open(folder / "model.safetensors", "wb") as f:
        for i in range(size_mib // 64):
            f.write(block[i % 7 :] + block[: i % 7])  # distinct blocks, no dedup to exploit
        f.write(block[: (size_mib % 64) << 20])
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 4096}))


class Server:
    def __init__(self, root: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "HUBFLOW_SERVE_TOKEN": TOKEN}
        cmd = [sys.executable, "-m", "hubflow.cli", "serve", "--root", str(root), "--port", str(self.port)]
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(200):  # at most ~20 s
            try:
                with urllib.request.urlopen(f"{self.url}/api/hubflow", timeout=1) as r:
                    if json.load(r)["server"] == "hubflow-serve":
                        return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("hubflow serve did not start")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def rm(path: Path) -> None:
    if path.exists():
        for root, dirs, files in os.walk(path):
            for name in dirs + files:
                os.chmod(os.path.join(root, name), 0o700)
        shutil.rmtree(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=2, help="runs per variant; the best is kept")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--tmp", help="scratch folder (default: a temp folder)")
    args = parser.parse_args()

    os.environ.pop("HF_HUB_OFFLINE", None)
    os.environ["HF_HUB_DISABLE_XET"] = "1"  # hubflow serve has no Xet storage
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    from huggingface_hub import snapshot_download

    from hubflow.hub.hf import HfHub
    from hubflow.hub.local import LocalHub
    from hubflow.refs import RepoRef

    work = Path(tempfile.mkdtemp(prefix="bench-serve-", dir=args.tmp))
    os.environ["HF_HOME"] = str(work / "hf-home")
    repo = RepoRef("model", "bench/model-1g")
    size = args.size_mib << 20
    results: dict[str, float] = {}
    try:
        src = work / "src"
        make_model(src, args.size_mib)
        store = LocalHub(work / "store", link_sources=False)
        store.create_repo(repo)
        commit = store.commit_folder(repo, src, message="1 GiB model").commit_id

        def best(name: str, fn, cleanup) -> None:
            times = []
            for _ in range(args.repeat):
                cleanup()
                times.append(timed(fn))
            cleanup()
            results[name] = min(times)
            print(f"{name:<34} {results[name]:7.2f} s  {size / results[name] / 2**20:8.0f} MiB/s", flush=True)

        copy_dst = work / "copy"
        best("plain copy (shutil.copytree)", lambda: shutil.copytree(src, copy_dst), lambda: rm(copy_dst))

        server = Server(work / "store")
        try:
            pulled = work / "pulled"
            best(
                "pull: snapshot_download via serve",
                lambda: snapshot_download(
                    repo.repo_id, revision=commit, local_dir=pulled, endpoint=server.url, token=TOKEN
                ),
                lambda: rm(pulled),
            )
            hub = HfHub(server.url, token=TOKEN, private=False)
            snap = work / "snap"
            best(
                "pull: hf backend snapshot (+verify)",
                lambda: hub.snapshot(repo, commit, snap),
                lambda: rm(snap),
            )
        finally:
            server.stop()

        counter = iter(range(100))

        def fresh_server_store() -> None:
            rm(work / "push-store")

        push_server: list[Server] = []

        def push() -> None:
            target = RepoRef("model", f"bench/pushed-{next(counter)}")
            hub = HfHub(push_server[0].url, token=TOKEN, private=False)
            hub.create_repo(target)
            hub.commit_folder(target, src, message="push 1 GiB")

        def push_cleanup() -> None:
            for s in push_server:
                s.stop()
            push_server.clear()
            fresh_server_store()
            push_server.append(Server(work / "push-store"))

        try:
            best("push: hf backend commit via serve", push, push_cleanup)
        finally:
            for s in push_server:
                s.stop()

        local_dst = work / "local-store"

        def local_import() -> None:
            hub = LocalHub(local_dst, link_sources=False)
            hub.create_repo(repo)
            hub.commit_folder(repo, src, message="import")

        best("push: LocalHub.commit_folder (copy)", local_import, lambda: rm(local_dst))
    finally:
        rm(work)

    copy = results["plain copy (shutil.copytree)"]
    ratios = {
        "pull snapshot_download / copy": results["pull: snapshot_download via serve"] / copy,
        "pull hf snapshot / copy": results["pull: hf backend snapshot (+verify)"] / copy,
        "push hf commit / copy": results["push: hf backend commit via serve"] / copy,
        "push hf commit / LocalHub import": results["push: hf backend commit via serve"]
        / results["push: LocalHub.commit_folder (copy)"],
    }
    for name, value in ratios.items():
        print(f"{name:<34} {value:7.2f}x")
    if args.json:
        Path(args.json).write_text(
            json.dumps({"size_mib": args.size_mib, "seconds": results, "ratios": ratios}, indent=2)
        )


if __name__ == "__main__":
    main()
