"""The curate stage versus the same pipeline written directly with datatrove.

Pipeline (both sides): parquet reader -> GopherRepetitionFilter -> GopherQualityFilter
-> PIIFormatter -> parquet writer, then MinHash dedup (datatrove's four stages,
14 buckets x 8 hashes, 5-grams) -> parquet writer; LocalPipelineExecutor with
``--tasks`` tasks and ``--workers`` workers. The stage side also joins the
surviving rows back to their input columns, writes Hub-named shards, the report
and the funnel plot.

Three runs on the same generated corpus, each in its own process tree:

- ``datatrove``: the pipeline written by hand (what a user would otherwise write);
- ``stage``: ``stages.curate.run(ctx, cfg)`` called directly;
- ``hubflow``: ``hubflow run`` on a generated manifest (ingest -> curate), timing
  only the curate stage's run (worker start-up, input snapshot and publish included).

Reports throughput (documents per wall second and per CPU second), the ratio to
datatrove (target >= 0.95) and the peak RSS of each process tree (sampled every
0.1 s with psutil). On a shared machine the wall-clock ratio is at the mercy of
other load; the CPU-time ratio (user + sys of every process of the run's tree) is the
steadier one. Runs are interleaved and the
best of ``--repeat`` counts.

    python benchmarks/bench_curate.py --docs 20000
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

ADJ = "old small young tired quiet green bright happy careful strange busy gentle famous clever lonely brave".split()
NOUN = "cat farmer neighbour teacher dog woman engineer brother doctor student baker river house market garden".split()
VERB = (
    "walked to|looked at|talked about|thought of|wrote about|cared for|asked about|read about|visited".split(
        "|"
    )
)
TAIL = "in the morning|with a friend|after the rain|before dinner|on a quiet day|for a long time|at the end".split(
    "|"
)


def _sentence(rng: random.Random) -> str:
    c = rng.choice
    return f"The {c(ADJ)} {c(NOUN)} {c(VERB)} the {c(ADJ)} {c(NOUN)} {c(TAIL)}."


def make_corpus(folder: Path, n: int, shards: int, seed: int = 0) -> None:
    """n documents (~100 words): 85% good, 5% exact copies, 5% near copies, 5% low quality; PII sprinkled in."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(seed)
    texts: list[str] = []
    for i in range(n):
        r = rng.random()
        if texts and r < 0.05:
            texts.append(rng.choice(texts))
        elif texts and r < 0.10:
            words = rng.choice(texts).split(" ")
            words[rng.randrange(len(words))] = "changed"
            texts.append(" ".join(words))
        elif r < 0.15:
            texts.append("buy now " * rng.randint(3, 40))
        else:
            lines = [" ".join(_sentence(rng) for _ in range(2)) for _ in range(6)]
            if rng.random() < 0.2:
                lines.append(f"Write to user{i}@example-mail.com or visit 93.184.216.{i % 250}.")
            texts.append("\n".join(lines))
    (folder / "data").mkdir(parents=True, exist_ok=True)
    for k in range(shards):
        part = texts[k * n // shards : (k + 1) * n // shards]
        table = pa.table({"text": part, "id": [f"doc-{k}-{j}" for j in range(len(part))]})
        pq.write_table(table, folder / "data" / f"train-{k:05d}-of-{shards:05d}.parquet")


# --------------------------------------------------------------------------- the three runs (child processes)


def run_datatrove(corpus: Path, work: Path, tasks: int, workers: int) -> None:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import (
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.dedup.minhash import MinhashConfig
    from datatrove.pipeline.filters import GopherQualityFilter, GopherRepetitionFilter
    from datatrove.pipeline.formatters import PIIFormatter
    from datatrove.pipeline.readers import ParquetReader
    from datatrove.pipeline.writers import ParquetWriter

    mh = MinhashConfig(n_grams=5, num_buckets=14, hashes_per_bucket=8)
    filtered, logs = work / "filtered", work / "logs"

    def run(pipeline, n_tasks, name):
        LocalPipelineExecutor(
            pipeline, tasks=n_tasks, workers=min(workers, n_tasks), logging_dir=str(logs / name)
        ).run()

    run(
        [
            ParquetReader(str(corpus / "data")),
            GopherRepetitionFilter(),
            GopherQualityFilter(),
            PIIFormatter(),
            ParquetWriter(str(filtered)),
        ],
        tasks,
        "filter",
    )
    run([ParquetReader(str(filtered)), MinhashDedupSignature(str(work / "sigs"), config=mh)], tasks, "sigs")
    run(
        [MinhashDedupBuckets(str(work / "sigs"), str(work / "buckets"), config=mh)], mh.num_buckets, "buckets"
    )
    run([MinhashDedupCluster(str(work / "buckets"), str(work / "remove"), config=mh)], 1, "cluster")
    run(
        [
            ParquetReader(str(filtered)),
            MinhashDedupFilter(str(work / "remove")),
            ParquetWriter(str(work / "final")),
        ],
        tasks,
        "final",
    )


def stage_fields(tasks: int, workers: int) -> dict:
    return {
        "filters": ["gopher_repetition", "gopher_quality", "pii"],
        "dedup": {"exact": False, "minhash": {"num_buckets": 14, "hashes_per_bucket": 8, "n_grams": 5}},
        "executor": {"type": "local", "tasks": tasks, "workers": workers},
    }


def run_stage(corpus: Path, work: Path, tasks: int, workers: int) -> None:
    from hubflow.stage import StageContext
    from stages import curate

    cfg = curate.Config.model_validate(
        {
            "name": "clean",
            "kind": "curate",
            "inputs": {"docs": "corpus"},
            "output": "dataset:bench/clean",
            **stage_fields(tasks, workers),
        }
    )
    for d in ("out", "logs"):
        (work / d).mkdir(parents=True, exist_ok=True)
    ctx = StageContext(
        stage_name="clean",
        fingerprint="0" * 64,
        inputs={"docs": corpus},
        outputs={"output": work / "out"},
        resume_dir=work / "resume",
        base_dir=work,
        log_dir=work / "logs",
    )
    curate.run(ctx, cfg)


# --------------------------------------------------------------------------- measurement


def measure(cmd: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> dict:
    """Wall time, CPU time and peak RSS of a command's whole process tree (psutil, sampled every 0.1 s).

    CPU time is user + sys summed over every process seen in the tree (the last sample of
    each; a process loses at most one sampling interval) — forkserver pool workers are not
    reaped by the command, so getrusage(RUSAGE_CHILDREN) would miss them.
    """
    import psutil

    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd, env={**os.environ, **(env or {})}, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    root = psutil.Process(proc.pid)
    peak, cpu = 0, {}
    while proc.poll() is None:
        try:
            tree = [root, *root.children(recursive=True)]
        except psutil.Error:
            tree = []
        rss = 0
        for p in tree:
            try:
                with p.oneshot():
                    t = p.cpu_times()
                    cpu[(p.pid, p.create_time())] = t.user + t.system
                    rss += p.memory_info().rss
            except psutil.Error:
                pass
        peak = max(peak, rss)
        time.sleep(0.1)
    wall = time.perf_counter() - start
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd} failed ({proc.returncode}):\n{err[-4000:]}")
    return {"seconds": wall, "cpu_seconds": sum(cpu.values()), "peak_rss_mb": peak / 2**20}


def count_rows(folder: Path) -> int:
    import pyarrow.parquet as pq

    return sum(pq.read_metadata(p).num_rows for p in folder.rglob("*.parquet"))


def _entry_point_dir(root: Path) -> Path | None:
    """A dist-info declaring `curate` in the `hubflow.stages` group, for when the registry lacks it."""
    from hubflow.registry import BUILTIN_KINDS

    if "curate" in BUILTIN_KINDS:
        return None
    info = root / "ep" / "hubflow_bench_curate-0.0.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: hubflow-bench-curate\nVersion: 0.0\n")
    (info / "entry_points.txt").write_text("[hubflow.stages]\ncurate = stages.curate\n")
    return root / "ep"


def hubflow_project(root: Path, corpus: Path, tasks: int, workers: int) -> tuple[Path, dict[str, str]]:
    """A project with the manifest ingest -> curate; the corpus stage already run."""
    import yaml

    project = root / "project"
    project.mkdir()
    shutil.copytree(corpus / "data", project / "corpus")
    manifest = {
        "hub": {"backend": "local"},
        "stages": [
            {
                "name": "corpus",
                "kind": "ingest",
                "source": {"paths": ["corpus/*.parquet"]},
                "output": "dataset:bench/corpus",
            },
            {
                "name": "clean",
                "kind": "curate",
                "inputs": {"docs": "corpus"},
                "output": "dataset:bench/clean",
                **stage_fields(tasks, workers),
            },
        ],
    }
    (project / "hubflow.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    env = {}
    ep = _entry_point_dir(root)
    if ep is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(ep), os.environ.get("PYTHONPATH", "")])
    measure([*HUBFLOW, "run", "--quiet", "hubflow.yaml", "corpus"], env, cwd=project)
    return project, env


