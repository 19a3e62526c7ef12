"""Config fields shared by the offline preference kinds ``dpo``, ``kto`` and ``orpo`` (pydantic only:
imported at validate / plan time, never torch).

:class:`PreferenceConfig` is the one training vocabulary (``stages.lib.training.TrainingConfig``) plus
the ``peft`` block, the tokenisation settings TRL's preference trainers have (``max_length``,
``max_prompt_length``) and the data splits. :func:`reference_stage_manifest` writes the manifest entry
of the auxiliary ``reference_logprobs`` stage a ``dpo`` or ``kto`` stage implies (seed §4.7 step 2,
"PRECOMPUTE"): the engine adds it so the reference pass is an artifact of its own.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from hubflow.refs import parse_repo
from hubflow.stage import unhashed_field
from stages.lib.peft_spec import FullSpec, PeftSpec
from stages.lib.training import (
    BatchSize,
    CheckpointFields,
    Epochs,
    LearningRate,
    SchedulerType,
    TrainingConfig,
)

MODEL_INPUT = "model"
BASE_INPUT = "base"
DATA_INPUT = "data"
TOKENIZER_INPUT = "tokenizer"
REFERENCE_INPUT = "reference"
REFERENCE_LOGPROBS_INPUT = "reference_logprobs"

SPLIT_PATTERN = r"^[A-Za-z0-9_.-]+$"


def max_length_field() -> Any:
    return Field(
        1024,
        ge=4,
        description="Longest prompt ⊕ completion in tokens (TRL's `max_length`): the completion is cut to fit; a "
        "row whose prompt alone fills it is dropped (counted in the metrics).",
    )


def max_prompt_length_field() -> Any:
    return Field(
        None,
        ge=1,
        description="Keep only the last this many prompt tokens (null: the whole prompt).",
    )


class PreferenceConfig(CheckpointFields, TrainingConfig):
    """The fields ``dpo``, ``kto`` and ``orpo`` share. Defaults follow TRL 1.16's DPOConfig
    (learning rate 1e-6, linear schedule, batch 8, max_length 1024, dropout off)."""

    learning_rate: LearningRate = 1e-6
    lr_scheduler_type: SchedulerType = "linear"
    num_train_epochs: Epochs = 1.0
    per_device_train_batch_size: BatchSize = 8
    peft: PeftSpec = Field(
        default_factory=FullSpec,
        description="`{method: full}` (default: every weight trains), `lora`, `qlora`, `adapter` or `prefix`. "
        "With an adapter repo as `model` the adapter's own method continues training it.",
    )
    max_length: int = max_length_field()
    max_prompt_length: int | None = max_prompt_length_field()
    split: str = Field("train", pattern=SPLIT_PATTERN, description="Split the training rows come from.")
    eval_split: str | None = Field(
        "test",
        pattern=SPLIT_PATTERN,
        description="Held-out split scored before and after training (skipped where the dataset has none; "
        "null disables it).",
    )
    eval_examples: int = Field(512, ge=1, description="Score at most this many held-out rows (the first).")
    disable_dropout: bool = Field(
        True,
        description="Set every dropout probability to 0 (TRL's `disable_dropout`): the policy's log-probs at "
        "step 0 then equal the reference's, and the loss is deterministic.",
    )
    reference_batch_size: int | None = unhashed_field(
        None,
        ge=1,
        description="Rows per forward of the reference pass (default per_device_train_batch_size); padding "
        "does not change a log-prob, so this is not part of the fingerprint.",
    )

    @model_validator(mode="after")
    def _check_preference_inputs(self) -> PreferenceConfig:
        for name in (MODEL_INPUT, DATA_INPUT):
            if name not in self.inputs:
                raise ValueError(
                    f"this kind needs a `{name}` input ("
                    + (
                        "the SFT policy: a model or an adapter with `base`"
                        if name == MODEL_INPUT
                        else "the dataset"
                    )
                    + f"); inputs are {sorted(self.inputs)}"
                )
        allowed = self.allowed_inputs()
        unknown = sorted(set(self.inputs) - set(allowed))
        if unknown:
            raise ValueError(f"unknown input(s) {unknown}: this kind reads {list(allowed)}")
        if REFERENCE_INPUT in self.inputs and REFERENCE_LOGPROBS_INPUT in self.inputs:
            raise ValueError(
                "inputs `reference` and `reference_logprobs` both name the reference: the log-probs already "
                "come from one model; drop `reference` (give it to the reference_logprobs stage as `model`)"
            )
        return self

    def allowed_inputs(self) -> tuple[str, ...]:
        return (MODEL_INPUT, BASE_INPUT, DATA_INPUT, TOKENIZER_INPUT)


def derived_repo(output: str | None, suffix: str, repo_type: str = "dataset") -> str:
    """``model:NS/NAME`` -> ``dataset:NS/NAME-SUFFIX``."""
    if not output:
        raise ValueError("the stage has no `output:` repo to derive the reference artifact's name from")
    repo = parse_repo(output)
    return f"{repo_type}:{repo.repo_id}-{suffix}"


def precompute_reference_field() -> Any:
    return unhashed_field(
        True,
        description="Compute the reference log-probabilities in a stage of their own (`NAME-reference`, kind "
        "reference_logprobs), added by hubflow: an artifact reused when only this stage's settings (beta, the "
        "learning rate, epochs...) change. false: this stage computes them itself at its start. Either way the "
        "same numbers train the policy.",
    )


def auxiliary_reference(cfg: Any, stage: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The ``auxiliary_stages`` of a dpo / kto stage: its reference_logprobs stage, unless the manifest
    gives the input itself or ``precompute_reference`` is off."""
    if not cfg.precompute_reference or REFERENCE_LOGPROBS_INPUT in cfg.inputs:
        return []
    return [(REFERENCE_LOGPROBS_INPUT, stage)]


def reference_stage_manifest(cfg: Any, *, format: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The manifest dict of the ``reference_logprobs`` stage a ``dpo`` / ``kto`` stage ``cfg`` implies:
    named ``{cfg.name}-reference``, publishing ``dataset:NS/NAME-reference-logprobs`` beside the stage's
    output; its ``model`` is the stage's ``reference`` input when given, else its ``model`` (the policy's
    starting point); ``base``, ``data``, ``tokenizer`` and the tokenisation settings are copied. Pure."""
    inputs = cfg.inputs
    ref_inputs: dict[str, str] = {MODEL_INPUT: inputs.get(REFERENCE_INPUT, inputs[MODEL_INPUT])}
    for name in (BASE_INPUT, DATA_INPUT, TOKENIZER_INPUT):
        if name in inputs:
            ref_inputs[name] = inputs[name]
    out: dict[str, Any] = {
        "name": f"{cfg.name}-reference",
        "kind": "reference_logprobs",
        "description": f"Reference log-probabilities of stage {cfg.name!r} (seed §4.7 step 2)",
        "inputs": ref_inputs,
        "format": format,
        "max_length": cfg.max_length,
        "max_prompt_length": cfg.max_prompt_length,
        "split": cfg.split,
        "eval_split": cfg.eval_split,
        "output": derived_repo(cfg.output, "reference-logprobs"),
    }
    if cfg.reference_batch_size is not None:
        out["batch_size"] = cfg.reference_batch_size
    out.update(extra or {})
    return out
