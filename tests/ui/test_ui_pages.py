"""The web view over HTTP (no browser): every page, pagination, safety of cards, traversal, and the same
auth rules as the API (token, --public-read, the read-only cookie, `hubflow ui`'s read-only server)."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import httpx
import pytest

TOKEN = "ui-test-token-3f9a"


def client_for(store: Any, **options: Any):
    from hubflow.serve import create_app

    options.setdefault("token", TOKEN)
    app = create_app(store.root, manifests=[store.manifest], **options)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ui.test")


def fetch(store: Any, *requests: tuple[str, str, dict[str, Any]], **options: Any) -> list[httpx.Response]:
    async def go() -> list[httpx.Response]:
        async with client_for(store, **options) as client:
            return [await client.request(method, url, **kw) for method, url, kw in requests]

    return asyncio.run(go())


def get(store: Any, url: str, **options: Any) -> httpx.Response:
    options.setdefault("public_read", True)
    return fetch(store, ("GET", url, {}), **options)[0]


def test_repo_list_links_every_repo(ui_store) -> None:
    page = get(ui_store, "/ui")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    for url in (
        "/ui/datasets/demo/source",
        "/ui/models/demo/train",
        "/ui/datasets/demo/eval",
        "/ui/datasets/demo/long",
    ):
        assert f'href="{url}"' in page.text
    filtered = get(ui_store, "/ui?q=train")
    assert "/ui/models/demo/train" in filtered.text and "/ui/datasets/demo/source" not in filtered.text
    assert get(ui_store, "/").status_code == 307


def test_commit_page_shows_card_lineage_files_and_plot(ui_store) -> None:
    repo = get(ui_store, "/ui/models/demo/train")
    assert repo.status_code == 200 and "Branches" in repo.text and "fp-" in repo.text  # the fingerprint tag
    commit_url = re.search(r'href="(/ui/models/demo/train/commit/[0-9a-f]{40})"', repo.text).group(1)
    page = get(ui_store, commit_url)
    assert page.status_code == 200
    assert "<h1>demo/train</h1>" in page.text  # the card, rendered
    assert "<table>" in page.text  # its lineage table rendered as a table
    link = re.search(
        r'class="lineage-input" href="(/ui/datasets/demo/source/commit/[0-9a-f]{40})"', page.text
    )
    assert link, "the input is linked to the revision it was made from"
    assert get(ui_store, link.group(1)).status_code == 200  # and the link resolves
    assert 'href="/demo/train/resolve/' in page.text and "model.txt" in page.text
    plot = re.search(r'class="metrics-plot" src="([^"]+)"', page.text).group(1)
    png = get(ui_store, plot)
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png.content.startswith(b"\x89PNG") and len(png.content) > 5000


def test_manifest_page_shows_the_dag_with_each_stage_state(ui_store) -> None:
    page = get(ui_store, "/ui/manifests/0")
    assert page.status_code == 200 and '<svg xmlns="http://www.w3.org/2000/svg"' in page.text
    states = dict(re.findall(r'data-stage="([^"]+)" data-state="([^"]+)"', page.text))
    assert states == {
        "source": "up to date",
        "train": "up to date",
        "evaluate": "stale",
        "report": "never run",
    }
    assert "config changed" in page.text  # why evaluate is stale, in the plan's words
    assert get(ui_store, "/ui/manifests").status_code == 200
    assert get(ui_store, "/ui/manifests/7").status_code == 404


def test_a_long_history_is_paginated(ui_store) -> None:
    first = get(ui_store, "/ui/datasets/demo/long")
    assert first.text.count("commit number") == 50 and "commit number 119" in first.text
    assert 'rel="next"' in first.text and 'rel="prev"' not in first.text
    last = get(ui_store, "/ui/datasets/demo/long?page=3")
    assert last.text.count("commit number") == 20 and "commit number 0<" in last.text
    assert 'rel="next"' not in last.text and 'rel="prev"' in last.text
    assert get(ui_store, "/ui/datasets/demo/long?page=zero").status_code == 400


def test_a_card_cannot_run_script_and_its_relative_links_point_at_its_commit(ui_store) -> None:
    page = get(ui_store, "/ui/models/demo/hostile/commit/main")
    assert page.status_code == 200
    assert "<script>" not in page.text and "&lt;script&gt;" in page.text
    assert "<img src=x" not in page.text and "&lt;img src=x" in page.text
    assert 'href="javascript:' not in page.text
    commit = re.search(r"<code>([0-9a-f]{40})</code>", page.text).group(1)
    assert f'src="/demo/hostile/resolve/{commit}/chart.png"' in page.text
    assert f'href="/demo/hostile/resolve/{commit}/notes.txt"' in page.text
    assert "script-src" not in page.headers["content-security-policy"]  # no script allowed at all
    assert "default-src 'none'" in page.headers["content-security-policy"]


@pytest.mark.parametrize(
    "url",
    [
        "/ui/models/demo/..%2F..%2Fetc",
        "/ui/models/%2E%2E/train",
        "/ui/models/demo/train/commit/..%2F..%2Fmain",
        "/ui/models/demo/train?rev=..%2Fmain",
        "/ui/plot/models/demo/train/..%2F..%2Fx.png",
        "/ui/spaces/demo/train",
        "/ui/models/demo/train/commit/0000000000000000000000000000000000000000",
    ],
)
def test_traversal_and_unknown_things_are_refused(ui_store, url: str) -> None:
    page = get(ui_store, url)
    assert page.status_code in (400, 404), page.text
    assert str(ui_store.root) not in page.text and "Traceback" not in page.text


def test_pages_need_the_token_exactly_like_the_api(ui_store) -> None:
    bearer = {"headers": {"Authorization": f"Bearer {TOKEN}"}}
    anonymous, api, with_bearer, wrong = fetch(
        ui_store,
        ("GET", "/ui/models/demo/train", {}),
        ("GET", "/api/models/demo/train", {}),
        ("GET", "/ui/models/demo/train", bearer),
        ("GET", "/ui", {"headers": {"cookie": f"hubflow_token={TOKEN}"}}),  # the raw token is not the cookie
    )
    assert anonymous.status_code == 401 == api.status_code and 'name="token"' in anonymous.text
    assert with_bearer.status_code == 200 and wrong.status_code == 401
    public = fetch(
        ui_store,
        ("GET", "/ui", {}),
        ("POST", "/api/repos/create", {"json": {"name": "x/y"}}),
        public_read=True,
    )
    assert [r.status_code for r in public] == [200, 401]  # --public-read opens reads, never writes


def test_login_sets_a_read_only_cookie(ui_store) -> None:
    form = {"headers": {"content-type": "application/x-www-form-urlencoded"}}

    async def go() -> None:
        async with client_for(ui_store) as client:
            bad = await client.post("/ui/login", content="token=nope&next=/ui", **form)
            assert bad.status_code == 401 and "not this server" in bad.text
            good = await client.post("/ui/login", content=f"token={TOKEN}&next=//evil.example/", **form)
            assert good.status_code == 303 and good.headers["location"] == "/ui"  # no open redirect
            cookie = good.cookies["hubflow_token"]
            assert cookie != TOKEN and "httponly" in good.headers["set-cookie"].lower()
            assert (await client.get("/ui/datasets/demo/long")).status_code == 200
            assert (await client.get("/datasets/demo/long/resolve/main/i.txt")).status_code == 200
            write = await client.post("/api/repos/create", json={"name": "x/cookie"})
            assert write.status_code == 401  # the cookie never authorises a write
            assert (await client.post("/ui/manifests/0")).status_code == 405

    asyncio.run(go())


def test_hubflow_ui_serves_read_only(ui_store) -> None:
    write, read = fetch(
        ui_store,
        ("POST", "/api/repos/create", {"json": {"name": "x/z"}}),
        ("GET", "/ui", {}),
        token=None,
        read_only=True,
    )
    assert write.status_code == 403 and read.status_code == 200


def test_a_manifest_that_does_not_load_is_shown_with_its_error(ui_store, tmp_path) -> None:
    from hubflow.serve import create_app

    broken = tmp_path / "hubflow.yaml"
    broken.write_text("stages:\n  - {name: a, kind: nope, output: 'dataset:x/y'}\n")
    app = create_app(ui_store.root, token=None, manifests=[broken])

    async def go() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            return await c.get("/ui/manifests/0")

    page = asyncio.run(go())
    assert page.status_code == 200 and 'role="alert"' in page.text and "nope" in page.text
