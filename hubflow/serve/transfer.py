"""The write side of `hubflow serve`: preupload, the NDJSON commit, and the LFS batch API.

LFS objects arrive by a signed ``PUT`` (the URL the batch answer hands out carries an
HMAC, since huggingface_hub sends no Authorization header there), are hashed while they
stream in, and wait in the store's ``tmp/`` as ``serve-lfs-<sha256>`` until a commit
names them; the commit then hardlinks them into the store. An object nobody commits is a
temp file to ``hubflow fsck`` (removed by ``--repair`` after its grace period).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from hubflow.errors import CommitConflict, EntryNotFound
from hubflow.hub.base import CommitAdd, CommitDelete, CommitOperation
from hubflow.hub.checks import validate_path_in_repo
from hubflow.hub.codec import NONCE_KEY, decode_commit_text
from hubflow.hub.local import LocalHub
from hubflow.refs import RepoRef, is_commit_id
from hubflow.serve.views import StoreView, is_lfs

OID = re.compile(r"^[0-9a-f]{64}$")
URL_TTL = 3600
MAX_OBJECT = 1 << 40
MAX_BATCH_OBJECTS = 10_000


class HTTPProblem(Exception):
    """An HTTP error answer: status, message and the Hub's X-Error-Code (if any)."""

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code


@dataclass
class Uploads:
    """LFS objects received but not yet committed, and the signing key for their URLs."""

    hub: LocalHub
    secret: bytes

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._in_use: Counter[str] = Counter()

    def staged(self, oid: str) -> Path:
        return self.hub.layout.tmp / f"serve-lfs-{oid}"

    def present(self, oid: str, size: int | None = None) -> Path | None:
        """Where the object's bytes are (staged upload or store blob), if anywhere."""
        for path in (self.hub.layout.blob(oid), self.staged(oid)):
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            if size is None or st.st_size == size:
                return path
        return None

    # --- signed URLs ------------------------------------------------------------------

    def _sig(self, op: str, repo: RepoRef, oid: str, size: int, exp: int) -> str:
        msg = f"{op}\n{repo.repo_type}\n{repo.repo_id}\n{oid}\n{size}\n{exp}".encode()
        return hmac.new(self.secret, msg, hashlib.sha256).hexdigest()

    def signed_url(self, base: str, op: str, repo: RepoRef, oid: str, size: int) -> str:
        exp = int(time.time()) + URL_TTL
        query = urlencode({"op": op, "size": size, "exp": exp, "sig": self._sig(op, repo, oid, size, exp)})
        path = f"/_hubflow/lfs/{repo.repo_type}/{quote(repo.repo_id)}/{oid}"
        return f"{base.rstrip('/')}{path}?{query}"

    def check_signature(self, op: str, repo: RepoRef, oid: str, query: dict[str, str]) -> int:
        """The signed size, if ``query`` carries a valid, unexpired signature for ``op``."""
        try:
            size, exp = int(query.get("size", "")), int(query.get("exp", ""))
        except ValueError:
            raise HTTPProblem(403, "transfer URL is not signed") from None
        want = self._sig(op, repo, oid, size, exp)
        if query.get("op") != op or not hmac.compare_digest(want, query.get("sig", "")):
            raise HTTPProblem(403, "transfer URL signature does not match")
        if exp < time.time():
            raise HTTPProblem(403, "transfer URL expired: ask the LFS batch endpoint again")
        return size

    # --- receiving --------------------------------------------------------------------

    async def receive(self, oid: str, size: int, chunks: AsyncIterator[bytes]) -> None:
        """Stream an object in, hashing it; it becomes visible only if it matches its oid and size."""
        part = self.hub.layout.tmp / f"serve-lfs-{oid}.{uuid.uuid4().hex}.part"
        digest, got = hashlib.sha256(), 0
        try:
            with open(part, "xb") as f:
                async for chunk in chunks:
                    got += len(chunk)
                    if got > size:
                        raise HTTPProblem(400, f"upload of {oid} is larger than the {size} bytes announced")
                    digest.update(chunk)
                    f.write(chunk)
            if got != size or digest.hexdigest() != oid:
                raise HTTPProblem(
                    400, f"uploaded bytes ({got} bytes, sha256 {digest.hexdigest()[:12]}) do not match {oid}"
                )
            os.chmod(part, 0o444)
            os.replace(part, self.staged(oid))
        finally:
            part.unlink(missing_ok=True)

    # --- committing ---------------------------------------------------------------------

    def acquire(self, oids: list[str]) -> None:
        with self._lock:
            self._in_use.update(oids)

    def release(self, oids: list[str]) -> None:
        """Forget staged copies of objects that are now in the store and no other commit uses."""
        with self._lock:
            self._in_use.subtract(oids)
            for oid in set(oids):
                if self._in_use[oid] <= 0:
                    del self._in_use[oid]
                    if self.hub.layout.blob(oid).exists():
                        self.staged(oid).unlink(missing_ok=True)


