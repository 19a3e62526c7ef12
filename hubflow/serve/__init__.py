"""`hubflow serve`: a local store over the Hugging Face Hub's HTTP API.

With ``HF_ENDPOINT=http://127.0.0.1:8000``, huggingface_hub, transformers and datasets
read and write the store as they would the Hub: repos, refs, commits (NDJSON, regular
and LFS files), trees, paths-info, the LFS batch API and ``resolve`` downloads with
ranges. Built on starlette (request/response primitives) and uvicorn. See docs/hub.md.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from pathlib import Path

from hubflow.errors import HubflowError

__all__ = ["check_bind", "create_app", "run_server"]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None, insecure_no_auth: bool) -> None:
    """Refuse to serve without a token, except on loopback with ``--insecure-no-auth``."""
    if token:
        return
    if not insecure_no_auth:
        raise HubflowError(
            "hubflow serve needs a token: HUBFLOW_SERVE_TOKEN is not set",
            hint="export HUBFLOW_SERVE_TOKEN=<a long random string> (clients send it as HF_TOKEN); "
            "on 127.0.0.1 only, --insecure-no-auth serves without one",
        )
    if not is_loopback(host):
        raise HubflowError(
            f"refusing --insecure-no-auth on {host}: anyone on the network could write the store",
            hint="bind to 127.0.0.1, or set HUBFLOW_SERVE_TOKEN",
        )


def create_app(
    root: Path,
    *,
    token: str | None,
    public_read: bool = False,
    manifests: Sequence[Path] = (),
    read_only: bool = False,
):  # -> ServeApp
    from hubflow.serve.app import ServeApp, ServeConfig

    return ServeApp(
        ServeConfig(
            root=Path(root),
            token=token,
            public_read=public_read,
            manifests=tuple(Path(m).resolve() for m in manifests),
            read_only=read_only,
        )
    )


def run_server(
    root: Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    token: str | None,
    public_read: bool = False,
    insecure_no_auth: bool = False,
    log_level: str = "info",
    manifests: Sequence[Path] = (),
    read_only: bool = False,
) -> None:
    """Serve ``root`` until interrupted (blocking)."""
    import uvicorn

    check_bind(host, token, insecure_no_auth)
    app = create_app(root, token=token, public_read=public_read, manifests=manifests, read_only=read_only)
    uvicorn.run(app, host=host, port=port, log_level=log_level, lifespan="on", server_header=False)
