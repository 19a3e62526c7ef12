"""Stage kinds: built-in modules plus the entry-point group ``hubflow.stages``.

A third-party package registers a kind in its pyproject::

    [project.entry-points."hubflow.stages"]
    my_kind = "my_pkg.my_stage"     # a module with Config, run and VERSION

Stage modules import only pydantic at import time, so building the manifest
schema never imports torch.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from dataclasses import dataclass
from functools import cache
from types import ModuleType
from typing import Any

from hubflow.errors import HubflowError
from hubflow.stage import StageConfig

ENTRY_POINT_GROUP = "hubflow.stages"

BUILTIN_KINDS: dict[str, str] = {
    "ingest": "stages.ingest",
    "python": "stages.python",
    "curate": "stages.curate",
    "sft": "stages.sft",
    "instruct": "stages.instruct",
    "synthetic": "stages.synthetic",
    "tokenizer": "stages.tokenizer",
    "pretrain": "stages.pretrain",
    "merge": "stages.merge",
    "evaluate": "stages.evaluate",
}
"""kind -> module. Each module defines Config, run and VERSION."""


@dataclass(frozen=True)
class StageKind:
    kind: str
    module_name: str
    module: ModuleType

    @property
    def config_cls(self) -> type[StageConfig]:
        return self.module.Config

    @property
    def version(self) -> str:
        return str(getattr(self.module, "VERSION", "0"))

    @property
    def libraries(self) -> tuple[str, ...]:
        return tuple(getattr(self.module, "LIBRARIES", ()))

    def fingerprint_extra(self, cfg: StageConfig, base_dir: Any) -> dict[str, Any]:
        fn = getattr(self.module, "fingerprint_extra", None)
        return dict(fn(cfg, base_dir)) if fn else {}

    def describe(self, cfg: StageConfig) -> list[str]:
        """Extra plan lines for a stage (e.g. a pretrain stage's N, D and 6ND)."""
        fn = getattr(self.module, "describe", None)
        return [str(line) for line in fn(cfg)] if fn else []

    def run(self, ctx: Any, cfg: StageConfig) -> Any:
        return self.module.run(ctx, cfg)


@cache
def kind_modules() -> dict[str, str]:
    """kind -> module name, built-ins first; nothing is imported."""
    modules = dict(BUILTIN_KINDS)
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        modules.setdefault(ep.name, ep.value)
    return dict(sorted(modules.items()))


@cache
def _load(kind: str, module_name: str) -> StageKind:
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise HubflowError(
            f"stage kind {kind!r}: module {module_name!r} cannot be imported: {exc}",
            hint="install the package that provides it, or fix its `hubflow.stages` entry point",
        ) from exc
    for attr in ("Config", "run"):
        if not hasattr(module, attr):
            raise HubflowError(f"stage kind {kind!r}: module {module_name!r} has no `{attr}`")
    if not issubclass(module.Config, StageConfig):
        raise HubflowError(
            f"stage kind {kind!r}: {module_name}.Config must subclass hubflow.stage.StageConfig"
        )
    return StageKind(kind, module_name, module)


def registry() -> dict[str, StageKind]:
    """Every known stage kind (imports every stage module: for the schema)."""
    return {kind: _load(kind, mod) for kind, mod in kind_modules().items()}


def get_kind(kind: str) -> StageKind:
    """One stage kind; only its module is imported."""
    modules = kind_modules()
    if kind not in modules:
        from hubflow.errors import UnknownStageKind

        raise UnknownStageKind(
            f"unknown stage kind {kind!r}",
            hint=f"use one of: {', '.join(modules)} (or install the package that provides {kind!r})",
        )
    return _load(kind, modules[kind])
