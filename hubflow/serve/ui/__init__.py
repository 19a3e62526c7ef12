"""The read-only web view of `hubflow serve`: server-rendered HTML under ``/ui``.

Pages: the store's repos (``/ui``), a repo's branches, tags and paginated commits
(``/ui/models/NS/NAME?rev=BRANCH&page=N``), a commit with its rendered card, files, lineage (each input
linked to its revision) and metrics plot (``.../commit/ID``), and each manifest given with
``--manifest`` as a DAG with every stage's state and last run (``/ui/manifests/K``). No script, no
CDN: Jinja templates with autoescaping, inline SVG for the DAG, PNG plots drawn by matplotlib on the
server (cached per commit: commits never change).

Auth is the API's: with a token and no ``--public-read`` every page needs it, as an
``Authorization: Bearer`` header or the cookie ``/ui/login`` sets; the cookie only ever authorises
reads, so a cross-site form cannot use it to write. Every repo id, revision and path goes through
the same validation as the API (``RepoRef``, ``LocalHub``), so traversal is refused the same way.
"""

from __future__ import annotations

import hmac
import io
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from hubflow.errors import EntryNotFound, HubflowError, RepoNotFound, RevisionNotFound
from hubflow.hub.local import LocalHub
from hubflow.refs import RepoRef, is_commit_id
from hubflow.serve.ui import pages
from hubflow.serve.ui.markdown import render_card
from hubflow.serve.ui.svg import dag_svg

COOKIE = "hubflow_token"
TYPES = {"models": "model", "datasets": "dataset"}
PLOT_CACHE = 256
TEMPLATES = Path(__file__).parent / "templates"


class UIProblem(Exception):
    """An HTML error page: status and a sentence for the user."""

    def __init__(self, status: int, message: str, *, login: bool = False) -> None:
        super().__init__(message)
        self.status, self.message, self.login = status, message, login


