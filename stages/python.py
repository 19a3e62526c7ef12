"""``python``: call a user function as a stage.

``function: "module:func"`` (or ``"package.module:func"``) is called as
``func(inputs: dict[str, Path], output: Path, params: dict) -> dict | None``
(``output`` is a dict of folders for a stage with named ``outputs``). The
returned dict becomes the stage's metrics.

The module is a file beside the manifest (``steps.py``, ``pkg/mod.py``), found
and hashed as text by ``validate`` and ``plan`` (nothing is imported before
``hubflow run``) and imported at run time under a private package name, so it
may be called anything, ``stages.py`` and ``hubflow.py`` included; or a module
of an installed package. Standard-library modules are refused. The module's
source is part of the fingerprint, so editing it makes the stage stale. See
:mod:`hubflow.usercode`.
"""

from __future__ import annotations

import functools
import hashlib
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from hubflow import usercode
from hubflow.errors import ManifestError, StageInputError
from hubflow.stage import SINGLE_OUTPUT, StageConfig, StageContext, StageResult

VERSION = "1"
LIBRARIES: tuple[str, ...] = ()

_FUNCTION = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")


class Config(StageConfig):
    kind: Literal["python"] = Field(..., description="Run a Python function.")
    function: str = Field(
        ...,
        description=(
            "`module:function` or `package.module:function`: a module beside the manifest "
            "(any name) or of an installed package; called as function(inputs, output, params)."
        ),
    )
    params: dict[str, Any] = Field(default_factory=dict, description="Passed to the function as `params`.")

    @field_validator("function")
    @classmethod
    def _check_function(cls, value: str) -> str:
        if not _FUNCTION.match(value):
            raise ValueError(f"{value!r} is not `module:function` (e.g. steps:clean)")
        return value


@functools.cache
def _file_sha256(path: Path, mtime_ns: int, size: int) -> str:
    """Cached per (path, mtime, size): many stages calling one module hash it once."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fingerprint_extra(cfg: Config, base_dir: Path) -> dict[str, Any]:
    """The module's source hash, read as text: nothing is imported (issue 9 item 1)."""
    module_name = cfg.function.partition(":")[0]
    try:
        found = usercode.locate(module_name, base_dir)
    except ManifestError as exc:
        raise ManifestError(f"function {cfg.function!r}: {exc.message}", exc.hint) from None
    st = found.path.stat()
    return {"module": module_name, "module_sha256": _file_sha256(found.path, st.st_mtime_ns, st.st_size)}


def run(ctx: StageContext, cfg: Config) -> StageResult:
    module_name, _, func_name = cfg.function.partition(":")
    module = usercode.import_module(module_name, ctx.base_dir)
    func = getattr(module, func_name, None)
    if not callable(func):
        raise StageInputError(
            f"{module_name!r} has no function {func_name!r}",
            hint=f"define `def {func_name}(inputs, output, params)` in {module.__file__}",
        )
    output: Any = ctx.outputs[SINGLE_OUTPUT] if list(ctx.outputs) == [SINGLE_OUTPUT] else dict(ctx.outputs)
    metrics = func(dict(ctx.inputs), output, dict(cfg.params))
    if metrics is not None and not isinstance(metrics, dict):
        raise StageInputError(
            f"{cfg.function} returned {type(metrics).__name__}; it must return a dict or None"
        )
    return StageResult(metrics=metrics or {})
