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
