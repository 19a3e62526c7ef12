"""The web view in a real browser: headless Debian Chromium driven by Playwright (`.ci/run` installs the
`chromium` package; Playwright's own browser download is never used). Elements are found by role and
text, as a user finds them; screenshots are checked for being non-empty pictures.

Run alone with ``pytest -m browser``."""

from __future__ import annotations

import io
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

pytestmark = pytest.mark.browser

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TOKEN = "browser-test-token-51c2"


def chromium_path() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.fail(
        "no Chromium on PATH: install Debian's `chromium` package (.ci/run does: apt-get install chromium)"
    )


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def served(ui_store) -> Iterator[Any]:
    from hubflow.serve import create_app
    from hubflow.serve.thread import ServerThread

    app = create_app(ui_store.root, token=TOKEN, public_read=True, manifests=[ui_store.manifest])
    with ServerThread(app) as srv:
        yield srv


@pytest.fixture(scope="module")
def served_with_token(ui_store) -> Iterator[Any]:
    from hubflow.serve import create_app
    from hubflow.serve.thread import ServerThread

    with ServerThread(create_app(ui_store.root, token=TOKEN)) as srv:
        yield srv


def picture_is_not_blank(png: bytes) -> None:
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("L")
    low, high = image.getextrema()
    assert image.width > 200 and image.height > 100 and high - low > 100, "the screenshot is blank"


def test_click_from_the_repo_list_to_a_rendered_card_and_follow_lineage(
    browser, served, tmp_path: Path
) -> None:
    page = browser.new_page()
    page.goto(f"{served.url}/ui")
    expect(page.get_by_role("heading", name="Repositories")).to_be_visible()
    page.get_by_role("link", name="demo/train", exact=True).click()
    expect(page.get_by_role("heading", name="demo/train")).to_be_visible()
    page.get_by_role("row").filter(has_text="stage train").get_by_role("link").first.click()  # newest commit
    expect(page.get_by_role("heading", name="Lineage").first).to_be_visible()
    card = page.locator("article.card")
    expect(card.get_by_role("heading", name="demo/train")).to_be_visible()  # the card's Markdown, rendered
    expect(card.get_by_role("table").first).to_be_visible()
    plot = page.get_by_role("img", name="metrics.jsonl plot")
    plot.scroll_into_view_if_needed()
    page.wait_for_function("() => document.querySelector('img.metrics-plot').complete", timeout=60_000)
    assert plot.evaluate("img => img.complete && img.naturalWidth") > 300  # the PNG loaded and decoded
    picture_is_not_blank(page.screenshot(full_page=True))
    page.get_by_role("link", name="dataset:demo/source@").click()  # lineage: to the input's revision
    expect(page).to_have_url(re.compile("/ui/datasets/demo/source/commit/[0-9a-f]{40}$"))
    expect(page.get_by_role("heading", name="demo/source").first).to_be_visible()
    page.close()


def test_the_dag_renders_with_each_stage_and_its_state(browser, served) -> None:
    page = browser.new_page()
    page.goto(f"{served.url}/ui")
    page.get_by_role("link", name="Manifests").click()
    page.get_by_role("link", name="hubflow.yaml").click()
    dag = page.get_by_role("img", name="stage graph")
    expect(dag).to_be_visible()
    box = dag.bounding_box()
    assert box and box["width"] > 400 and box["height"] > 40
    for stage, state in [("source", "up to date"), ("evaluate", "stale"), ("report", "never run")]:
        node = page.locator(f'a.stage[data-stage="{stage}"]')
        assert node.get_attribute("data-state") == state
        expect(node).to_be_visible()
    picture_is_not_blank(dag.screenshot())
    page.locator('a.stage[data-stage="evaluate"]').click()  # a box links to the stage's row
    expect(page).to_have_url(re.compile("#stage-evaluate$"))
    expect(page.get_by_role("row").filter(has_text="config changed")).to_be_visible()
    page.close()


def test_a_token_protected_store_asks_to_sign_in(browser, served_with_token) -> None:
    page = browser.new_page()
    page.goto(f"{served_with_token.url}/ui/models/demo/train")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    page.get_by_label("Token").fill("wrong")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_have_text(re.compile("^That token is not"))
    page.get_by_label("Token").fill(TOKEN)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="demo/train")).to_be_visible()
    page.close()
