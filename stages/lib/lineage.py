"""Which base model an adapter belongs to, and the check that it is the one it is applied to.

An adapter records its base in, in order: the adapter repo's ``lineage.json`` (the model input it
was trained from, with the exact revision), ``adapter_config.json``'s ``base_model_name_or_path``
when it is a repo id, the card's ``base_model``. DESIGN: cross-stage checks before any compute.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hubflow.errors import StageInputError

ADAPTER_CONFIG = "adapter_config.json"
_BASE_INPUT_NAMES = ("base", "base_model", "model", "policy")
"""Where a stage took its model from; `base` first: with both, `model` was an adapter trained on `base`."""
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from ``path``, or None when it is missing or not an object."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def adapter_config(folder: Path) -> dict[str, Any] | None:
    """The folder's adapter_config.json, or None for a full model."""
    return read_json(folder / ADAPTER_CONFIG)


@dataclass(frozen=True)
class BaseClaim:
    repo_id: str
    revision: str | None
    source: str
    """Where it was read (shown in errors)."""

    def __str__(self) -> str:
        return f"model:{self.repo_id}" + (f"@{self.revision}" if self.revision else "")


def _card_base_model(folder: Path) -> str | None:
    path = folder / "README.md"
    if not path.is_file():
        return None
    text = path.read_text(encoding="utf-8", errors="replace")
    if not text.startswith("---"):
        return None
    import yaml

    try:
        meta = yaml.safe_load(text.split("---", 2)[1]) or {}
    except yaml.YAMLError:
        return None
    value = meta.get("base_model") if isinstance(meta, dict) else None
    return value if isinstance(value, str) else None


def recorded_base(adapter_dir: Path) -> BaseClaim | None:
    """The base model the adapter records it was trained on, or None if it records none."""
    lineage = read_json(adapter_dir / "lineage.json")
    if lineage and isinstance(lineage.get("inputs"), dict):
        models = {
            name: rec
            for name, rec in lineage["inputs"].items()
            if isinstance(rec, dict) and rec.get("repo_type") == "model" and rec.get("repo_id")
        }
        chosen = next((models[n] for n in _BASE_INPUT_NAMES if n in models), None)
        if chosen is None:
            others = [rec for name, rec in models.items() if "tok" not in name]
            chosen = others[0] if len(others) == 1 else None
        if chosen is not None:
            return BaseClaim(chosen["repo_id"], chosen.get("revision"), "its lineage.json")
    config = adapter_config(adapter_dir) or {}
    name = config.get("base_model_name_or_path")
    if isinstance(name, str) and _REPO_ID.match(name) and not Path(name).exists():
        return BaseClaim(name, config.get("revision") or None, "adapter_config.json base_model_name_or_path")
    card = _card_base_model(adapter_dir)
    if card and _REPO_ID.match(card):
        return BaseClaim(card, None, "its card's base_model")
    return None


def given_base(base_dir: Path, base_ref: str | None) -> BaseClaim | None:
    """What the `base` input is: its exact ref when the runner gave one, else the repo its lineage names."""
    if base_ref:
        from hubflow.refs import parse_ref

        ref = parse_ref(base_ref)
        return BaseClaim(ref.repo_id, ref.revision, "the input ref")
    lineage = read_json(base_dir / "lineage.json") or {}
    for text in (lineage.get("outputs") or {}).values():
        if isinstance(text, str) and text.startswith("model:"):
            return BaseClaim(text.split(":", 1)[1].split("@")[0], None, "its lineage.json")
    return None


def check_adapter_base(
    adapter_dir: Path,
    base_dir: Path,
    *,
    adapter_input: str,
    base_input: str,
    base_ref: str | None,
) -> str:
    """Raise if the adapter records a base other than the given one; returns a note for the log/card."""
    claimed = recorded_base(adapter_dir)
    given = given_base(base_dir, base_ref)
    if claimed is None:
        return f"input {adapter_input!r} records no base model; not checked beyond weight shapes"
    if given is None:
        return (
            f"input {adapter_input!r} was trained on {claimed}; input {base_input!r} has no recorded repo id"
        )
    hint = (
        f"set input {base_input!r} to {claimed} (the model the adapter was trained on), or set "
        "`check_base: false` if you know both hold the same weights"
    )
    if claimed.repo_id != given.repo_id:
        raise StageInputError(
            f"input {adapter_input!r} is an adapter of {claimed} (from {claimed.source}), "
            f"but input {base_input!r} is {given}",
            hint=hint,
        )
    if claimed.revision and given.revision and claimed.revision != given.revision:
        raise StageInputError(
            f"input {adapter_input!r} was trained on {claimed.repo_id} at revision {claimed.revision} "
            f"(from {claimed.source}), but input {base_input!r} is revision {given.revision}",
            hint=hint,
        )
    return f"input {adapter_input!r} was trained on {claimed}; input {base_input!r} matches"
