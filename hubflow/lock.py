"""The lock: for every stage of one manifest, what made its result and what it produced.

``NAME.lock`` beside ``NAME.yaml`` (so ``hubflow.lock`` for ``hubflow.yaml``): YAML,
rewritten atomically (temp file + rename) each time a stage succeeds, so an interrupted
run keeps every finished stage's entry. Manifests sharing a folder have a lock each.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hubflow import constants
from hubflow.errors import ManifestError
from hubflow.yamlload import load_file

_RECOVER = "restore it from version control, or delete it (results are found again by fingerprint)"
HEADER = "# {name}: written by `hubflow run`; commit it next to its manifest.\n"


@dataclass
class LockEntry:
    kind: str
    fingerprint: str
    inputs: dict[str, str]
    """Input name -> TYPE:NS/NAME@COMMIT used."""
    outputs: dict[str, str]
    """Output name -> TYPE:NS/NAME@COMMIT produced."""
    components: dict[str, Any] = field(default_factory=dict)
    """What the fingerprint hashed except the inputs (config, code, versions)."""
    seconds: float | None = None
    """Wall time of the run that produced the outputs (inputs, stage process, publishing)."""
    accepted: list[dict[str, Any]] = field(default_factory=list)
    """`hubflow accept` records, oldest first: the outputs were declared up to date under a new
    fingerprint without re-running (``from``, ``to``, ``outputs``, ``changes``, ``by``, ``at``,
    ``reason``). A run that re-makes the outputs writes a new entry without them."""

    def acceptance(self) -> dict[str, Any] | None:
        """The acceptance that made this entry's fingerprint, if it was accepted rather than run."""
        last = self.accepted[-1] if self.accepted else None
        return last if isinstance(last, dict) and last.get("to") == self.fingerprint else None

    def to_dict(self) -> dict[str, Any]:
        out = {
            "kind": self.kind,
            "fingerprint": self.fingerprint,
            "inputs": dict(self.inputs),
            "outputs": dict(self.outputs),
            "components": {k: v for k, v in self.components.items() if k != "inputs"},
        }
        if self.seconds is not None:
            out["seconds"] = round(float(self.seconds), 3)
        if self.accepted:
            out["accepted"] = [dict(a) for a in self.accepted]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LockEntry:
        return cls(
            kind=str(data["kind"]),
            fingerprint=str(data["fingerprint"]),
            inputs=dict(data.get("inputs") or {}),
            outputs=dict(data.get("outputs") or {}),
            components=dict(data.get("components") or {}),
            seconds=float(data["seconds"]) if isinstance(data.get("seconds"), (int, float)) else None,
            accepted=[dict(a) for a in data.get("accepted") or [] if isinstance(a, dict)],
        )


@dataclass
class Lock:
    path: Path
    stages: dict[str, LockEntry] = field(default_factory=dict)
    migrated_from: Path | None = None
    """The shared lock these entries came from, until this lock is first written."""

    @classmethod
    def read(
        cls,
        path: Path,
        *,
        legacy: Path | None = None,
        accept: Callable[[str, LockEntry], bool] | None = None,
    ) -> Lock:
        """The lock at ``path``. While it does not exist, a ``legacy`` lock (the ``hubflow.lock``
        that every manifest of a folder used to share) gives the entries ``accept`` keeps; they
        are written to ``path`` with the first entry a run records (reading writes nothing)."""
        if not path.exists():
            if legacy is None or not legacy.exists():
                return cls(path)
            old = cls.read(legacy)
            kept = {n: e for n, e in old.stages.items() if accept is None or accept(n, e)}
            return cls(path, kept, migrated_from=legacy)
        try:
            data = load_file(path, "lock file", constants.MAX_LOCK_BYTES)
        except ManifestError as exc:
            raise ManifestError(f"lock file {path} is unreadable: {exc.message}", hint=_RECOVER) from None
        except OSError as exc:
            raise ManifestError(
                f"cannot read lock file {path}: {exc.strerror or exc}", hint=_RECOVER
            ) from None
        try:
            if data is None:
                return cls(path)
            if not isinstance(data, dict) or not isinstance(data.get("stages", {}), dict):
                raise ValueError("expected a mapping with `stages:`")
            stages = {name: LockEntry.from_dict(e) for name, e in (data.get("stages") or {}).items()}
        except (ValueError, KeyError, TypeError) as exc:
            raise ManifestError(f"lock file {path} is unreadable: {exc}", hint=_RECOVER) from exc
        return cls(path, stages)

    def write(self, keep: set[str] | None = None) -> None:
        """Atomically rewrite the file; ``keep`` drops entries of stages no longer in the manifest."""
        stages = {n: e for n, e in self.stages.items() if keep is None or n in keep}
        body = yaml.dump(
            {
                "version": constants.SCHEMA_VERSION,
                "stages": {n: e.to_dict() for n, e in sorted(stages.items())},
            },
            Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper),
            sort_keys=False,
            default_flow_style=False,
        )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".hubflow.lock.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(HEADER.format(name=self.path.name) + body)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def record(self, name: str, entry: LockEntry, keep: set[str] | None = None) -> None:
        self.stages[name] = entry
        self.write(keep)
        self.migrated_from = None
