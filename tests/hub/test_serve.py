"""`hubflow serve` over HTTP: auth, traversal attempts, resolve headers and ranges, pagination,
the LFS batch API, and huggingface_hub's own client (HfApi, hf_hub_download, HfFileSystem)."""

from __future__ import annotations

import hashlib
import http.client
import json
from pathlib import Path

import httpx
import pytest

from hubflow.errors import HubflowError
from hubflow.hub.codec import git_blob_id
from hubflow.hub.local import LocalHub
from hubflow.refs import RepoRef
from hubflow.serve import check_bind

REPO = RepoRef("model", "org/m")
TOKEN = "hubflow-test-token-7c1e5b2a"  # the value tests/hub/conftest.py serves with
AUTH = {"Authorization": f"Bearer {TOKEN}"}
WEIGHTS = bytes(range(256)) * 64


@pytest.fixture
def store(tmp_path: Path, files) -> tuple[Path, str]:
    """A store with org/m: a regular, an LFS and a nested file; returns (root, commit id)."""
    root = tmp_path / "store"
    hub = LocalHub(root)
    hub.create_repo(REPO)
    info = hub.commit_folder(
        REPO,
        files({"config.json": '{"a": 1}\n', "model.safetensors": WEIGHTS, "sub/notes.txt": "n\n"}),
        message="init",
    )
    return root, info.commit_id


