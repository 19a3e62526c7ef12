"""What a stage module is made of: its Config, its run context and its result.

A stage kind is a module registered under the entry-point group ``hubflow.stages`` (the built-in
kinds in hubflow's own pyproject, a third-party kind in its package's). Its contract,
:data:`STAGE_MODULE_CONTRACT` (checked by ``hubflow.registry`` when the kind loads; :class:`StageModule`
is the same as a typing Protocol):

- ``Config``: a subclass of :class:`StageConfig` with ``kind: Literal["..."]`` (the registered name)
  and its own documented fields; a field that cannot change the result is marked :data:`UNHASHED`;
- ``run(ctx: StageContext, cfg: Config) -> StageResult | dict | None``, called in the stage's own
  process; heavy libraries are imported inside ``run``;
- ``VERSION``: the implementation version (part of the fingerprint: bump it when the module starts
  computing something different);
- optionally ``LIBRARIES``: distributions whose versions change results (part of the fingerprint),
  e.g. ``("torch", "transformers")``;
- optionally ``fingerprint_extra(cfg, base_dir) -> dict``: more things the result depends on, such as
  the content hash of source files;
- optionally ``describe(cfg) -> list[str]``: extra lines `hubflow plan` prints under the stage;
- optionally ``auxiliary_stages(cfg) -> list[(input name, stage mapping)]``: stages this one implies,
  added to the manifest when it loads and wired to this stage as that input (a dpo stage's reference
  log-probs: their own artifact, so changing only ``beta`` does not run the reference model again);
- on the Config, optionally ``OUTPUT_TYPES`` (``{"output": "dataset"}``: the repo type of each named
  output, checked when the manifest loads) and ``REQUIRED_OUTPUTS``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.fields import FieldInfo

from hubflow.errors import RefError
from hubflow.refs import looks_like_ref, parse_ref, parse_repo

if TYPE_CHECKING:
    from hubflow.trackers import Trackers

STAGE_MODULE_CONTRACT: dict[str, str] = {
    "Config": "a hubflow.stage.StageConfig subclass with `kind: Literal[NAME]`",
    "run": "run(ctx, cfg) -> StageResult | dict | None",
    "VERSION": 'the implementation version, a string such as "1"',
    "LIBRARIES": "optional: distributions whose versions change results",
    "fingerprint_extra": "optional: fingerprint_extra(cfg, base_dir) -> dict",
    "describe": "optional: describe(cfg) -> list[str] of plan lines",
    "auxiliary_stages": "optional: auxiliary_stages(cfg) -> [(input name, stage mapping)] of stages it implies",
}
"""The attributes of a stage module, and what each must be."""


class StageModule(Protocol):
    """A stage kind's module (see :data:`STAGE_MODULE_CONTRACT`)."""

    Config: type[StageConfig]
    VERSION: str
    LIBRARIES: Sequence[str]
    run: Callable[..., Any]


UNHASHED: dict[str, Any] = {"fingerprint": False}
"""Mark a field with ``Field(..., json_schema_extra=UNHASHED)`` when it cannot change a stage's result
(a timeout, a plan hint, a logging or checkpoint cadence): it stays out of the fingerprint, so changing
it re-runs nothing. This marker is the only place such a decision is made; ``hubflow schema`` shows
it as ``"fingerprint": false``."""


HASHED_UNLESS_DEFAULT: dict[str, Any] = {"fingerprint": "unless default"}
"""Mark a field that changes the result but was added after fingerprints existed: it enters the
fingerprint only when it differs from its default, so adding it re-runs nothing that was cached
(``resources.num_machines``)."""


def unhashed_field(*args: Any, **kwargs: Any) -> Any:
    """``Field(*args, **kwargs)`` marked :data:`UNHASHED`."""
    return Field(*args, json_schema_extra=UNHASHED, **kwargs)


SINGLE_OUTPUT = "output"
"""The name of a stage's output when it declares ``output:`` rather than ``outputs:``."""

_STAGE_NAME = r"^[A-Za-z0-9][A-Za-z0-9_-]*$"
MAX_STAGE_NAME = 100
"""Stage names become folder names (work, resume and log folders, ``NAME-<fingerprint>``)."""


