"""The curate stage as a chain of datatrove pipelines, and the executors that run them.

Pipelines, in order (each one a datatrove executor with its own logging folder
``<resume_dir>/datatrove/<name>``, so finished tasks are skipped on resume):

1. ``filter``: read the dataset inputs -> manifest filters in order -> write ``work/filtered``.
2. ``exact_signatures`` / 3. ``exact_duplicates``: datatrove ExactDedup stages 1-2 on normalised text.
4. ``minhash_signatures``: [ExactDedupFilter] -> MinhashDedupSignature.
5. ``minhash_buckets`` (one task per bucket) / 6. ``minhash_clusters`` (one task).
7. ``substring_find`` (one task): the document stream finalize's tasks will see up to the substring step,
   rank by rank, tokenised into one suffix array -> ``work/substring/<rank>.npz`` byte ranges.
8. ``finalize``: read ``work/filtered`` -> [ExactDedupFilter] -> [MinhashDedupFilter]
   -> [substring removal] -> [perplexity gate] -> write ``work/final``.

Pipelines 4, 7 and 8 read the same files with the same number of tasks, so the
document indices MinHash (and the suffix array) record are the ones the filters see in 8.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datatrove.utils.logging import logger

from hubflow.errors import StageFailed
from stages.curate.config import filter_labels
from stages.curate.steps import build_filter, intermediate_writer, work_reader


@dataclass
class FunnelStep:
    label: str
    index: int
    """Position of the datatrove step inside its pipeline."""
    kind: str
    """read | filter | format | dedup | perplexity"""


@dataclass
class Plan:
    name: str
    steps: list[Any]
    tasks: int
    funnel: list[FunnelStep] = field(default_factory=list)


def build_plans(
    cfg: Any,
    sources: list[Any],
    work: Path,
    model_dir: Path | None,
    resources: dict[int, Any],
    tokenizer_path: Path | None = None,
) -> tuple[list[Plan], Path]:
    """The datatrove pipelines of this config, and the folder the last one writes."""
    from datatrove.pipeline.dedup import (
        ExactDedupFilter,
        ExactDedupSignature,
        ExactFindDedups,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.dedup.exact_dedup import ExactDedupConfig
    from datatrove.pipeline.dedup.minhash import MinhashConfig

    from stages.curate.perplexity import PerplexityFilter
    from stages.curate.steps import SourceParquetReader, normalized_text

    tasks = cfg.executor.tasks
    url_key = cfg.url_column if any("url" in f for f in cfg.filters) else None
    reader = SourceParquetReader(
        [(s.name, str(s.folder), s.files) for s in sources], text_key=cfg.text_column, url_key=url_key
    )
    filtered = work / "filtered"
    steps: list[Any] = [reader]
    funnel = [FunnelStep("read", 0, "read")]
    for i, (item, label) in enumerate(zip(cfg.filters, filter_labels(cfg.filters), strict=True)):
        name, params = next(iter(item.items()))
        steps.append(build_filter(name, params, resources.get(i)))
        funnel.append(FunnelStep(label, len(steps) - 1, "format" if name == "pii" else "filter"))
    steps.append(intermediate_writer(str(filtered)))
    plans = [Plan("filter", steps, tasks, funnel)]

    dedup = cfg.dedup
    exact_cfg = ExactDedupConfig(content_getter=normalized_text) if dedup.exact else None
    if exact_cfg is not None:
        sigs, dups = work / "exact" / "signatures", work / "exact" / "duplicates"
        plans.append(
            Plan(
                "exact_signatures",
                [work_reader(str(filtered)), ExactDedupSignature(str(sigs), exact_cfg)],
                tasks,
            )
        )
        plans.append(Plan("exact_duplicates", [ExactFindDedups(str(sigs), str(dups), exact_cfg)], 1))

    def exact_filter() -> list[Any]:
        return [ExactDedupFilter(str(work / "exact" / "duplicates"), exact_cfg)] if exact_cfg else []

    mh = dedup.minhash
    mh_cfg = None
    if mh is not None:
        mh_cfg = MinhashConfig(
            n_grams=mh.n_grams,
            num_buckets=mh.num_buckets,
            hashes_per_bucket=mh.hashes_per_bucket,
            seed=mh.seed,
        )
        msigs, buckets, remove = (work / "minhash" / x for x in ("signatures", "buckets", "remove_ids"))
        signature = MinhashDedupSignature(str(msigs), config=mh_cfg, language=mh.language)
        plans.append(
            Plan("minhash_signatures", [work_reader(str(filtered)), *exact_filter(), signature], tasks)
        )
        plans.append(
            Plan(
                "minhash_buckets",
                [MinhashDedupBuckets(str(msigs), str(buckets), config=mh_cfg)],
                mh.num_buckets,
            )
        )
        plans.append(
            Plan("minhash_clusters", [MinhashDedupCluster(str(buckets), str(remove), config=mh_cfg)], 1)
        )

    def minhash_filter() -> list[Any]:
        return [MinhashDedupFilter(str(work / "minhash" / "remove_ids"))] if mh_cfg else []

    sub = dedup.substring
    if sub is not None:
        from stages.curate.substring import SubstringFinder

        finder = SubstringFinder(
            [work_reader(str(filtered)), *exact_filter(), *minhash_filter()],
            tasks,
            str(work / "substring"),
            sub.min_tokens,
            sub.tokens.type,
            str(tokenizer_path) if tokenizer_path else None,
            keep_first=sub.keep == "first",
        )
        plans.append(Plan("substring_find", [finder], 1))

    if exact_cfg is None and mh_cfg is None and sub is None and cfg.perplexity is None:
        return plans, filtered
    final = work / "final"
    steps = [work_reader(str(filtered))]
    funnel = []
    if exact_cfg is not None:
        steps += exact_filter()
        funnel.append(FunnelStep("exact_dedup", len(steps) - 1, "dedup"))
    if mh_cfg is not None:
        steps += minhash_filter()
        funnel.append(FunnelStep("minhash_dedup", len(steps) - 1, "dedup"))
    if sub is not None:
        from stages.curate.substring import SubstringRemover

        steps.append(SubstringRemover(str(work / "substring"), byte_tokens=sub.tokens.type == "bytes"))
        funnel.append(FunnelStep("substring_dedup", len(steps) - 1, "substring"))
    if cfg.perplexity is not None:
        ppl = cfg.perplexity
        steps.append(
            PerplexityFilter(
                str(model_dir),
                ppl.min,
                ppl.max,
                batch_size=ppl.batch_size,
                max_tokens=ppl.max_tokens,
                threads=ppl.threads,
            )
        )
        funnel.append(FunnelStep("perplexity", len(steps) - 1, "perplexity"))
    steps.append(intermediate_writer(str(final)))
    plans.append(Plan("finalize", steps, tasks, funnel))
    return plans, final


# --------------------------------------------------------------------------- executors


def _workers(wanted: int | None, tasks: int) -> int:
    return max(1, min(tasks, wanted or os.cpu_count() or 1))


def make_executor(spec: Any, plan: Plan, logging_dir: Path, job_prefix: str, depends: Any = None) -> Any:
    """The datatrove executor that runs ``plan`` as the manifest asks."""
    if spec.type == "local":
        from datatrove.executor import LocalPipelineExecutor

        return LocalPipelineExecutor(
            plan.steps,
            tasks=plan.tasks,
            workers=_workers(spec.workers, plan.tasks),
            logging_dir=str(logging_dir),
        )
    if spec.type == "ray":
        from datatrove.executor import RayPipelineExecutor

        return RayPipelineExecutor(
            plan.steps,
            tasks=plan.tasks,
            workers=min(plan.tasks, spec.workers) if spec.workers else -1,
            logging_dir=str(logging_dir),
            cpus_per_task=spec.cpus_per_task,
            mem_per_cpu_gb=spec.mem_per_cpu_gb,
        )
    from datatrove.executor import SlurmPipelineExecutor

    return SlurmPipelineExecutor(
        plan.steps,
        tasks=plan.tasks,
        time=spec.time,
        partition=spec.partition,
        cpus_per_task=spec.cpus_per_task,
        mem_per_cpu_gb=spec.mem_per_cpu_gb,
        workers=min(plan.tasks, spec.workers) if spec.workers else -1,
        job_name=f"{job_prefix}-{plan.name}",
        qos=spec.qos,
        env_command=spec.env_command,
        condaenv=spec.condaenv,
        venv_path=spec.venv_path,
        sbatch_args=dict(spec.sbatch_args),
        max_array_size=spec.max_array_size,
        depends=depends,
        logging_dir=str(logging_dir),
        requeue=spec.requeue,
        mail_user=spec.mail_user,
    )


def _check_complete(executor: Any, plan: Plan, logging_dir: Path) -> None:
    missing = executor.get_incomplete_ranks()
    if missing:
        raise StageFailed(
            f"datatrove pipeline {plan.name!r}: {len(missing)} of {plan.tasks} task(s) did not complete "
            f"(ranks {missing[:10]}); task logs are in {logging_dir / 'logs'}",
            hint="fix the cause and run again: finished tasks are skipped (datatrove completions are kept)",
        )


def run_plans(plans: list[Plan], spec: Any, logs_root: Path, job_prefix: str, on_done: Any = None) -> None:
    """Run the pipelines in order; raises StageFailed if a task did not complete."""
    if spec.type == "slurm":
        _run_slurm(plans, spec, logs_root, job_prefix)
        return
    started_ray = False
    if spec.type == "ray":
        import ray

        if not ray.is_initialized():
            kwargs: dict[str, Any] = (
                {"address": spec.address} if spec.address else {"include_dashboard": False}
            )
            ray.init(**kwargs)
            started_ray = True
    try:
        for plan in plans:
            logging_dir = logs_root / plan.name
            executor = make_executor(spec, plan, logging_dir, job_prefix)
            start = time.perf_counter()
            executor.run()
            _check_complete(executor, plan, logging_dir)
            if on_done is not None:
                on_done(plan, time.perf_counter() - start)
    finally:
        if started_ray:
            import ray

            ray.shutdown()


def _squeue(job_ids: list[str]) -> list[tuple[str, str]] | None:
    """(state, reason) of each queued/running array task of these jobs; None without squeue."""
    try:
        proc = subprocess.run(
            ["squeue", "-h", "-j", ",".join(job_ids), "-o", "%T %r"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        return []
    return [tuple(line.split(maxsplit=1) + [""])[:2] for line in proc.stdout.splitlines() if line.strip()]


def _run_slurm(plans: list[Plan], spec: Any, logs_root: Path, job_prefix: str) -> None:
    executors, previous = [], None
    for plan in plans:
        previous = make_executor(spec, plan, logs_root / plan.name, job_prefix, depends=previous)
        executors.append(previous)
    executors[-1].run()  # submits the whole chain (sbatch --dependency=afterok:...)
    job_ids = [str(ex.job_id) for ex in executors if ex.job_id not in (None, -1)]
    logger.info(f"submitted Slurm jobs {job_ids}; waiting for them to finish")
    idle_polls = 0
    while True:
        pending = [(p, ex) for p, ex in zip(plans, executors, strict=True) if ex.get_incomplete_ranks()]
        if not pending:
            return
        jobs = _squeue(job_ids)
        if jobs is not None:
            if any(reason.startswith("DependencyNeverSatisfied") for _, reason in jobs):
                plan, _ = pending[0]
                raise StageFailed(
                    f"Slurm job of pipeline {plan.name!r} (or one it depends on) failed: "
                    f"dependent jobs can never start; logs in {logs_root / plan.name}",
                    hint="scancel the stage's remaining jobs, fix the cause and run again (finished tasks are skipped)",
                )
            idle_polls = idle_polls + 1 if not jobs else 0
            if idle_polls >= 2:
                plan, ex = pending[0]
                _check_complete(ex, plan, logs_root / plan.name)
        time.sleep(spec.poll_seconds)
