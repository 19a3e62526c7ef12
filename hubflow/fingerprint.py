"""Fingerprints: sha256 of the canonical JSON of everything a result depends on."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
from collections.abc import Iterable, Mapping
from functools import cache
from typing import Any

from hubflow import constants


def canonical_json(obj: Any) -> bytes:
    """JSON with sorted keys, no whitespace and only ASCII: equal data, equal bytes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def digest(obj: Any) -> str:
    return hashlib.sha256(canonical_json(obj)).hexdigest()


@cache
def library_version(dist: str) -> str:
    """Installed version of a distribution, read from metadata (never imports it)."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not-installed"


def library_versions(dists: Iterable[str]) -> dict[str, str]:
    return {d: library_version(d) for d in sorted(dists)}


def static_components(
    *,
    kind: str,
    version: str,
    settings: Mapping[str, Any],
    libraries: Iterable[str],
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The parts of a fingerprint known before any input is resolved. ``settings`` is
    :meth:`hubflow.stage.StageConfig.settings`: the config less its fields marked UNHASHED."""
    return {
        "schema": constants.SCHEMA_VERSION,
        "kind": kind,
        "version": str(version),
        "config": dict(settings),
        "code": library_versions(libraries),
        "extra": dict(extra or {}),
    }


def stage_fingerprint(static: Mapping[str, Any], inputs: Mapping[str, str]) -> tuple[str, dict[str, Any]]:
    """Fingerprint of a stage given its static components and its resolved inputs
    (input name -> ``TYPE:NS/NAME@COMMIT``). Returns (hex digest, components)."""
    components = {**static, "inputs": dict(inputs)}
    return digest(components), components


def diff_paths(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted paths whose values differ between two JSON-like values."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in sorted(set(old) | set(new), key=str):
            path = f"{prefix}.{key}" if prefix else str(key)
            if key not in old or key not in new:
                out.append(path)
            else:
                out.extend(diff_paths(old[key], new[key], path))
        return out
    return [] if old == new else [prefix or "(value)"]
