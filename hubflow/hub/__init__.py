"""All Hub I/O lives behind :class:`hubflow.hub.base.Hub`."""

from __future__ import annotations

from pathlib import Path

from hubflow.hub.base import Hub


def open_local(root: Path) -> Hub:
    from hubflow.hub.local import LocalHub

    return LocalHub(root)


def open_hf(endpoint: str | None = None, *, private: bool = True) -> Hub:
    """The `hf` backend at ``endpoint`` (default: HF_ENDPOINT, else the public Hub), token from
    HF_TOKEN or the `hf auth login`."""
    from hubflow import constants
    from hubflow.hub.hf import HfHub

    url = endpoint or constants.env_hf_endpoint() or constants.PUBLIC_HUB_ENDPOINT
    return HfHub(url, token=constants.hf_token(), private=private)


def open_hub(manifest: object) -> Hub:
    """The hub a manifest's ``hub:`` settings name."""
    settings = manifest.hub  # type: ignore[attr-defined]
    if settings.backend == "local":
        return open_local(manifest.hub_root())  # type: ignore[attr-defined]
    if settings.backend == "hf":
        return open_hf(settings.endpoint, private=settings.private)
    raise AssertionError(f"unhandled backend {settings.backend!r}")  # the model's Literal forbids it
