"""What `hubflow serve` answers about a local store, in the Hugging Face Hub's JSON shapes.

Every function here is synchronous (the app runs it in a worker thread) and reads the
store only through :class:`~hubflow.hub.local.LocalHub`. A file is presented as an LFS
file (oid = sha256, with its git-lfs pointer) when it is large, binary or of a weight /
data type, and as a regular git file (oid = git blob sha1) otherwise: the same rule the
upload side (``preupload``) applies, so huggingface_hub's unchanged-file detection works.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import Any

from hubflow.errors import EntryNotFound, RevisionNotFound
from hubflow.hub.base import CommitInfo, FileEntry
from hubflow.hub.codec import NONCE_KEY, encode_commit_text, git_blob_id, lfs_pointer
from hubflow.hub.local import LocalHub
from hubflow.refs import RepoRef

REGULAR_MAX = 10 * 1024 * 1024
"""Files this large or larger are LFS files (as on the Hub)."""
LFS_SUFFIXES = frozenset(
    ".safetensors .bin .pt .pth .ckpt .parquet .arrow .npy .npz .h5 .onnx .gguf .msgpack .model "
    ".pkl .pickle .zip .gz .tgz .tar .zst .xz .bz2 .7z .png .jpg .jpeg .gif .webp .wav .mp3 .flac".split()
)
COMMITS_PER_PAGE = 50
TREE_PER_PAGE = 1000
TREE_PER_PAGE_EXPANDED = 50


def is_lfs(path: str, size: int, head: bytes) -> bool:
    """The upload mode rule: empty files are regular; large, binary or weight/data files are LFS."""
    if size == 0:
        return False
    return size >= REGULAR_MAX or b"\0" in head[:512] or PurePosixPath(path).suffix.lower() in LFS_SUFFIXES


@dataclass(frozen=True)
class Stored:
    """A file of a revision as the Hub describes it."""

    path: str
    size: int
    sha256: str
    lfs: bool
    oid: str
    """Hub oid: git blob sha1 of the content (regular) or of the LFS pointer (LFS)."""

    @property
    def etag(self) -> str:
        return self.sha256 if self.lfs else self.oid

    def json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "file", "oid": self.oid, "size": self.size, "path": self.path}
        if self.lfs:
            pointer = lfs_pointer(self.sha256, self.size)
            out["lfs"] = {"oid": self.sha256, "size": self.size, "pointerSize": len(pointer)}
        return out


class StoreView:
    """Read-side answers over one :class:`LocalHub`."""

    def __init__(self, hub: LocalHub) -> None:
        self.hub = hub
        self._describe = lru_cache(maxsize=65536)(self._describe_uncached)
        self._git_id = lru_cache(maxsize=8192)(self._git_id_uncached)

    # --- files ------------------------------------------------------------------------

    def blob_path(self, sha256: str) -> Path:
        return self.hub.layout.blob(sha256)

    def _head(self, sha256: str) -> bytes:
        with open(self.blob_path(sha256), "rb") as f:
            return f.read(512)

    def _git_id_uncached(self, sha256: str) -> str:
        return git_blob_id(self.blob_path(sha256).read_bytes())

    def _describe_uncached(self, path: str, size: int, sha256: str) -> Stored:
        lfs = is_lfs(path, size, self._head(sha256) if size else b"")
        oid = git_blob_id(lfs_pointer(sha256, size)) if lfs else self._git_id(sha256)
        return Stored(path, size, sha256, lfs, oid)

    def describe(self, entry: FileEntry) -> Stored:
        return self._describe(entry.path, entry.size, entry.sha256)

    def oid_as(self, entry: FileEntry, lfs: bool) -> str:
        """The oid huggingface_hub computes locally for this content in the given upload mode."""
        return entry.sha256 if lfs else self._git_id(entry.sha256)

    def files(self, repo: RepoRef, commit: str) -> dict[str, FileEntry]:
        return {f.path: f for f in self.hub.list_files(repo, commit)}

    # --- repo info --------------------------------------------------------------------

    def head(self, repo: RepoRef) -> str | None:
        return self.hub.list_refs(repo).branches.get("main")

    def repo_info(self, repo: RepoRef, revision: str | None, *, blobs: bool) -> dict[str, Any]:
        commit = self.hub.resolve(repo, revision) if revision is not None else self.head(repo)
        created = _created_at(self.hub, repo)
        info: dict[str, Any] = {
            "_id": hashlib.sha1(str(repo).encode()).hexdigest()[:24],
            "id": repo.repo_id,
            "author": repo.repo_id.split("/")[0],
            "sha": commit,
            "private": False,
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "createdAt": created,
            "lastModified": created,
            "siblings": [],
        }
        if commit is None:
            return info
        info["lastModified"] = hub_date(self.hub.commit_info(repo, commit).created_at)
        for entry in self.hub.list_files(repo, commit):
            sibling: dict[str, Any] = {"rfilename": entry.path}
            if blobs:
                stored = self.describe(entry)
                sibling.update(size=entry.size, blobId=stored.oid)
                if stored.lfs:
                    pointer = lfs_pointer(entry.sha256, entry.size)
                    sibling["lfs"] = {"sha256": entry.sha256, "size": entry.size, "pointerSize": len(pointer)}
            info["siblings"].append(sibling)
        return info

    def refs(self, repo: RepoRef, include_prs: bool) -> dict[str, Any]:
        refs = self.hub.list_refs(repo)
        out: dict[str, Any] = {
            "branches": [
                {"name": n, "ref": f"refs/heads/{n}", "targetCommit": c}
                for n, c in sorted(refs.branches.items())
            ],
            "tags": [
                {"name": n, "ref": f"refs/tags/{n}", "targetCommit": c} for n, c in sorted(refs.tags.items())
            ],
            "converts": [],
        }
        if include_prs:
            out["pullRequests"] = []
        return out

    # --- history ---------------------------------------------------------------------

    def commits(self, repo: RepoRef, revision: str) -> list[dict[str, Any]]:
        return [commit_json(c) for c in self.hub.list_commits(repo, revision)]

    # --- trees ---------------------------------------------------------------------------

    def tree(self, repo: RepoRef, revision: str, path: str, recursive: bool) -> list[dict[str, Any]]:
        commit = self.hub.resolve(repo, revision)
        files = self.hub.list_files(repo, commit)
        path = path.strip("/")
        if path and any(f.path == path for f in files):
            raise EntryNotFound(f"{path!r} is a file, not a folder, in {repo}@{revision}")
        prefix = f"{path}/" if path else ""
        under = [f for f in files if f.path.startswith(prefix)]
        if path and not under:
            raise EntryNotFound(f"folder {path!r} is not in {repo}@{revision}")
        dirs: dict[str, list[FileEntry]] = {}
        shown: list[FileEntry] = []
        for f in under:
            rel = f.path[len(prefix) :].split("/")
            for depth in range(1, len(rel) if recursive else min(2, len(rel))):
                dirs.setdefault(prefix + "/".join(rel[:depth]), []).append(f)
            if recursive or len(rel) == 1:
                shown.append(f)
        out = [_dir_json(d, members) for d, members in sorted(dirs.items())]
        return out + [self.describe(f).json() for f in shown]

    def paths_info(self, repo: RepoRef, revision: str, paths: Iterable[str]) -> list[dict[str, Any]]:
        commit = self.hub.resolve(repo, revision)
        files = self.files(repo, commit)
        out = []
        for raw in paths:
            path = raw.strip("/")
            if path in files:
                out.append(self.describe(files[path]).json())
                continue
            members = (
                [f for p, f in files.items() if p.startswith(f"{path}/")] if path else list(files.values())
            )
            if members:
                out.append(_dir_json(path, members))
        return out

    def existing_oids(self, repo: RepoRef, revision: str) -> dict[str, FileEntry]:
        """The files of ``revision`` (empty when the branch or the repo has no commit yet)."""
        try:
            return self.files(repo, self.hub.resolve(repo, revision))
        except RevisionNotFound:
            return {}


def _dir_json(path: str, members: Iterable[FileEntry]) -> dict[str, Any]:
    digest = hashlib.sha1()
    for f in sorted(members, key=lambda f: f.path):
        digest.update(f"{f.path}\0{f.sha256}\n".encode())
    return {"type": "directory", "oid": digest.hexdigest(), "size": 0, "path": path}


def hub_date(iso: str) -> str:
    """LocalHub's ISO time (``...+00:00``) in the Hub's ``YYYY-MM-DDTHH:MM:SS.ffffffZ``."""
    return iso.replace("+00:00", "Z") if iso.endswith("+00:00") else iso


def _created_at(hub: LocalHub, repo: RepoRef) -> str:
    try:
        info = json.loads((hub.layout.repo_dir(repo) / "repo.json").read_text())
        return hub_date(str(info.get("created_at", "")))
    except (OSError, ValueError):
        return ""


def commit_json(c: CommitInfo) -> dict[str, Any]:
    """One entry of the Hub's commit list; hubflow metadata goes into a fenced trailer."""
    metadata: Mapping[str, Any] = dict(c.metadata)
    nonce = metadata.get(NONCE_KEY) if isinstance(metadata.get(NONCE_KEY), str) else None
    metadata = {k: v for k, v in metadata.items() if k != NONCE_KEY}
    if metadata or nonce:
        title, body = encode_commit_text(c.message, metadata, nonce)
    else:
        first, _, rest = c.message.partition("\n")
        title, body = first, rest.strip("\n")
    return {
        "id": c.commit_id,
        "title": title,
        "message": body,
        "authors": [{"user": "hubflow", "avatar": None}],
        "date": hub_date(c.created_at),
    }
