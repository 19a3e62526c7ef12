"""Manifests: YAML (safe_load only) validated by pydantic.

The stage union is discriminated on ``kind`` and built from the registry, so a
third-party stage kind validates exactly like a built-in one. Each stage is
validated on its own so an error names the file, the stage and the field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from hubflow import constants
from hubflow.errors import HubflowError, ManifestError, UnknownStageKind
from hubflow.launch.machines import check_machines
from hubflow.matrix import Sweep, expand, schema_with_matrix, share_implied
from hubflow.registry import get_kind, kind_modules, registry
from hubflow.stage import StageConfig
from hubflow.yamlload import load_file


class HubSettings(BaseModel):
    """Where artifacts live."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["local", "hf"] = Field(
        "local",
        description=(
            "`local`: an embedded store in a folder (offline). `hf`: the Hugging Face Hub, or any "
            "endpoint speaking its API such as `hubflow serve` (see docs/hub.md)."
        ),
    )
    root: str | None = Field(
        None,
        description=(
            "Folder of the local store, relative to the manifest. Default `.hubflow/hub` beside the "
            "manifest; the environment variable HUBFLOW_HUB_ROOT overrides both."
        ),
    )
    endpoint: str | None = Field(
        None,
        description=(
            "`hf` backend: the Hub's URL, e.g. http://127.0.0.1:8000 for `hubflow serve`. "
            "Default: the HF_ENDPOINT environment variable, else https://huggingface.co."
        ),
    )
    namespace: str | None = Field(
        None,
        description=(
            "`hf` backend: the user or organisation the team publishes under. Stage outputs keep the "
            "namespace written in their ref (never rewritten); `hubflow push` uses this one as its "
            "default target namespace."
        ),
    )
    private: bool = Field(
        True,
        description="`hf` backend: create missing output repos as private (default) or public.",
    )

    @field_validator("endpoint")
    @classmethod
    def _check_endpoint(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip().rstrip("/")
        if not value.startswith(("http://", "https://")) or len(value.split("://", 1)[1]) == 0:
            raise ValueError(f"endpoint {value!r} must be an http:// or https:// URL")
        return value

    @field_validator("namespace")
    @classmethod
    def _check_namespace(cls, value: str | None) -> str | None:
        if value is None:
            return None
        from hubflow.errors import RefError
        from hubflow.refs import validate_repo_id

        try:
            validate_repo_id(f"{value}/x")
        except RefError as exc:
            raise ValueError(f"namespace {value!r} is not a valid Hub namespace ({exc.message})") from None
        return value


class ClusterSettings(BaseModel):
    """Where stages with ``resources.launcher: ray`` run."""

    model_config = ConfigDict(extra="forbid")

    address: str | None = Field(
        None,
        description="The Ray cluster for `ray.init(address=...)`, e.g. `ray://head:10001`, `127.0.0.1:6379` "
        "or `auto`. Default: the RAY_ADDRESS environment variable, else `auto` (a cluster started on this "
        "machine with `ray start --head`).",
    )


class ManifestModel(BaseModel):
    """The top level of a manifest file (used for `hubflow schema`)."""

    model_config = ConfigDict(extra="forbid")

    hub: HubSettings = Field(default_factory=HubSettings, description="Backend settings.")
    cluster: ClusterSettings = Field(
        default_factory=ClusterSettings, description="The Ray cluster of `launcher: ray` stages."
    )
    stages: list[Any] = Field(..., description="The stages, in any order; inputs define the graph.")


@dataclass
class Manifest:
    path: Path
    hub: HubSettings
    stages: dict[str, StageConfig]
    """Stage name -> validated config, in file order."""
    sweeps: dict[str, Sweep] = field(default_factory=dict)
    """Stage name as written -> its matrix sweep (its members are in ``stages``): hubflow/matrix.py."""
    cluster: ClusterSettings = field(default_factory=ClusterSettings)
    """Where `launcher: ray` stages run (docs/scale-out.md)."""

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    @property
    def state_dir(self) -> Path:
        return self.base_dir / constants.STATE_DIR

    @property
    def lock_path(self) -> Path:
        """This manifest's lock: ``NAME.lock`` beside ``NAME.yaml`` (``hubflow.lock`` for ``hubflow.yaml``)."""
        return self.path.with_suffix(".lock")

    @property
    def legacy_lock_path(self) -> Path | None:
        """The lock every manifest of this folder shared before each had its own (None: it is ours)."""
        shared = self.base_dir / constants.LOCK_FILE
        return None if shared == self.lock_path else shared

    def hub_root(self) -> Path:
        env = constants.env_hub_root()
        if env is not None:
            return env
        if self.hub.root:
            return (self.base_dir / self.hub.root).resolve()
        return self.state_dir / "hub"


def _loc_text(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts) or "(top level)"


def _format_validation(exc: ValidationError, where: str, cls: type[BaseModel] | None) -> str:
    lines = [f"{where}:"]
    for err in exc.errors():
        loc = tuple(x for x in err["loc"] if not (isinstance(x, str) and x.startswith("function-")))
        field = _loc_text(loc)
        if err["type"] == "missing":
            lines.append(f"  - field `{field}` is required")
        elif err["type"] == "extra_forbidden":
            known = ""
            if cls is not None and len(loc) == 1:
                known = f" (known fields: {', '.join(cls.model_fields)})"
            lines.append(f"  - unknown field `{field}`{known}")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(f"  - field `{field}`: {msg}" if loc else f"  - {msg}")
    return "\n".join(lines)


def load_yaml(path: Path) -> Any:
    """The manifest's data: ``safe_load`` semantics, with duplicate keys, size, depth and alias
    expansion refused (see :mod:`hubflow.yamlload`)."""
    try:
        return load_file(path, "manifest", constants.MAX_MANIFEST_BYTES)
    except FileNotFoundError as exc:
        raise ManifestError(
            f"manifest {path} not found",
            hint=f"create it, or pass the manifest path (default is {constants.DEFAULT_MANIFEST} in this folder)",
        ) from exc
    except OSError as exc:
        raise ManifestError(f"cannot read manifest {path}: {exc.strerror or exc}") from exc


def parse_stage(raw: Any, where: str) -> StageConfig:
    """Validate one stage mapping against its kind's Config."""
    if not isinstance(raw, dict):
        raise ManifestError(f"{where}: a stage must be a mapping with `name` and `kind`")
    kind = raw.get("kind")
    if not kind:
        raise ManifestError(
            f"{where}: field `kind` is required", hint=f"set it to one of: {', '.join(kind_modules())}"
        )
    try:
        stage_kind = get_kind(str(kind))
    except UnknownStageKind as exc:
        raise UnknownStageKind(f"{where}: {exc.message}", hint=exc.hint) from None
    cls = stage_kind.config_cls
    try:
        return cls.model_validate(raw)
    except ValidationError as exc:
        raise ManifestError(
            _format_validation(exc, where, cls), hint="see `hubflow schema` for every field"
        ) from None


def parse_manifest(data: Any, path: Path) -> Manifest:
    if not isinstance(data, dict):
        raise ManifestError(f"{path}: the top level must be a mapping with `stages:`")
    try:
        top = ManifestModel.model_validate(data)
    except ValidationError as exc:
        raise ManifestError(_format_validation(exc, str(path), ManifestModel)) from None
    raws, sweeps = expand(top.stages, path, _config_or_none)
    stages: dict[str, StageConfig] = {}
    for i, raw in enumerate(raws):
        name = raw.get("name") if isinstance(raw, dict) else None
        where = f"{path}: stage {name!r}" if name else f"{path}: stages[{i}]"
        cfg = parse_stage(raw, where)
        resources = check_machines(cfg.resources, path.resolve().parent, where)
        if resources is not cfg.resources:  # the accelerate config's num_machines
            cfg = cfg.model_copy(update={"resources": resources})
        if cfg.name in stages:
            raise ManifestError(
                f"{path}: two stages are named {cfg.name!r}", hint="stage names must be unique"
            )
        stages[cfg.name] = cfg
    if not stages:
        raise ManifestError(f"{path}: `stages` is empty", hint="add at least one stage")
    return Manifest(
        path=path.resolve(),
        hub=top.hub,
        stages=add_auxiliary_stages(stages, path, sweeps),
        sweeps=sweeps,
        cluster=top.cluster,
    )


def _config_or_none(kind: str) -> type[StageConfig] | None:
    """A kind's Config, or None for a kind that does not load (validation reports it, naming the stage)."""
    try:
        return get_kind(kind).config_cls
    except HubflowError:
        return None


def add_auxiliary_stages(
    stages: dict[str, StageConfig], path: Path, sweeps: dict[str, Sweep] | None = None
) -> dict[str, StageConfig]:
    """Add the stages each stage implies (its kind's ``auxiliary_stages``) before it, and wire each to its
    stage as the named input. A manifest that already declares such an input keeps its own. The members
    of a sweep that imply the same stage share one (:func:`hubflow.matrix.share_implied`)."""
    implied = {name: get_kind(cfg.kind).auxiliary_stages(cfg) for name, cfg in stages.items()}
    implied = share_implied(implied, sweeps or {})
    out: dict[str, StageConfig] = {}
    implied_names: set[str] = set()
    for name, cfg in stages.items():
        extra: dict[str, str] = {}
        for input_name, raw in implied[name]:
            where = f"{path}: stage {raw.get('name')!r} (added for stage {name!r})"
            aux = parse_stage(raw, where)
            if aux.name in implied_names and out.get(aux.name) == aux:
                extra[input_name] = aux.name
                continue
            if aux.name in stages or aux.name in out:
                raise ManifestError(
                    f"{where}: a stage named {aux.name!r} already exists",
                    hint=f"rename that stage, or give stage {name!r} the input `{input_name}:` yourself",
                )
            out[aux.name] = aux
            implied_names.add(aux.name)
            extra[input_name] = aux.name
        if extra:
            data = cfg.model_dump(mode="json", exclude_unset=True)
            data["inputs"] = {**cfg.inputs, **extra}
            cfg = type(cfg).model_validate({**data, "name": cfg.name, "kind": cfg.kind})
        out[name] = cfg
    return out


def load_manifest(path: str | Path) -> Manifest:
    """Read, validate and return the manifest at ``path`` (graph checks are separate)."""
    p = Path(path)
    return parse_manifest(load_yaml(p), p)


@cache
def stage_union() -> Any:
    """The discriminated union of every registered stage Config, on ``kind``."""
    configs = tuple(k.config_cls for k in registry().values())
    if len(configs) == 1:
        return configs[0]
    return Annotated[Union[configs], Field(discriminator="kind")]  # noqa: UP007


def json_schema() -> dict[str, Any]:
    """JSON Schema of a whole manifest, for editors (`hubflow schema`)."""
    model = type(
        "HubflowManifest",
        (BaseModel,),
        {
            "__annotations__": {
                "hub": HubSettings,
                "cluster": ClusterSettings,
                "stages": list[stage_union()],
            },
            "model_config": ConfigDict(extra="forbid", title="hubflow manifest"),
            "hub": Field(default_factory=HubSettings, description="Backend settings."),
            "cluster": Field(default_factory=ClusterSettings, description="The Ray cluster."),
            "stages": Field(..., description="The stages; inputs define the graph."),
        },
    )
    return schema_with_matrix(TypeAdapter(model).json_schema())
