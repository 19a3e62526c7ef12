"""The hf backend's own duties: retries without duplicate commits, 412 conflicts, error texts
that name the fix and never the token, offline mode, Xet switched off for `hubflow serve`."""

from __future__ import annotations

import json
import logging
import socket
from pathlib import Path
from typing import Any

import pytest

from hubflow.errors import CommitConflict, HubError, RepoNotFound
from hubflow.hub.codec import decode_commit_text, encode_commit_text
from hubflow.hub.local import LocalHub
from hubflow.refs import RepoRef

REPO = RepoRef("model", "org/faulty")


class Faults:
    """ASGI middleware: the first ``times`` requests whose path contains ``needle`` get ``action``.

    ``reject``: answer ``status`` without touching the store. ``lose``: let the store apply the
    request, then answer ``status`` instead (the client never learns it landed). ``race``: run
    ``before()`` (another writer) and then let the request through.
    """

    def __init__(self, app: Any, needle: str, action: str, *, status: int = 503, times: int = 1, before=None):
        self.app, self.needle, self.action = app, needle, action
        self.status, self.left, self.before = status, times, before
        self.hits = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or self.needle not in scope["path"] or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        self.hits += 1
        if self.left <= 0:
            return await self.app(scope, receive, send)
        self.left -= 1
        if self.action == "race":
            self.before()
            return await self.app(scope, receive, send)
        if self.action == "reject":
            while (await receive()).get("more_body"):
                pass
        else:

            async def swallow(message: dict[str, Any]) -> None:
                pass

            await self.app(scope, receive, swallow)
        body = json.dumps({"error": "injected"}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


@pytest.fixture
def store(tmp_path: Path) -> Path:
    root = tmp_path / "store"
    LocalHub(root).create_repo(REPO)
    return root


def test_commit_text_round_trip() -> None:
    for message in ["one line", "title\n\nbody\nmore", "with ```hubflow-commit\n{}\n``` inside", "é\n"]:
        meta = {"hubflow": {"stage": "x", "n": [1, 2]}}
        title, body = encode_commit_text(message, meta, "abc")
        assert "\n" not in title
        assert decode_commit_text(title, body) == (message, meta, "abc")
    assert decode_commit_text("plain", "") == ("plain", {}, None)
    assert decode_commit_text("plain", "more text") == ("plain\n\nmore text", {}, None)
    assert decode_commit_text("t", "```hubflow-commit\nnot json\n```") == (
        "t\n\n```hubflow-commit\nnot json\n```",
        {},
        None,
    )


def test_429_is_retried_and_commits_once(store, serve_store, hf_hub, files) -> None:
    faults: list[Faults] = []

    def wrap(app):
        faults.append(Faults(app, "/commit/", "reject", status=429))
        return faults[0]

    with serve_store(store, wrap=wrap) as srv:
        hub = hf_hub(srv.url)
        info = hub.commit_folder(REPO, files({"a.txt": "1"}), message="once", metadata={"k": 1})
        assert faults[0].hits == 2
        assert [c.commit_id for c in LocalHub(store).list_commits(REPO)] == [info.commit_id]
        assert info.metadata == {"k": 1}


@pytest.mark.parametrize("status", [503, 500])
def test_lost_answer_is_found_by_nonce_not_resent(status, store, serve_store, hf_hub, files) -> None:
    faults: list[Faults] = []

    def wrap(app):
        faults.append(Faults(app, "/commit/", "lose", status=status))
        return faults[0]

    with serve_store(store, wrap=wrap) as srv:
        hub = hf_hub(srv.url)
        first = hub.commit_folder(REPO, files({"a.txt": "1"}), message="first")
        head = hub.resolve(REPO)
        second = hub.commit_folder(REPO, files({"a.txt": "2"}), message="second", parent_commit=head)
        assert faults[0].hits == 2  # the lost commit was not sent again
        history = LocalHub(store).list_commits(REPO)
        assert [c.commit_id for c in history] == [second.commit_id, first.commit_id]
        assert first.message == "first" and second.parents == (first.commit_id,)


def test_server_side_412_is_a_commit_conflict(store, serve_store, hf_hub, files, tmp_path: Path) -> None:
    local = LocalHub(store)
    base = local.commit_folder(REPO, files({"a.txt": "base"}), message="base")
    other = files({"a.txt": "other writer"})

    def racer() -> None:
        local.commit_folder(REPO, other, message="racer", parent_commit=base.commit_id)

    with serve_store(store, wrap=lambda app: Faults(app, "/commit/", "race", before=racer)) as srv:
        hub = hf_hub(srv.url)
        with pytest.raises(CommitConflict, match="expected the branch at"):
            hub.commit_folder(REPO, files({"a.txt": "mine"}), message="mine", parent_commit=base.commit_id)
    assert [c.message for c in local.list_commits(REPO)] == ["racer", "base"]


def test_retries_are_bounded(store, serve_store, hf_hub, files) -> None:
    faults: list[Faults] = []

    def wrap(app):
        faults.append(Faults(app, "/commit/", "reject", status=503, times=100))
        return faults[0]

    with serve_store(store, wrap=wrap) as srv:
        hub = hf_hub(srv.url, retries=2)
        with pytest.raises(HubError, match="kept answering HTTP 503 after 2 retries") as err:
            hub.commit_folder(REPO, files({"a.txt": "1"}), message="never")
        assert "wait a few minutes" in str(err.value)
        assert faults[0].hits == 3
    assert LocalHub(store).list_refs(REPO).branches == {}


def test_bad_token_error_names_the_fix_not_the_token(
    store, serve_store, hf_hub, monkeypatch, caplog, files, tmp_path: Path
) -> None:
    secret = "hf_NotTheServerToken_0123456789abcdef"
    monkeypatch.setenv("HF_TOKEN", secret)
    caplog.set_level(logging.DEBUG)
    with serve_store(store) as srv:
        hub = hf_hub(srv.url, token=secret)
        for call in (
            lambda: hub.resolve(REPO),
            lambda: hub.commit_folder(REPO, files({"a.txt": "1"}), message="m"),
            lambda: hub.create_repo(RepoRef("dataset", "org/new")),
        ):
            with pytest.raises(HubError) as err:
                call()
            text = str(err.value)
            assert "401" in text and "hf auth login" in text and "HF_TOKEN" in text
            assert secret not in text and secret not in repr(err.value.args)
    assert secret not in caplog.text


def test_missing_repo_says_how_to_create_it(server, hf_hub) -> None:
    hub = hf_hub(server.url)
    with pytest.raises(RepoNotFound) as err:
        hub.list_files(RepoRef("dataset", "nobody/nothing"))
    assert "hf repos create nobody/nothing --repo-type dataset" in str(err.value)


def test_offline_mode_is_reported(server, hf_hub, monkeypatch) -> None:
    from huggingface_hub import constants as hf_constants

    hub = hf_hub(server.url)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HubError, match="offline mode") as err:
        hub.repo_exists(REPO)
    assert "unset HF_HUB_OFFLINE" in str(err.value)


def test_unreachable_endpoint(hf_hub) -> None:
    with socket.socket() as sock:  # a loopback port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    hub = hf_hub(f"http://127.0.0.1:{port}", retries=1)
    with pytest.raises(HubError, match="cannot talk to") as err:
        hub.list_refs(REPO)
    assert "hubflow serve" in str(err.value)


def test_xet_is_switched_off_for_hubflow_serve(store, serve_store, hf_hub, files) -> None:
    from huggingface_hub import constants as hf_constants

    hf_constants.HF_HUB_DISABLE_XET = False  # restored by the `online` fixture
    with serve_store(store) as srv:
        hf_hub(srv.url).commit_folder(REPO, files({"w.bin": b"\0" * 3000}), message="lfs")
    assert hf_constants.HF_HUB_DISABLE_XET is True


def test_unchanged_tree_makes_no_empty_commit(server, hf_hub, files, ns) -> None:
    hub = hf_hub(server.url)
    repo = RepoRef("model", f"{ns}/same")
    hub.create_repo(repo)
    src = files({"a.txt": "same"})
    first = hub.commit_folder(repo, src, message="one")
    again = hub.commit_folder(repo, src, message="two", parent_commit=first.commit_id)
    assert again.commit_id == first.commit_id and again.message == "one"
