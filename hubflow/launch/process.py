"""A stage's process on this machine: one attempt folder per start, identified owners,
stopped on interruption, and orphans found and stopped before a stage runs again.

Every start of a stage gets its own attempt folder (``WORK/NAME-FP/a-<runner pid>-<n>``)
holding ``owner.json``: the runner's and the worker's pid and start time. A published
commit is made from one attempt folder only, so the files of two processes never mix.
A worker whose runner died (``kill -9``) is an orphan: it stops itself (see
:mod:`hubflow.launch.guard`), and :func:`stop_orphans` stops any that remain, by pid *and*
start time, before the next run of that state folder starts anything.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from hubflow.files import rmtree

OWNER_FILE = "owner.json"
STOP_GRACE_SECONDS = 5.0
"""After SIGTERM, how long a stage's processes get to exit before SIGKILL."""


# --- process identity ----------------------------------------------------------------


def start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (Linux: /proc/PID/stat field 22), None if unknown.

    A pid plus its start time names one process: a reused pid has another start time.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # the name (field 2) may hold spaces
    return fields[19] if len(fields) > 19 else None


def is_running(pid: int, started: str | None) -> bool:
    """True when ``pid`` exists (and, where start times are known, is the same process)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    if started is None:
        return True
    now = start_time(pid)
    return now is None or now == started


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def stop_group(
    pgid: int, grace: float = STOP_GRACE_SECONDS, reap: Callable[[], object] | None = None
) -> None:
    """SIGTERM the process group, wait up to ``grace`` seconds, then SIGKILL what is left.

    ``reap``: for a leader that is this process's child (``Popen.poll``): an exited leader stays
    a zombie, and so its group "alive", until it is reaped."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    _wait_gone(pgid, grace, reap)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        return
    _wait_gone(pgid, grace, reap)


def _wait_gone(pgid: int, grace: float, reap: Callable[[], object] | None) -> None:
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if reap is not None:
            reap()
        if not group_alive(pgid):
            return
        time.sleep(0.05)


# --- attempts ---------------------------------------------------------------------------


@dataclass
class Owner:
    """Who an attempt folder belongs to."""

    runner_pid: int
    runner_start: str | None
    manifest: str
    worker_pid: int | None = None
    worker_start: str | None = None
    more_workers: list[list[Any]] = field(default_factory=list)
    """[pid, start] of the other machine ranks' process groups of a multi-node stage on this host."""


def runner_identity() -> dict[str, Any]:
    """This process as a worker's spec names its runner (the worker stops itself when it is gone)."""
    return {"pid": os.getpid(), "start": start_time(os.getpid())}


def new_attempt(stage_dir: Path, manifest: Path) -> Path:
    """A fresh attempt folder under ``stage_dir`` (``a-<runner pid>-<n>``), owned by this process."""
    stage_dir.mkdir(parents=True, exist_ok=True)
    n = 0
    while True:
        folder = stage_dir / f"a-{os.getpid()}-{n}"
        try:
            folder.mkdir()
            break
        except FileExistsError:
            n += 1
    owner = Owner(os.getpid(), start_time(os.getpid()), str(manifest))
    _write_owner(folder, owner)
    return folder


def _write_owner(folder: Path, owner: Owner) -> None:
    tmp = folder / f".{OWNER_FILE}.tmp"
    tmp.write_text(json.dumps(asdict(owner)), encoding="utf-8")
    os.replace(tmp, folder / OWNER_FILE)


def read_owner(folder: Path) -> Owner | None:
    try:
        data = json.loads((folder / OWNER_FILE).read_text(encoding="utf-8"))
        return Owner(**data)
    except (OSError, ValueError, TypeError):
        return None


def stop_orphans(work: Path, echo: Callable[[str], None]) -> list[int]:
    """Stop the worker of every attempt under ``work`` whose runner is gone, then remove every
    attempt that is not running (and work folders of the layout before attempts existed).
    Call it holding the run lock of this state folder: no other runner of it is alive, and
    this one has no stage running yet. Returns the pids stopped."""
    stopped: list[int] = []
    if not work.is_dir():
        return stopped
    for stage_dir in sorted(p for p in work.iterdir() if p.is_dir()):
        if (stage_dir / "spec.json").exists():  # one folder per stage and fingerprint: the old layout
            rmtree(stage_dir)
            continue
        for folder in sorted(stage_dir.glob("a-*")):
            owner = read_owner(folder)
            if owner is not None and owner.runner_pid != os.getpid():
                if is_running(owner.runner_pid, owner.runner_start):
                    continue  # its runner is alive (pid reuse aside): not ours to touch
                workers = [(owner.worker_pid, owner.worker_start), *((p, s) for p, s in owner.more_workers)]
                for pid, started in workers:
                    if pid is not None and _orphan_alive(pid, started):
                        echo(
                            f"hubflow: stopping orphaned stage process {pid} ({stage_dir.name}), "
                            "left by a run that died"
                        )
                        stop_group(pid)
                        stopped.append(pid)
            rmtree(folder)
    return stopped


def _orphan_alive(pid: int, started: str | None) -> bool:
    """The recorded worker still runs, or its leader is gone but members of its group remain
    (a pid is never reused while a process group of that id exists, so those are its own)."""
    if is_running(pid, started):
        return True
    return not is_running(pid, None) and group_alive(pid)


# --- running one attempt ------------------------------------------------------------------