def raw_get(
    url: str, path: str, method: str = "GET", headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    """Send ``path`` byte for byte (no client-side normalisation of '..' or '%2E')."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request(method, path, headers={**AUTH, **(headers or {})})
    response = conn.getresponse()
    body = response.read()
    conn.close()
    return response.status, body


def test_check_bind_refuses_unsafe_setups() -> None:
    with pytest.raises(HubflowError, match="needs a token") as err:
        check_bind("127.0.0.1", None, False)
    assert "HUBFLOW_SERVE_TOKEN" in str(err.value)
    with pytest.raises(HubflowError, match="refusing --insecure-no-auth"):
        check_bind("0.0.0.0", None, True)
    check_bind("127.0.0.1", None, True)
    check_bind("::1", None, True)
    check_bind("0.0.0.0", "a-token", False)


def test_cli_serve_without_token_exits_2(cli, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.delenv("HUBFLOW_SERVE_TOKEN", raising=False)
    code, _, err = cli("serve", "--root", tmp_path / "store", "--host", "0.0.0.0", "--port", "9")
    assert code == 2 and "HUBFLOW_SERVE_TOKEN" in err


def test_cli_serve_process_serves_the_store(store, monkeypatch) -> None:
    import os
    import socket
    import subprocess
    import sys
    import time

    root, commit = store
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "HUBFLOW_SERVE_TOKEN": TOKEN}
    cmd = [sys.executable, "-m", "hubflow.cli", "serve", "--root", str(root), "--port", str(port)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(150):  # at most ~30 s (cold imports on a busy machine)
            try:
                if httpx.get(f"{url}/api/hubflow", timeout=1).json()["server"] == "hubflow-serve":
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        info = httpx.get(f"{url}/api/models/org/m", headers=AUTH).json()
        assert info["sha"] == commit
        assert httpx.get(f"{url}/api/models/org/m").status_code == 401
    finally:
        proc.terminate()
        out = proc.communicate(timeout=20)[0].decode()
    assert f"hubflow serve: {root} on http://127.0.0.1:{port}" in out
    assert TOKEN not in out


def test_token_is_required_and_public_read_opens_reads_only(store, serve_store) -> None:
    root, _ = store
    info = "/api/models/org/m"
    with serve_store(root) as srv:
        with httpx.Client(base_url=srv.url) as c:
            assert c.get(info).status_code == 401
            assert c.get(info, headers={"Authorization": "Bearer wrong"}).status_code == 401
            assert c.get(info, headers=AUTH).status_code == 200
            assert c.get("/org/m/resolve/main/config.json").status_code == 401
    with serve_store(root, public_read=True) as srv:
        with httpx.Client(base_url=srv.url) as c:
            assert c.get(info).json()["sha"]
            assert c.get("/org/m/resolve/main/config.json").content == b'{"a": 1}\n'
            assert (
                c.post("/api/models/org/m/paths-info/main", data={"paths": ["config.json"]}).status_code
                == 200
            )
            assert c.post("/api/repos/create", json={"name": "x", "organization": "org"}).status_code == 401
            assert c.post("/api/models/org/m/commit/main", content=b"{}").status_code == 401
            batch = {"operation": "upload", "objects": [{"oid": "a" * 64, "size": 1}]}
            assert c.post("/org/m.git/info/lfs/objects/batch", json=batch).status_code == 401
            assert c.delete("/api/models/org/m/tag/x").status_code == 401


TRAVERSALS = [
    "/org/m/resolve/main/../../../../etc/passwd",
    "/org/m/resolve/main/..%2F..%2F..%2F..%2Fetc%2Fpasswd",
    "/org/m/resolve/main/%2E%2E/%2E%2E/repos.json",
    "/org/m/resolve/main/%2Fetc%2Fpasswd",
    "/org/m/resolve/main/sub%5C..%5C..%5Cx",
    "/org/m/resolve/main/config.json%00.txt",
    "/org/m/resolve/..%2F..%2Fobjects/config.json",
    "/..%2F..%2Fetc/passwd/resolve/main/x",
    "/api/models/%2E%2E/%2E%2E",
    "/api/models/org/m/tree/main/..%2F..%2F..",
    "/api/models/org/m/revision/..%2F..%2Frefs",
    "/_hubflow/lfs/model/org/m/..%2F..%2F..%2Fetc%2Fpasswd?op=download&size=1&exp=9999999999&sig=x",
]


@pytest.mark.parametrize("path", TRAVERSALS)
def test_traversal_attempts_are_refused(path, store, serve_store) -> None:
    root, _ = store
    with serve_store(root) as srv:
        status, body = raw_get(srv.url, path)
    assert status == 400, (status, body)
    assert b"root:" not in body and b"repo_type" not in body


def test_writes_with_evil_names_touch_nothing_outside(store, serve_store, tmp_path: Path) -> None:
    root, commit = store
    before = sorted(p for p in tmp_path.rglob("*") if "store" not in p.parts)
    with serve_store(root) as srv, httpx.Client(base_url=srv.url, headers=AUTH) as c:
        for evil in ["../evil.txt", "/abs.txt", "a/../../evil.txt", "sub\\..\\evil.txt", ".git/config"]:
            lines = [
                {"key": "header", "value": {"summary": "evil", "description": ""}},
                {"key": "file", "value": {"path": evil, "content": "eA==", "encoding": "base64"}},
            ]
            body = b"\n".join(json.dumps(x).encode() for x in lines)
            assert c.post("/api/models/org/m/commit/main", content=body).status_code == 400
        for branch in ["..%2F..%2Fx", "%2E%2E", "a%2F..%2F..%2Fb"]:
            assert c.post(f"/api/models/org/m/branch/{branch}", json={}).status_code == 400
        assert c.post("/api/models/org/m/tag/main", json={"tag": "../../t"}).status_code == 400
        assert c.post("/api/repos/create", json={"name": "..", "organization": ".."}).status_code == 400
        batch = {"operation": "upload", "objects": [{"oid": "../../etc/passwd", "size": 1}]}
        answer = c.post("/org/m.git/info/lfs/objects/batch", json=batch).json()
        assert answer["objects"][0]["error"]["code"] == 422
    after = sorted(p for p in tmp_path.rglob("*") if "store" not in p.parts)
    assert after == before
    assert not list(root.parent.glob("evil*")) and not (root / "evil.txt").exists()
    assert LocalHub(root).resolve(REPO) == commit and LocalHub(root).list_refs(REPO).tags == {}


def test_resolve_headers_ranges_and_404(store, serve_store) -> None:
    root, commit = store
    LocalHub(root).create_tag(REPO, "v1", revision=commit)
    with serve_store(root) as srv, httpx.Client(base_url=srv.url, headers=AUTH) as c:
        head = c.head("/org/m/resolve/v1/model.safetensors")
        assert head.status_code == 200 and head.content == b""
        sha = hashlib.sha256(WEIGHTS).hexdigest()
        assert head.headers["x-repo-commit"] == commit
        assert head.headers["etag"] == f'"{sha}"' and head.headers["x-linked-etag"] == f'"{sha}"'
        assert head.headers["x-linked-size"] == str(len(WEIGHTS)) == head.headers["content-length"]
        part = c.get("/org/m/resolve/main/model.safetensors", headers={"Range": "bytes=100-299"})
        assert part.status_code == 206 and part.content == WEIGHTS[100:300]
        assert part.headers["content-range"] == f"bytes 100-299/{len(WEIGHTS)}"
        tail = c.get("/org/m/resolve/main/model.safetensors", headers={"Range": "bytes=-10"})
        assert tail.content == WEIGHTS[-10:]
        regular = c.get(f"/org/m/resolve/{commit}/config.json")
        assert regular.content == b'{"a": 1}\n' and "x-linked-etag" not in regular.headers
        assert regular.headers["etag"] == f'"{git_blob_id(regular.content)}"'
        missing = c.get("/org/m/resolve/main/nope.bin")
        assert missing.status_code == 404 and missing.headers["x-error-code"] == "EntryNotFound"
        assert missing.headers["x-repo-commit"] == commit
        assert c.get("/org/m/resolve/nobranch/config.json").headers["x-error-code"] == "RevisionNotFound"
        assert c.get("/org/zz/resolve/main/config.json").headers["x-error-code"] == "RepoNotFound"


def test_lfs_batch_upload_verify_and_bad_bytes(store, serve_store) -> None:
    root, _ = store
    data = b"\x00lfs object" * 100
    oid = hashlib.sha256(data).hexdigest()
    with serve_store(root) as srv, httpx.Client(base_url=srv.url, headers=AUTH) as c:
        assert (
            c.post("/_hubflow/lfs-verify/model/org/m", json={"oid": oid, "size": len(data)}).status_code
            == 404
        )
        batch = {"operation": "upload", "transfers": ["basic"], "objects": [{"oid": oid, "size": len(data)}]}
        answer = c.post("/org/m.git/info/lfs/objects/batch", json=batch)
        assert answer.headers["content-type"].startswith("application/vnd.git-lfs+json")
        actions = answer.json()["objects"][0]["actions"]
        href = actions["upload"]["href"]
        with httpx.Client() as anon:  # the signed URL needs no token...
            assert anon.put(href, content=data[:-1] + b"!").status_code == 400  # ...but the right bytes
            assert anon.put(href.replace("sig=", "sig=0"), content=data).status_code == 403
            assert anon.put(href.replace(f"size={len(data)}", "size=5"), content=data).status_code == 403
            assert c.post(actions["verify"]["href"], json={"oid": oid, "size": len(data)}).status_code == 404
            assert anon.put(href, content=data).status_code == 200
        assert c.post(actions["verify"]["href"], json={"oid": oid, "size": len(data)}).status_code == 200
        again = c.post("/org/m.git/info/lfs/objects/batch", json=batch).json()["objects"][0]
        assert "actions" not in again  # already there: nothing to upload
        down = c.post("/org/m.git/info/lfs/objects/batch", json={**batch, "operation": "download"}).json()
        assert httpx.get(down["objects"][0]["actions"]["download"]["href"]).content == data
        lines = [
            {"key": "header", "value": {"summary": "lfs", "description": ""}},
            {"key": "lfsFile", "value": {"path": "big.bin", "algo": "sha256", "oid": oid, "size": len(data)}},
            {"key": "lfsFile", "value": {"path": "never.bin", "algo": "sha256", "oid": "b" * 64}},
        ]
        body = b"\n".join(json.dumps(x).encode() for x in lines)
        assert c.post("/api/models/org/m/commit/main", content=body).status_code == 422
        body = b"\n".join(json.dumps(x).encode() for x in lines[:2])
        made = c.post("/api/models/org/m/commit/main", content=body).json()
    assert LocalHub(root).read_file(REPO, "big.bin", made["commitOid"]) == data


def test_huggingface_hub_client_end_to_end(store, serve_store, online, monkeypatch, tmp_path: Path) -> None:
    from huggingface_hub import HfApi, HfFileSystem, hf_hub_download
    from huggingface_hub import constants as hf_constants

    from hubflow.serve import views

    root, commit = store
    monkeypatch.setattr(hf_constants, "HF_HUB_DISABLE_XET", True)  # the server has no Xet (docs/hub.md)
    monkeypatch.setattr(views, "TREE_PER_PAGE", 2)
    monkeypatch.setattr(views, "COMMITS_PER_PAGE", 2)
    with serve_store(root) as srv:
        api = HfApi(endpoint=srv.url, token=TOKEN)
        api.create_repo("org/ds", repo_type="dataset")
        api.create_repo("org/ds", repo_type="dataset", exist_ok=True)
        for i in range(3):
            api.upload_file(
                path_or_fileobj=f"row {i}\n".encode(),
                path_in_repo=f"data/part{i}.txt",
                repo_id="org/ds",
                repo_type="dataset",
            )
        api.upload_file(path_or_fileobj=WEIGHTS, path_in_repo="w.bin", repo_id="org/ds", repo_type="dataset")
        tree = list(api.list_repo_tree("org/ds", repo_type="dataset", recursive=True))  # 3 pages
        assert sorted(e.path for e in tree) == [
            "data",
            "data/part0.txt",
            "data/part1.txt",
            "data/part2.txt",
            "w.bin",
        ]
        lfs = next(e for e in tree if e.path == "w.bin")
        assert lfs.lfs.sha256 == hashlib.sha256(WEIGHTS).hexdigest() and lfs.size == len(WEIGHTS)
        assert len(api.list_repo_commits("org/ds", repo_type="dataset")) == 4  # 2 pages
        info = api.get_paths_info("org/ds", ["data", "w.bin", "nope"], repo_type="dataset")
        assert sorted(type(i).__name__ for i in info) == ["RepoFile", "RepoFolder"]
        api.delete_folder("data", repo_id="org/ds", repo_type="dataset")
        assert [e.path for e in api.list_repo_tree("org/ds", repo_type="dataset")] == ["w.bin"]
        assert api.file_exists("org/m", "sub/notes.txt") and not api.file_exists("org/m", "x.txt")
        api.create_branch("org/m", branch="exp/1", revision=commit)
        api.create_tag("org/m", tag="v1", revision="exp/1")
        refs = api.list_repo_refs("org/m")
        assert {b.name for b in refs.branches} == {"main", "exp/1"} and refs.tags[0].target_commit == commit
        assert api.model_info("org/m", revision="v1").sha == commit
        path = hf_hub_download(
            "org/m", "model.safetensors", revision="v1", endpoint=srv.url, cache_dir=tmp_path / "c"
        )
        assert Path(path).read_bytes() == WEIGHTS
        fs = HfFileSystem(endpoint=srv.url, token=TOKEN)
        assert sorted(fs.ls("org/m", detail=False)) == [
            "org/m/config.json",
            "org/m/model.safetensors",
            "org/m/sub",
        ]
        with fs.open("org/m/model.safetensors", "rb", block_size=1000) as f:
            f.seek(5000)
            assert f.read(300) == WEIGHTS[5000:5300]


FILE = {"path": "a.txt", "content": "eA==", "encoding": "base64"}
LFS = {"path": "w.bin", "algo": "sha256", "oid": "a" * 64, "size": 3}


@pytest.mark.parametrize(
    "line, field",
    [
        ({"key": "file", "value": {**FILE, "content": 123}}, "'content' must be a string, not int 123"),
        ({"key": "file", "value": {**FILE, "content": None}}, "'content' must be a string, not null"),
        (
            {"key": "file", "value": {"path": "a.txt", "encoding": "base64"}},
            "'content' must be a string, not null",
        ),
        (
            {"key": "file", "value": {**FILE, "content": "not base64!"}},
            "'content' of 'a.txt' is not base64",
        ),
        ({"key": "file", "value": {**FILE, "encoding": 7}}, "'encoding' must be a string, not int 7"),
        ({"key": "file", "value": {**FILE, "path": ["a"]}}, "'path' must be a string, not list"),
        ({"key": "deletedFile", "value": {"path": None}}, "'path' must be a string, not null"),
        ({"key": "lfsFile", "value": {**LFS, "oid": 5}}, "'oid' must be a string, not int 5"),
        ({"key": "lfsFile", "value": {**LFS, "size": "3"}}, "'size' must be a non-negative integer, not str"),
        (
            {"key": "lfsFile", "value": {**LFS, "size": True}},
            "'size' must be a non-negative integer, not bool",
        ),
        (
            {"key": "header", "value": {"summary": "s", "parentCommit": 5}},
            "'parentCommit' must be a string, not int 5",
        ),
        (
            {"key": "header", "value": {"summary": "s", "parentCommit": "main"}},
            "'parentCommit' must be a 40-hex",
        ),
        ({"key": "header", "value": {"summary": ["s"]}}, "'summary' must be a string, not list"),
        (
            {"key": "header", "value": {"summary": "s", "description": {"d": 1}}},
            "'description' must be a string",
        ),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_malformed_commit_payloads_are_400_naming_the_field(store, serve_store, line, field) -> None:
    """Issue 9 item 13: these answered 500 with a traceback in the server log."""
    root, commit = store
    header = {"key": "header", "value": {"summary": "bad", "description": ""}}
    lines = [line] if line["key"] == "header" else [header, line]
    body = b"\n".join(json.dumps(x).encode() for x in lines)
    with serve_store(root) as srv, httpx.Client(base_url=srv.url, headers=AUTH) as c:
        answer = c.post("/api/models/org/m/commit/main", content=body)
    assert answer.status_code == 400, answer.text
    n = 1 if line["key"] == "header" else 2
    assert answer.json()["error"].startswith(f"commit line {n} ({line['key']}): field {field.split()[0]}")
    assert field in answer.json()["error"] and field in answer.headers["X-Error-Message"]
    assert LocalHub(root).resolve(REPO) == commit