# --- preupload ----------------------------------------------------------------------


def preupload(view: StoreView, repo: RepoRef, revision: str, body: Any) -> dict[str, Any]:
    files = body.get("files") if isinstance(body, dict) else None
    if not isinstance(files, list):
        raise HTTPProblem(400, "preupload body must be {'files': [{path, sample, size}]}")
    existing = view.existing_oids(repo, revision)
    out = []
    for item in files:
        if not isinstance(item, dict) or not isinstance(item.get("path"), str):
            raise HTTPProblem(400, "each preupload file needs a 'path'")
        path = validate_path_in_repo(item["path"])
        size = item.get("size")
        if not isinstance(size, int) or size < 0:
            raise HTTPProblem(400, f"preupload of {path!r}: 'size' must be a non-negative integer")
        try:
            sample = base64.b64decode(item.get("sample") or "", validate=True)
        except (binascii.Error, ValueError):
            raise HTTPProblem(400, f"preupload of {path!r}: 'sample' is not base64") from None
        lfs = is_lfs(path, size, sample)
        found = existing.get(path)
        out.append(
            {
                "path": path,
                "uploadMode": "lfs" if lfs else "regular",
                "shouldIgnore": False,
                "oid": view.oid_as(found, lfs) if found else None,
            }
        )
    return {"files": out, "commitOid": None}


# --- the NDJSON commit ----------------------------------------------------------------------


