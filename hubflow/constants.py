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


def env_ray_address() -> str | None:
    """``RAY_ADDRESS``: the Ray cluster of `launcher: ray` stages when the manifest sets no `cluster.address`."""
    value = os.environ.get("RAY_ADDRESS", "").strip()
    return value or None


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


def env_jobs() -> int | None:
    """``HUBFLOW_JOBS``: how many CPU slots `hubflow run` fills at once when ``--jobs`` is not
    given (default: one per usable core)."""
    value = os.environ.get("HUBFLOW_JOBS", "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


def env_cuda_visible_devices() -> str | None:
    """``CUDA_VISIBLE_DEVICES`` as `hubflow run` found it: the GPUs it may give stages (None: all)."""
    return os.environ.get("CUDA_VISIBLE_DEVICES")


LEASE_TIMEOUT_SECONDS = 300.0
"""A stage's lease (hubflow/lease.py) whose heartbeat has not moved for this long is stale: another
launcher takes the stage over. The owner renews it every tenth of this (30 s by default)."""


def env_lease_timeout() -> float:
    """``HUBFLOW_LEASE_TIMEOUT``: seconds after which a silent lease is stale (default 300)."""
    value = os.environ.get("HUBFLOW_LEASE_TIMEOUT", "").strip()
    try:
        seconds = float(value)
    except ValueError:
        return LEASE_TIMEOUT_SECONDS
    return seconds if seconds > 0 else LEASE_TIMEOUT_SECONDS


TRACKERS_DIR = "trackers"
"""Under the state folder (``.hubflow/trackers/``): where ``report_to`` trackers that log to a local
folder (trackio, MLflow, offline W&B) keep their runs unless the user points them elsewhere."""


def use_local_trackio_dir(folder: Path) -> Path:
    """Where trackio keeps its runs: ``TRACKIO_DIR`` when the user set it, else ``folder`` (set as
    ``TRACKIO_DIR`` in this process, which trackio reads when it is imported)."""
    value = os.environ.get("TRACKIO_DIR", "").strip()
    if value:
        return Path(value).expanduser()
    os.environ["TRACKIO_DIR"] = str(folder)
    return folder


def env_mlflow_tracking_uri() -> str | None:
    """``MLFLOW_TRACKING_URI``: the user's MLflow server or store (None: hubflow's local folder)."""
    value = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    return value or None


def allow_mlflow_file_store() -> None:
    """MLflow 3 refuses its file store (the one store mlflow-skinny can write without a database) unless
    ``MLFLOW_ALLOW_FILE_STORE`` is set: hubflow's local MLflow folder sets it, unless the user did."""
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")


WANDB_HOST = "api.wandb.ai"


def wandb_configuration() -> str | None:
    """How W&B is configured for this user, or None: ``WANDB_MODE`` (offline / disabled / online),
    ``WANDB_API_KEY``, or a ``wandb login`` entry in the netrc file (``NETRC`` or ``~/.netrc``)."""
    mode = os.environ.get("WANDB_MODE", "").strip()
    if mode:
        return f"WANDB_MODE={mode}"
    if os.environ.get("WANDB_API_KEY", "").strip():
        return "WANDB_API_KEY"
    netrc_path = Path(os.environ.get("NETRC") or Path.home() / ".netrc").expanduser()
    try:
        text = netrc_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    return f"{netrc_path} (wandb login)" if WANDB_HOST in text else None
