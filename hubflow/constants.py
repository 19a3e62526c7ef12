"""The one place hubflow reads environment variables.

Everything else receives settings through models and the run context.
"""

from __future__ import annotations

import os
from pathlib import Path

SCHEMA_VERSION = 1
"""Bumped when the fingerprint recipe, lock or commit metadata format changes."""

DEFAULT_MANIFEST = "hubflow.yaml"
LOCK_FILE = "hubflow.lock"
"""The lock of ``hubflow.yaml``; before each manifest had its own (``NAME.lock``), every manifest
of a folder shared it, so a ``NAME.lock`` that does not exist yet starts from its entries."""
STATE_DIR = ".hubflow"
"""Folder beside the manifest holding the local hub, logs, work and resume folders."""

FINGERPRINT_TAG_PREFIX = "fp-"
"""A stage's output commit is tagged ``fp-<64-hex fingerprint>``."""

METADATA_KEY = "hubflow"
"""Key under which hubflow stores its data in commit metadata and card metadata."""


def env_hub_root() -> Path | None:
    """``HUBFLOW_HUB_ROOT``: overrides the local store folder of every manifest."""
    value = os.environ.get("HUBFLOW_HUB_ROOT")
    return Path(value).expanduser() if value else None


def env_no_color() -> bool:
    return bool(os.environ.get("NO_COLOR"))


def user_identity() -> str:
    """Who runs hubflow, for the records `hubflow accept` writes: ``git config user.name`` (with its
    ``user.email``), else ``$USER`` / ``$LOGNAME``, else ``unknown``."""
    import subprocess

    def git(key: str) -> str:
        try:
            proc = subprocess.run(["git", "config", key], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return ""
        return proc.stdout.strip() if proc.returncode == 0 else ""

    name = git("user.name")
    if name:
        email = git("user.email")
        return f"{name} <{email}>" if email else name
    return os.environ.get("USER") or os.environ.get("LOGNAME") or "unknown"


PUBLIC_HUB_ENDPOINT = "https://huggingface.co"
"""The `hf` backend's endpoint when neither the manifest nor HF_ENDPOINT names one."""


def env_hf_endpoint() -> str | None:
    """``HF_ENDPOINT``: the Hub endpoint of the `hf` backend when the manifest sets none."""
    value = os.environ.get("HF_ENDPOINT", "").strip()
    return value.rstrip("/") or None


def hf_token() -> str | None:
    """The Hub token: ``HF_TOKEN``, else the one ``hf auth login`` saved (None: anonymous).

    Never print, log or store it; :func:`redact` removes it from any text.
    """
    value = os.environ.get("HF_TOKEN", "").strip()
    if value:
        return value
    from huggingface_hub import get_token  # reads the saved login (and HF_TOKEN_PATH)

    return get_token()


def env_serve_token() -> str | None:
    """``HUBFLOW_SERVE_TOKEN``: the token `hubflow serve` requires (clients send it as their HF token)."""
    value = os.environ.get("HUBFLOW_SERVE_TOKEN", "").strip()
    return value or None


def redact(text: str, *secrets: str | None) -> str:
    """``text`` with every known token (and the given secrets) replaced by ``***``."""
    candidates = [*secrets, os.environ.get("HF_TOKEN"), os.environ.get("HUBFLOW_SERVE_TOKEN")]
    for secret in candidates:
        if secret and len(secret.strip()) >= 4:
            text = text.replace(secret.strip(), "***")
    return text


def env_cache_dir() -> Path:
    """``HUBFLOW_CACHE_DIR``, else ``$XDG_CACHE_HOME/hubflow``, else ``~/.cache/hubflow``:
    per-user facts measured on this machine (e.g. training throughput for plan estimates)."""
    value = os.environ.get("HUBFLOW_CACHE_DIR")
    if value:
        return Path(value).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "hubflow"


MAX_MANIFEST_BYTES = 1 << 20
"""A manifest larger than this is refused (real ones are a few KiB)."""
MAX_LOCK_BYTES = 32 << 20
"""A lock larger than this is refused (about 1 KiB per stage)."""
MAX_YAML_DEPTH = 64
"""Deepest nesting a manifest or lock may have, aliases expanded (configs need < 10)."""
MAX_YAML_NODES = 1_000_000
"""Most values a manifest or lock may hold once its aliases are expanded (an alias bomb's
billions are refused before anything is built from them)."""