class Resources(BaseModel):
    """How the stage's process is launched."""

    model_config = ConfigDict(extra="forbid")

    num_processes: int = Field(
        1,
        ge=1,
        description="Processes to launch ON EACH MACHINE (accelerate launch for >1); the world size is "
        "num_processes × num_machines.",
    )
    num_machines: int = Field(
        1,
        ge=1,
        description="Machines (nodes) of a multi-node run, each running num_processes processes "
        "(`accelerate launch --num_machines N --machine_rank i`). `launcher: local`: every machine rank "
        "runs on this host over 127.0.0.1 (testing, single-host multi-node); `launcher: ray` does not "
        "run multi-node stages yet (refused when the manifest loads). Default: the accelerate config's num_machines, else 1. "
        "See docs/scale-out.md.",
        json_schema_extra=HASHED_UNLESS_DEFAULT,
    )
    main_process_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="The TCP port of global rank 0 (`--main_process_port`) when several processes train. "
        "Default: the accelerate config's main_process_port, else a free port picked at launch (two DDP "
        "stages side by side never share one).",
        json_schema_extra=UNHASHED,
    )
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = Field(
        "auto", description="Mixed precision; 'auto' picks bf16 only where the hardware runs it fast."
    )
    accelerate_config: str | None = Field(
        None,
        description="Path (relative to the manifest) of an accelerate config file (DDP, FSDP, DeepSpeed).",
    )
    cpu: bool = Field(False, description="Force CPU even where an accelerator exists.")
    threads: int | Literal["auto"] = Field(
        "auto",
        description="CPU threads torch uses in the stage's process; `auto`: the cores no other process is "
        "using when the stage starts (hubflow/launch/threads.py, measured in BENCHMARKS.md). A performance "
        "knob: it may change float rounding, never what is computed.",
        json_schema_extra=UNHASHED,
    )
    cpus: int = Field(
        1,
        ge=1,
        description="CPU slots of `hubflow run --jobs N` this stage takes while it runs (never more than N "
        "are in use); with `threads: auto` beside other stages, also its torch threads. With `launcher: "
        "ray`: the CPUs its Ray task reserves on the cluster (it then takes one local slot).",
        json_schema_extra=UNHASHED,
    )
    gpus: int = Field(
        0,
        ge=0,
        description="GPUs reserved for this stage while it runs: it sees exactly those (CUDA_VISIBLE_DEVICES). "
        "0: none reserved; the stage sees what the machine shows `hubflow run`. With `launcher: ray`: the "
        "GPUs its Ray task reserves (Ray sets CUDA_VISIBLE_DEVICES on the node).",
        json_schema_extra=UNHASHED,
    )
    peak_flops: float | None = Field(
        None,
        description="Peak FLOP/s of one process's device, for MFU; detected when unset.",
        json_schema_extra=UNHASHED,
    )
    timeout_minutes: float | None = Field(
        None, gt=0, description="Kill the stage after this many minutes.", json_schema_extra=UNHASHED
    )
    launcher: Literal["local", "ray"] = Field(
        "local",
        description="Where the stage's process runs: `local` (a process on this machine) or `ray` (a Ray "
        "task on any node of the cluster named by the manifest's `cluster.address` or RAY_ADDRESS; "
        "see docs/scale-out.md). Where it runs never changes what it computes.",
        json_schema_extra=UNHASHED,
    )
    memory_gb: float | None = Field(
        None,
        gt=0,
        description="`launcher: ray`: memory (GiB) the Ray task reserves (Ray's `memory`; default none).",
        json_schema_extra=UNHASHED,
    )


