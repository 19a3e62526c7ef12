"""Executes a plan: materialise inputs, launch each stale stage in its own process,
publish its outputs as one commit each, record the lock.

A failed stage publishes nothing, keeps its log and resume folder, and stops
its dependents; ``keep_going`` still runs the stages that do not depend on it.
Each start of a stage has its own attempt folder (:mod:`hubflow.launch.process`): a
commit holds the output of exactly one complete attempt, and stage processes never
outlive the run (interrupted, killed, or timed out).
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from hubflow import cards, constants, lease, schedule
from hubflow.accept import shows_result
from hubflow.errors import CommitConflict, HubflowError, RunLocked, StageFailed, StageUserError
from hubflow.files import NOT_WRITABLE, rmtree
from hubflow.fingerprint import stage_fingerprint
from hubflow.graph import revision_tag
from hubflow.launch import launch_command
from hubflow.launch.machines import local_ranks, machines_of
from hubflow.launch.process import (
    interruptible,
    new_attempt,
    run_attempt,
    run_ranks,
    runner_identity,
    stop_orphans,
)
from hubflow.launch.threads import choose_threads, machine_state, thread_env, usable_cores
from hubflow.lock import LockEntry
from hubflow.plan import StagePlan, after_commit_conflict, fingerprint_tag, published_outputs
from hubflow.project import Project
from hubflow.refs import RepoRef, parse_ref
from hubflow.stage import StageConfig
from hubflow.trackers import RUNS_DIR

Echo = Callable[[str], None]

HOLDER_FILE = "run.json"
"""Beside ``run.lock``: the pid and manifest of the run that holds it."""
MAX_COMMIT_RACES = 5
QUIET_LIBRARIES = {
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TQDM_DISABLE": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "PYTHONWARNINGS": "ignore::FutureWarning,ignore::DeprecationWarning",
}
"""A stage's libraries print progress bars and deprecation notices meant for their own developers; a stage
reports its progress in one line per step (StageContext.log_metrics) and its errors with their fix."""
CHECKPOINT_BRANCH = "checkpoints"
"""Where a stage's intermediate results (rounds, checkpoints) are committed; ``main`` gets the final one."""
"""How many times in a row publishing one output may find its branch moved before giving up."""


@dataclass
class RunSummary:
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    """Stage -> error text."""
    blocked: dict[str, str] = field(default_factory=dict)
    """Stage -> the failed stage it depends on."""
    errors: dict[str, HubflowError] = field(default_factory=dict)
    """Stage -> the error it failed with."""

    @property
    def ok(self) -> bool:
        return not self.failed and not self.blocked

    @property
    def exit_code(self) -> int:
        """0 when everything ran; 2 when every failure was a user error (bad input, with a fix);
        1 when a stage crashed."""
        if self.ok:
            return 0
        codes = {err.exit_code for err in self.errors.values()} or {1}
        return 2 if codes == {2} else 1


def _elapsed(start: float) -> str:
    s = time.monotonic() - start
    return f"{s:.1f}s" if s < 120 else f"{int(s // 60)}m{int(s % 60):02d}s"


def _not_writable(folder: Path, err: OSError) -> HubflowError:
    where = f" ({err.filename})" if err.filename else ""
    return HubflowError(
        f"cannot write {folder}: {err.strerror}{where}",
        hint="`hubflow run` keeps its lock, logs and work folders in .hubflow beside the manifest: "
        "run it where that folder is writable",
    )


@dataclass(frozen=True)
class Placement:
    """Where the scheduler put one stage: its CPU slots, its GPUs, and whether other stages may
    run beside it (then ``threads: auto`` takes its slots, not every free core)."""

    cpus: int = 1
    gpus: list[str] = field(default_factory=list)
    need: schedule.Need = field(default_factory=schedule.Need)
    shared: bool = False


