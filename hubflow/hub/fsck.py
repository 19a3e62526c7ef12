"""Check a local store (``hubflow fsck``): every blob's hash, every commit, every ref.

The store is consistent when every ref names an existing commit, every commit file
matches its id and names existing parents, and every blob a commit references exists
and matches its sha256. Orphans (temp files, and blobs or commits nothing references)
are what a crash or an abandoned commit leaves behind: harmless, reported, and with
``repair=True`` the stale ones (older than ``grace_seconds``) are removed.

Safe to run while other processes commit: refs are read before commits and commits
before blobs, so a concurrent commit cannot show up as damage; removal happens under
the store's gc lock, which a commit holds while it checks its blobs and publishes.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from filelock import FileLock, Timeout

from hubflow.errors import HubLockTimeout
from hubflow.hub.local import StoreLayout, commit_id_of, sha256_file
from hubflow.refs import is_commit_id

DEFAULT_GRACE_SECONDS = 3600.0
_HEX64 = frozenset("0123456789abcdef")


@dataclass
class FsckReport:
    """What :func:`fsck` found. Paths are relative to the store root.

    ``corrupt_blobs``: blob files whose bytes do not match their name.
    ``missing_blobs``: ``"<sha256> (model:ns/name commit <id> file <path>)"`` for each
    blob a commit references but the store lacks.
    ``dangling_refs``: ``"model:ns/name branch|tag <name> -> <id>"`` naming a missing commit.
    ``corrupt_commits``: commit files that do not parse or do not match their id, or
    whose parent is missing.
    ``orphans``: temp files and unreferenced blobs and commits (allowed, not damage).
    ``removed``: what ``repair=True`` deleted.
    """

    corrupt_blobs: list[str] = field(default_factory=list)
    missing_blobs: list[str] = field(default_factory=list)
    dangling_refs: list[str] = field(default_factory=list)
    corrupt_commits: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    blobs_checked: int = 0
    commits_checked: int = 0

    @property
    def ok(self) -> bool:
        """True when nothing is damaged (orphans are allowed)."""
        return not (self.corrupt_blobs or self.missing_blobs or self.dangling_refs or self.corrupt_commits)

    def summary(self) -> str:
        head = "store ok" if self.ok else "store DAMAGED"
        lines = [f"{head}: {self.blobs_checked} blobs, {self.commits_checked} commits checked"]
        for name in (
            "corrupt_blobs",
            "missing_blobs",
            "dangling_refs",
            "corrupt_commits",
            "orphans",
            "removed",
        ):
            items = getattr(self, name)
            if items:
                lines.append(f"{name} ({len(items)}):")
                lines.extend(f"  {item}" for item in items)
        return "\n".join(lines)


def fsck(
    root: Path,
    *,
    repair: bool = False,
    grace_seconds: float = DEFAULT_GRACE_SECONDS,
    threads: int | None = None,
    lock_timeout: float = 60.0,
) -> FsckReport:
    """Verify the store at ``root``; with ``repair`` remove stale temp files and orphan blobs.

    Corrupt or missing objects are only reported: re-committing the affected files
    (after deleting a corrupt blob by hand) heals them.
    """
    layout = StoreLayout(Path(root))
    report = FsckReport()
    rel = _relative_to(layout.root)

    # 1. refs, before the commits they name (a concurrent commit writes its commit first).
    refs: list[tuple[str, str, str, str]] = []
    for repo, rdir in layout.iter_repo_dirs():
        for kind, label in (("heads", "branch"), ("tags", "tag")):
            for name, path in layout.iter_refs(rdir, kind):
                try:
                    value = path.read_text().strip()
                except FileNotFoundError:  # deleted meanwhile
                    continue
                refs.append((repo, label, name, value))

    # 2. commits, before the blobs they reference (a commit writes its blobs first).
    referenced, commits = _scan_commits(layout, report)
    for repo, label, name, value in refs:
        if not is_commit_id(value) or (repo, value) not in commits:
            report.dangling_refs.append(f"{repo} {label} {name} -> {value or '(empty)'}")
    for (repo, commit_id), parents in sorted(commits.items()):
        for parent in parents:
            if (repo, parent) not in commits:
                report.corrupt_commits.append(f"{repo} commit {commit_id}: parent {parent} is missing")
    reachable_commits = _reachable(commits, [(r[0], r[3]) for r in refs])
    for repo, commit_id in sorted(set(commits) - reachable_commits):
        report.orphans.append(f"{repo} commit {commit_id} (no ref reaches it)")

    # 3. blobs.
    blobs = sorted(p for p in layout.objects.glob("??/*") if p.is_file())
    workers = threads or len(os.sched_getaffinity(0))
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for path, ok in zip(blobs, pool.map(_blob_ok, blobs), strict=True):
            report.blobs_checked += 1
            if not ok:
                report.corrupt_blobs.append(rel(path))
    present = {p.parent.name + p.name for p in blobs}
    for sha, users in sorted(referenced.items()):
        if sha not in present:
            repo, commit_id, path = users[0]
            more = f" and {len(users) - 1} more" if len(users) > 1 else ""
            report.missing_blobs.append(f"{sha} ({repo} commit {commit_id} file {path!r}{more})")
    orphan_blobs = [p for p in blobs if p.parent.name + p.name not in referenced]
    report.orphans.extend(f"{rel(p)} (blob nothing references)" for p in orphan_blobs)
    tmp_files = sorted(p for p in layout.tmp.glob("*") if p.is_file()) if layout.tmp.is_dir() else []
    report.orphans.extend(f"{rel(p)} (temp file)" for p in tmp_files)

    if repair:
        _repair(layout, report, tmp_files, orphan_blobs, grace_seconds, lock_timeout)
    return report


def _scan_commits(
    layout: StoreLayout, report: FsckReport
) -> tuple[dict[str, list[tuple[str, str, str]]], dict[tuple[str, str], list[str]]]:
    """Verify every commit file; return blob sha256 → users, and (repo, commit) → parents."""
    referenced: dict[str, list[tuple[str, str, str]]] = {}
    commits: dict[tuple[str, str], list[str]] = {}
    rel = _relative_to(layout.root)
    for repo, rdir in layout.iter_repo_dirs():
        for commit_id, path in layout.iter_commit_files(rdir):
            report.commits_checked += 1
            try:
                data = path.read_bytes()
                obj = json.loads(data)
                if commit_id_of(data) != commit_id:
                    raise ValueError("its bytes do not match its id")
                parents = [str(p) for p in obj["parents"]]
                tree = {str(k): str(v["sha256"]) for k, v in obj["tree"].items()}
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
                report.corrupt_commits.append(f"{rel(path)}: {err}")
                continue
            commits[(repo, commit_id)] = parents
            for file_path, sha in tree.items():
                referenced.setdefault(sha, []).append((repo, commit_id, file_path))
    return referenced, commits


def _reachable(
    commits: dict[tuple[str, str], list[str]], tips: Iterable[tuple[str, str]]
) -> set[tuple[str, str]]:
    seen: set[tuple[str, str]] = set()
    stack = [tip for tip in tips if tip in commits]
    while stack:
        key = stack.pop()
        if key in seen:
            continue
        seen.add(key)
        stack.extend((key[0], p) for p in commits.get(key, ()) if (key[0], p) in commits)
    return seen


def _blob_ok(path: Path) -> bool:
    name = path.parent.name + path.name
    if len(name) != 64 or not set(name) <= _HEX64:
        return False
    try:
        return sha256_file(path) == name
    except OSError:
        return False


def _repair(
    layout: StoreLayout,
    report: FsckReport,
    tmp_files: list[Path],
    orphan_blobs: list[Path],
    grace_seconds: float,
    lock_timeout: float,
) -> None:
    """Remove temp files and orphan blobs untouched for ``grace_seconds``.

    Age is the ctime: it moves when a file is written, hardlinked or touched, which a
    commit does to every blob it reuses. Under the gc lock the references are read
    again, so a commit published since the scan keeps its blobs; a commit still in
    flight re-checks its blobs under that same lock and re-ingests any removed.
    """
    rel = _relative_to(layout.root)
    cutoff = time.time() - grace_seconds

    def stale(path: Path) -> bool:
        try:
            return path.stat().st_ctime < cutoff
        except FileNotFoundError:
            return False

    for path in tmp_files:
        if stale(path):
            path.unlink(missing_ok=True)
            report.removed.append(rel(path))
    candidates = [p for p in orphan_blobs if stale(p)]
    if not candidates:
        return
    lock = FileLock(str(layout.gc_lock), timeout=lock_timeout)
    try:
        lock.acquire()
    except Timeout:
        raise HubLockTimeout(
            f"fsck could not lock {layout.gc_lock} within {lock_timeout:g}s",
            hint="a commit is being published; run fsck --repair again later",
        ) from None
    try:
        referenced, _ = _scan_commits(layout, FsckReport())
        for path in candidates:
            if path.parent.name + path.name not in referenced and stale(path):
                path.unlink(missing_ok=True)
                report.removed.append(rel(path))
    finally:
        lock.release()


def _relative_to(root: Path) -> Callable[[Path], str]:
    def rel(path: Path) -> str:
        try:
            return path.relative_to(root).as_posix()
        except ValueError:
            return str(path)

    return rel
