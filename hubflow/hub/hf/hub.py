"""The Hugging Face Hub backend: the Hub protocol over ``huggingface_hub.HfApi``.

Works against the public Hub, any endpoint that speaks its API, and ``hubflow serve``
(see ``docs/hub.md``). Semantics match :class:`~hubflow.hub.local.LocalHub`, and both take
their argument checks from :mod:`hubflow.hub.checks`:

- one ``create_commit`` per :meth:`HfHub.commit` (never ``upload_folder``), with
  ``parent_commit`` so that a moved branch (HTTP 412) raises :class:`CommitConflict`;
- commit metadata travels in the commit description as a fenced JSON trailer
  (:func:`hubflow.hub.codec.encode_commit_text`) and comes back from ``list_repo_commits``;
- 408/429/5xx answers and dropped connections are retried with capped exponential
  backoff; before a commit is re-sent, the branch's recent history is searched for
  the attempt's nonce, so a commit whose answer was lost is never made twice;
- snapshots are downloaded with ``snapshot_download`` into a staging folder beside
  ``dest``, checked file by file (size, and sha256 for LFS files / the git blob id for
  regular ones), made read-only and moved into place;
- the token (HF_TOKEN or the ``hf auth login``) is only handed to ``huggingface_hub``;
  every error text goes through :func:`hubflow.constants.redact`.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from hubflow import __version__
from hubflow.errors import CorruptObject, EntryNotFound, HubError, RefExists, RevisionNotFound
from hubflow.files import rmtree
from hubflow.hub import checks
from hubflow.hub.base import (
    DEFAULT_BRANCH,
    CommitAdd,
    CommitDelete,
    CommitInfo,
    CommitOperation,
    FileEntry,
    RepoRefs,
)
from hubflow.hub.codec import decode_commit_text, encode_commit_text, git_blob_id
from hubflow.hub.hf.client import HubClient, glob_escape, hash_file_git, iso_date, status_of
from hubflow.refs import RepoRef, is_commit_id, validate_revision

KEEP_ON_REPLACE = frozenset({".gitattributes"})
"""Files a ``replace_tree`` commit leaves in place: the Hub manages ``.gitattributes``."""


class HfHub(HubClient):
    """The :class:`~hubflow.hub.base.Hub` protocol over a Hugging Face Hub endpoint."""

    def create_repo(self, repo: RepoRef, *, exist_ok: bool = True) -> None:
        try:
            self._call(
                lambda: self.api.create_repo(
                    repo.repo_id, repo_type=repo.repo_type, private=self.private, exist_ok=exist_ok
                ),
                repo,
                "create repo",
            )
        except HubError as exc:
            if getattr(exc, "status", None) == 409:
                raise HubError(
                    f"repo {repo} already exists on {self.endpoint}", hint="pass exist_ok=True to reuse it"
                ) from None
            raise

    def check_writable(self) -> None:
        """Unknowable without writing: a token without write access fails at the first commit."""

    def repo_exists(self, repo: RepoRef) -> bool:
        return self._call(lambda: self.api.repo_exists(repo.repo_id, repo_type=repo.repo_type), repo)

    # --- reading -------------------------------------------------------------------

    def list_refs(self, repo: RepoRef) -> RepoRefs:
        refs = self._call(lambda: self.api.list_repo_refs(repo.repo_id, repo_type=repo.repo_type), repo)
        return RepoRefs(
            branches={b.name: b.target_commit for b in refs.branches},
            tags={t.name: t.target_commit for t in refs.tags},
        )

    def resolve(self, repo: RepoRef, revision: str = DEFAULT_BRANCH) -> str:
        """A branch, tag or commit id → 40-hex commit id."""
        validate_revision(revision)
        try:
            info = self._call(
                lambda: self.api.repo_info(repo.repo_id, repo_type=repo.repo_type, revision=revision),
                repo,
            )
        except RevisionNotFound:
            raise self._not_found(repo, revision, "revision") from None
        if not info.sha or not is_commit_id(info.sha):
            raise self._not_found(repo, revision, "revision")
        return info.sha

    def _not_found(self, repo: RepoRef, name: str, what: str) -> RevisionNotFound:
        refs = self.list_refs(repo)
        hint = checks.not_found_hint(repo, sorted(refs.branches), sorted(refs.tags))
        return RevisionNotFound(f"{what} {name!r} not found in {repo} on {self.endpoint}", hint=hint)

    def list_commits(self, repo: RepoRef, revision: str = DEFAULT_BRANCH) -> list[CommitInfo]:
        """First-parent history of ``revision``, newest first, with hubflow's metadata decoded."""
        commit = self.resolve(repo, revision)
        items = self._call(
            lambda: self.api.list_repo_commits(repo.repo_id, repo_type=repo.repo_type, revision=commit), repo
        )
        out = []
        for i, item in enumerate(items):
            message, metadata, _ = decode_commit_text(item.title or "", item.message or "")
            parents = (items[i + 1].commit_id,) if i + 1 < len(items) else ()
            created = item.created_at.isoformat(timespec="microseconds") if item.created_at else ""
            out.append(CommitInfo(item.commit_id, parents, message, created, metadata))
        return out

    def _tree(self, repo: RepoRef, commit: str) -> list[Any]:
        from huggingface_hub.hf_api import RepoFile

        entries = self._call(
            lambda: list(
                self.api.list_repo_tree(
                    repo.repo_id, repo_type=repo.repo_type, revision=commit, recursive=True
                )
            ),
            repo,
        )
        return sorted((e for e in entries if isinstance(e, RepoFile)), key=lambda e: e.path)

    def _file_url(self, repo: RepoRef, path: str, commit: str) -> str:
        from huggingface_hub import hf_hub_url

        return hf_hub_url(
            repo.repo_id, path, repo_type=repo.repo_type, revision=commit, endpoint=self.endpoint
        )

    def _fetch(self, repo: RepoRef, path: str, commit: str, entry: Any) -> bytes:
        data = self._call(
            lambda: self._get(self._file_url(repo, path, commit)).content, repo, f"read {path!r}"
        )
        self._check_bytes(repo, path, data, entry)
        return data

    def _check_bytes(self, repo: RepoRef, path: str, data: bytes, entry: Any) -> None:
        if entry.lfs is not None:
            ok = len(data) == entry.lfs.size and hashlib.sha256(data).hexdigest() == entry.lfs.sha256
        else:
            ok = len(data) == entry.size and git_blob_id(data) == entry.blob_id
        if not ok:
            raise CorruptObject(
                f"{path!r} of {repo} from {self.endpoint} does not match the hash the Hub lists for it",
                hint="retry; if it persists the server's copy is damaged (for hubflow serve: `hubflow fsck`)",
            )

    def _sha256(self, repo: RepoRef, commit: str, entry: Any) -> str:
        if entry.lfs is not None:
            return entry.lfs.sha256
        cached = self._sha256_of_blob.get(entry.blob_id)
        if cached is None:  # the Hub lists only a git sha1 for regular files: read them (small)
            cached = hashlib.sha256(self._fetch(repo, entry.path, commit, entry)).hexdigest()
            self._sha256_of_blob[entry.blob_id] = cached
        return cached

    def list_files(self, repo: RepoRef, revision: str = DEFAULT_BRANCH) -> list[FileEntry]:
        commit = self.resolve(repo, revision)
        return [
            FileEntry(e.path, e.lfs.size if e.lfs else e.size, self._sha256(repo, commit, e))
            for e in self._tree(repo, commit)
        ]

    def read_file(self, repo: RepoRef, path: str, revision: str = DEFAULT_BRANCH) -> bytes:
        """The bytes of ``path`` at ``revision``, checked against the hash the Hub lists."""
        from huggingface_hub.hf_api import RepoFile

        commit = self.resolve(repo, revision)
        infos = self._call(
            lambda: self.api.get_paths_info(repo.repo_id, [path], repo_type=repo.repo_type, revision=commit),
            repo,
        )
        entry = next((i for i in infos if isinstance(i, RepoFile) and i.path == path), None)
        if entry is None:
            raise EntryNotFound(
                f"{path!r} is not in {repo}@{revision} (commit {commit[:12]}) on {self.endpoint}",
                hint="list the files of that revision with list_files()",
            )
        return self._fetch(repo, path, commit, entry)

    def snapshot(
        self,
        repo: RepoRef,
        revision: str,
        dest: Path,
        *,
        allow_patterns: Iterable[str] | None = None,
    ) -> Path:
        """Download ``revision`` (only paths matching ``allow_patterns``) into ``dest``: read-only
        files, each checked against the Hub's size and hash before it is moved into place."""
        from huggingface_hub import snapshot_download

        commit = self.resolve(repo, revision)
        if isinstance(allow_patterns, str):
            allow_patterns = [allow_patterns]
        patterns = [p + "*" if p.endswith("/") else p for p in allow_patterns or ()]
        chosen = [
            e
            for e in self._tree(repo, commit)
            if allow_patterns is None or any(fnmatch.fnmatchcase(e.path, p) for p in patterns)
        ]
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        if not chosen:
            return dest
        staging = dest.parent / f".{dest.name}.hubflow-download-{uuid.uuid4().hex[:12]}"
        try:
            self._call(
                lambda: snapshot_download(
                    repo.repo_id,
                    repo_type=repo.repo_type,
                    revision=commit,
                    local_dir=staging,
                    allow_patterns=[glob_escape(e.path) for e in chosen],
                    endpoint=self.endpoint,
                    token=self._token,
                    max_workers=self.max_workers,
                    library_name="hubflow",
                    library_version=__version__,
                ),
                repo,
                f"download {commit[:12]}",
            )
            for entry in chosen:
                self._place(repo, entry, staging / entry.path, dest / entry.path)
        finally:
            rmtree(staging)
        return dest

    def _place(self, repo: RepoRef, entry: Any, got: Path, target: Path) -> None:
        if not got.is_file():
            raise HubError(f"download of {repo} from {self.endpoint} is missing {entry.path!r}")
        sha256, sha1, size = hash_file_git(got, git=entry.lfs is None)
        if entry.lfs is not None:
            ok = size == entry.lfs.size and sha256 == entry.lfs.sha256
        else:
            ok = size == entry.size and sha1 == entry.blob_id
            self._sha256_of_blob.setdefault(entry.blob_id, sha256)
        if not ok:
            raise CorruptObject(
                f"{entry.path!r} of {repo} downloaded from {self.endpoint} does not match its listed hash",
                hint="retry the download; if it persists the server's copy is damaged",
            )
        os.chmod(got, 0o444)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_dir():
            raise HubError(f"cannot snapshot {entry.path!r} of {repo}: {target} is a folder")
        os.replace(got, target)

    # --- writing -------------------------------------------------------------------

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
        from huggingface_hub import CommitOperationAdd, CommitOperationDelete

        metadata = checks.check_commit_args(
            repo, operations, branch=branch, parent_commit=parent_commit, metadata=metadata
        )

        head = self.list_refs(repo).branches.get(branch)
        checks.check_parent(repo, branch, parent_commit, head)
        adds = {op.path_in_repo: op for op in operations if isinstance(op, CommitAdd)}
        deletes = [op.path_in_repo for op in operations if isinstance(op, CommitDelete)]
        tree = {e.path for e in self._tree(repo, head)} if head and (replace_tree or deletes) else set()
        for path in deletes:
            if path not in tree and path not in adds:
                raise EntryNotFound(
                    f"cannot delete {path!r}: it is not in {repo}@{branch}",
                    hint="list the files of the branch with list_files() and delete only those",
                )
        hf_ops: list[Any] = []
        if replace_tree:
            gone = sorted(tree - set(adds) - KEEP_ON_REPLACE)
            hf_ops += [CommitOperationDelete(path_in_repo=p) for p in gone]
        hf_ops += [CommitOperationDelete(path_in_repo=p) for p in deletes if p in tree and p not in adds]
        hf_ops += [
            CommitOperationAdd(path_in_repo=p, path_or_fileobj=str(op.source)) for p, op in adds.items()
        ]

        self._disable_xet_for_serve()
        nonce = uuid.uuid4().hex
        summary, description = encode_commit_text(message, metadata, nonce)
        oid = self._send_commit(repo, branch, hf_ops, summary, description, parent_commit, nonce)
        if oid == head:  # nothing changed: huggingface_hub makes no empty commit
            return self._commit_info(repo, head)
        return self._commit_info(repo, oid)

    def _send_commit(
        self,
        repo: RepoRef,
        branch: str,
        ops: list[Any],
        summary: str,
        description: str,
        parent_commit: str | None,
        nonce: str,
    ) -> str:
        """``create_commit`` once; on a lost or failed answer, look for the nonce before re-sending."""
        from huggingface_hub.errors import HfHubHTTPError

        for attempt in range(self.retries + 1):
            if attempt:
                landed = self._landed(repo, branch, nonce)
                if landed is not None:
                    return landed
            try:
                info = self.api.create_commit(
                    repo.repo_id,
                    ops,
                    commit_message=summary,
                    commit_description=description,
                    repo_type=repo.repo_type,
                    revision=branch,
                    parent_commit=parent_commit,
                )
                return info.oid
            except (HfHubHTTPError, *self._transport) as exc:
                if status_of(exc) == 412:
                    landed = self._landed(repo, branch, nonce)
                    if landed is not None:
                        return landed
                    head = self.list_refs(repo).branches.get(branch)
                    checks.check_parent(repo, branch, parent_commit, head)
                    raise self._error(exc, repo, "commit") from None
                if attempt < self.retries and self._retryable(exc):
                    self.sleep(self._delay(attempt, exc))
                    continue
                raise self._error(exc, repo, "commit") from None
            except (ValueError, OSError) as exc:
                raise self._error(exc, repo, "commit") from None
        raise AssertionError("unreachable")

    def _landed(self, repo: RepoRef, branch: str, nonce: str) -> str | None:
        """The commit id of an earlier attempt carrying ``nonce``, if it reached the branch."""
        try:
            recent = self._call(lambda: self._recent_commits(repo, branch), repo)
        except RevisionNotFound:
            return None
        for item in recent:
            _, _, found = decode_commit_text(item.get("title", ""), item.get("message", ""))
            if found == nonce:
                return item["id"]
        return None

    def commit_info(self, repo: RepoRef, revision: str = DEFAULT_BRANCH) -> CommitInfo:
        """The commit ``revision`` resolves to, with hubflow's metadata decoded."""
        return self._commit_info(repo, self.resolve(repo, revision))

    def _commit_info(self, repo: RepoRef, commit: str) -> CommitInfo:
        recent = self._call(lambda: self._recent_commits(repo, commit), repo)
        if not recent or recent[0].get("id") != commit:
            raise HubError(f"{self.endpoint} did not list commit {commit} of {repo} after making it")
        item = recent[0]
        message, metadata, _ = decode_commit_text(item.get("title", ""), item.get("message", ""))
        parents = (recent[1]["id"],) if len(recent) > 1 else ()
        return CommitInfo(commit, parents, message, iso_date(item.get("date")), metadata)

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
        """Commit the whole of ``folder`` as the new tree of ``branch`` (one commit; the Hub's
        ``.gitattributes`` stays unless the folder has its own)."""
        return self.commit(
            repo,
            checks.folder_operations(folder),
            message=message,
            metadata=metadata,
            branch=branch,
            parent_commit=parent_commit,
            replace_tree=True,
        )

    # --- branches and tags -----------------------------------------------------------

    def create_branch(self, repo: RepoRef, branch: str, *, revision: str | None = None) -> None:
        checks.check_ref_name(branch, "branch")
        commit = self.resolve(repo, revision or DEFAULT_BRANCH)
        current = self.list_refs(repo).branches.get(branch)
        if current is not None:
            raise RefExists(
                f"branch {branch!r} already exists in {repo} (at {current})",
                hint="pick another name, or delete_branch() it first",
            )
        self._write_ref(
            repo,
            lambda: self.api.create_branch(
                repo.repo_id, branch=branch, revision=commit, repo_type=repo.repo_type
            ),
            lambda refs: refs.branches.get(branch) == commit,
            f"create branch {branch!r}",
        )

    def delete_branch(self, repo: RepoRef, branch: str) -> None:
        """Delete ``branch``; ``main`` cannot be deleted."""
        validate_revision(branch)
        if branch == DEFAULT_BRANCH:
            raise HubError(f"cannot delete the default branch {branch!r} of {repo}")
        if branch not in self.list_refs(repo).branches:
            raise self._not_found(repo, branch, "branch")
        self._write_ref(
            repo,
            lambda: self.api.delete_branch(repo.repo_id, branch=branch, repo_type=repo.repo_type),
            lambda refs: branch not in refs.branches,
            f"delete branch {branch!r}",
        )

    def create_tag(self, repo: RepoRef, tag: str, *, revision: str, exist_ok: bool = False) -> None:
        """Point ``tag`` at ``revision``; with ``exist_ok`` an existing tag is moved (delete, then create)."""
        checks.check_ref_name(tag, "tag")
        commit = self.resolve(repo, revision)
        current = self.list_refs(repo).tags.get(tag)
        if current == commit:
            return
        if current is not None:
            if not exist_ok:
                raise RefExists(
                    f"tag {tag!r} already exists in {repo} (at {current})",
                    hint="pass exist_ok=True to move it, or delete_tag() it first",
                )
            self.delete_tag(repo, tag)
        self._write_ref(
            repo,
            lambda: self.api.create_tag(repo.repo_id, tag=tag, revision=commit, repo_type=repo.repo_type),
            lambda refs: refs.tags.get(tag) == commit,
            f"create tag {tag!r}",
        )

    def delete_tag(self, repo: RepoRef, tag: str) -> None:
        validate_revision(tag)
        if tag not in self.list_refs(repo).tags:
            raise self._not_found(repo, tag, "tag")
        self._write_ref(
            repo,
            lambda: self.api.delete_tag(repo.repo_id, tag=tag, repo_type=repo.repo_type),
            lambda refs: tag not in refs.tags,
            f"delete tag {tag!r}",
        )

    def _write_ref(
        self, repo: RepoRef, fn: Callable[[], Any], done: Callable[[RepoRefs], bool], what: str
    ) -> None:
        """A ref write, retried like a read; a retry first checks whether the last attempt landed."""
        from huggingface_hub.errors import HfHubHTTPError

        for attempt in range(self.retries + 1):
            if attempt and done(self.list_refs(repo)):
                return
            try:
                fn()
                return
            except (HfHubHTTPError, *self._transport) as exc:
                if attempt < self.retries and self._retryable(exc):
                    self.sleep(self._delay(attempt, exc))
                    continue
                if status_of(exc) == 409:
                    if done(self.list_refs(repo)):
                        return
                    raise RefExists(  # another writer created it first, pointing elsewhere
                        f"{what} in {repo} on {self.endpoint}: it already exists (HTTP 409)",
                        hint="another writer created it meanwhile: read it with list_refs()",
                    ) from None
                raise self._error(exc, repo, what) from None
