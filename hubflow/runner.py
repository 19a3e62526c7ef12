"""Executes a plan: materialise inputs, launch each stale stage in its own
process, publish its outputs as one commit each, record the lock.

A failed stage publishes nothing, keeps its log and resume folder, and stops
its dependents; ``keep_going`` still runs the stages that do not depend on it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from hubflow import cards, constants
from hubflow.errors import HubflowError, RunLocked, StageFailed
from hubflow.fingerprint import stage_fingerprint
from hubflow.lock import LockEntry
from hubflow.plan import StagePlan, fingerprint_tag, published_outputs
from hubflow.project import Project
from hubflow.refs import parse_ref
from hubflow.stage import Resources

Echo = Callable[[str], None]


@dataclass
class RunSummary:
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    """Stage -> error text."""
    blocked: dict[str, str] = field(default_factory=dict)
    """Stage -> the failed stage it depends on."""

    @property
    def ok(self) -> bool:
        return not self.failed and not self.blocked


def _elapsed(start: float) -> str:
    s = time.monotonic() - start
    return f"{s:.1f}s" if s < 120 else f"{int(s // 60)}m{int(s % 60):02d}s"


def has_accelerator() -> bool:
    """Cheap check (no torch import) for an NVIDIA device."""
    return any(Path("/dev").glob("nvidia[0-9]*"))


def launch_command(resources: Resources, spec: Path, base_dir: Path) -> tuple[list[str], dict[str, str]]:
    """The command that runs one stage: plain Python, or ``accelerate launch`` when
    the stage asks for several processes or an accelerate config."""
    worker = ["-m", "hubflow.worker", str(spec)]
    if resources.num_processes == 1 and not resources.accelerate_config:
        return [sys.executable, *worker], {}
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    env: dict[str, str] = {}
    if resources.accelerate_config:
        cmd += ["--config_file", str((base_dir / resources.accelerate_config).resolve())]
    cmd += ["--num_processes", str(resources.num_processes)]
    if resources.cpu or not has_accelerator():
        # `--cpu --num_processes N` starts one process; this gives N gloo processes.
        env["ACCELERATE_USE_CPU"] = "1"
        if resources.num_processes > 1:
            cmd.append("--multi_gpu")
    elif resources.num_processes > 1 and not resources.accelerate_config:
        cmd.append("--multi_gpu")
    if resources.mixed_precision != "auto":
        cmd += ["--mixed_precision", resources.mixed_precision]
    return [*cmd, *worker], env


class Runner:
    def __init__(self, project: Project, *, echo: Echo = print, stream_logs: bool = True) -> None:
        self.project = project
        self.echo = echo
        self.stream_logs = stream_logs
        self.state = project.manifest.state_dir

    # -- the run lock -------------------------------------------------------
    def acquire(self, wait: bool) -> FileLock:
        self.state.mkdir(parents=True, exist_ok=True)
        path = self.state / "run.lock"
        lock = FileLock(str(path), timeout=-1 if wait else 0)
        try:
            lock.acquire()
        except Timeout as exc:
            holder = (
                (self.state / "run.pid").read_text().strip() if (self.state / "run.pid").exists() else "?"
            )
            raise RunLocked(
                f"another `hubflow run` is running {self.project.manifest.path} (pid {holder})",
                hint="wait for it to finish, or pass --wait to queue behind it",
            ) from exc
        (self.state / "run.pid").write_text(str(os.getpid()))
        return lock

    # -- the run ------------------------------------------------------------
    def run(self, plan: list[StagePlan], *, keep_going: bool = False, wait: bool = False) -> RunSummary:
        lock_handle = self.acquire(wait)
        try:
            return self._run(plan, keep_going)
        finally:
            lock_handle.release()

    def _run(self, plan: list[StagePlan], keep_going: bool) -> RunSummary:
        graph, hub = self.project.graph, self.project.hub
        lock = self.project.lock()
        keep = set(graph.nodes)
        summary = RunSummary()
        produced: dict[str, dict[str, str]] = {}
        to_run = [p for p in plan if p.action == "run"]
        start = time.monotonic()
        self.echo(f"hubflow: {len(to_run)} of {len(plan)} stage(s) to run")
        i = 0
        for idx, sp in enumerate(plan):
            node = graph.nodes[sp.name]
            if sp.action == "skip":
                produced[sp.name] = sp.outputs
                summary.skipped.append(sp.name)
                self.restore_main(sp.name, sp.outputs)
                entry = lock.stages.get(sp.name)
                if entry is None or entry.fingerprint != sp.fingerprint or entry.outputs != sp.outputs:
                    lock.record(sp.name, self._entry(sp, sp.fingerprint, sp.components, sp.outputs), keep)
                continue
            i += 1
            bad = sorted(u for u in node.upstream if u in summary.failed or u in summary.blocked)
            if bad:
                summary.blocked[sp.name] = bad[0]
                self.echo(f"[{i}/{len(to_run)}] {sp.name}: not run, it depends on failed stage {bad[0]!r}")
                continue
            inputs = dict(sp.inputs)
            for input_name, edge in node.stage_inputs.items():
                inputs[input_name] = produced[edge.stage][edge.output]
            fp, components = stage_fingerprint(self.project.static[sp.name], inputs)
            tags = {r: hub.list_refs(r).tags for r in node.outputs.values() if hub.repo_exists(r)}
            found = published_outputs(fp, node.outputs, tags)
            if found is not None and sp.reasons != ["forced"]:
                self.echo(f"[{i}/{len(to_run)}] {sp.name}: up to date (its inputs were re-made identically)")
                produced[sp.name] = found
                lock.record(sp.name, self._entry(sp, fp, components, found), keep)
                summary.skipped.append(sp.name)
                continue
            self.echo(f"[{i}/{len(to_run)}] {sp.name} ({sp.kind}): running; {'; '.join(sp.reasons)}")
            t0 = time.monotonic()
            try:
                outputs = self.execute(sp.name, fp, components, inputs)
            except HubflowError as exc:
                summary.failed[sp.name] = str(exc)
                self.echo(f"[{i}/{len(to_run)}] {sp.name}: FAILED after {_elapsed(t0)}\n{exc}")
                if not keep_going:
                    for rest in plan[idx + 1 :]:
                        if rest.action == "run":
                            summary.blocked[rest.name] = sp.name
                    break
                continue
            produced[sp.name] = outputs
            lock.record(sp.name, self._entry(sp, fp, components, outputs), keep)
            summary.ran.append(sp.name)
            pubs = ", ".join(f"{o.rsplit('@', 1)[0]}@{o.rsplit('@', 1)[1][:8]}" for o in outputs.values())
            self.echo(f"[{i}/{len(to_run)}] {sp.name}: done in {_elapsed(t0)} -> {pubs}")
        self.echo(
            f"hubflow: {len(summary.ran)} ran, {len(summary.skipped)} up to date, "
            f"{len(summary.failed)} failed, {len(summary.blocked)} not run; total {_elapsed(start)}"
        )
        return summary

    @staticmethod
    def _entry(
        sp: StagePlan, fp: str | None, components: dict[str, Any], outputs: dict[str, str]
    ) -> LockEntry:
        return LockEntry(
            kind=sp.kind,
            fingerprint=fp or "",
            inputs=dict(components.get("inputs", {})),
            outputs=dict(outputs),
            components=components,
        )

    def restore_main(self, name: str, outputs: dict[str, str]) -> None:
        """Point each output's ``main`` back at a reused result (found by fingerprint)
        with a new commit holding that result's tree, so ``main`` always matches the
        manifest. History is never rewritten."""
        hub = self.project.hub
        for text in outputs.values():
            ref = parse_ref(text)
            head = hub.resolve(ref.repo, "main")  # one ref read: this runs for every up-to-date stage
            if head == ref.revision:
                continue
            wanted = {(f.path, f.sha256) for f in hub.list_files(ref.repo, ref.revision)}
            if {(f.path, f.sha256) for f in hub.list_files(ref.repo, head)} == wanted:
                continue
            work = self.state / "work" / f"restore-{name}"
            _rmtree(work)
            hub.snapshot(ref.repo, ref.revision, work)
            info = hub.commit_folder(
                ref.repo,
                work,
                message=f"hubflow: restore stage {name} result {ref.revision[:8]} (reused by fingerprint)",
                metadata={constants.METADATA_KEY: {"stage": name, "restored_from": ref.revision}},
                parent_commit=head,
            )
            _rmtree(work)
            self.echo(f"  {name}: {ref.repo} main -> {info.commit_id[:8]} (restores {ref.revision[:8]})")

    # -- one stage ----------------------------------------------------------
    def execute(
        self, name: str, fp: str, components: dict[str, Any], inputs: dict[str, str]
    ) -> dict[str, str]:
        """Run one stage in its own process and publish its outputs. Returns output -> ref@commit."""
        project, hub = self.project, self.project.hub
        cfg = project.manifest.stages[name]
        key = f"{name}-{fp[:16]}"
        work = self.state / "work" / key
        resume = self.state / "resume" / key
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
        log_dir = self.state / "logs" / name / f"{stamp}-{fp[:12]}"
        if work.exists():
            _rmtree(work)
        for d in (work / "inputs", resume, log_dir):
            d.mkdir(parents=True, exist_ok=True)

        input_dirs: dict[str, str] = {}
        for input_name, text in inputs.items():
            ref = parse_ref(text)
            dest = work / "inputs" / input_name
            hub.snapshot(ref.repo, ref.revision or "main", dest)
            input_dirs[input_name] = str(dest)
        output_dirs = {o: work / "outputs" / o for o in cfg.output_texts()}
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
            "resources": cfg.resources.model_dump(mode="json"),
            "result_path": str(work / "result.json"),
            "error_path": str(work / "error.json"),
        }
        spec_path = work / "spec.json"
        spec_path.write_text(json.dumps(spec, indent=2), encoding="utf-8")
        log_path = log_dir / "stage.log"
        cmd, env = launch_command(cfg.resources, spec_path, project.manifest.base_dir)
        code = self._spawn(cmd, env, log_path, cfg.resources.timeout_minutes)
        if code != 0:
            err = work / "error.json"
            # error.json exists only when the stage raised a HubflowError (accelerate launch
            # turns the worker's USER_ERROR_EXIT into 1, so the file decides, not the code)
            if err.exists():
                info = json.loads(err.read_text(encoding="utf-8"))
                raise StageFailed(f"stage {name!r}: {info['message']}\n  log: {log_path}", info.get("hint"))
            raise StageFailed(
                f"stage {name!r} failed (exit status {code}); nothing was published\n  log: {log_path}",
                hint=f"read the log, fix the cause, then `hubflow run {name}` (finished stages are not re-run)",
            )
        result = json.loads((work / "result.json").read_text(encoding="utf-8"))
        published = self.publish(name, fp, components, inputs, output_dirs, result)
        _rmtree(work)
        _rmtree(resume)
        return published

    def _spawn(self, cmd: list[str], env: dict[str, str], log_path: Path, timeout_min: float | None) -> int:
        full_env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
        with open(log_path, "wb") as log:
            log.write(("$ " + " ".join(cmd) + "\n").encode())
            log.flush()
            proc = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=full_env, start_new_session=True
            )
            pump = threading.Thread(target=self._pump, args=(proc, log), daemon=True)
            pump.start()
            try:
                code = proc.wait(timeout=timeout_min * 60 if timeout_min else None)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                log.write(
                    f"\nhubflow: killed after {timeout_min} minutes (resources.timeout_minutes)\n".encode()
                )
                code = -signal.SIGKILL
            except BaseException:
                _kill_group(proc)
                raise
            pump.join()
        return code

    def _pump(self, proc: subprocess.Popen[bytes], log: Any) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            log.flush()
            if self.stream_logs:
                self.echo("    " + line.decode("utf-8", "replace").rstrip("\n"))

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
            parent = hub.list_refs(repo).branches.get("main")
            record = cards.lineage(
                stage=name,
                kind=cfg.kind,
                fingerprint=fp,
                components=components,
                inputs=inputs,
                outputs={o: str(r) for o, r in repos.items()},
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
            info = hub.commit_folder(
                repo,
                folder,
                message=f"hubflow: stage {name} ({cfg.kind})",
                metadata={
                    constants.METADATA_KEY: {
                        "stage": name,
                        "kind": cfg.kind,
                        "fingerprint": fp,
                        "output": out_name,
                        "inputs": inputs,
                    }
                },
                parent_commit=parent,
            )
            hub.create_tag(repo, fingerprint_tag(fp), revision=info.commit_id, exist_ok=True)
            published[out_name] = f"{repo}@{info.commit_id}"
        return published


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _rmtree(path: Path) -> None:
    """Remove a tree that may hold read-only files (input snapshots)."""

    def onerror(func: Any, p: str, _exc: Any) -> None:
        os.chmod(p, 0o700)
        os.chmod(os.path.dirname(p), 0o700)
        func(p)

    if path.exists():
        for root, dirs, _files in os.walk(path):
            for d in dirs:
                os.chmod(os.path.join(root, d), 0o700)
        shutil.rmtree(path, onerror=onerror)
