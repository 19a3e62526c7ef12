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
import re
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

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
ReportTo = Annotated[
    list[Literal["tensorboard", "trackio", "mlflow", "wandb"]],
    Field(
        description="Also send the logged training steps to these trackers (accelerate's integrations), as "
        "transformers' `report_to`. TensorBoard events are always written and published as the output's "
        "`runs/` (listing `tensorboard` changes nothing); trackio and MLflow log to .hubflow/trackers/ unless "
        "TRACKIO_DIR / MLFLOW_TRACKING_URI say otherwise; wandb needs `wandb login`, WANDB_API_KEY or "
        "WANDB_MODE. Their packages are optional (`pip install trackio`...). See docs/metrics.md.",
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


CHECKPOINT_LABEL = re.compile(r"^step-([1-9][0-9]*)$")
"""A checkpoint revision's label: ``step-N``, N the optimizer steps done (a downstream input names it
``STAGE@step-N``)."""


def checkpoint_label(step: int) -> str:
    return f"step-{step}"


class CheckpointSpec(BaseModel):
    """Intermediate checkpoints published as revisions of the stage's model output."""

    model_config = ConfigDict(extra="forbid")

    every: int = Field(
        ...,
        ge=1,
        description="Publish a complete, loadable checkpoint (the files the final output has: the model or "
        "adapter and the tokenizer) every this many optimizer steps, as a commit on the output repo's "
        "`checkpoints` branch tagged `step-N-<fingerprint[:12]>`; a later stage reads one as `STAGE@step-N`.",
    )


class CheckpointFields(BaseModel):
    """``checkpoints: {every: K}``, for the training kinds that publish checkpoints as revisions (pretrain,
    sft, instruct, dpo, kto, orpo, ppo). List it FIRST among a Config's bases (``class Config(CheckpointFields,
    TrainingConfig)``) so its ``revision_problem`` is the one the engine calls.

    The field is part of the fingerprint: the revisions a stage publishes are part of its result (a stage
    reading ``train@step-400`` needs that commit to exist), so turning checkpoints on or changing ``every``
    re-runs the stage."""

    CHECKPOINT_OUTPUT: ClassVar[str] = "output"
    """The output whose checkpoints are published (ppo: ``policy``)."""

    checkpoints: CheckpointSpec | None = Field(
        None,
        description="Publish intermediate checkpoints as revisions (`{every: K}`); null (the default): only the "
        "final model. See docs/checkpoints.md.",
    )

    def planned_steps(self) -> int | None:
        """The optimizer steps the stage will run, when the config alone decides them (``max_steps``)."""
        return getattr(self, "max_steps", None)

    def checkpoint_steps(self, total: int) -> list[int]:
        """The steps of a run of ``total`` optimizer steps at which a checkpoint is published."""
        if self.checkpoints is None:
            return []
        return list(range(self.checkpoints.every, total + 1, self.checkpoints.every))

    def revision_problem(self, output: str, label: str) -> str | None:
        """Why this stage cannot publish revision ``label`` of ``output`` (None: it does, or may: a run that
        stops early or a step count known only at run time is checked when the input is resolved)."""
        name = getattr(self, "name", "?")
        if output != self.CHECKPOINT_OUTPUT:
            return f"stage {name!r} publishes checkpoints of its output {self.CHECKPOINT_OUTPUT!r} only"
        m = CHECKPOINT_LABEL.match(label)
        if m is None:
            return f"{label!r} is not a checkpoint label: they are written step-N (N optimizer steps done)"
        if self.checkpoints is None:
            return f"stage {name!r} publishes no checkpoints: give it `checkpoints: {{every: K}}` with K dividing {m[1]}"
        step, every = int(m[1]), self.checkpoints.every
        if step % every:
            lower, upper = step - step % every, step - step % every + every
            near = f"step-{lower} or step-{upper}" if lower else f"step-{upper}"
            return f"stage {name!r} publishes a checkpoint every {every} steps: step-{step} is not one (try {near})"
        total = self.planned_steps()
        if total is not None and step > total:
            return f"stage {name!r} trains {total} steps: there is no step-{step}"
        return None

    @model_validator(mode="after")
    def _checkpoints_fit(self) -> Any:
        total = self.planned_steps()
        if self.checkpoints is not None and total is not None and self.checkpoints.every > total:
            raise ValueError(
                f"checkpoints.every {self.checkpoints.every} is more than the {total} steps the stage trains: "
                "no checkpoint would be published; lower it or drop `checkpoints`"
            )
        return self


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
    report_to: ReportTo = []

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