def commit(
    view: StoreView, uploads: Uploads, repo: RepoRef, branch: str, body: bytes, base: str
) -> dict[str, Any]:
    """Apply one NDJSON commit (header, file, lfsFile, deletedFile, deletedFolder lines)."""
    hub = view.hub
    header: dict[str, Any] | None = None
    ops: list[CommitOperation] = []
    temps: list[Path] = []
    lfs_oids: list[str] = []
    folder_deletes: list[str] = []
    try:
        for n, line in enumerate(body.splitlines(), 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                key, value = item["key"], item["value"]
                if not isinstance(value, dict):
                    raise TypeError
            except (ValueError, KeyError, TypeError):
                raise HTTPProblem(400, f"commit line {n} is not a {{key, value}} JSON object") from None
            field = _Fields(n, key, value)
            if key == "header":
                field.text("summary", optional=True)
                field.text("description", optional=True)
                parent_commit = field.text("parentCommit", optional=True)
                if parent_commit and not is_commit_id(parent_commit):
                    raise HTTPProblem(400, f"{field.where}: field 'parentCommit' must be a 40-hex commit id")
                header = value
                continue
            if header is None:
                raise HTTPProblem(400, "the first commit line must be the header")
            if key not in ("file", "lfsFile", "deletedFile", "deletedFolder"):
                raise HTTPProblem(400, f"commit line {n}: unsupported key {key!r}")
            path = field.text("path")
            if key == "file":
                if (field.text("encoding", optional=True) or "base64") != "base64":
                    raise HTTPProblem(400, f"{path!r}: only base64 file content is supported")
                try:
                    data = base64.b64decode(field.text("content"), validate=True)
                except (binascii.Error, ValueError):
                    raise HTTPProblem(
                        400, f"{field.where}: field 'content' of {path!r} is not base64"
                    ) from None
                tmp = hub.layout.new_tmp()
                tmp.write_bytes(data)
                temps.append(tmp)
                ops.append(CommitAdd(validate_path_in_repo(path), tmp))
            elif key == "lfsFile":
                oid = field.text("oid")
                if (field.text("algo", optional=True) or "sha256") != "sha256" or not OID.match(oid):
                    raise HTTPProblem(
                        400, f"{field.where}: field 'oid' of {path!r} must be a sha256 (64 hex)"
                    )
                size = field.size("size")
                source = uploads.present(oid, size)
                if source is None:
                    raise HTTPProblem(
                        422, f"LFS object {oid} for {path!r} was never uploaded (use the LFS batch API first)"
                    )
                lfs_oids.append(oid)
                ops.append(CommitAdd(validate_path_in_repo(path), source))
            elif key == "deletedFile":
                ops.append(CommitDelete(validate_path_in_repo(path)))
            elif key == "deletedFolder":
                folder_deletes.append(path.strip("/"))
        if header is None:
            raise HTTPProblem(400, "empty commit: no header line")
        if folder_deletes:
            existing = view.existing_oids(repo, branch)
            for folder in folder_deletes:
                members = [p for p in existing if folder == "" or p.startswith(f"{folder}/")]
                if not members:
                    raise EntryNotFound(f"folder {folder!r} is not in {repo}@{branch}")
                ops.extend(CommitDelete(p) for p in members)
        parent = header.get("parentCommit")
        summary = header.get("summary") or ""
        description = header.get("description") or ""
        if not summary.strip():
            raise HTTPProblem(400, "commit summary is empty")
        message, metadata, nonce = decode_commit_text(summary, description)
        if nonce:
            metadata[NONCE_KEY] = nonce
        uploads.acquire(lfs_oids)
        try:
            info = hub.commit(
                repo, ops, message=message, metadata=metadata, branch=branch, parent_commit=parent or None
            )
        finally:
            uploads.release(lfs_oids)
    finally:
        for tmp in temps:
            tmp.unlink(missing_ok=True)
    prefix = "datasets/" if repo.repo_type == "dataset" else ""
    return {
        "success": True,
        "commitOid": info.commit_id,
        "commitUrl": f"{base.rstrip('/')}/{prefix}{repo.repo_id}/commit/{info.commit_id}",
        "commitMessage": message,
        "hookOutput": "",
        "pullRequestUrl": None,
    }


class _Fields:
    """Typed access to one NDJSON commit line's fields: a wrong type is a 400 naming the field."""

    def __init__(self, n: int, key: Any, value: dict[str, Any]) -> None:
        self.value, self.where = value, f"commit line {n} ({key})"

    def text(self, name: str, *, optional: bool = False) -> str:
        got = self.value.get(name)
        if got is None and optional:
            return ""
        if not isinstance(got, str):
            raise HTTPProblem(400, f"{self.where}: field {name!r} must be a string, not {_kind(got)}")
        return got

    def size(self, name: str) -> int | None:
        got = self.value.get(name)
        if got is not None and (isinstance(got, bool) or not isinstance(got, int) or got < 0):
            raise HTTPProblem(
                400, f"{self.where}: field {name!r} must be a non-negative integer, not {_kind(got)}"
            )
        return got


def _kind(value: Any) -> str:
    return "null" if value is None else f"{type(value).__name__} {json.dumps(value)[:40]}"


def conflict(exc: CommitConflict) -> HTTPProblem:
    return HTTPProblem(412, f"A commit has happened since. Please refresh and try again. ({exc.message})")


# --- the LFS batch API ------------------------------------------------------------------------


def lfs_batch(uploads: Uploads, repo: RepoRef, body: Any, base: str) -> dict[str, Any]:
    if not isinstance(body, dict) or body.get("operation") not in ("upload", "download"):
        raise HTTPProblem(400, "LFS batch body needs operation 'upload' or 'download'")
    objects = body.get("objects")
    if not isinstance(objects, list) or len(objects) > MAX_BATCH_OBJECTS:
        raise HTTPProblem(400, f"LFS batch needs a list of at most {MAX_BATCH_OBJECTS} objects")
    transfers = body.get("transfers") or ["basic"]
    if "basic" not in transfers:
        raise HTTPProblem(422, "hubflow serve offers the 'basic' LFS transfer only")
    op = body["operation"]
    out = []
    for obj in objects:
        oid, size = (obj.get("oid"), obj.get("size")) if isinstance(obj, dict) else (None, None)
        if not isinstance(oid, str) or not OID.match(oid) or not isinstance(size, int):
            out.append(
                {"oid": str(oid), "size": size if isinstance(size, int) else 0, "error": _err(422, "bad oid")}
            )
            continue
        if not 0 <= size <= MAX_OBJECT:
            out.append({"oid": oid, "size": size, "error": _err(422, "size out of range")})
            continue
        present = uploads.present(oid, size) is not None
        entry: dict[str, Any] = {"oid": oid, "size": size, "authenticated": True}
        if op == "upload" and not present:
            verify = f"{base.rstrip('/')}/_hubflow/lfs-verify/{repo.repo_type}/{quote(repo.repo_id)}"
            entry["actions"] = {
                "upload": {"href": uploads.signed_url(base, "upload", repo, oid, size), "header": {}},
                "verify": {"href": verify, "header": {}},
            }
        elif op == "download":
            if not present:
                out.append({"oid": oid, "size": size, "error": _err(404, "object not found")})
                continue
            entry["actions"] = {"download": {"href": uploads.signed_url(base, "download", repo, oid, size)}}
        out.append(entry)
    return {"transfer": "basic", "objects": out, "hash_algo": "sha256"}


def _err(code: int, message: str) -> dict[str, Any]:
    return {"code": code, "message": message}


def lfs_verify(uploads: Uploads, body: Any) -> dict[str, Any]:
    oid, size = (body.get("oid"), body.get("size")) if isinstance(body, dict) else (None, None)
    if not isinstance(oid, str) or not OID.match(oid) or not isinstance(size, int):
        raise HTTPProblem(400, "verify body must be {oid, size}")
    if uploads.present(oid, size) is None:
        raise HTTPProblem(404, f"object {oid} ({size} bytes) was not received")
    return {"message": "ok"}
