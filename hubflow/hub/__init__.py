"""All Hub I/O lives behind :class:`hubflow.hub.base.Hub`."""

from __future__ import annotations

from pathlib import Path

from hubflow.hub.base import Hub


def open_local(root: Path) -> Hub:
    from hubflow.hub.local import LocalHub

    return LocalHub(root)


def open_hub(manifest: object) -> Hub:
    """The hub a manifest's ``hub:`` settings name."""
    settings = manifest.hub  # type: ignore[attr-defined]
    if settings.backend == "local":
        return open_local(manifest.hub_root())  # type: ignore[attr-defined]
    raise AssertionError(f"unhandled backend {settings.backend!r}")  # the model's Literal forbids it