class Runner:
    def __init__(
        self,
        project: Project,
        *,
        echo: Echo = print,
        stream_logs: bool = True,
        jobs: int | None = None,
        lease_timeout: float | None = None,
    ) -> None:
        """``jobs``: CPU slots filled at once (default :func:`hubflow.schedule.default_jobs`: one per
        usable core, or ``HUBFLOW_JOBS``); ``lease_timeout``: seconds after which another launcher's
        silent lease is stale (default ``HUBFLOW_LEASE_TIMEOUT``, 300)."""
        self.project = project
        self._echo_lock = threading.Lock()
        self._raw_echo = echo
        self.stream_logs = stream_logs
        self.state = project.manifest.state_dir
        self.jobs = jobs if jobs is not None else schedule.default_jobs(usable_cores(), constants.env_jobs())
        if self.jobs < 1:
            raise HubflowError(
                f"--jobs {self.jobs}: run at least one stage at a time", hint="pass --jobs 1 or more"
            )
        self.lease_timeout = lease_timeout if lease_timeout is not None else constants.env_lease_timeout()
        self._stop = threading.Event()
        self._fingerprints: dict[str, tuple[str, dict[str, Any], dict[str, str]]] = {}
        self._result_fp: dict[str, str | None] = {}
        """Stage -> the fingerprint of its result in this run (a ``STAGE@LABEL`` input is its revision)."""

    def echo(self, text: str) -> None:
        """One line of progress; lines of stages running at once never interleave."""
        with self._echo_lock:
            self._raw_echo(text)

    # -- the run lock -------------------------------------------------------
    def acquire(self, wait: bool) -> FileLock:
        """The state folder's run lock (shared by every manifest in this folder: they share
        ``.hubflow``). When it is held, the error names the manifest that holds it."""
        path = self.state / "run.lock"
        lock = FileLock(str(path), timeout=-1 if wait else 0)
        try:
            self.state.mkdir(parents=True, exist_ok=True)
            lock.acquire()
        except Timeout as exc:
            raise self._locked() from exc
        except OSError as err:
            if err.errno in NOT_WRITABLE:
                raise _not_writable(self.state, err) from None
            raise
        holder = {"pid": os.getpid(), "manifest": str(self.project.manifest.path)}
        (self.state / HOLDER_FILE).write_text(json.dumps(holder), encoding="utf-8")
        return lock

    def _locked(self) -> RunLocked:
        try:
            holder = json.loads((self.state / HOLDER_FILE).read_text(encoding="utf-8"))
            pid, manifest = holder.get("pid", "?"), holder.get("manifest") or "a manifest"
        except (OSError, ValueError, AttributeError):
            pid, manifest = "?", "a manifest"
        asked = str(self.project.manifest.path)
        if manifest == asked:
            message = f"another `hubflow run` is running {manifest} (pid {pid})"
        else:
            message = (
                f"another `hubflow run` is running {manifest} (pid {pid}); {Path(asked).name} shares "
                f"its state folder {self.state}, so it waits for that run"
            )
        return RunLocked(message, hint="wait for it to finish, or pass --wait to queue behind it")

    # -- the run ------------------------------------------------------------
    def run(self, plan: list[StagePlan], *, keep_going: bool = False, wait: bool = False) -> RunSummary:
        lock_handle = self.acquire(wait)
        try:
            with interruptible():
                stop_orphans(self.state / "work", self.echo)
                if any(p.action == "run" for p in plan):
                    self.project.hub.check_writable()  # cheap checks first: before hours of compute
                return self._run(plan, keep_going)
        finally:
            lock_handle.release()

    def _run(self, plan: list[StagePlan], keep_going: bool) -> RunSummary:
        """Start every stage whose inputs are ready, up to ``jobs`` CPU slots at once, each in its own
        process (a worker thread here waits for it); all bookkeeping (the lock, the summary, what is
        ready next) happens in this thread, in the order stages finish."""
        graph = self.project.graph
        lock = self.project.lock()
        keep = set(graph.nodes)
        if lock.migrated_from is not None and lock.stages:
            self.echo(
                f"hubflow: {lock.path.name} starts from this manifest's {len(lock.stages)} entries in the "
                f"shared {lock.migrated_from.name} (each manifest now has its own lock)"
            )
            lock.write(keep)
        summary = RunSummary()
        produced: dict[str, dict[str, str]] = {}
        to_run = [p for p in plan if p.action == "run"]
        start = time.monotonic()
        jobs = f" (--jobs {self.jobs})" if self.jobs > 1 and len(to_run) > 1 else ""
        self.echo(f"hubflow: {len(to_run)} of {len(plan)} stage(s) to run{jobs}")
        for sp in plan:
            if sp.action == "skip":
                produced[sp.name] = sp.outputs
                self._result_fp[sp.name] = sp.fingerprint
                summary.skipped.append(sp.name)
                self.restore_main(sp.name, sp.outputs)
                entry = lock.stages.get(sp.name)
                if entry is None or entry.fingerprint != sp.fingerprint or entry.outputs != sp.outputs:
                    seconds = entry.seconds if entry is not None and entry.outputs == sp.outputs else None
                    lock.record(
                        sp.name, self._entry(sp, sp.fingerprint, sp.components, sp.outputs, seconds), keep
                    )
        by_name = {sp.name: sp for sp in to_run}
        upstream = {sp.name: sorted(graph.nodes[sp.name].upstream) for sp in plan}
        needs = {n: self._need(sp) for n, sp in by_name.items()}
        gpus = self._machine_gpus(needs)
        pool = schedule.Pool(self.jobs, list(gpus))
        waiting = [sp.name for sp in to_run]
        done = set(summary.skipped)
        running: dict[
            Future[tuple[str, dict[str, str]]], tuple[str, float, schedule.Need, list[str], str]
        ] = {}
        counter = iter(range(1, len(to_run) + 1))
        n = len(to_run)
        stopping = False
        self._stop.clear()
        with ThreadPoolExecutor(max_workers=max(1, self.jobs), thread_name_prefix="stage") as threads:
            try:
                while waiting or running:
                    moved = False
                    for name in list(waiting):
                        cause = schedule.blocked_by(name, upstream, set(summary.failed), summary.blocked)
                        if cause is not None:
                            waiting.remove(name)
                            summary.blocked[name] = cause
                            self.echo(
                                f"[{next(counter)}/{n}] {name}: not run, it depends on failed stage {cause!r}"
                            )
                    candidates = [] if stopping else schedule.ready(waiting, upstream, done)
                    starting: list[str] = []
                    for name in candidates:
                        sp = by_name[name]
                        try:
                            inputs, fp, components, found = self._prepare(sp, produced)
                        except HubflowError as exc:  # a revision its producer did not publish
                            waiting.remove(name)
                            summary.failed[name] = str(exc)
                            summary.errors[name] = exc
                            self.echo(
                                f"[{next(counter)}/{n}] {name}: not run, an input is missing (the error follows)"
                            )
                            if not keep_going:
                                stopping = True
                            moved = True
                            continue
                        if found is not None:
                            waiting.remove(name)
                            self.echo(
                                f"[{next(counter)}/{n}] {name}: up to date (its inputs were re-made identically)"
                            )
                            produced[name] = found
                            self._result_fp[name] = fp
                            lock.record(name, self._entry(sp, fp, components, found), keep)
                            summary.skipped.append(name)
                            done.add(name)
                            moved = True
                        else:
                            starting.append(name)
                    if moved:
                        continue  # its dependents may be ready now
                    for name, assigned in schedule.to_start(starting, needs, pool, self.jobs):
                        sp = by_name[name]
                        inputs, fp, components, _ = self._prepare(sp, produced)
                        need = needs[name]
                        pool.cpus -= min(need.cpus, self.jobs)
                        pool.gpus = [g for g in pool.gpus if g not in assigned]
                        waiting.remove(name)
                        beside = bool(running) or self._may_run_beside(name, waiting, upstream)
                        place = Placement(
                            cpus=min(need.cpus, self.jobs), gpus=assigned, need=need, shared=beside
                        )
                        i = next(counter)
                        on_gpus = f" on GPU {','.join(assigned)}" if assigned else ""
                        self.echo(f"[{i}/{n}] {name} ({sp.kind}): running{on_gpus}; {'; '.join(sp.reasons)}")
                        prefix = f"[{i}/{n}] {name}"
                        future = threads.submit(self._work, sp, fp, components, inputs, place, prefix)
                        running[future] = (name, time.monotonic(), need, assigned, prefix)
                    if not running:
                        break  # nothing can start: the rest is blocked (or the run is stopping)
                    finished, _ = wait(list(running), timeout=0.5, return_when=FIRST_COMPLETED)
                    for future in finished:
                        name, t0, need, assigned, prefix = running.pop(future)
                        pool.cpus += min(need.cpus, self.jobs)
                        pool.gpus = [g for g in gpus if g in pool.gpus or g in assigned]
                        sp = by_name[name]
                        try:
                            how, outputs = future.result()
                        except HubflowError as exc:
                            summary.failed[name] = str(exc)
                            summary.errors[name] = exc
                            what = "stopped on a user error" if exc.exit_code == 2 else "FAILED"
                            self.echo(f"{prefix}: {what} after {_elapsed(t0)} (the error follows)")
                            if not keep_going:
                                stopping = True
                            continue
                        fp = self._fingerprints[name][0]
                        components = self._fingerprints[name][1]
                        produced[name] = outputs
                        self._result_fp[name] = fp
                        done.add(name)
                        pubs = ", ".join(
                            f"{o.rsplit('@', 1)[0]}@{o.rsplit('@', 1)[1][:8]}" for o in outputs.values()
                        )
                        if how == "reused":
                            lock.record(name, self._entry(sp, fp, components, outputs), keep)
                            summary.skipped.append(name)
                            self.echo(f"{prefix}: reused the result another launcher published -> {pubs}")
                            continue
                        lock.record(
                            name, self._entry(sp, fp, components, outputs, time.monotonic() - t0), keep
                        )
                        summary.ran.append(name)
                        self.echo(f"{prefix}: done in {_elapsed(t0)} -> {pubs}")
            except BaseException:
                self._stop.set()  # every running stage stops its process group; then this re-raises
                wait(list(running))
                raise
        if waiting and summary.failed:  # stopped after a failure (no --keep-going): the rest is not run
            first = next(iter(summary.failed))
            for name in waiting:
                summary.blocked[name] = first
        self.echo(
            f"hubflow: {len(summary.ran)} ran, {len(summary.skipped)} up to date, "
            f"{len(summary.failed)} failed, {len(summary.blocked)} not run; total {_elapsed(start)}"
        )
        if summary.ran and not summary.failed and not summary.blocked:
            self.echo_where(plan)
        return summary

    def resolve_inputs(
        self, sp: StagePlan, produced: dict[str, dict[str, str]], fingerprints: dict[str, str | None]
    ) -> dict[str, str]:
        """Input name -> ``TYPE:NS/NAME@COMMIT``: external inputs as planned, a stage's output at the
        commit it produced in this run, a ``STAGE@LABEL`` input at that revision of it (the commit tagged
        ``LABEL-<fingerprint[:12]>`` of the producer's current result). Raises StageUserError when the
        producer did not publish that revision."""
        node = self.project.graph.nodes[sp.name]
        inputs = dict(sp.inputs)
        for input_name, edge in node.stage_inputs.items():
            if edge.revision is None:
                inputs[input_name] = produced[edge.stage][edge.output]
                continue
            tag = revision_tag(edge.revision, fingerprints.get(edge.stage) or "")
            repo = self.project.graph.nodes[edge.stage].outputs[edge.output]
            hub = self.project.hub
            tags = hub.list_refs(repo).tags if hub.repo_exists(repo) else {}
            if tag in tags:
                inputs[input_name] = f"{repo}@{tags[tag]}"
                continue
            fp12 = tag.rsplit("-", 1)[-1]
            have = sorted((t[: -len(fp12) - 1] for t in tags if t.endswith("-" + fp12)), key=_label_order)
            raise StageUserError(
                f"stage {sp.name!r}, input {input_name!r}: stage {edge.stage!r} published no revision "
                f"{edge.revision} of {repo} for its current result (fingerprint {fp12}); it published "
                + (", ".join(have) if have else "none"),
                hint="read a revision it published; a run that stopped early (a KL budget, early stopping) or "
                "ran fewer steps than planned publishes only the checkpoints it reached",
            )
        return inputs

    def _prepare(
        self, sp: StagePlan, produced: dict[str, dict[str, str]]
    ) -> tuple[dict[str, str], str, dict[str, Any], dict[str, str] | None]:
        """The stage's inputs (its upstream results), fingerprint, components, and its published
        outputs when a result with that fingerprint exists already (None when forced)."""
        inputs = self.resolve_inputs(sp, produced, self._result_fp)
        if sp.name in self._fingerprints and self._fingerprints[sp.name][2] == inputs:
            fp, components, _ = self._fingerprints[sp.name]
        else:
            fp, components = stage_fingerprint(self.project.static[sp.name], inputs)
            self._fingerprints[sp.name] = (fp, components, inputs)
        found = None if sp.reasons == ["forced"] else self._published(sp.name, fp)
        return inputs, fp, components, found

    def _published(self, name: str, fp: str) -> dict[str, str] | None:
        hub = self.project.hub
        outputs = self.project.graph.nodes[name].outputs
        tags = {r: hub.list_refs(r).tags for r in outputs.values() if hub.repo_exists(r)}
        return published_outputs(fp, outputs, tags)

    def _need(self, sp: StagePlan) -> schedule.Need:
        res = self.project.manifest.stages[sp.name].resources
        if res.launcher == "ray":  # its CPUs and GPUs are the cluster's; here it is one waiting thread
            return schedule.Need(cpus=1, gpus=0)
        return schedule.Need(cpus=res.cpus, gpus=res.gpus)

    def _machine_gpus(self, needs: dict[str, schedule.Need]) -> list[str]:
        """The GPUs stages may reserve (looked for only when a stage asks for one); a stage asking
        for more than there are fails here, before anything runs."""
        wanted = {n: need.gpus for n, need in needs.items() if need.gpus > 0}
        if not wanted:
            return []
        gpus = schedule.machine_gpus(constants.env_cuda_visible_devices())
        too_many = {n: k for n, k in wanted.items() if k > len(gpus)}
        if too_many:
            name, k = sorted(too_many.items())[0]
            raise HubflowError(
                f"stage {name!r} asks for {k} GPU(s) (resources.gpus) but this machine shows "
                f"{len(gpus)} (CUDA_VISIBLE_DEVICES / nvidia-smi -L)",
                hint="lower resources.gpus, or run it where enough GPUs are visible",
            )
        return gpus

    @staticmethod
    def _may_run_beside(name: str, waiting: list[str], upstream: dict[str, list[str]]) -> bool:
        """Whether a stage still waiting could start while ``name`` runs (one that does not need it)."""
        below: set[str] = {name}
        changed = True
        while changed:
            changed = False
            for w in waiting:
                if w not in below and any(u in below for u in upstream.get(w, ())):
                    below.add(w)
                    changed = True
        return any(w not in below for w in waiting)

    def _work(
        self,
        sp: StagePlan,
        fp: str,
        components: dict[str, Any],
        inputs: dict[str, str],
        place: Placement,
        prefix: str,
    ) -> tuple[str, dict[str, str]]:
        """In a worker thread: hold the stage's lease in the hub (or reuse the result of the launcher
        that holds it), run the stage, publish, release. Returns ("ran" | "reused", outputs)."""
        repos = self.project.manifest.stages[sp.name].output_repos()
        forced = sp.reasons == ["forced"]
        held: lease.Lease | None = None
        if repos:
            held, found = lease.claim(
                self.project.hub,
                repos[sorted(repos)[0]],
                sp.name,
                fp,
                published=(lambda: None) if forced else (lambda: self._published(sp.name, fp)),
                echo=lambda text: self.echo(f"{prefix}: {text}"),
                timeout=self.lease_timeout,
                stop=self._stop,
            )
            if found is not None:
                return "reused", found
        try:
            if held is not None:
                held.start()
            return "ran", self.execute(sp.name, fp, components, inputs, placement=place)
        finally:
            if held is not None:
                held.release()

    def echo_where(self, plan: list[StagePlan]) -> None:
        """Where the results are, and the two lines of Python that load the last model a user runs."""
        manifest = self.project.manifest
        try:
            shown = os.path.relpath(manifest.path)
        except ValueError:
            shown = str(manifest.path)
        if manifest.hub.backend == "local":
            self.echo(f"hubflow: results are in the local hub {manifest.hub_root()}")
        self.echo(
            f"  see them: hubflow status {shown} · hubflow report {shown} · "
            f"hubflow pull --lock --manifest {shown} --to DIR"
        )
        final = [
            sp.name
            for sp in plan
            if getattr(type(manifest.stages[sp.name]), "POLICY_OUTPUT", None) is not None
        ]
        if final:
            self.echo(f"  load the final model (stage {final[-1]}) in Python:")
            self.echo("    from stages.lib.published import load_stage_model")
            self.echo(f"    model, tokenizer = load_stage_model({shown!r}, {final[-1]!r})")

    @staticmethod
    def _entry(
        sp: StagePlan,
        fp: str | None,
        components: dict[str, Any],
        outputs: dict[str, str],
        seconds: float | None = None,
    ) -> LockEntry:
        return LockEntry(
            kind=sp.kind,
            fingerprint=fp or "",
            inputs=dict(components.get("inputs", {})),
            outputs=dict(outputs),
            components=components,
            seconds=seconds,
        )

    def restore_main(self, name: str, outputs: dict[str, str]) -> None:
        """Point each output's ``main`` back at a reused result (found by fingerprint)
        with a new commit holding that result's tree, so ``main`` always matches the
        manifest. History is never rewritten."""
        hub = self.project.hub
        for text in outputs.values():
            ref = parse_ref(text)
            head = hub.resolve(ref.repo, "main")  # one ref read: this runs for every up-to-date stage
            if head == ref.revision or shows_result(hub.commit_info(ref.repo, head).metadata, ref.revision):
                continue  # (or main is a `hubflow accept` card commit of this very result)
            wanted = {(f.path, f.sha256) for f in hub.list_files(ref.repo, ref.revision)}
            if {(f.path, f.sha256) for f in hub.list_files(ref.repo, head)} == wanted:
                continue
            work = self.state / "work" / f"restore-{name}"
            rmtree(work)
            hub.snapshot(ref.repo, ref.revision, work)
            info = hub.commit_folder(
                ref.repo,
                work,
                message=f"hubflow: restore stage {name} result {ref.revision[:8]} (reused by fingerprint)",
                metadata={constants.METADATA_KEY: {"stage": name, "restored_from": ref.revision}},
                parent_commit=head,
            )
            rmtree(work)
            self.echo(f"  {name}: {ref.repo} main -> {info.commit_id[:8]} (restores {ref.revision[:8]})")

    # -- one stage ----------------------------------------------------------
    def execute(
        self,
        name: str,
        fp: str,
        components: dict[str, Any],
        inputs: dict[str, str],
        *,
        placement: Placement | None = None,
    ) -> dict[str, str]:
        """Run one stage in its own process and publish its outputs. Returns output -> ref@commit."""
        project, hub = self.project, self.project.hub
        cfg = project.manifest.stages[name]
        key = f"{name}-{fp[:16]}"
        attempt = new_attempt(self.state / "work" / key, project.manifest.path)
        resume = self.state / "resume" / key
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
        log_dir = self.state / "logs" / name / f"{stamp}-{fp[:12]}"
        for d in (attempt / "inputs", resume, log_dir):
            d.mkdir(parents=True, exist_ok=True)

        input_dirs: dict[str, str] = {}
        for input_name, text in inputs.items():
            ref = parse_ref(text)
            dest = attempt / "inputs" / input_name
            hub.snapshot(ref.repo, ref.revision or "main", dest)  # private copies: the store stays safe
            input_dirs[input_name] = str(dest)
        output_dirs = {o: attempt / "outputs" / o for o in cfg.output_texts()}
        for d in output_dirs.values():
            d.mkdir(parents=True)
        spec = {
            "stage": name,
            "kind": cfg.kind,
            "config": cfg.model_dump(mode="json"),
            "fingerprint": fp,
            "inputs": input_dirs,
            "input_refs": inputs,
            "outputs": {o: str(d) for o, d in output_dirs.items()},
            "resume_dir": str(resume),
            "base_dir": str(project.manifest.base_dir),
            "log_dir": str(log_dir),
            "trackers_dir": str(self.state / constants.TRACKERS_DIR),
            "resources": cfg.resources.model_dump(mode="json"),
            "result_path": str(attempt / "result.json"),
            "error_path": str(attempt / "error.json"),
            "runner": runner_identity(),
        }
        spec_path = attempt / "spec.json"
        spec_path.write_text(json.dumps(spec, indent=2), encoding="utf-8")
        log_path = log_dir / "stage.log"
        self._launch(name, cfg, spec_path, attempt, log_path, placement)
        result = json.loads((attempt / "result.json").read_text(encoding="utf-8"))
        self._check_outputs(name, cfg, output_dirs, log_path)
        curve, events = log_dir / "metrics.jsonl", log_dir / RUNS_DIR
        for folder in output_dirs.values():  # the training curve travels with the result
            if curve.is_file() and not (folder / "metrics.jsonl").exists():
                shutil.copyfile(curve, folder / "metrics.jsonl")
            if (
                events.is_dir() and not (folder / RUNS_DIR).exists()
            ):  # TensorBoard events, as Hub repos keep them
                shutil.copytree(events, folder / RUNS_DIR)
        self.publish_revisions(name, fp, result.get("revisions") or [], resume)
        published = self.publish(name, fp, components, inputs, output_dirs, result)
        rmtree(attempt)
        _remove_if_empty(attempt.parent)
        rmtree(resume)
        return published

    def _launch(
        self,
        name: str,
        cfg: StageConfig,
        spec: Path,
        attempt: Path,
        log_path: Path,
        placement: Placement | None = None,
    ) -> None:
        """Run the stage's process to its end; raise StageFailed / StageUserError unless it succeeded.
        ``placement``: the CPU slots and GPUs the scheduler gave it (None: the whole machine)."""
        place = placement or Placement(need=schedule.Need(cfg.resources.cpus, cfg.resources.gpus))
        base_dir = self.project.manifest.base_dir
        machines = machines_of(cfg.resources, base_dir, f"stage {name!r}")
        ranks = (
            local_ranks(machines) if machines.num_machines > 1 and cfg.resources.launcher == "local" else []
        )
        commands = [launch_command(cfg.resources, spec, base_dir, r) for r in ranks]
        cmd, env = commands[0] if commands else launch_command(cfg.resources, spec, base_dir)
        cores, busy = machine_state()
        threads, why = choose_threads(
            cfg.resources.threads,
            cores=cores,
            busy=busy,
            env=os.environ,
            slots=place.cpus if place.shared else None,
        )
        extra = {**thread_env(threads), **QUIET_LIBRARIES, **schedule.gpu_env(place.gpus, place.need)}
        env = {**env, **extra}
        timeout_min = cfg.resources.timeout_minutes
        with open(log_path, "wb") as log:
            log.write(f"hubflow: threads {why}\n".encode())
            for c, _ in commands[1:] if commands else []:
                log.write(("$ " + " ".join(c) + "\n").encode())
            log.write(("$ " + " ".join(cmd) + "\n").encode())
            log.flush()
            timeout = timeout_min * 60 if timeout_min else None
            if cfg.resources.launcher == "ray":
                code = self._launch_ray(cfg, spec, attempt, log, env, timeout, name)
            elif commands:  # every machine rank on this host, over loopback
                log.write(
                    f"hubflow: {len(ranks)} machine ranks on this host, rank 0 at "
                    f"{ranks[0].main_process_ip}:{ranks[0].main_process_port}\n".encode()
                )
                code = run_ranks(
                    [(c, {**os.environ, **e, **extra, "PYTHONUNBUFFERED": "1"}) for c, e in commands],
                    attempt,
                    log,
                    timeout=timeout,
                    on_line=lambda line: self._stream(line, name),
                    stop=self._stop,
                )
            else:
                code = run_attempt(
                    cmd,
                    {**os.environ, **env, "PYTHONUNBUFFERED": "1"},
                    attempt,
                    log,
                    timeout=timeout,
                    on_line=lambda line: self._stream(line, name),
                    stop=self._stop,
                )
            err = attempt / "error.json"
            info = json.loads(err.read_text(encoding="utf-8")) if code != 0 and err.exists() else None
            if info is not None:  # the message goes to the log here and to the console once, at the end
                hint = f"\n  fix: {info['hint']}" if info.get("hint") else ""
                log.write(f"\nhubflow: the stage stopped: {info['message']}{hint}\n".encode())
            elif code is None:
                log.write(
                    f"\nhubflow: killed after {timeout_min} minutes (resources.timeout_minutes)\n".encode()
                )
        if code == 0 and (attempt / "result.json").exists():
            return
        if info is not None:
            # error.json exists only when the stage raised a HubflowError (accelerate launch turns
            # the worker's USER_ERROR_EXIT into 1, so the file decides, and its class's exit code)
            cls = StageUserError if info.get("exit_code", 2) == 2 else StageFailed
            raise cls(f"stage {name!r}: {info['message']}\n  log: {log_path}", info.get("hint"))
        if code is None:
            raise StageFailed(
                f"stage {name!r} was killed after {timeout_min} minutes (resources.timeout_minutes); "
                f"nothing was published\n  log: {log_path}",
                hint="raise resources.timeout_minutes, or make the stage faster",
            )
        status = f"exit status {code}" if code else "exit status 0 but no result"
        raise StageFailed(
            f"stage {name!r} failed ({status}); nothing was published\n  log: {log_path}",
            hint=f"read the log, fix the cause, then `hubflow run {name}` (finished stages are not re-run)",
        )

    def _launch_ray(
        self,
        cfg: StageConfig,
        spec: Path,
        attempt: Path,
        log: Any,
        env: dict[str, str],
        timeout: float | None,
        name: str | None = None,
    ) -> int | None:
        """The stage's worker as a Ray task (hubflow/launch/ray.py); its outputs land in
        ``attempt``. (A multi-node stage on Ray is refused at load: hubflow/launch/machines.py.)"""
        from hubflow.launch.ray import cluster_address, run_on_ray

        manifest = self.project.manifest
        address = cluster_address(manifest.cluster.address)
        log.write(f"hubflow: launcher ray, cluster {address}\n".encode())
        hub = {**manifest.hub.model_dump(mode="json"), "root": str(manifest.hub_root())}
        return run_on_ray(
            spec,
            attempt,
            log,
            resources=cfg.resources,
            env=env,
            address=address,
            hub_settings=hub,
            timeout=timeout,
            on_line=lambda line: self._stream(line, name),
            stop=self._stop,
        )

    def _stream(self, line: bytes, name: str | None = None) -> None:
        """One line of a stage's output on the console, prefixed by the stage's name."""
        if self.stream_logs:
            text = line.decode("utf-8", "replace").rstrip("\n")
            self.echo(f"    {name} | {text}" if name else "    " + text)

    def _check_outputs(self, name: str, cfg: StageConfig, output_dirs: dict[str, Path], log: Path) -> None:
        """A run that wrote no file into an output publishes nothing (unless the kind says that is valid)."""
        if type(cfg).ALLOW_EMPTY_OUTPUT:
            return
        for out_name, folder in output_dirs.items():
            if not any(p.is_file() for p in folder.rglob("*")):
                repo = cfg.output_repos()[out_name]
                raise StageFailed(
                    f"stage {name!r} finished but wrote no file to its output {out_name!r} ({repo}); "
                    f"nothing was published\n  log: {log}",
                    hint="the stage must write its result into its output folder (a `python` stage: into "
                    "the `output` folder its function receives); a kind whose empty result is valid "
                    "sets ALLOW_EMPTY_OUTPUT = True on its Config",
                )

    def publish_revisions(self, name: str, fp: str, revisions: list[dict[str, Any]], resume: Path) -> None:
        """Commit a stage's intermediate results (online rounds, checkpoints), in order, to each output
        repo's ``checkpoints`` branch, tagged ``LABEL-<fingerprint[:12]>``; a revision already tagged (a
        resumed run publishing its finished rounds again) is not committed twice."""
        if not revisions:
            return
        hub = self.project.hub
        cfg = self.project.manifest.stages[name]
        repos = cfg.output_repos()
        for rev in revisions:
            out_name, label, folder = rev["output"], str(rev["label"]), Path(rev["folder"])
            if out_name not in repos:
                raise StageFailed(
                    f"stage {name!r} returned a revision of output {out_name!r}, which it does not have "
                    f"(outputs: {sorted(repos)})",
                    hint="a kind's Revision.output names one of the stage's outputs",
                )
            if not folder.resolve().is_relative_to(resume.resolve()) or not folder.is_dir():
                raise StageFailed(
                    f"stage {name!r}: revision {label!r} is not a folder under the stage's resume folder: {folder}",
                    hint="write intermediate results under ctx.resume_dir",
                )
            repo = repos[out_name]
            tag = revision_tag(label, fp)
            hub.create_repo(repo, exist_ok=True)
            refs = hub.list_refs(repo)
            if tag in refs.tags:
                continue
            parent = refs.branches.get(CHECKPOINT_BRANCH)
            if parent is None and "main" in refs.branches:  # a Hub commits only to a branch that exists
                hub.create_branch(repo, CHECKPOINT_BRANCH, revision=refs.branches["main"])
                parent = refs.branches["main"]
            metadata = {
                constants.METADATA_KEY: {
                    "stage": name,
                    "kind": cfg.kind,
                    "fingerprint": fp,
                    "output": out_name,
                    "revision": label,
                    "metrics": rev.get("metrics") or {},
                }
            }
            info = hub.commit_folder(
                repo,
                folder,
                message=f"hubflow: stage {name} ({cfg.kind}) {label}",
                metadata=metadata,
                branch=CHECKPOINT_BRANCH,
                parent_commit=parent,
            )
            hub.create_tag(repo, tag, revision=info.commit_id, exist_ok=True)
            self.echo(
                f"  {name}: {label} -> {repo}@{info.commit_id[:8]} (branch {CHECKPOINT_BRANCH}, tag {tag})"
            )

    def publish(
        self,
        name: str,
        fp: str,
        components: dict[str, Any],
        inputs: dict[str, str],
        output_dirs: dict[str, Path],
        result: dict[str, Any],
    ) -> dict[str, str]:
        """One commit per output (parent checked), tagged with the fingerprint."""
        hub = self.project.hub
        cfg = self.project.manifest.stages[name]
        repos = cfg.output_repos()
        published: dict[str, str] = {}
        for out_name, folder in output_dirs.items():
            repo = repos[out_name]
            hub.create_repo(repo, exist_ok=True)
            record = cards.lineage(
                stage=name,
                kind=cfg.kind,
                fingerprint=fp,
                components=components,
                inputs=inputs,
                outputs={o: str(r) for o, r in repos.items()},
                revisions={
                    k: e.revision
                    for k, e in self.project.graph.nodes[name].stage_inputs.items()
                    if e.revision is not None
                },
            )
            (folder / "lineage.json").write_text(cards.dumps(record), encoding="utf-8")
            (folder / "metrics.json").write_text(cards.dumps(result.get("metrics", {})), encoding="utf-8")
            images = {a: p for a, p in result.get("images", {}).items() if (folder / p).exists()}
            card_text = cards.card(
                repo,
                record,
                metrics=result.get("metrics"),
                sections=result.get("card_sections"),
                extra_metadata=result.get("card_metadata"),
                images=images,
            )
            (folder / "README.md").write_text(card_text, encoding="utf-8")
            metadata = {
                constants.METADATA_KEY: {
                    "stage": name,
                    "kind": cfg.kind,
                    "fingerprint": fp,
                    "output": out_name,
                    "inputs": inputs,
                }
            }
            commit = self._commit_output(
                name, repo, folder, f"hubflow: stage {name} ({cfg.kind})", metadata, fp
            )
            hub.create_tag(repo, fingerprint_tag(fp), revision=commit, exist_ok=True)
            published[out_name] = f"{repo}@{commit}"
        return published

    def _commit_output(
        self, name: str, repo: RepoRef, folder: Path, message: str, metadata: dict[str, Any], fp: str
    ) -> str:
        """Commit ``folder`` on ``main``. When another writer moved ``main`` meanwhile, the finished
        output is never thrown away: reuse the new head if it is this result, else commit on top."""
        hub = self.project.hub
        parent = hub.list_refs(repo).branches.get("main")
        for _ in range(MAX_COMMIT_RACES):
            try:
                return hub.commit_folder(
                    repo, folder, message=message, metadata=metadata, parent_commit=parent
                ).commit_id
            except CommitConflict:
                refs = hub.list_refs(repo)
                head = refs.branches.get("main")
                if head is None:
                    parent = None
                    continue
                head_meta = hub.commit_info(repo, head).metadata.get(constants.METADATA_KEY, {})
                head_fp = head_meta.get("fingerprint") if isinstance(head_meta, dict) else None
                action, why = after_commit_conflict(fp, head, head_fp, refs.tags.get(fingerprint_tag(fp)))
                self.echo(f"  {name}: {repo}: {why}")
                if action == "reuse":
                    return head
                parent = head
        raise CommitConflict(
            f"stage {name!r}: {repo} main moved {MAX_COMMIT_RACES} times while its output was being published",
            hint="other writers keep committing to this repo: run again when they are done "
            "(the finished stage is re-run; give each writer its own output repo)",
        )


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass


def _label_order(label: str) -> tuple[str, int]:
    head, _, number = label.rpartition("-")
    return (head, int(number)) if number.isdigit() else (label, 0)


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass
