"""The ASGI app of `hubflow serve`: routing, authentication and error answers.

Routing works on the raw request path, split at ``/`` *before* percent-decoding, so an
encoded ``%2F`` stays inside its segment (a branch like ``feature%2Fx``) and an encoded
``..`` is just a segment that repo-id, revision and path validation then refuse. Nothing
is ever read or written outside the store: every file access goes through LocalHub by
(repo, revision, path in repo), or to a blob named by a 64-hex sha256.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response

from hubflow import __version__
from hubflow.errors import (
    CommitConflict,
    CorruptObject,
    EntryNotFound,
    HubError,
    HubLockTimeout,
    RefError,
    RefExists,
    RepoNotFound,
    RevisionNotFound,
)
from hubflow.hub.checks import validate_path_in_repo
from hubflow.hub.local import LocalHub
from hubflow.refs import RepoRef
from hubflow.serve import transfer, views
from hubflow.serve.transfer import HTTPProblem, Uploads
from hubflow.serve.ui import COOKIE, WebUI, read_cookie
from hubflow.serve.views import StoreView

log = logging.getLogger("hubflow.serve")
MAX_JSON = 16 << 20
MAX_COMMIT = 1 << 30
TYPES = {"models": "model", "datasets": "dataset"}
BAD_TOKEN = "Invalid credentials in Authorization header"


@dataclass(frozen=True)
class ServeConfig:
    """``token``: required as ``Authorization: Bearer`` (None: no auth). ``public_read``: reads need no token."""

    root: Path
    token: str | None
    public_read: bool = False
    manifests: tuple[Path, ...] = ()
    """Manifests the web view shows as DAGs (``--manifest``)."""
    read_only: bool = False
    """Refuse every write (``hubflow ui``)."""


class _Chunked(FileResponse):
    chunk_size = 1 << 20


class ServeApp:
    """ASGI callable serving one local store over the Hugging Face Hub's HTTP API."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.hub = LocalHub(config.root)
        self.view = StoreView(self.hub)
        self.uploads = Uploads(self.hub, os.urandom(32))
        self.ui = WebUI(self.hub, manifests=config.manifests, authorized=self.can_read, token=config.token)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        request = Request(scope, receive)
        try:
            response = await self.dispatch(request)
        except HTTPProblem as exc:
            response = problem(exc.status, exc.message, exc.code)
        except RepoNotFound as exc:
            response = problem(404, self._clean(exc.message), "RepoNotFound")
        except RevisionNotFound as exc:
            response = problem(404, self._clean(exc.message), "RevisionNotFound")
        except EntryNotFound as exc:
            response = problem(404, self._clean(exc.message), "EntryNotFound")
        except CommitConflict as exc:
            problem_ = transfer.conflict(exc)
            response = problem(problem_.status, self._clean(problem_.message))
        except HubLockTimeout as exc:
            response = problem(503, self._clean(exc.message))
        except RefExists as exc:  # a racer created the branch or tag between our check and the store's
            response = problem(409, self._clean(exc.message))
        except CorruptObject as exc:
            log.error("store damaged: %s", exc)
            response = problem(500, "the store is damaged: run `hubflow fsck` on the server")
        except (RefError, HubError) as exc:
            status = 409 if "already exists" in exc.message else 400
            response = problem(status, self._clean(exc.message))
        except Exception:  # never leak internals to a client
            log.exception("unhandled error for %s %s", scope.get("method"), scope.get("path"))
            response = problem(500, "internal server error (see the server log)")
        await response(scope, receive, send)

    def _clean(self, text: str) -> str:
        return text.replace(str(self.hub.root), "<store>")

    # --- authentication -------------------------------------------------------------------

    def authorize(self, request: Request, *, write: bool) -> None:
        if write and self.config.read_only:
            raise HTTPProblem(403, "this server is read-only (hubflow ui): use `hubflow serve` to write")
        if not (self.can_read(request) if not write else self._bearer_ok(request)):
            raise HTTPProblem(401, BAD_TOKEN)

    def _bearer_ok(self, request: Request) -> bool:
        token = self.config.token
        if token is None:
            return True
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())

    def can_read(self, request: Request) -> bool:
        """Reads: open with --public-read or no token; else the bearer token, or the web view's cookie
        (``/ui/login``). The cookie authorises reads only, so a cross-site request cannot write with it."""
        token = self.config.token
        if token is None or self.config.public_read or self._bearer_ok(request):
            return True
        cookie = request.cookies.get(COOKIE, "")
        return bool(cookie) and hmac.compare_digest(cookie.encode(), read_cookie(token).encode())

    # --- routing --------------------------------------------------------------------------

    async def dispatch(self, request: Request) -> Response:
        raw = request.scope.get("raw_path") or request.scope["path"].encode()
        try:
            segments = raw.decode("ascii").split("/")[1:]
            parts = [unquote(s, errors="strict") for s in segments]
        except UnicodeError:
            raise HTTPProblem(400, "request path is not valid percent-encoded UTF-8") from None
        if parts and parts[-1] == "":
            parts.pop()
        if any("\0" in p for p in parts):
            raise HTTPProblem(400, "request path holds a NUL byte")
        method = request.method
        if parts[:1] == ["ui"]:
            return await self.ui.handle(request, parts[1:])
        if not parts and method in ("GET", "HEAD"):
            return RedirectResponse("/ui", status_code=307)
        if parts[:1] == ["api"]:
            return await self.api(request, method, parts[1:])
        if parts[:2] == ["_hubflow", "lfs"] and len(parts) == 6:
            return await self.lfs_object(request, method, parts[2], f"{parts[3]}/{parts[4]}", parts[5])
        if parts[:2] == ["_hubflow", "lfs-verify"] and len(parts) == 5 and method == "POST":
            self.authorize(request, write=True)
            self._repo(parts[2] + "s", parts[3], parts[4])
            body = await self._json(request)
            return JSONResponse(transfer.lfs_verify(self.uploads, body))
        repo_type = "model"
        if parts[:1] == ["datasets"]:
            repo_type, parts = "dataset", parts[1:]
        elif parts[:1] == ["spaces"]:
            raise HTTPProblem(404, "hubflow serve holds models and datasets only", "RepoNotFound")
        if len(parts) >= 3 and parts[1].endswith(".git") and parts[2:] == ["info", "lfs", "objects", "batch"]:
            repo = self._repo(repo_type + "s", parts[0], parts[1][: -len(".git")])
            body = await self._json(request)
            self.authorize(request, write=isinstance(body, dict) and body.get("operation") == "upload")
            await self._exists(repo)
            answer = transfer.lfs_batch(self.uploads, repo, body, str(request.base_url))
            return JSONResponse(answer, media_type="application/vnd.git-lfs+json")
        if len(parts) >= 5 and parts[2] == "resolve" and method in ("GET", "HEAD"):
            self.authorize(request, write=False)
            repo = self._repo(repo_type + "s", parts[0], parts[1])
            return await self.resolve(repo, parts[3], "/".join(parts[4:]))
        raise HTTPProblem(404, f"no such endpoint: {method} {request.url.path}")

    def _repo(self, plural: str, namespace: str, name: str) -> RepoRef:
        if plural not in TYPES:
            raise HTTPProblem(404, f"unknown repo type {plural!r}: hubflow serve holds models and datasets")
        return RepoRef(TYPES[plural], f"{namespace}/{name}")

    async def _exists(self, repo: RepoRef) -> None:
        if not await run_in_threadpool(self.hub.repo_exists, repo):
            raise HTTPProblem(404, f"repository {repo} not found", "RepoNotFound")

    async def _json(self, request: Request) -> Any:
        body = await _read(request, MAX_JSON)
        try:
            return json.loads(body or b"null")
        except ValueError:
            raise HTTPProblem(400, "request body is not JSON") from None

    async def api(self, request: Request, method: str, parts: list[str]) -> Response:
        if parts == ["hubflow"]:
            return JSONResponse({"server": "hubflow-serve", "version": __version__, "xet": False})
        if parts == ["whoami-v2"]:
            self.authorize(request, write=True)
            return JSONResponse({"type": "user", "name": "hubflow", "fullname": "hubflow serve", "orgs": []})
        if parts == ["validate-yaml"] and method == "POST":
            self.authorize(request, write=False)
            result = _validate_yaml(await self._json(request))
            return JSONResponse(result, status_code=400 if result["errors"] else 200)
        if parts == ["repos", "create"] and method == "POST":
            self.authorize(request, write=True)
            return await self.create_repo(request, await self._json(request))
        if len(parts) < 3 or parts[0] not in TYPES:
            if parts[:1] == ["spaces"]:
                raise HTTPProblem(404, "hubflow serve holds models and datasets only", "RepoNotFound")
            raise HTTPProblem(404, f"no such endpoint: {method} /api/{'/'.join(parts)}")
        repo = self._repo(parts[0], parts[1], parts[2])
        action, args = (parts[3], parts[4:]) if len(parts) > 3 else ("", [])
        write = method not in ("GET", "HEAD") and action != "paths-info"
        self.authorize(request, write=write)
        await self._exists(repo)
        if action.startswith("xet-"):
            raise HTTPProblem(501, "hubflow serve has no Xet storage: set HF_HUB_DISABLE_XET=1 in the client")
        handler = self._routes().get((method, action))
        if handler is None or (action and not args and action not in ("refs",)):
            raise HTTPProblem(404, f"no such endpoint: {method} /api/{'/'.join(parts)}")
        return await handler(request, repo, args)

    def _routes(self) -> dict[tuple[str, str], Callable[[Request, RepoRef, list[str]], Awaitable[Response]]]:
        return {
            ("GET", ""): self.info,
            ("GET", "revision"): self.info,
            ("GET", "refs"): self.refs,
            ("GET", "commits"): self.commits,
            ("GET", "tree"): self.tree,
            ("POST", "paths-info"): self.paths_info,
            ("POST", "preupload"): self.preupload,
            ("POST", "commit"): self.commit,
            ("POST", "branch"): self.create_branch,
            ("DELETE", "branch"): self.delete_branch,
            ("POST", "tag"): self.create_tag,
            ("DELETE", "tag"): self.delete_tag,
        }

    # --- repos and refs ---------------------------------------------------------------------

    async def create_repo(self, request: Request, body: Any) -> Response:
        if not isinstance(body, dict) or not isinstance(body.get("name"), str):
            raise HTTPProblem(400, "create needs {name, organization, type}")
        repo_type = body.get("type") or "model"
        if repo_type not in ("model", "dataset"):
            raise HTTPProblem(400, f"hubflow serve holds models and datasets, not {repo_type!r}")
        namespace, name = body.get("organization"), body["name"]
        if "/" in name and not namespace:
            namespace, name = name.split("/", 1)
        if not namespace:
            raise HTTPProblem(400, "give the repo id as NAMESPACE/NAME (hubflow serve has no user accounts)")
        repo = RepoRef(repo_type, f"{namespace}/{name}")
        prefix = "datasets/" if repo_type == "dataset" else ""
        url = f"{str(request.base_url).rstrip('/')}/{prefix}{repo.repo_id}"
        if await run_in_threadpool(self.hub.repo_exists, repo):
            conflict = problem(409, f"You already created this {repo_type} repo: {repo.repo_id}")
            return JSONResponse(  # the Hub's 409 carries the url (huggingface_hub reads it)
                {"error": f"You already created this {repo_type} repo", "url": url},
                status_code=409,
                headers={k: v for k, v in conflict.headers.items() if k.lower().startswith("x-error")},
            )
        await run_in_threadpool(self.hub.create_repo, repo, exist_ok=True)
        return JSONResponse({"url": url, "name": repo.repo_id, "id": repo.repo_id})

    async def info(self, request: Request, repo: RepoRef, args: list[str]) -> Response:
        if len(args) > 1:
            raise HTTPProblem(404, "no such endpoint")
        blobs = request.query_params.get("blobs", "").lower() in ("1", "true")
        revision = args[0] if args else None
        return JSONResponse(await run_in_threadpool(self.view.repo_info, repo, revision, blobs=blobs))

    async def refs(self, request: Request, repo: RepoRef, args: list[str]) -> Response:
        include_prs = request.query_params.get("include_prs", "") in ("1", "true")
        return JSONResponse(await run_in_threadpool(self.view.refs, repo, include_prs))

    async def commits(self, request: Request, repo: RepoRef, args: list[str]) -> Response:
        items = await run_in_threadpool(self.view.commits, repo, args[0])
        return _paged(request, items, "p", views.COMMITS_PER_PAGE, page_index=True)

    async def tree(self, request: Request, repo: RepoRef, args: list[str]) -> Response:
        path = "/".join(args[1:]).strip("/")
        if path:
            validate_path_in_repo(path)
        recursive = request.query_params.get("recursive", "").lower() in ("1", "true")
        expand = request.query_params.get("expand", "").lower() in ("1", "true")
        items = await run_in_threadpool(self.view.tree, repo, args[0], path, recursive)
        per_page = views.TREE_PER_PAGE_EXPANDED if expand else views.TREE_PER_PAGE
        return _paged(request, items, "cursor", per_page)

    async def paths_info(self, request: Request, repo: RepoRef, args: list[str]) -> Response:
        body = await _read(request, MAX_JSON)
        if request.headers.get("content-type", "").startswith("application/json"):
            data = json.loads(body or b"{}")
            paths = data.get("paths", []) if isinstance(data, dict) else []
        else:
            paths = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True).get("paths", [])
        if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
            raise HTTPProblem(400, "paths-info needs a list of paths")
        return JSONResponse(await run_in_threadpool(self.view.paths_info, repo, args[0], paths))

    async def create_branch(self, request: Request, repo: RepoRef, args: list[str]) -> Response:
        body = await self._json(request)
        start = body.get("startingPoint") if isinstance(body, dict) else None
        branch = args[0]
        refs = await run_in_threadpool(self.hub.list_refs, repo)
        if branch in refs.branches:
            raise HTTPProblem(409, f"Reference already exists: refs/heads/{branch}")
        await run_in_threadpool(lambda: self.hub.create_branch(repo, branch, revision=start or None))
        return JSONResponse({})

    async def delete_branch(self, request: Request, repo: RepoRef, args: list[str]) -> Response:
        await run_in_threadpool(self.hub.delete_branch, repo, args[0])
        return JSONResponse({})

    async def create_tag(self, request: Request, repo: RepoRef, args: list[str]) -> Response:
        body = await self._json(request)
        tag = body.get("tag") if isinstance(body, dict) else None
        if not isinstance(tag, str):
            raise HTTPProblem(400, "tag body needs {tag}")
        refs = await run_in_threadpool(self.hub.list_refs, repo)
        if tag in refs.tags:
            raise HTTPProblem(409, f"Tag already exists: {tag}")
        await run_in_threadpool(lambda: self.hub.create_tag(repo, tag, revision=args[0]))
        return JSONResponse({})

    async def delete_tag(self, request: Request, repo: RepoRef, args: list[str]) -> Response:
        await run_in_threadpool(self.hub.delete_tag, repo, args[0])
        return JSONResponse({})

    # --- uploads and commits --------------------------------------------------------------------

    async def preupload(self, request: Request, repo: RepoRef, args: list[str]) -> Response:
        body = await self._json(request)
        return JSONResponse(await run_in_threadpool(transfer.preupload, self.view, repo, args[0], body))

    async def commit(self, request: Request, repo: RepoRef, args: list[str]) -> Response:
        if request.query_params.get("create_pr") in ("1", "true"):
            raise HTTPProblem(400, "hubflow serve has no pull requests: commit to a branch instead")
        body = await _read(request, MAX_COMMIT)
        answer = await run_in_threadpool(
            transfer.commit, self.view, self.uploads, repo, args[0], body, str(request.base_url)
        )
        return JSONResponse(answer)

    async def lfs_object(self, request: Request, method: str, type_: str, repo_id: str, oid: str) -> Response:
        repo = self._repo(type_ + "s", *repo_id.split("/"))
        if not transfer.OID.match(oid):
            raise HTTPProblem(400, "not an LFS oid")
        query = dict(request.query_params)
        if method == "PUT":
            size = self.uploads.check_signature("upload", repo, oid, query)
            declared = request.headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) != size:
                raise HTTPProblem(400, f"Content-Length {declared} is not the announced size {size}")
            if self.uploads.present(oid, size) is None:
                await self.uploads.receive(oid, size, request.stream())
            return Response(status_code=200)
        if method in ("GET", "HEAD"):
            size = self.uploads.check_signature("download", repo, oid, query)
            path = self.uploads.present(oid, size)
            if path is None:
                raise HTTPProblem(404, f"object {oid} not found")
            return _Chunked(path, stat_result=os.stat(path), media_type="application/octet-stream")
        raise HTTPProblem(405, f"{method} not allowed here")

    # --- downloads ---------------------------------------------------------------------------------

    async def resolve(self, repo: RepoRef, revision: str, path: str) -> Response:
        validate_path_in_repo(path)

        def lookup() -> tuple[str, Any]:
            commit = self.hub.resolve(repo, revision)
            entry = self.view.files(repo, commit).get(path)
            return commit, (self.view.describe(entry) if entry else None)

        await self._exists(repo)
        commit, stored = await run_in_threadpool(lookup)
        if stored is None:
            return problem(
                404, f"{path!r} is not in {repo}@{revision}", "EntryNotFound", {"X-Repo-Commit": commit}
            )
        blob = self.view.blob_path(stored.sha256)
        try:
            st = os.stat(blob)
        except FileNotFoundError:
            log.error("blob %s of %s %s is missing", stored.sha256, repo, path)
            raise HTTPProblem(500, "the store is damaged: run `hubflow fsck` on the server") from None
        headers = {"X-Repo-Commit": commit, "ETag": f'"{stored.etag}"', "Content-Disposition": "inline"}
        if stored.lfs:
            headers.update({"X-Linked-Etag": f'"{stored.sha256}"', "X-Linked-Size": str(stored.size)})
        return _Chunked(blob, stat_result=st, headers=headers, media_type="application/octet-stream")


