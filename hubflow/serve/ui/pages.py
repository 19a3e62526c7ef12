"""What the web view shows, read from a local store (and, for a manifest, its lock and plan).

Pure data: each function returns plain dicts and lists for a template, reads the store only through
:class:`~hubflow.hub.local.LocalHub` (so every repo id, revision and path is validated there), and reads
no more than the page shows: a page of a 5,000-commit history walks only the commits up to that page.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

from hubflow.errors import EntryNotFound, HubflowError, RevisionNotFound
from hubflow.hub.local import LocalHub
from hubflow.refs import RepoRef, parse_ref

REPOS_PER_PAGE = 100
COMMITS_PER_PAGE = 50
CARD_MAX = 1 << 20
"""Cards larger than this are shown as a link, not rendered."""
METRICS_MAX = 8 << 20


def repo_url(repo_type: str, repo_id: str) -> str:
    return f"/ui/{repo_type}s/{repo_id}"


def commit_url(repo_type: str, repo_id: str, commit: str) -> str:
    return f"{repo_url(repo_type, repo_id)}/commit/{commit}"


def file_url(repo_type: str, repo_id: str, commit: str, path: str) -> str:
    from urllib.parse import quote

    prefix = "/datasets" if repo_type == "dataset" else ""
    return f"{prefix}/{repo_id}/resolve/{commit}/{quote(path)}"


def _iter_repos(hub: LocalHub) -> Iterator[tuple[str, str]]:
    for text, _folder in hub.layout.iter_repo_dirs():
        repo_type, _, repo_id = text.partition(":")
        yield repo_type, repo_id


def repo_list(hub: LocalHub, *, page: int = 1, query: str = "") -> dict[str, Any]:
    """One page of the store's repos (sorted by type, then id), each with its main commit."""
    query = query.strip().lower()
    matching = (r for r in _iter_repos(hub) if not query or query in f"{r[0]}:{r[1]}".lower())
    start = (page - 1) * REPOS_PER_PAGE
    chunk = list(islice(matching, start, start + REPOS_PER_PAGE + 1))
    rows = []
    for repo_type, repo_id in chunk[:REPOS_PER_PAGE]:
        repo = RepoRef(repo_type, repo_id)
        refs = hub.list_refs(repo)
        head = refs.branches.get("main")
        info = hub.commit_info(repo, head) if head else None
        rows.append(
            {
                "type": repo_type,
                "id": repo_id,
                "url": repo_url(repo_type, repo_id),
                "branches": len(refs.branches),
                "tags": len(refs.tags),
                "updated": info.created_at if info else "",
                "message": info.message if info else "(empty)",
            }
        )
    return {"repos": rows, "page": page, "more": len(chunk) > REPOS_PER_PAGE, "query": query}


def repo_page(hub: LocalHub, repo: RepoRef, *, revision: str = "main", page: int = 1) -> dict[str, Any]:
    """A repo's branches, tags and one page of the first-parent history of ``revision``."""
    refs = hub.list_refs(repo)
    tags_by_commit: dict[str, list[str]] = {}
    for tag, commit in sorted(refs.tags.items()):
        tags_by_commit.setdefault(commit, []).append(tag)
    commits: list[dict[str, Any]] = []
    more = False
    if refs.branches or revision not in ("main",):
        start = (page - 1) * COMMITS_PER_PAGE
        history = islice(hub.iter_commits(repo, revision), start, start + COMMITS_PER_PAGE + 1)
        for info in history:
            if len(commits) == COMMITS_PER_PAGE:
                more = True
                break
            record = info.metadata.get("hubflow") if isinstance(info.metadata, dict) else None
            commits.append(
                {
                    "id": info.commit_id,
                    "short": info.commit_id[:8],
                    "url": commit_url(repo.repo_type, repo.repo_id, info.commit_id),
                    "message": info.message,
                    "date": info.created_at,
                    "stage": record.get("stage") if isinstance(record, dict) else None,
                    "tags": tags_by_commit.get(info.commit_id, []),
                }
            )
    return {
        "type": repo.repo_type,
        "id": repo.repo_id,
        "url": repo_url(repo.repo_type, repo.repo_id),
        "revision": revision,
        "branches": sorted(refs.branches.items()),
        "tags": sorted(refs.tags.items()),
        "commits": commits,
        "page": page,
        "more": more,
    }


def _read_json(hub: LocalHub, repo: RepoRef, path: str, commit: str, limit: int) -> Any:
    try:
        entry = {f.path: f for f in hub.list_files(repo, commit)}.get(path)
        if entry is None or entry.size > limit:
            return None
        return json.loads(hub.read_file(repo, path, commit))
    except (EntryNotFound, ValueError, UnicodeDecodeError):
        return None


def split_card(text: str) -> tuple[str, str]:
    """(YAML metadata, Markdown body) of a Hub card."""
    if text.startswith("---\n"):
        end = text.find("\n---", 4)
        if end != -1:
            return text[4:end].strip("\n"), text[end + 4 :].lstrip("\n")
    return "", text


