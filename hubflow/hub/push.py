"""``hubflow push``: copy a repo's history from one hub to another, whatever their backends."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from hubflow.files import rmtree
from hubflow.hub.base import DEFAULT_BRANCH, Hub
from hubflow.refs import RepoRef

PUSH_KEY = "hubflow_push"
"""Commit metadata key recording which source commit a pushed commit copies."""


def push(
    source: Hub,
    target: Hub,
    src: RepoRef,
    dst: RepoRef,
    *,
    revision: str = DEFAULT_BRANCH,
    history: bool = False,
    work: Path,
    echo: Callable[[str], None] = print,
) -> dict[str, str]:
    """Copy ``src@revision`` (or, with ``history``, every commit of its first-parent history,
    oldest first) onto ``dst``'s ``main`` in ``target``, one commit each, keeping the message,
    the metadata (plus ``hubflow_push.source``) and the tags (``fp-…`` included) of each commit.

    Idempotent: a source commit already pushed (found by ``hubflow_push.source`` in the target's
    history) is not pushed again. Returns source commit id -> target commit id.
    """
    commits = source.list_commits(src, revision)
    chain = list(reversed(commits)) if history else commits[:1]
    target.create_repo(dst, exist_ok=True)
    pushed: dict[str, str] = {}
    if DEFAULT_BRANCH in target.list_refs(dst).branches:
        for c in target.list_commits(dst, DEFAULT_BRANCH):
            origin = c.metadata.get(PUSH_KEY, {})
            if isinstance(origin, dict) and isinstance(origin.get("source"), str):
                pushed.setdefault(origin["source"], c.commit_id)
    tags: dict[str, list[str]] = {}
    for tag, commit in source.list_refs(src).tags.items():
        tags.setdefault(commit, []).append(tag)
    mapping: dict[str, str] = {}
    for c in chain:
        key = f"{src}@{c.commit_id}"
        new = pushed.get(key)
        if new is None:
            folder = Path(work) / f"push-{c.commit_id[:12]}"
            rmtree(folder)
            source.snapshot(src, c.commit_id, folder)
            metadata = {**c.metadata, PUSH_KEY: {"source": key, "source_created_at": c.created_at}}
            head = target.list_refs(dst).branches.get(DEFAULT_BRANCH)
            new = target.commit_folder(
                dst, folder, message=c.message, metadata=metadata, parent_commit=head
            ).commit_id
            rmtree(folder)
            echo(f"{key} -> {dst}@{new}")
        else:
            echo(f"{key} already pushed as {dst}@{new}")
        for tag in sorted(tags.get(c.commit_id, [])):
            target.create_tag(dst, tag, revision=new, exist_ok=True)
        mapping[c.commit_id] = new
    return mapping
