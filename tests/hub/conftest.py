"""Fixtures for the Hub contract: `hubflow serve` on loopback in a thread, and both backends.

The hf backend talks to the server through the real huggingface_hub client. Tests keep
HF_HUB_OFFLINE=1 for everything else; only huggingface_hub's own offline switch is turned
off while a test talks to the loopback server.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hubflow.serve.thread import ServerThread

SERVE_TOKEN = "hubflow-test-token-7c1e5b2a"


@contextlib.contextmanager
def serving(root: Path, *, token: str | None = SERVE_TOKEN, public_read: bool = False, wrap=None):
    """Serve the store at ``root``; ``wrap(app)`` may put a fault-injecting middleware around it."""
    from hubflow.serve import create_app

    app = create_app(root, token=token, public_read=public_read)
    with ServerThread(wrap(app) if wrap else app) as server:
        server.app = app  # type: ignore[attr-defined]
        yield server


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    """One `hubflow serve` for the session (tests use their own repo names)."""
    with serving(tmp_path_factory.mktemp("served") / "store") as srv:
        yield srv


@pytest.fixture
def online(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let huggingface_hub make requests (to loopback only) and restore its switches afterwards."""
    from huggingface_hub import constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_constants, "HF_HUB_DISABLE_XET", hf_constants.HF_HUB_DISABLE_XET)
    monkeypatch.setenv("HF_TOKEN", SERVE_TOKEN)
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_DISABLE_PROGRESS_BARS", True)


def make_hf(url: str, token: str | None = SERVE_TOKEN, **kw: Any):
    from hubflow.hub.hf import HfHub

    kw.setdefault("sleep", lambda s: None)
    kw.setdefault("retries", 3)
    return HfHub(url, token=token, private=False, **kw)


@pytest.fixture(params=["local", "hf"])
def hub(request: pytest.FixtureRequest, tmp_path: Path):
    """The Hub protocol: LocalHub on a fresh store, or HfHub against `hubflow serve`."""
    if request.param == "local":
        from hubflow.hub.local import LocalHub

        return LocalHub(tmp_path / "store")
    request.getfixturevalue("online")
    return make_hf(request.getfixturevalue("server").url)


@pytest.fixture
def ns() -> str:
    """A namespace of its own for each test (the session server is shared)."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def files(tmp_path: Path) -> Callable[..., Path]:
    """Write files into a fresh folder: files({"a.txt": "x", "w.bin": b"..."}) -> folder."""
    counter = iter(range(10**6))

    def make(content: dict[str, str | bytes]) -> Path:
        folder = tmp_path / f"src{next(counter)}"
        for rel, data in content.items():
            path = folder / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data.encode() if isinstance(data, str) else data)
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    return make


@pytest.fixture
def serve_store():
    """``serve_store(root, token=..., public_read=..., wrap=...)``: a context manager serving ``root``."""
    return serving


@pytest.fixture
def hf_hub(online):
    """``hf_hub(url, token=...)``: an HfHub with instant, bounded retries."""
    return make_hf
