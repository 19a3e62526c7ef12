"""Stage kinds: every module registered under the entry-point group ``hubflow.stages``.

The built-in kinds register there too, in hubflow's own ``pyproject.toml``, exactly as a
third-party package registers its kinds::

    [project.entry-points."hubflow.stages"]
    my_kind = "my_pkg.my_stage"     # a module with Config, run and VERSION

A kind's module is imported only when a manifest uses it (or ``hubflow schema`` lists them all),
and its contract (:class:`hubflow.stage.StageModule`) is checked when it loads. Stage modules import
only pydantic at import time, so building the manifest schema never imports torch.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import logging
from dataclasses import dataclass
from functools import cache
from types import ModuleType
from typing import Any, get_args

from hubflow.errors import HubflowError, UnknownStageKind
from hubflow.stage import STAGE_MODULE_CONTRACT, StageConfig

ENTRY_POINT_GROUP = "hubflow.stages"
OWN_DISTRIBUTION = "hubflow"
REPO_TYPES = ("model", "dataset")

log = logging.getLogger(__name__)


class StageContractError(HubflowError):
    """A stage module lacks part of the stage contract (Config, run, VERSION...)."""


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
        return str(self.module.VERSION)

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

    def auxiliary_stages(self, cfg: StageConfig) -> list[tuple[str, dict[str, Any]]]:
        """(input name, stage mapping) of each stage this one implies, e.g. a dpo stage's reference
        log-probs: an artifact of its own, reused when only the dpo stage's own settings change."""
        fn = getattr(self.module, "auxiliary_stages", None)
        return [(str(name), dict(stage)) for name, stage in fn(cfg)] if fn else []

    def run(self, ctx: Any, cfg: StageConfig) -> Any:
        return self.module.run(ctx, cfg)


def _distribution(ep: importlib.metadata.EntryPoint) -> str | None:
    dist = getattr(ep, "dist", None)
    return getattr(dist, "name", None) if dist is not None else None


@cache
def kind_modules() -> dict[str, str]:
    """kind -> module name, read from the entry points (nothing is imported). hubflow's own kinds
    win over a plugin's kind of the same name (the plugin's is ignored, with a warning)."""
    modules: dict[str, str] = {}
    owners: dict[str, str | None] = {}
    eps = sorted(
        importlib.metadata.entry_points(group=ENTRY_POINT_GROUP),
        key=lambda ep: (_distribution(ep) != OWN_DISTRIBUTION, ep.name),
    )
    for ep in eps:
        if ep.name in modules:
            if ep.value != modules[ep.name]:
                log.warning(
                    "stage kind %r of %s (%s) is ignored: %s registers it as %s",
                    ep.name,
                    _distribution(ep) or "an unknown distribution",
                    ep.value,
                    owners[ep.name] or "another distribution",
                    modules[ep.name],
                )
            continue
        modules[ep.name] = ep.value
        owners[ep.name] = _distribution(ep)
    return dict(sorted(modules.items()))


def check_contract(kind: str, module_name: str, module: ModuleType) -> None:
    """Raise :class:`StageContractError` naming the module and what it lacks (see
    :data:`hubflow.stage.STAGE_MODULE_CONTRACT`)."""

    def fail(what: str, fix: str) -> None:
        raise StageContractError(f"stage kind {kind!r}: module {module_name!r} {what}", hint=fix)

    for attr in ("Config", "run", "VERSION"):
        if not hasattr(module, attr):
            fail(f"has no `{attr}`", f"define `{attr}` ({STAGE_MODULE_CONTRACT[attr]})")
    config = module.Config
    if not (isinstance(config, type) and issubclass(config, StageConfig)):
        fail("has a `Config` that does not subclass hubflow.stage.StageConfig", "subclass StageConfig")
    field = config.model_fields.get("kind")
    literal = get_args(field.annotation) if field is not None else ()
    if tuple(literal) != (kind,):
        fail(
            f"declares `kind: Literal{list(literal) if literal else '[...]'}` but is registered as {kind!r}",
            f'declare `kind: Literal["{kind}"]` in its Config, or register it under that name',
        )
    if not callable(module.run):
        fail("has a `run` that is not callable", "define `run(ctx, cfg)`")
    if not isinstance(module.VERSION, str) or not module.VERSION:
        fail(f"has VERSION {module.VERSION!r}, not a non-empty string", 'set e.g. VERSION = "1"')
    libraries = getattr(module, "LIBRARIES", ())
    if not isinstance(libraries, (tuple, list)) or not all(isinstance(x, str) for x in libraries):
        fail("has LIBRARIES that is not a tuple of distribution names", 'set e.g. LIBRARIES = ("torch",)')
    for attr in ("fingerprint_extra", "describe", "auxiliary_stages"):
        if hasattr(module, attr) and not callable(getattr(module, attr)):
            fail(f"has a `{attr}` that is not callable", STAGE_MODULE_CONTRACT[attr])
    bad = {k: v for k, v in config.OUTPUT_TYPES.items() if v not in REPO_TYPES}
    if bad:
        fail(f"has OUTPUT_TYPES {bad}: repo types are {list(REPO_TYPES)}", "fix Config.OUTPUT_TYPES")


@cache
def _load(kind: str, module_name: str) -> StageKind:
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise HubflowError(
            f"stage kind {kind!r}: module {module_name!r} cannot be imported: {exc}",
            hint="install the package that provides it, or fix its `hubflow.stages` entry point",
        ) from exc
    check_contract(kind, module_name, module)
    return StageKind(kind, module_name, module)


def registry() -> dict[str, StageKind]:
    """Every known stage kind (imports every stage module: for the schema)."""
    return {kind: _load(kind, mod) for kind, mod in kind_modules().items()}


def _builtin_without_entry_point(kind: str) -> bool:
    """A module ``stages.<kind>`` exists in this checkout, but the installed metadata does not register it."""
    if not kind.isidentifier():
        return False
    try:
        return importlib.util.find_spec(f"stages.{kind}") is not None
    except (ImportError, ValueError):
        return False


def get_kind(kind: str) -> StageKind:
    """One stage kind; only its module is imported."""
    modules = kind_modules()
    if kind not in modules:
        if _builtin_without_entry_point(kind):
            raise UnknownStageKind(
                f"stage kind {kind!r} is in this checkout (stages/{kind}) but not in the installed package's "
                "entry points",
                hint="re-install hubflow (`pip install -e .`) so the entry point in pyproject.toml is registered",
            )
        raise UnknownStageKind(
            f"unknown stage kind {kind!r}",
            hint=f"use one of: {', '.join(modules)} (or install the package that provides {kind!r})",
        )
    return _load(kind, modules[kind])
