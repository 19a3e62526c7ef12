"""The one training vocabulary of every training kind (pydantic only: imported at validate time).

Names and meanings are those of ``transformers.TrainingArguments`` and TRL's configs, so a manifest
reads like the TRL script a user would otherwise write: ``learning_rate``, ``lr_scheduler_type``,
``warmup_steps`` or ``warmup_ratio``, ``weight_decay``, ``adam_beta1/2``, ``adam_epsilon``,
``max_grad_norm`` (0 turns clipping off), ``per_device_train_batch_size``,
``gradient_accumulation_steps``, ``max_steps``, ``num_train_epochs``, ``optim``, ``seed``,
``logging_steps``, ``save_steps``, ``eval_steps``.

Each field is defined once here as an ``Annotated`` type (constraints and description). A kind
whose default differs re-declares the field with the same type and its own default::

    class Config(TrainingConfig):
        learning_rate: LearningRate = 3e-4

Old names (pretrain's ``lr``, ``grad_accum``, ``log_every``…, sft's ``batch_size``, ``epochs``…) fail
validation with a message naming the new field.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from hubflow.stage import UNHASHED, StageConfig

LearningRate = Annotated[float, Field(gt=0, description="Peak learning rate (AdamW).")]
SchedulerType = Annotated[
    Literal["cosine", "linear", "constant", "constant_with_warmup", "cosine_with_min_lr"],
    Field(description="Learning-rate schedule after warmup (transformers' `lr_scheduler_type`)."),
]
WarmupSteps = Annotated[
    int | None, Field(ge=0, description="Linear warmup steps (capped at max_steps); or set warmup_ratio.")
]
WarmupRatio = Annotated[
    float | None,
    Field(ge=0.0, lt=1.0, description="Warmup as a fraction of the total steps; or set warmup_steps."),
]
WeightDecay = Annotated[float, Field(ge=0.0, description="AdamW decoupled weight decay.")]
AdamBeta1 = Annotated[float, Field(gt=0, lt=1, description="AdamW β₁.")]
AdamBeta2 = Annotated[float, Field(gt=0, lt=1, description="AdamW β₂.")]
AdamEpsilon = Annotated[float, Field(gt=0, description="AdamW ε.")]
MaxGradNorm = Annotated[
    float,
    Field(ge=0.0, description="Clip the global gradient norm to this (seed §1.6 step 3.6); 0 turns it off."),
]
BatchSize = Annotated[int, Field(ge=1, description="Sequences per process per micro-batch.")]
GradientAccumulation = Annotated[int, Field(ge=1, description="Micro-batches per optimizer step.")]
MaxSteps = Annotated[
    int | None, Field(ge=1, description="Optimizer steps; when null, num_train_epochs decides.")
]
Epochs = Annotated[float, Field(gt=0, description="Passes over the training data when max_steps is null.")]
Optim = Annotated[
    str | None,
    Field(
        description="transformers optimizer name (`optim`); default adamw_torch (paged_adamw_32bit for qlora on a GPU)."
    ),
]
Seed = Annotated[int, Field(description="Seed of initialisation, shuffling and sampling.")]
LoggingSteps = Annotated[
    int,
    Field(ge=1, description="Log the training metrics every this many steps.", json_schema_extra=UNHASHED),
]
SaveSteps = Annotated[
    int | None,
    Field(
        ge=1,
        description="Checkpoint into the resume folder every this many steps (null: never; a crash restarts). "
        "Resuming gives the weights of an uninterrupted run, so this is not part of the fingerprint.",
        json_schema_extra=UNHASHED,
    ),
]
EvalSteps = Annotated[
    int | None,
    Field(ge=1, description="Evaluate every this many steps (null: before and after training only)."),
]

RENAMED: dict[str, str] = {
    "lr": "learning_rate",
    "lr_scheduler": "lr_scheduler_type",
    "grad_accum": "gradient_accumulation_steps",
    "batch_size": "per_device_train_batch_size",
    "epochs": "num_train_epochs",
    "adam_eps": "adam_epsilon",
    "log_every": "logging_steps",
    "checkpoint_every": "save_steps",
    "eval_every": "eval_steps",
}
"""Old field names -> the TrainingArguments name that replaced them."""
_ZERO_MEANT_NEVER = ("checkpoint_every", "eval_every")


def renamed_field_message(old: str, value: Any) -> str:
    new = RENAMED[old]
    text = f"`{old}` is now `{new}` (the transformers TrainingArguments name): rename it"
    if old in _ZERO_MEANT_NEVER and value == 0:
        text += f"; `{old}: 0` (never) is written `{new}: null`"
    return text


class TrainingConfig(StageConfig):
    """The fields every training kind has (pretrain, sft, instruct, reward, dpo, ppo...)."""

    learning_rate: LearningRate = 2e-4
    lr_scheduler_type: SchedulerType = "cosine"
    warmup_steps: WarmupSteps = None
    warmup_ratio: WarmupRatio = None
    weight_decay: WeightDecay = 0.0
    adam_beta1: AdamBeta1 = 0.9
    adam_beta2: AdamBeta2 = 0.999
    adam_epsilon: AdamEpsilon = 1e-8
    max_grad_norm: MaxGradNorm = 1.0
    per_device_train_batch_size: BatchSize = 8
    gradient_accumulation_steps: GradientAccumulation = 1
    max_steps: MaxSteps = None
    seed: Seed = 0
    logging_steps: LoggingSteps = 10
    save_steps: SaveSteps = 500
    eval_steps: EvalSteps = None

    @model_validator(mode="before")
    @classmethod
    def _renamed_fields(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for old in RENAMED:
                if old in data and old not in cls.model_fields:
                    raise ValueError(renamed_field_message(old, data[old]))
            if "max_grad_norm" in data and data["max_grad_norm"] is None:
                raise ValueError("max_grad_norm: null no longer turns clipping off: write `max_grad_norm: 0`")
        return data

    @model_validator(mode="after")
    def _one_warmup(self) -> TrainingConfig:
        given = {"warmup_steps", "warmup_ratio"} & self.model_fields_set
        if len(given) == 2 and self.warmup_steps is not None and self.warmup_ratio is not None:
            raise ValueError("set warmup_steps or warmup_ratio, not both")
        if given == {"warmup_steps"}:
            self.warmup_ratio = None  # the manifest's warmup replaces the kind's default one
        elif given == {"warmup_ratio"}:
            self.warmup_steps = None
        return self

    def warmup_for(self, total_steps: int) -> int:
        """Warmup steps for a run of ``total_steps`` optimizer steps."""
        if self.warmup_ratio is not None:
            return min(math.ceil(self.warmup_ratio * total_steps), total_steps)  # as transformers 5
        return min(self.warmup_steps or 0, total_steps)


class TrainerConfig(TrainingConfig):
    """Training through a transformers / TRL ``Trainer``: passes over a dataset, any optimizer."""

    num_train_epochs: Epochs = 1.0
    optim: Optim = None

    def trainer_kwargs(self) -> dict[str, Any]:
        """These fields as ``TrainingArguments`` / TRL config keyword arguments."""
        out: dict[str, Any] = {
            "learning_rate": self.learning_rate,
            "lr_scheduler_type": self.lr_scheduler_type,
            "weight_decay": self.weight_decay,
            "adam_beta1": self.adam_beta1,
            "adam_beta2": self.adam_beta2,
            "adam_epsilon": self.adam_epsilon,
            "max_grad_norm": self.max_grad_norm,
            "per_device_train_batch_size": self.per_device_train_batch_size,
            "gradient_accumulation_steps": self.gradient_accumulation_steps,
            "max_steps": self.max_steps if self.max_steps is not None else -1,
            "num_train_epochs": self.num_train_epochs,
            "seed": self.seed,
            "data_seed": self.seed,
            "logging_steps": self.logging_steps,
            "save_strategy": "steps" if self.save_steps else "no",
            "save_steps": self.save_steps or 500,
        }
        # transformers 5 takes a float below 1 in warmup_steps as a ratio of the total steps
        out["warmup_steps"] = self.warmup_ratio if self.warmup_ratio is not None else (self.warmup_steps or 0)
        return out