class StageConfig(BaseModel):
    """Fields every stage has. Kind modules subclass it and add their own."""

    model_config = ConfigDict(extra="forbid")

    OUTPUT_TYPES: ClassVar[dict[str, str]] = {}
    """Repo type each named output must have; empty means any."""
    REQUIRED_OUTPUTS: ClassVar[frozenset[str] | None] = None
    """Outputs a manifest must name; None means every one of OUTPUT_TYPES (a kind
    whose outputs are chosen by the manifest sets a subset, e.g. frozenset())."""
    POLICY_OUTPUT: ClassVar[str | None] = None
    """The output that is a model a user runs (a policy, a fine-tuned LM), if any: after a run, hubflow
    shows how to load the last such output (``stages.lib.published.load_stage_model``)."""
    ALLOW_EMPTY_OUTPUT: ClassVar[bool] = False
    """Whether a run that writes no file into an output folder is a valid result. False (the
    default): such a run fails and publishes nothing, since a commit holding only the card
    is almost always a bug in the stage."""

    name: str = Field(
        ...,
        pattern=_STAGE_NAME,
        max_length=MAX_STAGE_NAME,
        description="Unique stage name; other stages use it as an input.",
        json_schema_extra=UNHASHED,
    )
    kind: str = Field(..., description="Which stage module runs this stage.")
    description: str | None = Field(
        None, description="Free text shown in the card and in `hubflow graph`.", json_schema_extra=UNHASHED
    )
    inputs: dict[str, str] = Field(
        default_factory=dict,
        description=(
            "Input name -> a stage name (its output at the revision it produced), "
            "STAGE.OUTPUT (one of several outputs), STAGE@LABEL / STAGE.OUTPUT@LABEL (one of its "
            "intermediate revisions: a checkpoint step-N, a round round-K), or an external ref "
            "model:NS/NAME[@REV] / dataset:NS/NAME[@REV]. Hashed as the exact revisions they resolve to."
        ),
        json_schema_extra=UNHASHED,
    )
    output: str | None = Field(
        None,
        description="The repo this stage publishes to, e.g. dataset:demo/clean.",
        json_schema_extra=UNHASHED,
    )
    outputs: dict[str, str] | None = Field(
        None,
        description="Several named output repos, for stages that publish more than one artifact.",
        json_schema_extra=UNHASHED,
    )
    resources: Resources = Field(default_factory=Resources, description="Processes and precision.")

    @field_validator("inputs")
    @classmethod
    def _check_inputs(cls, value: dict[str, str]) -> dict[str, str]:
        for key, target in value.items():
            if not isinstance(target, str) or not target:
                raise ValueError(f"input {key!r} must be a stage name or a ref")
            if looks_like_ref(target):
                try:
                    parse_ref(target)
                except RefError as exc:
                    raise ValueError(f"input {key!r}: {exc.message}") from exc
        return value

    @field_validator("output")
    @classmethod
    def _check_output(cls, value: str | None) -> str | None:
        if value is not None:
            cls._check_output_repo("output", value)
        return value

    @field_validator("outputs")
    @classmethod
    def _check_named_outputs(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        for out_name, text in (value or {}).items():
            if not out_name.isidentifier():
                raise ValueError(f"output name {out_name!r} must be an identifier (letters, digits, '_')")
            cls._check_output_repo(out_name, text)
        if value is not None and not value:
            raise ValueError(
                f"name at least one output{': ' + ', '.join(cls.OUTPUT_TYPES) if cls.OUTPUT_TYPES else ''}"
            )
        if value is not None and cls.OUTPUT_TYPES:
            required = (
                cls.REQUIRED_OUTPUTS if cls.REQUIRED_OUTPUTS is not None else frozenset(cls.OUTPUT_TYPES)
            )
            missing = sorted(required - set(value))
            if missing:
                raise ValueError(f"this kind needs outputs {missing}")
        return value

    @classmethod
    def _check_output_repo(cls, out_name: str, text: str) -> None:
        try:
            repo = parse_repo(text)
        except RefError as exc:
            raise ValueError(exc.message) from exc
        if cls.OUTPUT_TYPES and out_name == SINGLE_OUTPUT and SINGLE_OUTPUT not in cls.OUTPUT_TYPES:
            raise ValueError(
                f"this kind publishes named outputs: write `outputs:` with some of {sorted(cls.OUTPUT_TYPES)}"
            )
        if cls.OUTPUT_TYPES and out_name not in cls.OUTPUT_TYPES:
            raise ValueError(
                f"this kind has no output named {out_name!r}; it publishes {sorted(cls.OUTPUT_TYPES)}"
            )
        want = cls.OUTPUT_TYPES.get(out_name)
        if want and repo.repo_type != want:
            raise ValueError(f"{out_name} must be a {want} repo ({want}:NS/NAME), got {text!r}")

    @model_validator(mode="after")
    def _check_outputs(self) -> StageConfig:
        if (self.output is None) == (self.outputs is None):
            raise ValueError("a stage needs exactly one of `output:` (one repo) or `outputs:` (named repos)")
        if self.output is not None and self.OUTPUT_TYPES and set(self.OUTPUT_TYPES) != {SINGLE_OUTPUT}:
            raise ValueError(
                f"this kind publishes several outputs: write `outputs:` with {sorted(self.OUTPUT_TYPES)}"
            )
        return self

    def revision_problem(self, output: str, label: str) -> str | None:
        """Why this stage cannot publish revision ``label`` of ``output`` (an intermediate result a later
        stage reads as ``STAGE@LABEL``), or None when it does or may. Checked when the manifest loads; a
        kind that publishes revisions (checkpoints, rounds) overrides it."""
        return f"stage {self.name!r} (kind {self.kind}) publishes no intermediate revisions, only its final result"

    def output_texts(self) -> dict[str, str]:
        if self.outputs is not None:
            return dict(self.outputs)
        return {SINGLE_OUTPUT: self.output} if self.output is not None else {}

    def output_repos(self) -> dict[str, Any]:
        """Output name -> :class:`~hubflow.refs.RepoRef`."""
        return {k: parse_repo(v) for k, v in self.output_texts().items()}

    def settings(self) -> dict[str, Any]:
        """The config with defaults filled, less every field marked :data:`UNHASHED` (at any depth):
        what the fingerprint hashes. Inputs enter the fingerprint as their resolved revisions."""
        return _hashed(self, self.model_dump(mode="json"))

    @classmethod
    def unhashed_fields(cls) -> list[str]:
        """Dotted paths of the fields marked :data:`UNHASHED`, nested models included (``resources.timeout_minutes``)."""
        return sorted(_unhashed_paths(cls, ""))


def is_hashed(info: FieldInfo) -> bool:
    extra = info.json_schema_extra
    return not (isinstance(extra, dict) and extra.get("fingerprint") is False)


def _hashed_if_default(info: FieldInfo) -> bool:
    extra = info.json_schema_extra
    return isinstance(extra, dict) and extra.get("fingerprint") == HASHED_UNLESS_DEFAULT["fingerprint"]


def _hashed(model: BaseModel, dumped: Any) -> Any:
    """``dumped`` (``model.model_dump(mode="json")``) less the UNHASHED fields of ``model`` and of the
    models nested in it (fields, lists and dicts of models)."""
    if not isinstance(dumped, dict):
        return dumped
    out: dict[str, Any] = {}
    for name, info in type(model).model_fields.items():
        if name not in dumped or not is_hashed(info):
            continue
        if _hashed_if_default(info) and getattr(model, name) == info.default:
            continue
        out[name] = _hashed_value(getattr(model, name), dumped[name])
    return out


def _hashed_value(value: Any, dumped: Any) -> Any:
    if isinstance(value, BaseModel):
        return _hashed(value, dumped)
    if isinstance(value, (list, tuple)) and isinstance(dumped, list):
        return [_hashed_value(v, d) for v, d in zip(value, dumped, strict=True)]
    if isinstance(value, dict) and isinstance(dumped, dict):
        return {k: _hashed_value(value[k], dumped[k]) if k in value else dumped[k] for k in dumped}
    return dumped


def _model_types(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation can hold (through unions, lists, dicts, Annotated)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in get_args(annotation) for m in _model_types(arg)]


def _unhashed_paths(cls: type[BaseModel], prefix: str, seen: frozenset[type] = frozenset()) -> set[str]:
    out: set[str] = set()
    for name, info in cls.model_fields.items():
        path = f"{prefix}{name}"
        if not is_hashed(info):
            out.add(path)
            continue
        for sub in _model_types(info.annotation):
            if sub not in seen:
                out |= _unhashed_paths(sub, f"{path}.", seen | {cls})
    return out


@dataclass
class Revision:
    """An intermediate result a stage publishes besides its final output: an online-DPO round, a
    training checkpoint. The runner commits each, in order, to the output repo's ``checkpoints``
    branch, tagged ``LABEL-<fingerprint[:12]>``; ``main`` still gets one commit per completed stage."""

    output: str
    """The output name (``output`` for a single-output stage)."""
    label: str
    """Short and unique within the stage, e.g. ``round-1`` or ``step-400`` (letters, digits, '-', '_', '.')."""
    folder: Path
    """A complete folder the stage wrote under ``ctx.resume_dir`` (it survives a crash: a resumed run
    keeps the finished rounds)."""
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class StageResult:
    """What ``run`` returns: metrics for metrics.json and the card, plus card text."""

    metrics: dict[str, Any] = field(default_factory=dict)
    card_sections: dict[str, str] = field(default_factory=dict)
    """Extra markdown sections for the output cards: title -> body."""
    card_metadata: dict[str, Any] = field(default_factory=dict)
    """Extra YAML metadata for the output cards (e.g. base_model_relation)."""
    images: dict[str, str] = field(default_factory=dict)
    """Card images: alt text -> path of a PNG the stage wrote inside an output folder (relative to it)."""
    revisions: list[Revision] = field(default_factory=list)
    """Intermediate results (rounds, checkpoints) published before the final commit, in order."""


PROGRESS_KEYS = (
    "loss",
    "eval_loss",
    "reward",
    "gold_reward",
    "kl",
    "accuracy",
    "learning_rate",
    "tokens_per_s",
)
"""Values a progress line shows, in this order, when a step logs them."""


class Progress:
    """One compact line per logged training step: ``step 40/450 · loss 1.2345 · 3.1 steps/s · 2m10s left``."""

    def __init__(self, min_seconds: float = 1.0) -> None:
        self.min_seconds = min_seconds
        self.start: tuple[float, int] | None = None
        self.last_print = 0.0

    def line(
        self, step: int, total: int | None, values: dict[str, Any], now: float | None = None
    ) -> str | None:
        import time

        now = time.monotonic() if now is None else now
        if self.start is None:
            self.start = (now, step)
        last = total is not None and step >= total
        first = now == self.start[0]
        if not (first or last or now - self.last_print >= self.min_seconds):
            return None
        self.last_print = now
        parts = [f"step {step}/{total}" if total else f"step {step}"]
        extra = [k for k in values if k not in PROGRESS_KEYS and k.endswith(("loss", "accuracy"))][:3]
        for key in (*PROGRESS_KEYS, *extra):
            value = values.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                if key == "tokens_per_s":
                    parts.append(f"{value:,.0f} tok/s")
                else:
                    parts.append(f"{key} {value:.3g}" if key == "learning_rate" else f"{key} {value:.4f}")
        elapsed, done = now - self.start[0], step - self.start[1]
        if done > 0 and elapsed > 0:
            rate = done / elapsed
            parts.append(f"{rate:.2f} steps/s" if rate < 10 else f"{rate:.0f} steps/s")
            if total:
                parts.append(f"{_duration(max(0, total - step) / rate)} left")
        return " · ".join(parts)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


@dataclass
class StageContext:
    """Everything a stage's ``run`` may touch.

    ``inputs``: input name -> read-only folder holding that input's snapshot.
    ``outputs``: output name -> empty staging folder; what the stage writes there
    becomes one commit. ``output`` is the single output's folder (``outputs["output"]``).
    ``resume_dir``: survives a failed run of the same fingerprint; removed once published.
    ``base_dir``: the manifest's folder (relative paths in configs are relative to it).
    """

    stage_name: str
    fingerprint: str
    inputs: dict[str, Path]
    outputs: dict[str, Path]
    resume_dir: Path
    base_dir: Path
    log_dir: Path
    input_refs: dict[str, str] = field(default_factory=dict)
    """Input name -> the exact ref (with commit id) it was materialised from."""
    resources: Resources = field(default_factory=Resources)
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("hubflow.stage"))
    trackers: Trackers | None = None
    """TensorBoard and the ``report_to`` trackers each logged step also goes to (set by the worker on the
    main process of a training stage; hubflow/trackers.py)."""
    _progress: Progress = field(default_factory=lambda: Progress(), repr=False)

    @property
    def output(self) -> Path:
        if SINGLE_OUTPUT not in self.outputs:
            raise KeyError(
                f"stage {self.stage_name!r} has named outputs {sorted(self.outputs)}; use ctx.outputs[...]"
            )
        return self.outputs[SINGLE_OUTPUT]

    def log_metrics(self, step: int | None = None, *, total: int | None = None, **values: Any) -> None:
        """Append one record to ``log_dir/metrics.jsonl`` (the training curve, published with the output)
        and, for a training step, send its numbers to :attr:`trackers` (TensorBoard events, published as
        ``runs/``) and print one progress line: step / total, the main values, the rate and the time
        left (at most one line a second, the first and the last always)."""
        self._record(step, values)
        if step is not None:
            line = self._progress.line(step, total, values)
            if line:
                print(line, flush=True)

    def replay_metrics(self, records: Sequence[dict[str, Any]]) -> None:
        """Log again, without progress lines, the records a resumed run keeps from the attempt it resumes
        (a kind that keeps its own history in the resume folder): the curve this attempt publishes, in
        ``metrics.jsonl`` and ``runs/``, is then the whole run's."""
        for record in records:
            values = dict(record)
            step = values.pop("step", None)
            self._record(step if isinstance(step, int) else None, values)

    def _record(self, step: int | None, values: dict[str, Any]) -> None:
        record = {"step": step, **values} if step is not None else dict(values)
        with open(self.log_dir / "metrics.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, default=str) + "\n")
        if step is not None and self.trackers is not None:
            self.trackers.log(values, step)
