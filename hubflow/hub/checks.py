"""The checks every backend applies before it touches a hub, written once.

Ref names, the expected-parent check, commit arguments (operations, metadata, paths in a
repo) and the folder-to-operations rule: :class:`~hubflow.hub.local.LocalHub` and
:class:`~hubflow.hub.hf.HfHub` both call these, so a name or argument one backend refuses,
the other refuses with the same error and message.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hubflow.errors import CommitConflict, HubError
from hubflow.fingerprint import canonical_json
from hubflow.hub.base import CommitAdd, CommitDelete, CommitOperation
from hubflow.refs import RepoRef, is_commit_id, validate_revision

PARENT_HINT = "pass the full id returned by resolve() or commit()"


def check_ref_name(name: str, what: str) -> str:
    """A name for a new branch or tag: a valid revision that is neither '.' nor 40-hex.

    Raises :class:`~hubflow.errors.RefError` for characters or shapes no ref may have, and
    :class:`~hubflow.errors.HubError` for names that are valid revisions but cannot name a ref.
    """
    validate_revision(name)
    if name == "." or is_commit_id(name):
        raise HubError(f"{what} name {name!r} is not allowed", hint="pick a name that is not '.' or 40-hex")
    return name


def check_parent_arg(parent_commit: str | None) -> None:
    """``parent_commit`` is None or a full 40-hex commit id."""
    if parent_commit is not None and not (isinstance(parent_commit, str) and is_commit_id(parent_commit)):
        raise HubError(f"parent_commit {parent_commit!r} is not a 40-hex commit id", hint=PARENT_HINT)


def check_parent(repo: RepoRef, branch: str, parent_commit: str | None, head: str | None) -> None:
    """Raise :class:`CommitConflict` when ``branch`` (at ``head``) is not where the caller expects."""
    if parent_commit is not None and head != parent_commit:
        actual = head or "nothing (the branch does not exist)"
        raise CommitConflict(
            f"commit to {repo}@{branch} expected the branch at {parent_commit} but it is at {actual}",
            hint="another writer moved the branch: re-read the branch (resolve()) and retry",
        )


def check_metadata(repo: RepoRef, metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    """A copy of ``metadata``, which must be JSON (str keys, no NaN)."""
    out = dict(metadata or {})
    try:
        canonical_json(out)
    except (TypeError, ValueError) as err:
        raise HubError(
            f"commit metadata for {repo} is not JSON-serialisable: {err}",
            hint="use str keys and str/int/float/bool/None/list/dict values",
        ) from None
    return out


def check_operations(operations: Sequence[CommitOperation]) -> None:
    """Every operation is a CommitAdd / CommitDelete with a safe path; every source a regular file."""
    for op in operations:
        if not isinstance(op, CommitAdd | CommitDelete):
            raise HubError(f"unknown commit operation {op!r}", hint="use CommitAdd or CommitDelete")
        validate_path_in_repo(op.path_in_repo)
        if isinstance(op, CommitAdd):
            try:
                is_file = Path(op.source).is_file()
            except OSError as err:
                raise HubError(f"cannot read commit source {op.source}: {err.strerror}") from None
            if not is_file:
                raise HubError(f"commit source {op.source} is not a regular file")


def check_commit_args(
    repo: RepoRef,
    operations: Sequence[CommitOperation],
    *,
    branch: str,
    parent_commit: str | None,
    metadata: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """Every argument check of ``Hub.commit``, in one order for both backends; returns the metadata."""
    check_ref_name(branch, "branch")
    check_parent_arg(parent_commit)
    check_operations(operations)
    return check_metadata(repo, metadata)


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


def trim(names: list[str], limit: int = 10) -> str:
    """``a, b, c`` or ``a, b and 7 more``: names in a hint."""
    if not names:
        return "none"
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown} and {len(names) - limit} more"


def not_found_hint(repo: RepoRef, branches: list[str], tags: list[str]) -> str:
    """The hint of a RevisionNotFound: the repo's refs, or that it has none yet."""
    if not branches and not tags:
        return f"{repo} has no commits yet: commit to it first"
    return f"branches: {trim(branches)}; tags: {trim(tags)}"
