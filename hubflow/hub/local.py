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
import shutil
import stat
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from hubflow.errors import (
    CommitConflict,
    CorruptObject,
    EntryNotFound,
    HubError,
    HubLockTimeout,
    RepoNotFound,
    RevisionNotFound,
)
from hubflow.hub.base import (
    DEFAULT_BRANCH,
    CommitAdd,
    CommitDelete,
    CommitInfo,
    CommitOperation,
    FileEntry,
    RepoRefs,
)
from hubflow.refs import RepoRef, is_commit_id, validate_revision

CHUNK = 1 << 20
"""Read size for hashing and copying (1 MiB measured as fast as 8 MiB, and stays in cache)."""

FSCK_HINT = "run `hubflow fsck` to list every damaged object, then re-commit the affected files"
_SHORT_ID_MIN = 7
_HEX = frozenset("0123456789abcdef")


# --- helpers shared with fsck -------------------------------------------------


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The hex sha256 of the file at ``path``."""
    return _hash_file(path)[0]


def _hash_file(path: str | os.PathLike[str]) -> tuple[str, int]:
    digest, buf, size = hashlib.sha256(), bytearray(CHUNK), 0
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            digest.update(view[:n])
            size += n
    return digest.hexdigest(), size


def _copy_file(src: str | os.PathLike[str], dst: Path, *, fsync: bool) -> int:
    """Copy ``src`` to the new file ``dst`` in the kernel (``copy_file_range``: no user-space
    copy, a reflink where the filesystem has them); return the bytes copied."""
    with open(src, "rb", buffering=0) as fin, open(dst, "xb", buffering=0) as fout:
        copied, size = 0, os.fstat(fin.fileno()).st_size
        try:
            while copied < size and (n := os.copy_file_range(fin.fileno(), fout.fileno(), size - copied)):
                copied += n
        except OSError:  # not supported between these files: copy through user space
            fin.seek(copied)
            fout.seek(copied)
            while chunk := fin.read(CHUNK):
                fout.write(chunk)
                copied += len(chunk)
        if fsync:
            os.fsync(fout.fileno())
    return copied


def _stat_key(path: str | os.PathLike[str]) -> tuple[int, int, int]:
    st = os.stat(path)
    return st.st_ino, st.st_size, st.st_mtime_ns


def canonical_json(obj: Any) -> bytes:
    """The bytes a commit id is computed from: sorted keys, no spaces, UTF-8."""
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode()


def commit_id_of(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _escape_ref(name: str) -> str:
    return name.replace("/", "%2F")


def _unescape_ref(filename: str) -> str:
    return filename.replace("%2F", "/")


def validate_path_in_repo(path: str) -> str:
    """Return ``path`` if it is a safe relative POSIX path inside a repo, else raise :class:`HubError`."""
    reason = None
    if not isinstance(path, str) or not path:
        reason = "it is empty"
    elif path.startswith("/"):
        reason = "it is absolute"
    elif "\\" in path:
        reason = "it holds a backslash"
    elif any(ord(c) < 32 or c == "\x7f" for c in path):
        reason = "it holds a control character"
    else:
        for part in path.split("/"):
            if part in ("", ".", ".."):
                reason = f"it holds an empty, '.' or '..' component ({part!r})"
            elif part.lower() == ".git":
                reason = "'.git' is reserved"
            if reason:
                break
    if reason:
        raise HubError(
            f"invalid path_in_repo {path!r}: {reason}",
            hint="use a relative POSIX path such as 'data/train.parquet' "
            "(no leading '/', no '\\', no '..', no empty components)",
        )
    return path


def folder_operations(folder: Path) -> list[CommitOperation]:
    """One CommitAdd per file under ``folder`` (paths validated; symlinks refused)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise HubError(f"cannot commit {folder}: it is not a folder")
    ops: list[CommitOperation] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        base = Path(dirpath)
        for name in sorted(dirnames + filenames):
            path = base / name
            rel = path.relative_to(folder).as_posix()
            if path.is_symlink():
                raise HubError(
                    f"cannot commit {folder}: {rel!r} is a symlink",
                    hint="replace symlinks by the files they point to before committing",
                )
            if name in filenames:
                ops.append(CommitAdd(validate_path_in_repo(rel), path))
    return ops


