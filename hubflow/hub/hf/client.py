"""The HTTP side of the `hf` backend: settings, error mapping and bounded retries.

:class:`HubClient` turns every ``huggingface_hub`` / transport exception into a
:class:`~hubflow.errors.HubflowError` that never holds the token, retries 408/429/5xx
answers and dropped connections with capped exponential backoff (``Retry-After`` honoured),
and makes the few raw requests ``HfApi`` has no call for.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

from hubflow import __version__, constants
from hubflow.errors import (
    CommitConflict,
    EntryNotFound,
    HubError,
    HubflowError,
    RepoNotFound,
    RevisionNotFound,
)
from hubflow.refs import RepoRef

T = TypeVar("T")

RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_CHUNK = 1 << 20


def glob_escape(path: str) -> str:
    return re.sub(r"([\[\]*?])", r"[\1]", path)


def iso_date(hub_date: str | None) -> str:
    """The Hub's ``...Z`` date as the ISO text LocalHub uses (now, if the Hub gave none)."""
    if hub_date:
        from huggingface_hub.utils import parse_datetime

        try:
            return parse_datetime(hub_date).isoformat(timespec="microseconds")
        except ValueError:
            return hub_date
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def hash_file_git(path: Path, *, git: bool) -> tuple[str, str | None, int]:
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


def status_of(exc: BaseException) -> int | None:
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


class HubClient:
    """Settings and request plumbing of :class:`~hubflow.hub.hf.HfHub`.

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
        return f"{type(self).__name__}({self.endpoint!r})"

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
        status = status_of(exc)
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
        return status_of(exc) in RETRY_STATUS or isinstance(exc, self._transport)

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
