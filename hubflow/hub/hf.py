"""The Hugging Face Hub backend: the Hub protocol over ``huggingface_hub.HfApi``.

Works against the public Hub, any endpoint that speaks its API, and ``hubflow serve``
(see ``docs/hub.md``). Semantics match :class:`~hubflow.hub.local.LocalHub`:

- one ``create_commit`` per :meth:`HfHub.commit` (never ``upload_folder``), with
  ``parent_commit`` so that a moved branch (HTTP 412) raises :class:`CommitConflict`;
- commit metadata travels in the commit description as a fenced JSON trailer
  (:func:`encode_commit_text`) and comes back from ``list_repo_commits``;
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
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

from hubflow import __version__, constants
from hubflow.errors import (
    CommitConflict,
    CorruptObject,
    EntryNotFound,
    HubError,
    HubflowError,
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

T = TypeVar("T")

NONCE_KEY = "_hubflow_nonce"
"""Key of the per-attempt commit nonce inside the trailer's metadata (stripped on read)."""
TRAILER_INFO = "hubflow-commit"
_TRAILER = re.compile(r"```" + TRAILER_INFO + r"\n(?P<json>.*?)\n```\s*$", re.DOTALL)
RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
KEEP_ON_REPLACE = frozenset({".gitattributes"})
"""Files a ``replace_tree`` commit leaves in place: the Hub manages ``.gitattributes``."""
_CHUNK = 1 << 20


# --- commit text codec (shared with hubflow serve) ---------------------------------


def encode_commit_text(message: str, metadata: Mapping[str, Any], nonce: str | None) -> tuple[str, str]:
    """Split ``message`` into the Hub's (summary, description) and append the metadata trailer.

    The trailer is a fenced block whose JSON holds the exact message, the metadata and
    the nonce, so :func:`decode_commit_text` gives back exactly what was committed.
    """
    first, _, rest = message.strip("\n").partition("\n")
    summary = first.strip() or "hubflow commit"
    payload: dict[str, Any] = {"message": message, "metadata": dict(metadata)}
    if nonce:
        payload["metadata"][NONCE_KEY] = nonce
    body = json.dumps(payload, sort_keys=True, ensure_ascii=False)
    rest = rest.strip("\n")
    description = (rest + "\n\n" if rest else "") + f"```{TRAILER_INFO}\n{body}\n```"
    return summary, description


def decode_commit_text(title: str, body: str) -> tuple[str, dict[str, Any], str | None]:
    """``(message, metadata, nonce)`` from a commit's title and description.

    A commit without a trailer (made by another tool) gives its plain text and no metadata.
    """
    match = _TRAILER.search(body or "")
    if match:
        try:
            payload = json.loads(match.group("json"))
        except ValueError:
            payload = None
        if isinstance(payload, dict) and isinstance(payload.get("metadata"), dict):
            metadata = dict(payload["metadata"])
            nonce = metadata.pop(NONCE_KEY, None)
            message = payload.get("message")
            if not isinstance(message, str):
                message = title
            return message, metadata, nonce if isinstance(nonce, str) else None
    body = (body or "").strip("\n")
    return (f"{title}\n\n{body}" if body else title), {}, None


def git_blob_id(data: bytes) -> str:
    """The git blob sha1 of ``data`` (what the Hub reports as a regular file's oid)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The git-lfs pointer file of an object (its git blob id is an LFS file's oid)."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def _glob_escape(path: str) -> str:
    return re.sub(r"([\[\]*?])", r"[\1]", path)


def _iso(hub_date: str | None) -> str:
    """The Hub's ``...Z`` date as the ISO text LocalHub uses (now, if the Hub gave none)."""
    if hub_date:
        from huggingface_hub.utils import parse_datetime

        try:
            return parse_datetime(hub_date).isoformat(timespec="microseconds")
        except ValueError:
            return hub_date
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _hash_file(path: Path, *, git: bool) -> tuple[str, str | None, int]:
    """(sha256, git blob sha1 if ``git``, size) of a file in one read."""
    size = path.stat().st_size
    sha256 = hashlib.sha256()
    sha1 = hashlib.sha1(b"blob %d\0" % size) if git else None
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(_CHUNK):
            sha256.update(chunk)
            if sha1 is not None:
                sha1.update(chunk)
    return sha256.hexdigest(), sha1.hexdigest() if sha1 else None, size


def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def _transport_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = []
    for name in ("httpx2", "httpx"):
        try:
            module = __import__(name)
        except ImportError:
            continue
        errors.append(module.TransportError)
    return tuple(errors)


