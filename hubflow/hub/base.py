"""The Hub protocol: the only way hubflow reads or writes artifacts.

Two backends implement it with the same semantics (``local.py``, and the
Hugging Face Hub backend). Stages never see it: the runner materialises their
inputs and commits their outputs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from hubflow.refs import RepoRef

DEFAULT_BRANCH = "main"


@dataclass(frozen=True)
class CommitAdd:
    """Add or replace ``path_in_repo`` with the content of the local file ``source``."""

    path_in_repo: str
    source: Path


@dataclass(frozen=True)
class CommitDelete:
    """Delete ``path_in_repo`` (a file) from the tree."""

    path_in_repo: str


CommitOperation = CommitAdd | CommitDelete


@dataclass(frozen=True)
class FileEntry:
    """One file of a revision's tree."""

    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class CommitInfo:
    """One commit: id, parents, message and the metadata hubflow attached."""

    commit_id: str
    parents: tuple[str, ...]
    message: str
    created_at: str
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RepoRefs:
    """The branches and tags of a repo, each mapped to its 40-hex commit id."""

    branches: dict[str, str]
    tags: dict[str, str]


@runtime_checkable
class Hub(Protocol):
    """What every backend provides. All ids and paths are validated by the backend."""

    def create_repo(self, repo: RepoRef, *, exist_ok: bool = True) -> None:
        """Create an empty repo (no commits yet; ``main`` appears with the first commit)."""

    def repo_exists(self, repo: RepoRef) -> bool: ...

    def check_writable(self) -> None:
        """Raise a :class:`~hubflow.errors.HubError` with the fix when this process cannot write
        the hub at all (checked before any stage runs); a no-op where that is unknowable."""

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
        """Make one atomic commit on ``branch``.

        ``parent_commit``: the commit the caller expects the branch to be at;
        if the branch moved, raise :class:`~hubflow.errors.CommitConflict` and
        change nothing. ``replace_tree``: start from an empty tree instead of the
        parent's, so the commit holds exactly the added files.
        """

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
        """Commit the whole of ``folder`` as the new tree of ``branch`` (one commit)."""

    def create_branch(self, repo: RepoRef, branch: str, *, revision: str | None = None) -> None: ...

    def delete_branch(self, repo: RepoRef, branch: str) -> None: ...

    def create_tag(self, repo: RepoRef, tag: str, *, revision: str, exist_ok: bool = False) -> None:
        """Point ``tag`` at ``revision``; with ``exist_ok`` an existing tag is moved."""

    def delete_tag(self, repo: RepoRef, tag: str) -> None: ...

    def list_refs(self, repo: RepoRef) -> RepoRefs: ...

    def resolve(self, repo: RepoRef, revision: str = DEFAULT_BRANCH) -> str:
        """Resolve a branch, tag or commit id to a 40-hex commit id."""

    def commit_info(self, repo: RepoRef, revision: str = DEFAULT_BRANCH) -> CommitInfo:
        """The one commit ``revision`` resolves to (id, parents, message, metadata)."""

    def list_commits(self, repo: RepoRef, revision: str = DEFAULT_BRANCH) -> list[CommitInfo]:
        """The history reachable from ``revision``, newest first."""

    def list_files(self, repo: RepoRef, revision: str = DEFAULT_BRANCH) -> list[FileEntry]: ...

    def read_file(self, repo: RepoRef, path: str, revision: str = DEFAULT_BRANCH) -> bytes: ...

    def snapshot(
        self,
        repo: RepoRef,
        revision: str,
        dest: Path,
        *,
        allow_patterns: Iterable[str] | None = None,
    ) -> Path:
        """Materialise ``revision`` (optionally only paths matching ``allow_patterns``,
        fnmatch-style) into ``dest``; files are read-only and verified by hash."""