class Interrupted(KeyboardInterrupt):
    """`hubflow run` got SIGTERM or SIGHUP (SIGINT stays KeyboardInterrupt)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextmanager
def interruptible() -> Iterator[None]:
    """While running stages, turn SIGTERM and SIGHUP into :class:`Interrupted` (as SIGINT is
    KeyboardInterrupt), so the code that started a stage stops it before the runner exits."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: Any) -> None:
        raise Interrupted(signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


class Cancelled(Exception):
    """The run stopped (interrupted, in another thread) while this stage's process was running."""


def run_attempt(
    cmd: list[str],
    env: dict[str, str],
    attempt: Path,
    log: BinaryIO,
    *,
    timeout: float | None,
    on_line: Callable[[bytes], None],
    stop: threading.Event | None = None,
) -> int | None:
    """Start ``cmd`` in its own session, record it in the attempt's owner file, stream its
    output to ``log`` (and ``on_line``), and wait. Whatever happens (timeout, Ctrl-C,
    SIGTERM, ``stop`` set by another thread, an error here), the stage's whole process group is
    gone when this returns. Returns the exit status, or None when ``timeout`` seconds passed and
    it was killed; raises :class:`Cancelled` when ``stop`` was set."""
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )
    try:
        owner = read_owner(attempt) or Owner(os.getpid(), start_time(os.getpid()), "")
        owner.worker_pid, owner.worker_start = proc.pid, start_time(proc.pid)
        _write_owner(attempt, owner)
        pump = threading.Thread(target=_pump, args=(proc, log, on_line), daemon=True)
        pump.start()
        code = _wait(proc, timeout, stop)
        stop_group(proc.pid, grace=STOP_GRACE_SECONDS if code is None else 0.5, reap=proc.poll)
        proc.wait()
        pump.join(timeout=10)
        return code
    except BaseException:
        stop_group(proc.pid, reap=proc.poll)
        proc.wait()
        raise


def _wait(proc: subprocess.Popen[bytes], timeout: float | None, stop: threading.Event | None) -> int | None:
    """The exit status, None after ``timeout`` seconds; :class:`Cancelled` as soon as ``stop`` is set."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        step = left if stop is None else (0.1 if left is None else min(0.1, left))
        try:
            return proc.wait(timeout=step)
        except subprocess.TimeoutExpired:
            if stop is not None and stop.is_set():
                raise Cancelled from None
            if deadline is not None and time.monotonic() >= deadline:
                return None


def _pump(proc: subprocess.Popen[bytes], log: BinaryIO, on_line: Callable[[bytes], None]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        log.write(line)
        log.flush()
        on_line(line)


def run_ranks(
    commands: list[tuple[list[str], dict[str, str]]],
    attempt: Path,
    log: BinaryIO,
    *,
    timeout: float | None,
    on_line: Callable[[bytes], None],
    stop: threading.Event | None = None,
) -> int | None:
    """The machine ranks of a multi-node stage on this host: each command (one ``accelerate launch``
    per machine rank) in its own session, all recorded in the attempt's owner file, their output
    prefixed ``[mI]`` in one log. The first rank to fail stops the others (a rank waiting for a dead
    peer would hang); returns 0 when every rank succeeded, else the first failure's exit status, None
    after ``timeout``; raises :class:`Cancelled` when ``stop`` was set. Every group is gone on return."""
    procs: list[subprocess.Popen[bytes]] = []
    write = threading.Lock()
    try:
        for cmd, env in commands:
            procs.append(
                subprocess.Popen(
                    cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, start_new_session=True
                )
            )
        owner = read_owner(attempt) or Owner(os.getpid(), start_time(os.getpid()), "")
        owner.worker_pid, owner.worker_start = procs[0].pid, start_time(procs[0].pid)
        owner.more_workers = [[p.pid, start_time(p.pid)] for p in procs[1:]]
        _write_owner(attempt, owner)
        pumps = [
            threading.Thread(target=_pump_ranked, args=(p, i, log, on_line, write), daemon=True)
            for i, p in enumerate(procs)
        ]
        for t in pumps:
            t.start()
        code = _wait_all(procs, timeout, stop)
        for p in procs:
            stop_group(p.pid, grace=STOP_GRACE_SECONDS if code is None else 0.5, reap=p.poll)
            p.wait()
        for t in pumps:
            t.join(timeout=10)
        return code
    except BaseException:
        for p in procs:
            stop_group(p.pid, reap=p.poll)
            p.wait()
        raise


def _wait_all(
    procs: list[subprocess.Popen[bytes]], timeout: float | None, stop: threading.Event | None
) -> int | None:
    """0 when all exited 0; the first non-zero exit status as soon as one fails; None after ``timeout``."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        codes = [p.poll() for p in procs]
        failed = [c for c in codes if c not in (None, 0)]
        if failed:
            return failed[0]
        if all(c == 0 for c in codes):
            return 0
        if stop is not None and stop.is_set():
            raise Cancelled
        if deadline is not None and time.monotonic() >= deadline:
            return None
        time.sleep(0.1)


def _pump_ranked(
    proc: subprocess.Popen[bytes],
    rank: int,
    log: BinaryIO,
    on_line: Callable[[bytes], None],
    write: threading.Lock,
) -> None:
    assert proc.stdout is not None
    prefix = f"[m{rank}] ".encode()
    for line in proc.stdout:
        with write:
            log.write(prefix + line)
            log.flush()
            on_line(prefix + line)
