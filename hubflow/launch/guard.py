"""Run inside a stage's process: stop it when the `hubflow run` that started it dies.

Two mechanisms, so that a ``kill -9`` of the runner never leaves a stage running:

- Linux: ``prctl(PR_SET_PDEATHSIG, SIGKILL)`` (through ctypes): the kernel kills this process
  the moment its parent exits. Immediate, but it watches the *parent*, which under
  ``accelerate launch`` is the launcher, not the runner.
- Everywhere: a watchdog thread that checks the runner (pid and start time, from the spec)
  every :data:`POLL_SECONDS` and, once it is gone, kills this process's whole group (the
  launcher and every rank with it).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
import threading
from collections.abc import Mapping
from typing import Any

from hubflow.launch.process import is_running

PR_SET_PDEATHSIG = 1
POLL_SECONDS = 1.0


def set_parent_death_signal(sig: int = signal.SIGKILL) -> bool:
    """Ask the kernel to send ``sig`` to this process when its parent dies (Linux only)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def guard(runner: Mapping[str, Any] | None, parent_pid: int) -> None:
    """Stop this process (and its group) when its parent or the runner dies.

    ``runner``: ``{"pid", "start"}`` of the `hubflow run` process (None: not started by one).
    ``parent_pid``: ``os.getppid()`` read at start; if the parent died before the death
    signal was set, the parent pid has already changed and the process exits at once.
    """
    if runner is None:
        return
    set_parent_death_signal()
    pid, started = int(runner["pid"]), runner.get("start")
    if os.getppid() != parent_pid or not is_running(pid, started):
        _die()

    def watch() -> None:
        event = threading.Event()
        while not event.wait(POLL_SECONDS):
            if not is_running(pid, started):
                _die()

    threading.Thread(target=watch, name="hubflow-runner-watchdog", daemon=True).start()


def _die() -> None:
    """Kill this process's group when `hubflow run` made it (its own session), else just this process."""
    try:
        if os.getsid(0) == os.getpgrp():
            os.killpg(os.getpgrp(), signal.SIGKILL)
    finally:
        os._exit(137)