class WebUI:
    """Renders the pages; ``authorized(request)`` is the server's read check."""

    def __init__(
        self,
        hub: LocalHub,
        *,
        manifests: Sequence[Path],
        authorized: Callable[[Request], bool],
        token: str | None,
    ) -> None:
        from jinja2 import Environment, FileSystemLoader, select_autoescape

        self.hub = hub
        self.manifests = [Path(m) for m in manifests]
        self.authorized = authorized
        self.token = token
        self.env = Environment(
            loader=FileSystemLoader(str(TEMPLATES)), autoescape=select_autoescape(["html"]), auto_reload=False
        )
        self._plots: OrderedDict[tuple[str, str], bytes | None] = OrderedDict()
        self._plot_lock = threading.Lock()  # pyplot is not thread-safe

    def page(self, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        html = self.env.get_template(template).render(has_manifests=bool(self.manifests), **context)
        return HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)

    async def handle(self, request: Request, parts: list[str]) -> Response:
        try:
            if parts == ["login"]:
                return await self.login(request)
            if request.method not in ("GET", "HEAD"):
                raise UIProblem(405, "the web view is read-only")
            if not self.authorized(request):
                raise UIProblem(401, "This store needs a token to read.", login=True)
            return await self.route(request, parts)
        except (RepoNotFound, RevisionNotFound, EntryNotFound) as exc:
            return self.problem(request, UIProblem(404, self._clean(exc.message)))
        except HubflowError as exc:  # a bad repo id, revision or path: refused as the API refuses it
            return self.problem(request, UIProblem(400, self._clean(exc.message)))
        except UIProblem as exc:
            return self.problem(request, exc)

    def _clean(self, text: str) -> str:
        return text.replace(str(self.hub.root), "<store>")

    def problem(self, request: Request, exc: UIProblem, *, next_url: str | None = None) -> HTMLResponse:
        return self.page(
            "message.html",
            status=exc.status,
            status_title=_TITLES.get(exc.status, "Error"),
            message=exc.message,
            login=exc.login and self.token is not None,
            next=next_url or quote(request.url.path),
        )

    async def route(self, request: Request, parts: list[str]) -> Response:
        query = request.query_params
        if not parts:
            data = await run_in_threadpool(
                pages.repo_list, self.hub, page=_page(query), query=query.get("q", "")
            )
            return self.page("repos.html", **data)
        if parts == ["manifests"]:
            return self.page("manifests.html", manifests=[str(m) for m in self.manifests])
        if len(parts) == 2 and parts[0] == "manifests":
            return await self.manifest(parts[1])
        if len(parts) == 5 and parts[0] == "plot" and parts[4].endswith(".png"):
            repo = _repo(parts[1], parts[2], parts[3])
            return await self.plot(repo, parts[4][: -len(".png")])
        if len(parts) >= 3 and parts[0] in TYPES:
            repo = _repo(parts[0], parts[1], parts[2])
            if not await run_in_threadpool(self.hub.repo_exists, repo):
                raise UIProblem(404, f"There is no {repo.repo_type} repository {repo.repo_id} in this store.")
            if len(parts) == 3:
                revision = query.get("rev", "main")
                data = await run_in_threadpool(
                    pages.repo_page, self.hub, repo, revision=revision, page=_page(query)
                )
                return self.page("repo.html", **data)
            if len(parts) == 5 and parts[3] == "commit":
                return await self.commit(repo, parts[4])
        raise UIProblem(404, "There is no such page.")

    async def commit(self, repo: RepoRef, revision: str) -> Response:
        data = await run_in_threadpool(pages.commit_page, self.hub, repo, revision)

        def resolve(path: str) -> str:
            return pages.file_url(repo.repo_type, repo.repo_id, data["commit"], path)

        card_html = render_card(data["card_body"], resolve) if data["card_body"] else ""
        return self.page("commit.html", card_html=card_html, **data)

    async def manifest(self, index: str) -> Response:
        if not index.isdigit() or int(index) >= len(self.manifests):
            raise UIProblem(404, "There is no such manifest (the server shows those given with --manifest).")
        path = self.manifests[int(index)]
        data = await run_in_threadpool(pages.manifest_page, path, self.hub)
        counts: dict[str, int] = {}
        for s in data["stages"]:
            counts[s.state] = counts.get(s.state, 0) + 1
        svg = dag_svg(data["stages"]) if data["stages"] else ""
        return self.page("manifest.html", svg=svg, counts=sorted(counts.items()), **data)

    async def plot(self, repo: RepoRef, commit: str) -> Response:
        if not is_commit_id(commit):
            raise UIProblem(404, "A plot is addressed by a full commit id.")
        key = (str(repo), commit)
        if key not in self._plots:
            png = await run_in_threadpool(self._draw, repo, commit)
            self._plots[key] = png
            while len(self._plots) > PLOT_CACHE:
                self._plots.popitem(last=False)
        png = self._plots[key]
        if png is None:
            raise UIProblem(404, "This commit's metrics.jsonl holds no series to plot.")
        return Response(
            png, media_type="image/png", headers={"Cache-Control": "private, max-age=31536000, immutable"}
        )

    def _draw(self, repo: RepoRef, commit: str) -> bytes | None:
        from hubflow.report import plot_metrics

        curve = pages.metrics_curve(self.hub, repo, commit)
        buffer = io.BytesIO()
        with self._plot_lock:
            if not plot_metrics(curve, f"{repo.repo_id}@{commit[:8]}", buffer):
                return None
        return buffer.getvalue()

    async def login(self, request: Request) -> Response:
        if self.token is None:
            return RedirectResponse("/ui", status_code=303)
        if request.method != "POST":
            raise UIProblem(401, "Sign in with the server's token.", login=True)
        body = await _small_body(request, 4096)
        form = parse_qs(body.decode("utf-8", "replace"))
        given = (form.get("token") or [""])[0].strip()
        target = (form.get("next") or ["/ui"])[0]
        if not target.startswith("/ui") or target.startswith("//"):
            target = "/ui"
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            problem = UIProblem(401, "That token is not this server's.", login=True)
            return self.problem(request, problem, next_url=target)
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(COOKIE, read_cookie(self.token), httponly=True, samesite="strict", path="/")
        return response


def read_cookie(token: str) -> str:
    """The cookie value: an HMAC of the token, not the token, so a leaked cookie grants reads only."""
    return hmac.new(token.encode(), b"hubflow-ui-read-v1", "sha256").hexdigest()


SECURITY_HEADERS = {
    # No script anywhere in the view; images only from this server.
    "Content-Security-Policy": "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}
_TITLES = {401: "Sign in", 404: "Not found", 405: "Not allowed", 400: "Bad request"}


def _page(query: Any) -> int:
    text = query.get("page", "1")
    if not text.isdigit() or not 1 <= int(text) <= 1_000_000:
        raise UIProblem(400, f"page must be a number from 1, not {text!r}")
    return int(text)


def _repo(plural: str, namespace: str, name: str) -> RepoRef:
    if plural not in TYPES:
        raise UIProblem(404, f"unknown repo type {plural!r}: the store holds models and datasets")
    return RepoRef(TYPES[plural], f"{namespace}/{name}")


async def _small_body(request: Request, limit: int) -> bytes:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise UIProblem(400, "request body too large")
        chunks.append(chunk)
    return b"".join(chunks)
