"""Artifact references: ``model:NAMESPACE/NAME[@REVISION]``, ``dataset:...``.

Repo ids are validated the way the Hugging Face Hub validates them: letters,
digits, ``-``, ``_`` and ``.``; no ``--`` or ``..``; no leading or trailing
``-``/``.``; at most 96 characters. Revisions are branch, tag or commit names:
they may contain ``/`` but never ``..``, never start with ``/`` and never hold
characters outside ``[A-Za-z0-9._/-]``, so no ref can name a path outside a store.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from hubflow.errors import RefError

RepoType = Literal["model", "dataset"]
REPO_TYPES: tuple[str, ...] = ("model", "dataset")

_PART = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?$")
_REVISION = re.compile(r"^[A-Za-z0-9._-][A-Za-z0-9._/-]*$")
COMMIT_ID = re.compile(r"^[0-9a-f]{40}$")
MAX_REPO_ID = 96


def validate_repo_id(repo_id: str) -> str:
    """Return ``repo_id`` if it is a valid ``NAMESPACE/NAME``, else raise :class:`RefError`."""
    if not isinstance(repo_id, str) or not repo_id:
        raise RefError("empty repo id", hint="write it as NAMESPACE/NAME, e.g. my-org/my-model")
    if len(repo_id) > MAX_REPO_ID:
        raise RefError(f"repo id {repo_id!r} is {len(repo_id)} characters long; the Hub allows {MAX_REPO_ID}")
    parts = repo_id.split("/")
    if len(parts) != 2:
        raise RefError(
            f"repo id {repo_id!r} must have exactly one '/'",
            hint="write it as NAMESPACE/NAME, e.g. my-org/my-model",
        )
    for part in parts:
        if not _PART.match(part):
            raise RefError(
                f"repo id {repo_id!r}: {part!r} may only hold letters, digits, '-', '_' and '.', "
                "and must start and end with a letter or digit"
            )
        if "--" in part or ".." in part:
            raise RefError(f"repo id {repo_id!r}: '--' and '..' are not allowed")
    return repo_id


def validate_revision(revision: str) -> str:
    """Return ``revision`` if it is a safe branch, tag or commit name, else raise."""
    if (
        not isinstance(revision, str)
        or not _REVISION.match(revision)
        or ".." in revision
        or revision.endswith("/")
        or "//" in revision
        or revision.endswith(".lock")
    ):
        raise RefError(
            f"revision {revision!r} is not a valid branch, tag or commit id",
            hint="use a 40-hex commit id or a name of letters, digits, '.', '_', '-' and '/'",
        )
    return revision


def is_commit_id(revision: str | None) -> bool:
    return bool(revision) and bool(COMMIT_ID.match(revision))


@dataclass(frozen=True, order=True)
class RepoRef:
    """A repository without a revision: what a stage writes to."""

    repo_type: str
    repo_id: str

    def __post_init__(self) -> None:
        if self.repo_type not in REPO_TYPES:
            raise RefError(f"unknown repo type {self.repo_type!r}", hint="use 'model:' or 'dataset:'")
        validate_repo_id(self.repo_id)

    def at(self, revision: str | None) -> Ref:
        return Ref(self.repo_type, self.repo_id, revision)

    def __str__(self) -> str:
        return f"{self.repo_type}:{self.repo_id}"


@dataclass(frozen=True, order=True)
class Ref:
    """A repository at an optional revision (branch, tag or 40-hex commit)."""

    repo_type: str
    repo_id: str
    revision: str | None = None

    def __post_init__(self) -> None:
        if self.repo_type not in REPO_TYPES:
            raise RefError(f"unknown repo type {self.repo_type!r}", hint="use 'model:' or 'dataset:'")
        validate_repo_id(self.repo_id)
        if self.revision is not None:
            validate_revision(self.revision)

    @property
    def repo(self) -> RepoRef:
        return RepoRef(self.repo_type, self.repo_id)

    @property
    def pinned(self) -> bool:
        """True when the revision is a commit id, so the ref can never move."""
        return is_commit_id(self.revision)

    def __str__(self) -> str:
        base = f"{self.repo_type}:{self.repo_id}"
        return f"{base}@{self.revision}" if self.revision else base


def looks_like_ref(text: str) -> bool:
    """True when ``text`` is written as a ref (``TYPE:...``) rather than a stage name."""
    return isinstance(text, str) and ":" in text


def parse_ref(text: str) -> Ref:
    """Parse ``model:NS/NAME[@REV]`` or ``dataset:NS/NAME[@REV]``."""
    if not isinstance(text, str) or ":" not in text:
        raise RefError(
            f"{text!r} is not a ref",
            hint="write model:NAMESPACE/NAME[@REVISION] or dataset:NAMESPACE/NAME[@REVISION]",
        )
    repo_type, _, rest = text.partition(":")
    if repo_type not in REPO_TYPES:
        raise RefError(
            f"{text!r}: unknown repo type {repo_type!r}",
            hint="start the ref with 'model:' or 'dataset:'",
        )
    repo_id, sep, revision = rest.partition("@")
    if sep and not revision:
        raise RefError(f"{text!r}: empty revision after '@'", hint="drop the '@' or name a revision")
    return Ref(repo_type, repo_id, revision or None)


def parse_repo(text: str) -> RepoRef:
    """Parse a ref that must not carry a revision (a stage output)."""
    ref = parse_ref(text)
    if ref.revision is not None:
        raise RefError(
            f"{text!r}: an output names a repo, not a revision",
            hint=f"write {ref.repo} (hubflow makes the revision)",
        )
    return ref.repo