HUBFLOW = [sys.executable, "-c", "import sys; from hubflow.cli import main; sys.exit(main())"]


def run_hubflow(project: Path, env: dict[str, str], rep: int) -> dict:
    """Time `hubflow run` of the curate stage only (forced after the first repetition)."""
    force = ["--force"] if rep else []
    result = measure([*HUBFLOW, "run", "--quiet", *force, "hubflow.yaml", "clean"], env, cwd=project)
    pulled = project.parent / f"pulled{rep}"
    subprocess.run(
        [*HUBFLOW, "pull", "dataset:bench/clean", "--to", str(pulled), "--manifest", "hubflow.yaml"],
        env={**os.environ, **env},
        cwd=project,
        check=True,
        capture_output=True,
    )
    result["rows_out"] = count_rows(pulled / "data")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--docs", type=int, default=20_000)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--tasks", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=2, help="interleaved repetitions; the best time counts")
    parser.add_argument("--skip-hubflow", action="store_true", help="only datatrove vs run()")
    parser.add_argument("--child", choices=["datatrove", "stage"], help=argparse.SUPPRESS)
    parser.add_argument("--corpus", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        fn = run_datatrove if args.child == "datatrove" else run_stage
        fn(args.corpus, args.work, args.tasks, args.workers)
        return

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    root = Path(tempfile.mkdtemp(prefix="bench_curate_"))
    try:
        corpus = root / "corpus"
        make_corpus(corpus, args.docs, args.shards)
        modes = ["datatrove", "stage"] + ([] if args.skip_hubflow else ["hubflow"])
        project, env = (
            (None, {}) if args.skip_hubflow else hubflow_project(root, corpus, args.tasks, args.workers)
        )
        runs: dict[str, list[dict]] = {m: [] for m in modes}
        for rep in range(args.repeat):  # interleaved, so load from elsewhere hits every mode alike
            for mode in modes:
                if mode == "hubflow":
                    runs[mode].append(run_hubflow(project, env, rep))
                    continue
                work = root / f"{mode}{rep}"
                cmd = [
                    sys.executable,
                    __file__,
                    "--child",
                    mode,
                    "--corpus",
                    str(corpus),
                    "--work",
                    str(work),
                ]
                cmd += ["--tasks", str(args.tasks), "--workers", str(args.workers)]
                r = measure(cmd)
                r["rows_out"] = count_rows(work / ("final" if mode == "datatrove" else "out/data"))
                runs[mode].append(r)
                shutil.rmtree(work, ignore_errors=True)
        best = {m: min(rs, key=lambda r: r["seconds"]) for m, rs in runs.items()}
        base = best["datatrove"]["seconds"]
        cpu_best = {m: min(r["cpu_seconds"] for r in rs) for m, rs in runs.items()}
        print(
            textwrap.dedent(
                f"""
                corpus: {args.docs} docs in {args.shards} parquet shards; tasks={args.tasks} workers={args.workers}; best of {args.repeat}
                pipeline: gopher_repetition, gopher_quality, pii, MinHash 14x8 5-grams
                {"run":<10} {"seconds":>8} {"docs/s":>8} {"ratio":>6} {"cpu s":>8} {"docs/cpu-s":>10} {"cpu ratio":>9} {"peak RSS MB":>12} {"rows out":>9}  all seconds"""
            ).strip()
        )
        for mode, r in best.items():
            every = ", ".join(f"{x['seconds']:.1f}" for x in runs[mode])
            cpu = cpu_best[mode]
            print(
                f"{mode:<10} {r['seconds']:>8.1f} {args.docs / r['seconds']:>8.1f} {base / r['seconds']:>6.3f} "
                f"{cpu:>8.1f} {args.docs / cpu:>10.1f} {cpu_best['datatrove'] / cpu:>9.3f} "
                f"{r['peak_rss_mb']:>12.0f} {r['rows_out']!s:>9}  [{every}]"
            )
        print(json.dumps({"docs": args.docs, "runs": runs}))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
