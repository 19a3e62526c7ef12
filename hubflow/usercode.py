"""User code a manifest names (``function: module:func``): found as files, imported only at run.

``hubflow validate`` and ``plan`` must never execute anything a pull request adds, so
:func:`locate` finds a module's source *file* without importing anything:

1. beside the manifest: ``a.b`` is ``BASE/a/b.py`` or ``BASE/a/b/__init__.py``;
2. else a standard-library or builtin module is refused (a stage function is a user
   function taking ``(inputs, output, params)``, never ``os:system``);
3. else an installed module, found with :class:`importlib.machinery.PathFinder` (and, for
   editable installs, the installed meta-path finders) one dotted part at a time, so no
   package ``__init__`` runs.

At run time (in the stage's own process) :func:`import_module` imports a module from the
manifest's folder under the private package :data:`USER_PACKAGE`, whose ``__path__`` is
that folder: a user module can be called anything (``stages.py``, ``hubflow.py``, ``json.py``)
without shadowing an installed package. Sibling modules are reached with relative imports
(``from . import helpers``), or by plain name through :class:`ManifestFolderFinder`, which is
consulted after every installed package. An installed module is imported normally.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hubflow.errors import ManifestError

USER_PACKAGE = "hubflow_user"
"""The package a module beside the manifest is imported under (``hubflow_user.steps``)."""

FUNCTION_HINT = (
    "name a function you wrote, `def f(inputs, output, params)`, as MODULE:FUNCTION: a module "
    "beside the manifest (steps.py -> function: steps:f) or in an installed package of yours"
)


@dataclass(frozen=True)
class UserModule:
    name: str
    """The dotted name the manifest wrote."""
    path: Path
    """Its source file (``.py``, or an extension module for an installed one)."""
    beside_manifest: bool
    """True: found in the manifest's folder, imported as ``hubflow_user.NAME``."""

    @property
    def import_name(self) -> str:
        return f"{USER_PACKAGE}.{self.name}" if self.beside_manifest else self.name


def locate(module: str, base_dir: Path) -> UserModule:
    """Find ``module``'s source file without importing anything (see the module docstring)."""
    parts = module.split(".")
    if not all(p.isidentifier() for p in parts):
        raise ManifestError(f"{module!r} is not a dotted module name", hint=FUNCTION_HINT)
    base = Path(base_dir)
    here = base.joinpath(*parts)
    for candidate in (here.with_name(parts[-1] + ".py"), here / "__init__.py"):
        if candidate.is_file():
            return UserModule(module, candidate, beside_manifest=True)
    if parts[0] in sys.stdlib_module_names or parts[0] in sys.builtin_module_names:
        raise ManifestError(
            f"{module!r} is a standard-library module, not a stage function of yours",
            hint=FUNCTION_HINT,
        )
    found = _installed(parts, base)
    if found is None:
        raise ManifestError(
            f"module {module!r} not found: no {'/'.join(parts)}.py or {'/'.join(parts)}/__init__.py "
            f"beside the manifest ({base}), and no installed package provides it",
            hint=f"put {'/'.join(parts)}.py beside the manifest, or install the package that holds it",
        )
    return UserModule(module, found, beside_manifest=False)


def _installed(parts: list[str], base: Path) -> Path | None:
    """The file of an installed module, found part by part: finders only, nothing executed."""
    here = os.path.realpath(base)
    search: list[str] | None = [p for p in sys.path if p not in ("", ".") and os.path.realpath(p) != here]
    spec = None
    for i in range(len(parts)):
        name = ".".join(parts[: i + 1])
        spec = _find(name, search)
        if spec is None:
            return None
        if i + 1 < len(parts):
            if spec.submodule_search_locations is None:
                return None  # a module, not a package: it has no submodules
            search = list(spec.submodule_search_locations)
    if spec is None or not spec.origin or not Path(spec.origin).is_file():
        return None
    return Path(spec.origin)


def _find(name: str, path: list[str] | None) -> importlib.machinery.ModuleSpec | None:
    spec = importlib.machinery.PathFinder.find_spec(name, path)
    if spec is not None:
        return spec
    for finder in sys.meta_path:  # editable installs map names in a meta-path finder
        if finder in (importlib.machinery.PathFinder, importlib.machinery.BuiltinImporter):
            continue
        if finder is importlib.machinery.FrozenImporter:
            continue
        find_spec = getattr(finder, "find_spec", None)
        if find_spec is None:
            continue
        try:
            spec = find_spec(name, path)
        except (ImportError, ValueError, TypeError):
            spec = None
        if spec is not None:
            return spec
    return None


def import_module(module: str, base_dir: Path) -> types.ModuleType:
    """Import ``module`` for a stage run: from the manifest's folder under :data:`USER_PACKAGE`,
    else the installed one."""
    found = locate(module, base_dir)
    if found.beside_manifest:
        _user_package(Path(base_dir))
    return importlib.import_module(found.import_name)


class ManifestFolderFinder(importlib.abc.MetaPathFinder):
    """Finds top-level modules in the manifest's folder, *after* every other finder: plain
    sibling imports (``import helpers``) work, and an installed package (editable installs
    included, whose finder comes after ``sys.path``) always wins over a file of the same name.
    Putting the folder on ``sys.path``, even last, would let it shadow an editable install."""

    def __init__(self, base_dir: Path) -> None:
        self.base_dir = str(base_dir)

    def find_spec(
        self, fullname: str, path: Any = None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if path is not None or "." in fullname:
            return None
        return importlib.machinery.PathFinder.find_spec(fullname, [self.base_dir])


def search_manifest_folder_last(base_dir: Path) -> None:
    """Let the stage's process import the manifest folder's modules by plain name, last."""
    if not any(isinstance(f, ManifestFolderFinder) for f in sys.meta_path):
        sys.meta_path.append(ManifestFolderFinder(Path(base_dir)))


def _user_package(base_dir: Path) -> None:
    existing = sys.modules.get(USER_PACKAGE)
    if existing is not None and list(getattr(existing, "__path__", [])) == [str(base_dir)]:
        return
    spec = importlib.machinery.ModuleSpec(USER_PACKAGE, None, is_package=True)
    spec.submodule_search_locations = [str(base_dir)]
    package = importlib.util.module_from_spec(spec)
    package.__path__ = [str(base_dir)]
    package.__doc__ = "The modules beside the manifest, imported by hubflow for `python` stages."
    sys.modules[USER_PACKAGE] = package
