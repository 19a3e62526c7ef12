"""The local hub: a content-addressed store in a folder (see ``docs/store.md``).

Layout under ``root``::

    objects/sha256/ab/cdef...           blobs, named by the sha256 of their bytes, read-only
    tmp/                                temp files; renamed into place when complete
    locks/gc.lock                       serialises publishing a commit with ``fsck --repair``
    repos/{models,datasets}/NS/NAME/
        repo.json                       marks the repo as created
        repo.lock                       per-repo lock around every ref update
        commits/ab/cdef....json         commit objects, write-once, id = sha1 of the bytes
        refs/heads/NAME, refs/tags/NAME one 40-hex commit id; '/' in NAME is stored as '%2F'

Every file becomes visible by ``os.replace`` of a complete temp file, and a ref is
only moved after the commit object and all its blobs exist, so a crash at any point
leaves each ref on its old or its new commit; at worst it leaves orphan temp files,
blobs or commits behind, which :func:`hubflow.hub.fsck.fsck` reports and cleans.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import stat
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from hubflow.errors import (
    CorruptObject,
    EntryNotFound,
    HubError,
    HubLockTimeout,
    RefExists,
    RepoNotFound,
    RevisionNotFound,
)
from hubflow.fingerprint import canonical_json
from hubflow.hub import checks
from hubflow.hub.base import (
    DEFAULT_BRANCH,
    CommitAdd,
    CommitInfo,
    CommitOperation,
    FileEntry,
    RepoRefs,
)
from hubflow.hub.local import files
from hubflow.hub.local.blobs import FSCK_HINT, Blobs, writing
from hubflow.hub.local.layout import StoreLayout
from hubflow.refs import RepoRef, is_commit_id, validate_revision

_SHORT_ID_MIN = 7
_HEX = frozenset("0123456789abcdef")


class LocalHub:
    """The :class:`~hubflow.hub.base.Hub` protocol over a folder.

    ``link_sources``: ingest a committed file by hardlinking it into the store (no
    copy) when source and store share a filesystem. The caller's file then *is* the
    blob and is made read-only: commit only staging files you will not modify
    again, or pass ``link_sources=False`` to always copy.
    ``fsync_blobs``: fsync each new blob before the commit that references it, so
    commits survive power loss as well as process crashes (slower; off by default).
    ``lock_timeout``: seconds to wait for a repo lock before :class:`HubLockTimeout`.
    ``threads``: files hashed in parallel (default: the usable CPUs).
    """

    def __init__(
        self,
        root: Path,
        *,
        link_sources: bool = True,
        fsync_blobs: bool = False,
        lock_timeout: float = 60.0,
        threads: int | None = None,
    ) -> None:
        self.root = Path(root)
        self.layout = StoreLayout(self.root)
        self.link_sources = link_sources
        self.fsync_blobs = fsync_blobs
        self.lock_timeout = lock_timeout
        self.threads = threads or len(os.sched_getaffinity(0))
        self.blobs = Blobs(self.layout, link_sources=link_sources, fsync_blobs=fsync_blobs)
        with writing(self.root):
            for folder in (
                self.layout.objects,
                self.layout.tmp,
                self.layout.gc_lock.parent,
                self.layout.repos,
            ):
                folder.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"LocalHub({str(self.root)!r})"

    # --- repos and locks ---------------------------------------------------------

    def create_repo(self, repo: RepoRef, *, exist_ok: bool = True) -> None:
        rdir = self.layout.repo_dir(repo)
        with writing(self.root):
            for sub in ("refs/heads", "refs/tags", "commits"):
                (rdir / sub).mkdir(parents=True, exist_ok=True)
        with self._lock(rdir / "repo.lock", f"repo {repo}"):
            if (rdir / "repo.json").is_file():
                if exist_ok:
                    return
                raise HubError(
                    f"repo {repo} already exists in {self.root}", hint="pass exist_ok=True to reuse it"
                )
            info = {"repo_type": repo.repo_type, "repo_id": repo.repo_id, "created_at": _now()}
            self._atomic_write(rdir / "repo.json", canonical_json(info), mode=0o644)

    def check_writable(self) -> None:
        """Create and remove a temp file in the store: a read-only store fails here, before any work."""
        tmp = self.layout.new_tmp()
        with writing(self.root):
            tmp.write_bytes(b"")
            tmp.unlink()

    def repo_exists(self, repo: RepoRef) -> bool:
        return (self.layout.repo_dir(repo) / "repo.json").is_file()

    def _repo_dir(self, repo: RepoRef) -> Path:
        if not self.repo_exists(repo):
            raise RepoNotFound(
                f"repo {repo} does not exist in the local hub at {self.root}",
                hint=f"create it first with create_repo(RepoRef({repo.repo_type!r}, {repo.repo_id!r}))",
            )
        return self.layout.repo_dir(repo)

    @contextmanager
    def _lock(self, path: Path, what: str) -> Iterator[None]:
        lock = FileLock(str(path), timeout=self.lock_timeout)
        try:
            with writing(self.root):
                lock.acquire()
        except Timeout:
            raise HubLockTimeout(
                f"could not lock {what} within {self.lock_timeout:g}s: {path} is held by another process",
                hint="wait for the other hubflow process to finish, or raise LocalHub(lock_timeout=...)",
            ) from None
        try:
            yield
        finally:
            lock.release()

    # --- low-level writes ----------------------------------------------------------

    def _atomic_write(self, path: Path, data: bytes, *, mode: int) -> None:
        """Write ``data`` to ``path`` via a fsynced temp file and ``os.replace``; fsync the folder."""
        tmp = self.layout.new_tmp()
        try:
            with writing(self.root):
                with open(tmp, "xb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.chmod(tmp, mode)
                os.replace(tmp, path)
                files.fsync_dir(path.parent)
        finally:
            tmp.unlink(missing_ok=True)

    # --- refs and commits ---------------------------------------------------------

    def _read_ref(self, rdir: Path, kind: str, name: str) -> str | None:
        if name == ".":
            return None
        path = self.layout.ref_file(rdir, kind, name)
        try:
            value = path.read_text().strip()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
        if not is_commit_id(value):
            raise CorruptObject(f"ref file {path} does not hold a commit id", hint=FSCK_HINT)
        return value

    def _write_ref(self, rdir: Path, kind: str, name: str, commit_id: str) -> None:
        self._atomic_write(self.layout.ref_file(rdir, kind, name), f"{commit_id}\n".encode(), mode=0o644)

    def _load_commit(self, rdir: Path, commit_id: str) -> dict[str, Any]:
        path = self.layout.commit_file(rdir, commit_id)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise CorruptObject(f"commit {commit_id} is missing: {path}", hint=FSCK_HINT) from None
        if files.commit_id_of(data) != commit_id:
            raise CorruptObject(f"commit file {path} does not match its id {commit_id}", hint=FSCK_HINT)
        return json.loads(data)

    def _write_commit(self, rdir: Path, data: bytes) -> str:
        commit_id = files.commit_id_of(data)
        path = self.layout.commit_file(rdir, commit_id)
        if not path.exists():  # write-once: an existing file holds these very bytes
            if not path.parent.is_dir():
                path.parent.mkdir(parents=True, exist_ok=True)
                files.fsync_dir(path.parent.parent)
            self._atomic_write(path, data, mode=0o444)
        return commit_id

    @staticmethod
    def _info(commit_id: str, obj: Mapping[str, Any]) -> CommitInfo:
        return CommitInfo(
            commit_id=commit_id,
            parents=tuple(obj["parents"]),
            message=obj["message"],
            created_at=obj["created_at"],
            metadata=dict(obj["metadata"]),
        )

    # --- commits -------------------------------------------------------------------

    def commit(
        self,
        repo: RepoRef,
        operations: Sequence[CommitOperation],
        *,
        message: str,
        metadata: Mapping[str, Any] | None = None,
        branch: str = DEFAULT_BRANCH,
        parent_commit: str | None = None,
        replace_tree: bool = False,
    ) -> CommitInfo:
        rdir = self._repo_dir(repo)
        metadata = checks.check_commit_args(
            repo, operations, branch=branch, parent_commit=parent_commit, metadata=metadata
        )
        # Fail fast before hashing anything; checked again under the lock below.
        checks.check_parent(repo, branch, parent_commit, self._read_ref(rdir, "heads", branch))

        sources = list(dict.fromkeys(Path(op.source) for op in operations if isinstance(op, CommitAdd)))
        for source in sources:
            try:
                mode = os.stat(source).st_mode
            except OSError as err:
                raise HubError(f"cannot read commit source {source}: {err.strerror}") from None
            if not stat.S_ISREG(mode):
                raise HubError(f"commit source {source} is not a regular file")
        sources.sort(key=lambda p: -os.stat(p).st_size)  # biggest first balances the threads
        with ThreadPoolExecutor(max(1, min(self.threads, len(sources)))) as pool:
            blobs = dict(zip(sources, pool.map(self.blobs.ingest, sources), strict=True))

        with self._lock(rdir / "repo.lock", f"repo {repo}"):
            head = self._read_ref(rdir, "heads", branch)
            checks.check_parent(repo, branch, parent_commit, head)
            tree: dict[str, dict[str, Any]] = {}
            if head is not None and not replace_tree:
                tree = dict(self._load_commit(rdir, head)["tree"])
            for op in operations:
                if isinstance(op, CommitAdd):
                    blob = blobs[Path(op.source)]
                    tree[op.path_in_repo] = {"sha256": blob.sha256, "size": blob.size}
                elif tree.pop(op.path_in_repo, None) is None:
                    raise EntryNotFound(
                        f"cannot delete {op.path_in_repo!r}: it is not in {repo}@{branch}",
                        hint="list the files of the branch with list_files() and delete only those",
                    )
            _check_tree(tree)
            obj = {
                "tree": tree,
                "parents": [head] if head else [],
                "message": message,
                "metadata": metadata,
                "created_at": _now(),
            }
            with self._lock(self.layout.gc_lock, "the store for publishing"):
                for source, blob in blobs.items():  # fsck --repair may have removed a reused orphan
                    if not self.blobs.exists(blob.sha256):
                        self.blobs.store(source, blob)
                commit_id = self._write_commit(rdir, canonical_json(obj))
                self._write_ref(rdir, "heads", branch, commit_id)
        return self._info(commit_id, obj)

    def commit_folder(
        self,
        repo: RepoRef,
        folder: Path,
        *,
        message: str,
        metadata: Mapping[str, Any] | None = None,
        branch: str = DEFAULT_BRANCH,
        parent_commit: str | None = None,
    ) -> CommitInfo:
        return self.commit(
            repo,
            checks.folder_operations(folder),
            message=message,
            metadata=metadata,
            branch=branch,
            parent_commit=parent_commit,
            replace_tree=True,
        )

    # --- branches and tags ------------------------------------------------------------

    def create_branch(self, repo: RepoRef, branch: str, *, revision: str | None = None) -> None:
        rdir = self._repo_dir(repo)
        checks.check_ref_name(branch, "branch")
        commit_id = self.resolve(repo, revision or DEFAULT_BRANCH)
        with self._lock(rdir / "repo.lock", f"repo {repo}"):
            current = self._read_ref(rdir, "heads", branch)
            if current is not None:
                raise RefExists(
                    f"branch {branch!r} already exists in {repo} (at {current})",
                    hint="pick another name, or delete_branch() it first",
                )
            self._write_ref(rdir, "heads", branch, commit_id)

    def delete_branch(self, repo: RepoRef, branch: str) -> None:
        """Delete ``branch``; like the Hugging Face Hub, ``main`` cannot be deleted."""
        rdir = self._repo_dir(repo)
        validate_revision(branch)
        if branch == DEFAULT_BRANCH:
            raise HubError(f"cannot delete the default branch {branch!r} of {repo}")
        with self._lock(rdir / "repo.lock", f"repo {repo}"):
            if self._read_ref(rdir, "heads", branch) is None:
                raise self._not_found(repo, rdir, branch, what="branch")
            self.layout.ref_file(rdir, "heads", branch).unlink()
            files.fsync_dir(rdir / "refs" / "heads")

    def create_tag(self, repo: RepoRef, tag: str, *, revision: str, exist_ok: bool = False) -> None:
        rdir = self._repo_dir(repo)
        checks.check_ref_name(tag, "tag")
        commit_id = self.resolve(repo, revision)
        with self._lock(rdir / "repo.lock", f"repo {repo}"):
            current = self._read_ref(rdir, "tags", tag)
            if current is not None and not exist_ok:
                raise RefExists(
                    f"tag {tag!r} already exists in {repo} (at {current})",
                    hint="pass exist_ok=True to move it, or delete_tag() it first",
                )
            if current != commit_id:
                self._write_ref(rdir, "tags", tag, commit_id)

    def delete_tag(self, repo: RepoRef, tag: str) -> None:
        rdir = self._repo_dir(repo)
        validate_revision(tag)
        with self._lock(rdir / "repo.lock", f"repo {repo}"):
            if self._read_ref(rdir, "tags", tag) is None:
                raise self._not_found(repo, rdir, tag, what="tag")
            self.layout.ref_file(rdir, "tags", tag).unlink()
            files.fsync_dir(rdir / "refs" / "tags")

    def list_refs(self, repo: RepoRef) -> RepoRefs:
        rdir = self._repo_dir(repo)
        found: dict[str, dict[str, str]] = {}
        for kind in ("heads", "tags"):
            found[kind] = {}
            for name, _ in self.layout.iter_refs(rdir, kind):
                commit_id = self._read_ref(rdir, kind, name)
                if commit_id is not None:  # deleted meanwhile
                    found[kind][name] = commit_id
        return RepoRefs(branches=found["heads"], tags=found["tags"])

    # --- reading ------------------------------------------------------------------------

    def resolve(self, repo: RepoRef, revision: str = DEFAULT_BRANCH) -> str:
        """A branch, then a tag, then a commit id or unique prefix (≥ 7 hex) → 40-hex commit id."""
        rdir = self._repo_dir(repo)
        validate_revision(revision)
        if is_commit_id(revision) and self.layout.commit_file(rdir, revision).is_file():
            return revision
        for kind in ("heads", "tags"):
            commit_id = self._read_ref(rdir, kind, revision)
            if commit_id is not None:
                return commit_id
        if _SHORT_ID_MIN <= len(revision) < 40 and set(revision) <= _HEX:
            folder = rdir / "commits" / revision[:2]
            matches = sorted(folder.glob(f"{revision[2:]}*.json")) if folder.is_dir() else []
            if len(matches) == 1:
                return revision[:2] + matches[0].name[: -len(".json")]
            if len(matches) > 1:
                raise RevisionNotFound(
                    f"commit prefix {revision!r} is ambiguous in {repo} ({len(matches)} commits match)",
                    hint="use more characters of the commit id",
                )
        raise self._not_found(repo, rdir, revision, what="revision")

    def _not_found(self, repo: RepoRef, rdir: Path, name: str, *, what: str) -> RevisionNotFound:
        refs = {kind: [n for n, _ in self.layout.iter_refs(rdir, kind)] for kind in ("heads", "tags")}
        hint = checks.not_found_hint(repo, refs["heads"], refs["tags"])
        return RevisionNotFound(f"{what} {name!r} not found in {repo}", hint=hint)

    def commit_info(self, repo: RepoRef, revision: str = DEFAULT_BRANCH) -> CommitInfo:
        """The commit ``revision`` resolves to."""
        commit_id = self.resolve(repo, revision)
        return self._info(commit_id, self._load_commit(self.layout.repo_dir(repo), commit_id))

    def list_commits(self, repo: RepoRef, revision: str = DEFAULT_BRANCH) -> list[CommitInfo]:
        """First-parent history of ``revision``, newest first."""
        return list(self.iter_commits(repo, revision))

    def iter_commits(self, repo: RepoRef, revision: str = DEFAULT_BRANCH) -> Iterator[CommitInfo]:
        """First-parent history of ``revision``, newest first, read one commit at a time (a page of a
        long history reads only the commits it shows)."""
        rdir = self._repo_dir(repo)
        commit_id: str | None = self.resolve(repo, revision)
        while commit_id is not None:
            obj = self._load_commit(rdir, commit_id)
            yield self._info(commit_id, obj)
            commit_id = obj["parents"][0] if obj["parents"] else None

    def _tree(self, repo: RepoRef, revision: str) -> tuple[str, dict[str, dict[str, Any]]]:
        commit_id = self.resolve(repo, revision)
        return commit_id, self._load_commit(self.layout.repo_dir(repo), commit_id)["tree"]

    def list_files(self, repo: RepoRef, revision: str = DEFAULT_BRANCH) -> list[FileEntry]:
        _, tree = self._tree(repo, revision)
        return [FileEntry(path, entry["size"], entry["sha256"]) for path, entry in sorted(tree.items())]

    def read_file(self, repo: RepoRef, path: str, revision: str = DEFAULT_BRANCH) -> bytes:
        """The bytes of ``path`` at ``revision``, verified against their sha256."""
        commit_id, tree = self._tree(repo, revision)
        entry = tree.get(path)
        if entry is None:
            raise EntryNotFound(
                f"{path!r} is not in {repo}@{revision} (commit {commit_id[:12]})",
                hint="list the files of that revision with list_files()",
            )
        blob = self.layout.blob(entry["sha256"])
        try:
            data = blob.read_bytes()
        except FileNotFoundError:
            raise self._corrupt(repo, path, blob, "is missing") from None
        if hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise self._corrupt(repo, path, blob, "does not match its sha256")
        return data

    @staticmethod
    def _corrupt(repo: RepoRef, path: str, blob: Path, what: str) -> CorruptObject:
        return CorruptObject(f"blob {blob} (file {path!r} of {repo}) {what}", hint=FSCK_HINT)

    def snapshot(
        self,
        repo: RepoRef,
        revision: str,
        dest: Path,
        *,
        allow_patterns: Iterable[str] | None = None,
        link: bool = False,
    ) -> Path:
        """Materialise ``revision`` into ``dest``: read-only files, each verified by its sha256.

        Each file is a private copy of its blob (a reflink where the filesystem has them, else a
        copy hashed as it is written): writing to it, even as root, cannot change stored content. ``link=True`` hardlinks the blobs instead (no copy), for readers that
        never write: a write to such a file would change the blob in every repo using it.
        Files already in ``dest`` at tree paths are replaced; other files are left alone.
        """
        _, tree = self._tree(repo, revision)
        if isinstance(allow_patterns, str):
            allow_patterns = [allow_patterns]
        patterns = [p + "*" if p.endswith("/") else p for p in allow_patterns or ()]
        chosen = [
            (path, entry)
            for path, entry in sorted(tree.items())
            if allow_patterns is None or any(fnmatch.fnmatchcase(path, p) for p in patterns)
        ]
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)

        def place(item: tuple[str, Mapping[str, Any]]) -> None:
            path, entry = item
            try:
                self.blobs.place(entry["sha256"], entry["size"], dest / path, link=link)
            except CorruptObject as exc:
                raise CorruptObject(f"{exc.message} (file {path!r} of {repo})", hint=exc.hint) from None
            except IsADirectoryError:
                raise HubError(f"cannot snapshot {path!r} of {repo}: {dest / path} is a folder") from None

        with ThreadPoolExecutor(max(1, min(self.threads, len(chosen)))) as pool:
            list(pool.map(place, chosen))
        return dest


def _check_tree(tree: Mapping[str, Any]) -> None:
    for path in tree:
        parts = path.split("/")
        for i in range(1, len(parts)):
            prefix = "/".join(parts[:i])
            if prefix in tree:
                raise HubError(
                    f"{path!r} needs {prefix!r} to be a folder, but {prefix!r} is a file in the same commit",
                    hint=f"delete {prefix!r} (CommitDelete) or commit to another path",
                )


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")
