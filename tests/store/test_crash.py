"""Crash safety: kill a committing process at any moment; the store stays consistent."""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from hubflow.hub.base import CommitAdd
from hubflow.hub.fsck import fsck
from hubflow.hub.local import LocalHub, sha256_file
from hubflow.refs import RepoRef

REPO = RepoRef("model", "org/crash")
CTX = mp.get_context("fork")
MiB = 1 << 20


def _make_files(folder: Path, rng: random.Random, count: int, low: int, high: int) -> dict[str, str]:
    folder.mkdir(parents=True)
    expected = {}
    for i in range(count):
        path = folder / f"shard-{i:03d}.bin"
        path.write_bytes(rng.randbytes(rng.randint(low, high)))
        expected[path.name] = sha256_file(path)
    return expected


def _commit_child(
    root: Path, folder: Path, parent: str, started: Any, crash_after_replace: int | None
) -> None:
    hub = LocalHub(root, link_sources=False)
    if crash_after_replace is not None:
        real_replace, calls, lock = os.replace, [0], threading.Lock()

        def replace(src: Any, dst: Any) -> None:
            with lock:  # blobs are renamed from worker threads
                if calls[0] == crash_after_replace:
                    os._exit(9)
                real_replace(src, dst)
                calls[0] += 1

        os.replace = replace  # type: ignore[assignment]  # this process is disposable
    started.set()
    hub.commit_folder(REPO, folder, message=folder.name, parent_commit=parent)


def _check(root: Path, old: str, expected: dict[str, str], tmp_path: Path) -> str:
    """The store is consistent and main is on ``old`` or on the complete new commit."""
    report = fsck(root)
    assert report.ok, report.summary()
    hub = LocalHub(root)
    head = hub.resolve(REPO)
    if head == old:
        return "old"
    info = hub.list_commits(REPO)[0]
    assert info.parents == (old,)
    assert {f.path: f.sha256 for f in hub.list_files(REPO)} == expected
    snap = hub.snapshot(REPO, head, tmp_path / f"snap-{head}")
    assert {p.name: sha256_file(p) for p in snap.iterdir()} == expected
    return "new"


def _run_child(
    root: Path, folder: Path, parent: str, *, delay: float | None, crash_after: int | None
) -> None:
    started = CTX.Event()
    proc = CTX.Process(target=_commit_child, args=(root, folder, parent, started, crash_after))
    proc.start()
    assert started.wait(timeout=30)
    if delay is not None:
        time.sleep(delay)
        proc.kill()
    proc.join(timeout=60)
    assert proc.exitcode is not None


@pytest.fixture
def store(tmp_path: Path) -> tuple[Path, str]:
    root = tmp_path / "store"
    hub = LocalHub(root)
    hub.create_repo(REPO)
    (tmp_path / "readme").write_text("v0")
    return root, hub.commit(REPO, [CommitAdd("README.md", tmp_path / "readme")], message="v0").commit_id


def test_kill_9_mid_commit(store: tuple[Path, str], tmp_path: Path) -> None:
    root, _ = store
    rng = random.Random(1234)
    outcomes, duration = [], 0.0
    for trial in range(6):
        folder = tmp_path / f"trial-{trial}"
        expected = _make_files(folder, rng, 40, 2 * MiB, 4 * MiB)
        old = LocalHub(root).resolve(REPO)
        if trial == 0:  # runs to completion, and tells how long such a commit takes here
            t0 = time.perf_counter()
            _run_child(root, folder, old, delay=None, crash_after=None)
            duration = time.perf_counter() - t0
        else:
            _run_child(root, folder, old, delay=rng.uniform(0.05, 1.0) * duration, crash_after=None)
        outcomes.append(_check(root, old, expected, tmp_path))
    assert outcomes[0] == "new"


def test_crash_at_every_rename(store: tuple[Path, str], tmp_path: Path) -> None:
    """Die just before each ``os.replace`` of a commit: blobs, commit object, then the ref."""
    root, _ = store
    rng = random.Random(99)
    outcomes = []
    for n in range(6):  # 3 blobs + commit object + ref = 5 renames; n=5 completes
        folder = tmp_path / f"step-{n}"
        expected = _make_files(folder, rng, 3, 1000, 2000)
        old = LocalHub(root).resolve(REPO)
        _run_child(root, folder, old, delay=None, crash_after=n)
        outcomes.append(_check(root, old, expected, tmp_path))
    assert outcomes == ["old"] * 5 + ["new"]
    assert fsck(root).orphans  # the abandoned blobs and commits are left for fsck --repair