class HfHub:
    """The :class:`~hubflow.hub.base.Hub` protocol over a Hugging Face Hub endpoint.

    ``endpoint``: the Hub's URL. ``token``: passed to ``huggingface_hub`` only (None: its own
    lookup, HF_TOKEN or the saved login). ``private``: visibility of repos this backend
    creates. ``retries``/``backoff``/``max_backoff``: bounded retry of 408/429/5xx answers
    and dropped connections (seconds; ``sleep`` is injectable for tests).
    """

    def __init__(
        self,
        endpoint: str = constants.PUBLIC_HUB_ENDPOINT,
        *,
        token: str | None = None,
        private: bool = True,
        retries: int = 5,
        backoff: float = 1.0,
        max_backoff: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
        max_workers: int = 8,
    ) -> None:
        from huggingface_hub import HfApi

        self.endpoint = endpoint.rstrip("/")
        self._token = token
        self.private = private
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.sleep = sleep
        self.max_workers = max_workers
        self.api = HfApi(
            endpoint=self.endpoint, token=token, library_name="hubflow", library_version=__version__
        )
        self._transport = _transport_errors()
        self._sha256_of_blob: dict[str, str] = {}
        self._xet_checked = False

    def __repr__(self) -> str:
        return f"HfHub({self.endpoint!r})"

    # --- errors and retries --------------------------------------------------------

    def _redact(self, text: str) -> str:
        return constants.redact(text, self._token)

    def _error(self, exc: BaseException, repo: RepoRef | None = None, what: str = "") -> HubflowError:
        """The HubflowError for a ``huggingface_hub`` / transport exception; never holds the token."""
        from huggingface_hub.errors import (
            OfflineModeIsEnabled,
            RemoteEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        where = f"{repo} on {self.endpoint}" if repo else self.endpoint
        doing = f"{what}: " if what else ""
        status = _status(exc)
        detail = str(exc).strip().splitlines()
        first = detail[0] if detail else type(exc).__name__
        server = getattr(exc, "server_message", None)
        reason = f"{first}" + (f" ({server})" if server and server not in first else "")
        if isinstance(exc, OfflineModeIsEnabled):
            err: HubflowError = HubError(
                f"{doing}cannot reach {self.endpoint}: offline mode is on (HF_HUB_OFFLINE)",
                hint="unset HF_HUB_OFFLINE and TRANSFORMERS_OFFLINE to use `backend: hf`, "
                "or use `backend: local`",
            )
        elif status == 401:
            err = HubError(
                f"{doing}{where} refused the credentials (HTTP 401)",
                hint="log in with `hf auth login` or set HF_TOKEN to a token with access; for "
                "`hubflow serve`, use the token in the server's HUBFLOW_SERVE_TOKEN",
            )
        elif status == 403:
            err = HubError(
                f"{doing}{where}: the token may not do this (HTTP 403: {reason})",
                hint="use a token with write access to that namespace (fine-grained tokens need "
                "'write' on the repos), or publish under a namespace you own",
            )
        elif isinstance(exc, RevisionNotFoundError):
            err = RevisionNotFound(
                f"{doing}revision not found in {where}", hint="list its refs with `hubflow log`"
            )
        elif isinstance(exc, RemoteEntryNotFoundError):
            err = EntryNotFound(f"{doing}file not found in {where}", hint="list the revision's files first")
        elif isinstance(exc, RepositoryNotFoundError):
            err = RepoNotFound(
                f"{doing}repo {where} does not exist (or the token cannot see it)",
                hint="`hubflow run` creates the repos it writes; create an input repo with "
                f"`hf repos create {repo.repo_id if repo else 'NS/NAME'}"
                f"{' --repo-type dataset' if repo and repo.repo_type == 'dataset' else ''}` "
                "or `hubflow push`, and check that HF_TOKEN can read private repos",
            )
        elif status == 412:
            err = CommitConflict(
                f"{doing}{where}: the branch moved since the parent commit was read (HTTP 412)",
                hint="another writer moved the branch: re-read the branch (resolve()) and retry",
            )
        elif status in RETRY_STATUS:
            err = HubError(
                f"{doing}{where} kept answering HTTP {status} after {self.retries} retries: {reason}",
                hint="the Hub is overloaded or rate-limiting: wait a few minutes and run again",
            )
        elif isinstance(exc, self._transport):
            err = HubError(
                f"{doing}cannot talk to {self.endpoint}: {type(exc).__name__}: {first}",
                hint="check `hub.endpoint` / HF_ENDPOINT and the network; for a local server, start "
                "it with `hubflow serve`",
            )
        elif status is not None:
            err = HubError(f"{doing}{where} answered HTTP {status}: {reason}")
        else:
            err = HubError(f"{doing}{where}: {type(exc).__name__}: {first}")
        err.message = self._redact(err.message)
        err.args = (str(err),)
        err.status = status  # type: ignore[attr-defined]
        return err

    def _retryable(self, exc: BaseException) -> bool:
        return _status(exc) in RETRY_STATUS or isinstance(exc, self._transport)

    def _delay(self, attempt: int, exc: BaseException) -> float:
        response = getattr(exc, "response", None)
        retry_after = getattr(response, "headers", {}).get("Retry-After") if response is not None else None
        if retry_after and str(retry_after).isdigit():
            return min(float(retry_after), self.max_backoff)
        return min(self.backoff * (2**attempt), self.max_backoff)

    def _call(self, fn: Callable[[], T], repo: RepoRef | None = None, what: str = "") -> T:
        """Run an idempotent request, retrying 408/429/5xx and dropped connections."""
        from huggingface_hub.errors import HfHubHTTPError

        for attempt in range(self.retries + 1):
            try:
                return fn()
            except (HfHubHTTPError, *self._transport) as exc:
                if attempt < self.retries and self._retryable(exc):
                    self.sleep(self._delay(attempt, exc))
                    continue
                raise self._error(exc, repo, what) from None
            except (ValueError, OSError) as exc:
                raise self._error(exc, repo, what) from None
        raise AssertionError("unreachable")

    # --- low-level HTTP ------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        from huggingface_hub.utils import build_hf_headers

        return build_hf_headers(token=self._token, library_name="hubflow", library_version=__version__)

    def _get(self, url: str, params: Mapping[str, Any] | None = None) -> Any:
        from huggingface_hub.utils import get_session, hf_raise_for_status

        response = get_session().get(url, headers=self._headers(), params=dict(params or {}))
        hf_raise_for_status(response)
        return response

    def _api_url(self, repo: RepoRef, *parts: str) -> str:
        from urllib.parse import quote

        tail = "/".join(quote(p, safe="") for p in parts)
        return f"{self.endpoint}/api/{repo.repo_type}s/{repo.repo_id}/{tail}"

    def _recent_commits(self, repo: RepoRef, revision: str) -> list[dict[str, Any]]:
        """The first page of ``revision``'s history (newest first), without following pages."""
        return list(self._get(self._api_url(repo, "commits", revision)).json())

    def _disable_xet_for_serve(self) -> None:
        """``hubflow serve`` has no Xet storage: switch huggingface_hub to LFS uploads for it.

        huggingface_hub uploads through Xet whenever hf_xet is installed; the switch
        (HF_HUB_DISABLE_XET) is process-wide, so it is only flipped for an endpoint that
        answers as hubflow serve.
        """
        if self._xet_checked:
            return
        self._xet_checked = True
        from huggingface_hub import constants as hf_constants

        if self.endpoint == constants.PUBLIC_HUB_ENDPOINT or hf_constants.HF_HUB_DISABLE_XET:
            return
        try:
            info = self._get(f"{self.endpoint}/api/hubflow").json()
        except Exception:  # not hubflow serve (or unreachable: the commit reports that)
            return
        if isinstance(info, dict) and info.get("server") == "hubflow-serve" and not info.get("xet"):
            hf_constants.HF_HUB_DISABLE_XET = True

    # --- repos ---------------------------------------------------------------------

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
        if not refs.branches and not refs.tags:
            hint = f"{repo} has no commits yet: commit to it first"
        else:
            hint = f"branches: {_trim(sorted(refs.branches))}; tags: {_trim(sorted(refs.tags))}"
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
                    allow_patterns=[_glob_escape(e.path) for e in chosen],
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
            _rmtree(staging)
        return dest

    def _place(self, repo: RepoRef, entry: Any, got: Path, target: Path) -> None:
        if not got.is_file():
            raise HubError(f"download of {repo} from {self.endpoint} is missing {entry.path!r}")
        sha256, sha1, size = _hash_file(got, git=entry.lfs is None)
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

        from hubflow.hub.local import validate_path_in_repo

        validate_revision(branch)
        if is_commit_id(branch):
            raise HubError(f"branch name {branch!r} is not allowed", hint="pick a name that is not 40-hex")
        if parent_commit is not None and not is_commit_id(parent_commit):
            raise HubError(
                f"parent_commit {parent_commit!r} is not a 40-hex commit id",
                hint="pass the full id returned by resolve() or commit()",
            )
        metadata = dict(metadata or {})
        try:
            json.dumps(metadata, allow_nan=False)
        except (TypeError, ValueError) as err:
            raise HubError(
                f"commit metadata for {repo} is not JSON-serialisable: {err}",
                hint="use str keys and str/int/float/bool/None/list/dict values",
            ) from None
        for op in operations:
            if not isinstance(op, CommitAdd | CommitDelete):
                raise HubError(f"unknown commit operation {op!r}", hint="use CommitAdd or CommitDelete")
            validate_path_in_repo(op.path_in_repo)
            if isinstance(op, CommitAdd) and not Path(op.source).is_file():
                raise HubError(f"commit source {op.source} is not a regular file")

        head = self.list_refs(repo).branches.get(branch)
        self._check_parent(repo, branch, parent_commit, head)
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

    @staticmethod
    def _check_parent(repo: RepoRef, branch: str, parent_commit: str | None, head: str | None) -> None:
        if parent_commit is not None and head != parent_commit:
            actual = head or "nothing (the branch does not exist)"
            raise CommitConflict(
                f"commit to {repo}@{branch} expected the branch at {parent_commit} but it is at {actual}",
                hint="another writer moved the branch: re-read the branch (resolve()) and retry",
            )

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
                if _status(exc) == 412:
                    landed = self._landed(repo, branch, nonce)
                    if landed is not None:
                        return landed
                    head = self.list_refs(repo).branches.get(branch)
                    self._check_parent(repo, branch, parent_commit, head)
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

    def _commit_info(self, repo: RepoRef, commit: str) -> CommitInfo:
        recent = self._call(lambda: self._recent_commits(repo, commit), repo)
        if not recent or recent[0].get("id") != commit:
            raise HubError(f"{self.endpoint} did not list commit {commit} of {repo} after making it")
        item = recent[0]
        message, metadata, _ = decode_commit_text(item.get("title", ""), item.get("message", ""))
        parents = (recent[1]["id"],) if len(recent) > 1 else ()
        return CommitInfo(commit, parents, message, _iso(item.get("date")), metadata)

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
        from hubflow.hub.local import folder_operations

        return self.commit(
            repo,
            folder_operations(folder),
            message=message,
            metadata=metadata,
            branch=branch,
            parent_commit=parent_commit,
            replace_tree=True,
        )

    # --- branches and tags -----------------------------------------------------------

    def create_branch(self, repo: RepoRef, branch: str, *, revision: str | None = None) -> None:
        validate_revision(branch)
        if branch == "." or is_commit_id(branch):
            raise HubError(
                f"branch name {branch!r} is not allowed", hint="pick a name that is not '.' or 40-hex"
            )
        commit = self.resolve(repo, revision or DEFAULT_BRANCH)
        current = self.list_refs(repo).branches.get(branch)
        if current is not None:
            raise HubError(
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
        validate_revision(tag)
        if tag == "." or is_commit_id(tag):
            raise HubError(f"tag name {tag!r} is not allowed", hint="pick a name that is not '.' or 40-hex")
        commit = self.resolve(repo, revision)
        current = self.list_refs(repo).tags.get(tag)
        if current == commit:
            return
        if current is not None:
            if not exist_ok:
                raise HubError(
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
                if _status(exc) == 409 and done(self.list_refs(repo)):
                    return
                raise self._error(exc, repo, what) from None


PUSH_KEY = "hubflow_push"
"""Commit metadata key recording which source commit a pushed commit copies."""


def push(
    source: Any,
    target: Any,
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
            _rmtree(folder)
            source.snapshot(src, c.commit_id, folder)
            metadata = {**c.metadata, PUSH_KEY: {"source": key, "source_created_at": c.created_at}}
            head = target.list_refs(dst).branches.get(DEFAULT_BRANCH)
            new = target.commit_folder(
                dst, folder, message=c.message, metadata=metadata, parent_commit=head
            ).commit_id
            _rmtree(folder)
            echo(f"{key} -> {dst}@{new}")
        else:
            echo(f"{key} already pushed as {dst}@{new}")
        for tag in sorted(tags.get(c.commit_id, [])):
            target.create_tag(dst, tag, revision=new, exist_ok=True)
        mapping[c.commit_id] = new
    return mapping


def _trim(names: list[str], limit: int = 10) -> str:
    if not names:
        return "none"
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown} and {len(names) - limit} more"


def _rmtree(path: Path) -> None:
    def onerror(func: Any, p: str, _exc: Any) -> None:
        os.chmod(os.path.dirname(p), 0o700)
        func(p)

    if path.exists():
        shutil.rmtree(path, onerror=onerror)


__all__ = [
    "HfHub",
    "push",
    "decode_commit_text",
    "encode_commit_text",
    "git_blob_id",
    "lfs_pointer",
]
