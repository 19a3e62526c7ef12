"""Where everything lives under a local store's root (used by LocalHub and fsck)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from hubflow.refs import RepoRef


def _escape_ref(name: str) -> str:
    return name.replace("/", "%2F")


def _unescape_ref(filename: str) -> str:
    return filename.replace("%2F", "/")


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
