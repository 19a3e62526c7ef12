#!/usr/bin/env python
"""Page load times of the web view (`hubflow serve` /ui) on a large store and a large manifest.

Builds (once, in ``--workdir``) a local store with one dataset repo of ``--commits`` commits (default
5,000) and a manifest of ``--stages`` stages (default 500: 10% sources, the rest reading one or two of
the 40 stages before them, the DAG of bench_plan_vs_dvc.py), then serves it with uvicorn on loopback and
times, over HTTP with a fresh connection, median of ``--repeats``:

- the repo list; a repo's first and last page of commits (50 per page) and the API's own
  ``/api/datasets/NS/NAME/commits/main`` (the whole history as JSON, what huggingface_hub's
  ``list_repo_commits`` reads) for comparison;
- one commit page (card rendered, files, lineage);
- the manifest page of N stages (plan against the store + SVG DAG), against ``hubflow plan`` of the
  same manifest in a fresh process (what the page computes, plus the CLI's start-up).

Usage: python benchmarks/bench_ui.py [--commits 5000] [--stages 500] [--repeats 5] [--workdir DIR]
stdout: a table, then one JSON object.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def build_store(work: Path, commits: int) -> Path:
    from hubflow.hub.base import CommitAdd
    from hubflow.hub.local import LocalHub
    from hubflow.refs import RepoRef

    root = work / "store"
    marker = work / f"built-{commits}"
    if marker.exists():
        return root
    hub = LocalHub(root)
    repo = RepoRef("dataset", "bench/long")
    hub.create_repo(repo)
    scratch = work / "scratch"
    scratch.mkdir(parents=True, exist_ok=True)
    (scratch / "README.md").write_text("# bench/long\n\nA repo with a long history.\n")
    hub.commit(repo, [CommitAdd("README.md", scratch / "README.md")], message="card")
    start = time.perf_counter()
    for i in range(commits - 1):
        (scratch / "i.txt").write_text(str(i))
        hub.commit(repo, [CommitAdd(f"data/{i % 50}.txt", scratch / "i.txt")], message=f"commit {i}")
        if (i + 1) % 1000 == 0:
            print(f"  {i + 1} commits ({time.perf_counter() - start:.0f}s)", file=sys.stderr)
    marker.touch()
    return root


def build_manifest(work: Path, stages: int, root: Path) -> Path:
    folder = work / f"manifest-{stages}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "steps.py").write_text("def f(inputs, output, params):\n    (output / 'x').write_text('x')\n")
    rng = random.Random(0)
    lines = [f"hub: {{backend: local, root: {root}}}", "stages:"]
    for i in range(stages):
        if i < stages // 10 or i == 0:
            lines.append(
                f"  - {{name: s{i}, kind: python, function: 'steps:f', output: 'dataset:bench/s{i}'}}"
            )
            continue
        ups = sorted({rng.randrange(max(0, i - 40), i) for _ in range(rng.choice((1, 2)))})
        inputs = ", ".join(f"in{k}: s{u}" for k, u in enumerate(ups))
        lines.append(
            f"  - {{name: s{i}, kind: python, function: 'steps:f', inputs: {{{inputs}}}, "
            f"output: 'dataset:bench/s{i}'}}"
        )
    path = folder / "hubflow.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def timed(client: httpx.Client, url: str, repeats: int) -> tuple[float, int]:
    times, size = [], 0
    for _ in range(repeats + 1):  # one warm-up
        start = time.perf_counter()
        response = client.get(url, headers={"connection": "close"})
        times.append(time.perf_counter() - start)
        assert response.status_code == 200, (url, response.status_code, response.text[:300])
        size = len(response.content)
    return statistics.median(times[1:]), size


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--commits", type=int, default=5000)
    parser.add_argument("--stages", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workdir", type=Path, default=ROOT / "benchmarks" / ".work" / "ui")
    args = parser.parse_args()
    work = args.workdir / f"C{args.commits}"
    root = build_store(work, args.commits)
    manifest = build_manifest(work, args.stages, root)

    from hubflow.serve import create_app
    from hubflow.serve.thread import ServerThread

    app = create_app(root, token=None, manifests=[manifest])
    rows = []
    with ServerThread(app) as server, httpx.Client(base_url=server.url, timeout=300) as client:
        pages = [
            ("repo list", "/ui"),
            ("commits, page 1 of 100", "/ui/datasets/bench/long"),
            ("commits, page 100 of 100", f"/ui/datasets/bench/long?page={args.commits // 50}"),
            ("API: commits/main, first page (JSON)", "/api/datasets/bench/long/commits/main"),
            ("one commit page", "/ui/datasets/bench/long/commit/main"),
            (f"manifest of {args.stages} stages", "/ui/manifests/0"),
        ]
        for label, url in pages:
            seconds, size = timed(client, url, args.repeats)
            rows.append({"page": label, "url": url, "seconds": round(seconds, 4), "bytes": size})
    cli = [sys.executable, "-m", "hubflow.cli", "plan", str(manifest)]
    plan_times = []
    for _ in range(max(2, args.repeats // 2)):
        start = time.perf_counter()
        subprocess.run(cli, check=True, capture_output=True)
        plan_times.append(time.perf_counter() - start)
    rows.append(
        {
            "page": f"`hubflow plan` of the same {args.stages} stages (CLI)",
            "seconds": round(statistics.median(plan_times), 4),
        }
    )
    print(f"{'page':45} {'seconds':>9} {'bytes':>10}")
    for r in rows:
        print(f"{r['page']:45} {r['seconds']:9.3f} {r.get('bytes', ''):>10}")
    print(json.dumps({"commits": args.commits, "stages": args.stages, "rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