def problem(
    status: int, message: str, code: str | None = None, extra: dict[str, str] | None = None
) -> Response:
    """A JSON error answer with the Hub's X-Error-Code / X-Error-Message headers."""
    one_line = " ".join(message.split()).encode("latin-1", "replace").decode("latin-1")[:1000]
    headers = {"X-Error-Message": one_line, **(extra or {})}
    if code:
        headers["X-Error-Code"] = code
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def _read(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPProblem(413, f"request body over {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPProblem(413, f"request body over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _paged(
    request: Request, items: list[Any], param: str, per_page: int, *, page_index: bool = False
) -> Response:
    """One page of ``items`` with a GitHub-style ``Link: <...>; rel="next"`` header."""
    raw = request.query_params.get(param, "0")
    start = int(raw) if raw.isdigit() else 0
    if page_index:
        start *= per_page
    page = items[start : start + per_page]
    headers = {}
    if start + per_page < len(items):
        nxt = (start // per_page + 1) if page_index else start + per_page
        headers["Link"] = f'<{request.url.include_query_params(**{param: nxt})}>; rel="next"'
    return JSONResponse(page, headers=headers)


def _validate_yaml(body: Any) -> dict[str, Any]:
    import yaml

    content = body.get("content") if isinstance(body, dict) else None
    if not isinstance(content, str):
        raise HTTPProblem(400, "validate-yaml needs {content}")
    if content.startswith("---"):
        front = content.split("---", 2)
        if len(front) == 3:
            try:
                yaml.safe_load(front[1])
            except yaml.YAMLError as exc:
                return {"errors": [{"message": f"invalid YAML metadata: {exc}"}], "warnings": []}
    return {"errors": [], "warnings": []}