@dataclass(frozen=True)
class StoreLayout:
    """Where everything lives under a store root (used by :class:`LocalHub` and fsck)."""

    root: Path

    @property
    def objects(self) -> Path:
        return self.root / "objects" / "sha256"

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    @property
    def gc_lock(self) -> Path:
        return self.root / "locks" / "gc.lock"

    @property
    def repos(self) -> Path:
        return self.root / "repos"

    def blob(self, sha256: str) -> Path:
        return self.objects / sha256[:2] / sha256[2:]

    def new_tmp(self) -> Path:
        return self.tmp / f"{os.getpid()}-{uuid.uuid4().hex}.tmp"

    def repo_dir(self, repo: RepoRef) -> Path:
        ns, name = repo.repo_id.split("/")
        return self.repos / f"{repo.repo_type}s" / ns / name

    def commit_file(self, repo_dir: Path, commit_id: str) -> Path:
        return repo_dir / "commits" / commit_id[:2] / f"{commit_id[2:]}.json"

    def ref_file(self, repo_dir: Path, kind: str, name: str) -> Path:
        return repo_dir / "refs" / kind / _escape_ref(name)

    def iter_repo_dirs(self) -> Iterator[tuple[str, Path]]:
        """Every created repo as ``("model:ns/name", folder)``."""
        for type_dir in sorted(self.repos.glob("*s")):
            for repo_dir in sorted(type_dir.glob("*/*")):
                if (repo_dir / "repo.json").is_file():
                    yield f"{type_dir.name[:-1]}:{repo_dir.parent.name}/{repo_dir.name}", repo_dir

    def iter_commit_files(self, repo_dir: Path) -> Iterator[tuple[str, Path]]:
        for path in sorted((repo_dir / "commits").glob("??/*.json")):
            yield path.parent.name + path.name[: -len(".json")], path

    def iter_refs(self, repo_dir: Path, kind: str) -> Iterator[tuple[str, Path]]:
        folder = repo_dir / "refs" / kind
        if folder.is_dir():
            for path in sorted(folder.iterdir()):
                if path.is_file():
                    yield _unescape_ref(path.name), path


# --- the hub -------------------------------------------------------------------


