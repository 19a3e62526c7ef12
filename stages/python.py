"""``python``: call a user function as a stage.

``function: "package.module:func"`` is called as
``func(inputs: dict[str, Path], output: Path, params: dict) -> dict | None``
(``output`` is a dict of folders for a stage with named ``outputs``). The
returned dict becomes the stage's metrics. Modules beside the manifest are
importable. The module's source is part of the fingerprint, so editing it
makes the stage stale.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import re
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from hubflow.errors import HubflowError, StageInputError
from hubflow.stage import SINGLE_OUTPUT, StageConfig, StageContext, StageResult

VERSION = "1"
LIBRARIES: tuple[str, ...] = ()

_FUNCTION = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


class Config(StageConfig):
    kind: Literal["python"] = Field(..., description="Run a Python function.")
    function: str = Field(
        ...,
        description="`package.module:function`, importable from the manifest's folder or installed packages.",
    )
    params: dict[str, Any] = Field(default_factory=dict, description="Passed to the function as `params`.")

    @field_validator("function")
    @classmethod
    def _check_function(cls, value: str) -> str:
        if not _FUNCTION.match(value):
            raise ValueError(f"{value!r} is not `package.module:function`")
        return value


def _module_file(module_name: str, base_dir: Path) -> Path:
    added = str(base_dir) not in sys.path
    if added:
        sys.path.insert(0, str(base_dir))
    try:
        spec = importlib.util.find_spec(module_name)
    except (ImportError, ValueError) as exc:
        raise HubflowError(f"cannot locate module {module_name!r}: {exc}") from exc
    finally:
        if added:
            sys.path.remove(str(base_dir))
    if spec is None or not spec.origin or not Path(spec.origin).is_file():
        raise HubflowError(
            f"module {module_name!r} not found",
            hint=f"put {module_name.replace('.', '/')}.py beside the manifest ({base_dir}) or install its package",
        )
    return Path(spec.origin)


@functools.cache
def _file_sha256(path: Path, mtime_ns: int, size: int) -> str:
    """Cached per (path, mtime, size): many stages calling one module hash it once."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fingerprint_extra(cfg: Config, base_dir: Path) -> dict[str, Any]:
    module_name = cfg.function.partition(":")[0]
    source = _module_file(module_name, base_dir)
    st = source.stat()
    return {"module": module_name, "module_sha256": _file_sha256(source, st.st_mtime_ns, st.st_size)}


def run(ctx: StageContext, cfg: Config) -> StageResult:
    module_name, _, func_name = cfg.function.partition(":")
    module = importlib.import_module(module_name)
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