def commit_page(hub: LocalHub, repo: RepoRef, revision: str) -> dict[str, Any]:
    """One commit: its message and metadata, files, card, lineage (each input linked to its revision)
    and metrics."""
    commit = hub.resolve(repo, revision)
    info = hub.commit_info(repo, commit)
    files = hub.list_files(repo, commit)
    by_path = {f.path: f for f in files}
    card_meta, card_body, card_too_big = "", "", False
    readme = by_path.get("README.md")
    if readme is not None:
        if readme.size > CARD_MAX:
            card_too_big = True
        else:
            card_meta, card_body = split_card(
                hub.read_file(repo, "README.md", commit).decode("utf-8", "replace")
            )
    lineage = _read_json(hub, repo, "lineage.json", commit, CARD_MAX)
    inputs = []
    if isinstance(lineage, dict) and isinstance(lineage.get("inputs"), dict):
        for name, rec in sorted(lineage["inputs"].items()):
            inputs.append(_input_link(name, rec))
    refs = hub.list_refs(repo)
    return {
        "type": repo.repo_type,
        "id": repo.repo_id,
        "url": repo_url(repo.repo_type, repo.repo_id),
        "commit": commit,
        "short": commit[:8],
        "message": info.message,
        "date": info.created_at,
        "parents": [(p[:8], commit_url(repo.repo_type, repo.repo_id, p)) for p in info.parents],
        "on_branches": sorted(b for b, c in refs.branches.items() if c == commit),
        "tags": sorted(t for t, c in refs.tags.items() if c == commit),
        "files": [
            {"path": f.path, "size": f.size, "url": file_url(repo.repo_type, repo.repo_id, commit, f.path)}
            for f in files
        ],
        "card_meta": card_meta,
        "card_body": card_body,
        "card_too_big": card_too_big,
        "lineage": lineage if isinstance(lineage, dict) else None,
        "inputs": inputs,
        "metrics": _read_json(hub, repo, "metrics.json", commit, CARD_MAX),
        "has_curve": "metrics.jsonl" in by_path and by_path["metrics.jsonl"].size <= METRICS_MAX,
        "plot_url": f"/ui/plot/{repo.repo_type}s/{repo.repo_id}/{commit}.png",
    }


def _input_link(name: str, rec: Any) -> dict[str, Any]:
    if not isinstance(rec, dict):
        return {"name": name, "ref": str(rec), "url": None}
    repo_type, repo_id, revision = rec.get("repo_type"), rec.get("repo_id"), rec.get("revision")
    ok = repo_type in ("model", "dataset") and isinstance(repo_id, str) and isinstance(revision, str)
    text = f"{rec.get('ref')}@{revision}" if revision else str(rec.get("ref"))
    return {
        "name": name,
        "ref": text,
        "url": commit_url(repo_type, repo_id, revision) if ok else None,
    }


def metrics_curve(hub: LocalHub, repo: RepoRef, commit: str) -> list[dict[str, Any]]:
    """The records of a commit's ``metrics.jsonl`` (bad lines skipped)."""
    entry = {f.path: f for f in hub.list_files(repo, commit)}.get("metrics.jsonl")
    if entry is None:
        raise EntryNotFound(f"{repo}@{commit[:8]} has no metrics.jsonl")
    if entry.size > METRICS_MAX:
        raise HubflowError(f"{repo}@{commit[:8]}: metrics.jsonl is larger than {METRICS_MAX >> 20} MiB")
    records = []
    for line in hub.read_file(repo, "metrics.jsonl", commit).decode("utf-8", "replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


# --- manifests --------------------------------------------------------------------------------


@dataclass
class StageView:
    name: str
    kind: str
    state: str
    """``up to date``, ``stale``, ``never run``."""
    reasons: list[str]
    upstream: list[str]
    outputs: list[dict[str, Any]] = field(default_factory=list)
    seconds: float | None = None
    last_run: str = ""


def manifest_page(path: Path, hub: LocalHub) -> dict[str, Any]:
    """A manifest's stages with their state (the plan, against the store) and last run (the lock and the
    output commit's date). A manifest that does not load is shown with its error, not a 500."""
    from hubflow.project import Project

    try:
        project = Project.load(path)
        plan = {p.name: p for p in project.plan()}
        lock = project.lock().stages
    except HubflowError as exc:
        return {"path": str(path), "error": exc.message, "hint": exc.hint, "stages": []}
    stages = []
    for name in project.graph.order:
        node, p, entry = project.graph.nodes[name], plan.get(name), lock.get(name)
        state = "never run" if entry is None else ("up to date" if p and p.action == "skip" else "stale")
        outputs = []
        last_run = ""
        for out_name, text in sorted((entry.outputs if entry else {}).items()):
            ref = parse_ref(text)
            url = commit_url(ref.repo_type, ref.repo_id, ref.revision) if ref.revision else None
            outputs.append({"name": out_name, "ref": text, "url": url})
            if ref.revision and not last_run:
                try:
                    last_run = hub.commit_info(ref.repo, ref.revision).created_at
                except (RevisionNotFound, HubflowError):
                    last_run = ""
        stages.append(
            StageView(
                name=name,
                kind=project.manifest.stages[name].kind,
                state=state,
                reasons=list(p.reasons) if p else [],
                upstream=sorted(node.upstream),
                outputs=outputs,
                seconds=entry.seconds if entry else None,
                last_run=last_run,
            )
        )
    return {"path": str(path), "error": None, "hint": None, "stages": stages}