@dataclass(frozen=True)
class _Blob:
    sha256: str
    size: int
    stat_key: tuple[int, int, int]
    """Inode, size and mtime of the source when it was hashed: a copy checks it did not change."""


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
        for folder in (self.layout.objects, self.layout.tmp, self.layout.gc_lock.parent, self.layout.repos):
            folder.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"LocalHub({str(self.root)!r})"

    # --- repos and locks ---------------------------------------------------------

    def create_repo(self, repo: RepoRef, *, exist_ok: bool = True) -> None:
        rdir = self.layout.repo_dir(repo)
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
            with open(tmp, "xb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, mode)
            os.replace(tmp, path)
            fsync_dir(path.parent)
        finally:
            tmp.unlink(missing_ok=True)

    def _ingest(self, source: Path) -> _Blob:
        """Hash ``source`` and make sure its blob exists; write nothing if it already does."""
        key = _stat_key(source)
        sha, size = _hash_file(source)
        found = _Blob(sha, size, key)
        blob = self.layout.blob(sha)
        if blob.exists():
            try:  # refresh the ctime so that fsck --repair sees the blob as in use
                os.utime(blob)
            except OSError:
                pass
        else:
            self._store_blob(source, found)
        return found

    def _store_blob(self, source: Path, found: _Blob) -> None:
        """Hardlink (or copy) ``source``, hashed as ``found``, into its blob path."""
        sha, blob = found.sha256, self.layout.blob(found.sha256)
        if not blob.parent.is_dir():
            blob.parent.mkdir(parents=True, exist_ok=True)
            if self.fsync_blobs:
                fsync_dir(blob.parent.parent)
        tmp = self.layout.new_tmp()
        try:
            if not (self.link_sources and self._link_readonly(source, tmp)):
                copied = _copy_file(source, tmp, fsync=self.fsync_blobs)
                if copied != found.size or _stat_key(source) != found.stat_key:
                    raise HubError(
                        f"{source} changed while it was being committed (sha256 {sha[:12]} no longer holds)",
                        hint="do not modify files while committing them; retry the commit",
                    )
                os.chmod(tmp, 0o444)
            elif self.fsync_blobs:
                with open(tmp, "rb") as f:
                    os.fsync(f.fileno())
            os.replace(tmp, blob)
            if self.fsync_blobs:
                fsync_dir(blob.parent)
        finally:
            tmp.unlink(missing_ok=True)

    @staticmethod
    def _link_readonly(source: Path, tmp: Path) -> bool:
        try:
            os.link(source, tmp)
            os.chmod(tmp, 0o444)
            return True
        except OSError:  # other filesystem, not our file, no hardlinks: copy instead
            tmp.unlink(missing_ok=True)
            return False

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

    @staticmethod
    def _check_ref_name(name: str, what: str) -> str:
        validate_revision(name)
        if name == "." or is_commit_id(name):
            raise HubError(
                f"{what} name {name!r} is not allowed", hint="pick a name that is not '.' or 40-hex"
            )
        return name

    def _load_commit(self, rdir: Path, commit_id: str) -> dict[str, Any]:
        path = self.layout.commit_file(rdir, commit_id)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise CorruptObject(f"commit {commit_id} is missing: {path}", hint=FSCK_HINT) from None
        if commit_id_of(data) != commit_id:
            raise CorruptObject(f"commit file {path} does not match its id {commit_id}", hint=FSCK_HINT)
        return json.loads(data)

    def _write_commit(self, rdir: Path, data: bytes) -> str:
        commit_id = commit_id_of(data)
        path = self.layout.commit_file(rdir, commit_id)
        if not path.exists():  # write-once: an existing file holds these very bytes
            if not path.parent.is_dir():
                path.parent.mkdir(parents=True, exist_ok=True)
                fsync_dir(path.parent.parent)
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
        self._check_ref_name(branch, "branch")
        if parent_commit is not None and not is_commit_id(parent_commit):
            raise HubError(
                f"parent_commit {parent_commit!r} is not a 40-hex commit id",
                hint="pass the full id returned by resolve() or commit()",
            )
        for op in operations:
            if not isinstance(op, CommitAdd | CommitDelete):
                raise HubError(f"unknown commit operation {op!r}", hint="use CommitAdd or CommitDelete")
            validate_path_in_repo(op.path_in_repo)
        metadata = dict(metadata or {})
        try:
            canonical_json(metadata)
        except (TypeError, ValueError) as err:
            raise HubError(
                f"commit metadata for {repo} is not JSON-serialisable: {err}",
                hint="use str keys and str/int/float/bool/None/list/dict values",
            ) from None
        # Fail fast before hashing anything; checked again under the lock below.
        self._check_parent(repo, branch, parent_commit, self._read_ref(rdir, "heads", branch))

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
            blobs = dict(zip(sources, pool.map(self._ingest, sources), strict=True))

        with self._lock(rdir / "repo.lock", f"repo {repo}"):
            head = self._read_ref(rdir, "heads", branch)
            self._check_parent(repo, branch, parent_commit, head)
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
                    if not self.layout.blob(blob.sha256).exists():
                        self._store_blob(source, blob)
                commit_id = self._write_commit(rdir, canonical_json(obj))
                self._write_ref(rdir, "heads", branch, commit_id)
        return self._info(commit_id, obj)

    @staticmethod
    def _check_parent(repo: RepoRef, branch: str, parent_commit: str | None, head: str | None) -> None:
        if parent_commit is not None and head != parent_commit:
            actual = head or "nothing (the branch does not exist)"
            raise CommitConflict(
                f"commit to {repo}@{branch} expected the branch at {parent_commit} but it is at {actual}",
                hint="another writer moved the branch: re-read the branch (resolve()) and retry",
            )

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
            folder_operations(folder),
            message=message,
            metadata=metadata,
            branch=branch,
            parent_commit=parent_commit,
            replace_tree=True,
        )

    # --- branches and tags ------------------------------------------------------------

    def create_branch(self, repo: RepoRef, branch: str, *, revision: str | None = None) -> None:
        rdir = self._repo_dir(repo)
        self._check_ref_name(branch, "branch")
        commit_id = self.resolve(repo, revision or DEFAULT_BRANCH)
        with self._lock(rdir / "repo.lock", f"repo {repo}"):
            current = self._read_ref(rdir, "heads", branch)
            if current is not None:
                raise HubError(
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
            fsync_dir(rdir / "refs" / "heads")

    def create_tag(self, repo: RepoRef, tag: str, *, revision: str, exist_ok: bool = False) -> None:
        rdir = self._repo_dir(repo)
        self._check_ref_name(tag, "tag")
        commit_id = self.resolve(repo, revision)
        with self._lock(rdir / "repo.lock", f"repo {repo}"):
            current = self._read_ref(rdir, "tags", tag)
            if current is not None and not exist_ok:
                raise HubError(
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
            fsync_dir(rdir / "refs" / "tags")

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
        if not refs["heads"] and not refs["tags"]:
            hint = f"{repo} has no commits yet: commit to it first"
        else:
            hint = f"branches: {_trim(refs['heads'])}; tags: {_trim(refs['tags'])}"
        return RevisionNotFound(f"{what} {name!r} not found in {repo}", hint=hint)

    def commit_info(self, repo: RepoRef, revision: str = DEFAULT_BRANCH) -> CommitInfo:
        """The commit ``revision`` resolves to."""
        commit_id = self.resolve(repo, revision)
        return self._info(commit_id, self._load_commit(self.layout.repo_dir(repo), commit_id))

    def list_commits(self, repo: RepoRef, revision: str = DEFAULT_BRANCH) -> list[CommitInfo]:
        """First-parent history of ``revision``, newest first."""
        rdir = self._repo_dir(repo)
        commit_id: str | None = self.resolve(repo, revision)
        history = []
        while commit_id is not None:
            obj = self._load_commit(rdir, commit_id)
            history.append(self._info(commit_id, obj))
            commit_id = obj["parents"][0] if obj["parents"] else None
        return history

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
    ) -> Path:
        """Materialise ``revision`` into ``dest`` as read-only hardlinks to verified blobs.

        Falls back to read-only copies where ``dest`` is on another filesystem. Files
        already in ``dest`` at tree paths are replaced; other files are left alone.
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
            blob = self.layout.blob(entry["sha256"])
            try:
                got = _hash_file(blob)
            except FileNotFoundError:
                raise self._corrupt(repo, path, blob, "is missing") from None
            if got != (entry["sha256"], entry["size"]):
                raise self._corrupt(repo, path, blob, "does not match its sha256")
            target = dest / path
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.parent / f".hubflow-tmp-{uuid.uuid4().hex}"
            try:
                try:
                    os.link(blob, tmp)
                except OSError:
                    shutil.copyfile(blob, tmp)
                    os.chmod(tmp, 0o444)
                if target.is_dir():
                    raise HubError(f"cannot snapshot {path!r} of {repo}: {target} is a folder")
                os.replace(tmp, target)
            finally:
                tmp.unlink(missing_ok=True)  # rename() is a no-op when target is already that inode

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


def _trim(names: list[str], limit: int = 10) -> str:
    if not names:
        return "none"
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown} and {len(names) - limit} more"
