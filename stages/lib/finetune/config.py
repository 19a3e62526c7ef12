"""Config pieces shared by the ``sft`` and ``instruct`` stages (pydantic only: importing stays light).

- :class:`FinetuneConfig`: the training vocabulary (``stages.lib.training``) plus data, evaluation,
  ``peft`` (``stages.lib.peft_spec``) and ``regularization``;
- ``regularization.ewc``: :class:`EwcSpec` (seed §2.3);
- :class:`Template`: instruction phrasings over ``{instruction}`` and ``{input}``.
"""

from __future__ import annotations

import string
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from stages.lib.peft_spec import FullSpec, PeftSpec
from stages.lib.training import CheckpointFields, TrainerConfig, WarmupRatio

MODEL_INPUT = "model"
BASE_INPUT = "base"
"""With an adapter as `model`, the model it was trained on (the adapter is merged into it first)."""
TOKENIZER_INPUT = "tokenizer"


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- regularisation (seed §2.3) ---------------------------------------------------


class EwcSpec(_Spec):
    """Elastic weight consolidation: L = L_task + lambda/2 sum_i F_i (theta_i - theta*_i)^2."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    lambda_: float = Field(..., alias="lambda", ge=0.0, description="lambda: strength of the penalty.")
    fisher_samples: int = Field(
        64,
        ge=1,
        description="Documents of `data_input` whose per-sample gradients estimate the diagonal Fisher.",
    )
    data_input: str = Field(
        ..., min_length=1, description="The input (a dataset) standing for the pretraining distribution."
    )
    text_column: str = Field(
        "text", min_length=1, description="Column of `data_input` holding the documents."
    )
    max_length: int = Field(256, ge=2, description="Documents are cut to this many tokens for the Fisher.")


class Regularization(_Spec):
    ewc: EwcSpec | None = Field(None, description="Elastic weight consolidation against forgetting.")


# --- instruction templates -------------------------------------------------------


def check_template(text: str, allowed: tuple[str, ...]) -> str:
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(text) if f is not None]
    except ValueError as exc:
        raise ValueError(f"template {text!r} is not a valid format string: {exc}") from exc
    bad = sorted({f for f in fields if f not in allowed})
    if bad:
        raise ValueError(
            f"template {text!r} uses {bad}; only {list(allowed)} exist (write {{{{ }}}} for braces)"
        )
    return text


class Template(_Spec):
    """One phrasing: rendered with Python str.format on {instruction} and {input}."""

    with_input: str = Field(
        ..., description="Used when the row's input is non-empty: {instruction} and {input}."
    )
    without_input: str = Field(..., description="Used when the row has no input: {instruction} only.")

    @field_validator("with_input")
    @classmethod
    def _with(cls, value: str) -> str:
        return check_template(value, ("instruction", "input"))

    @field_validator("without_input")
    @classmethod
    def _without(cls, value: str) -> str:
        return check_template(value, ("instruction",))

    def render(self, instruction: str, inp: str | None) -> str:
        if inp:
            return self.with_input.format(instruction=instruction, input=inp)
        return self.without_input.format(instruction=instruction)


ALPACA = Template(
    with_input=(
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
    ),
    without_input=(
        "Below is an instruction that describes a task. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n{instruction}\n\n### Response:\n"
    ),
)


# --- the shared training fields ---------------------------------------------------


class FinetuneConfig(CheckpointFields, TrainerConfig):
    """Fields both ``sft`` and ``instruct`` have (the training vocabulary of ``stages.lib.training``
    plus data, evaluation, ``peft`` and ``regularization``); each kind adds its data fields."""

    peft: PeftSpec = Field(
        default_factory=FullSpec,
        description="`{method: full}` (default), `lora`, `qlora`, `adapter` (bottleneck) or `prefix`, "
        "with the method's own fields.",
    )
    regularization: Regularization = Field(
        default_factory=Regularization,
        description="`{ewc: {lambda, fisher_samples, data_input}}` (seed §2.3).",
    )
    datasets: list[str] | None = Field(
        None,
        description="Input names of the training datasets (default: every input other than model, "
        "tokenizer and the EWC data).",
    )
    split: str = Field(
        "train", pattern=r"^[A-Za-z0-9_.-]+$", description="Split the training rows come from."
    )
    eval_split: str | None = Field(
        "test",
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="Split evaluated for loss (skipped where a dataset has none); null disables evaluation.",
    )
    chat_template: str | None = Field(
        None, description="A Jinja chat template replacing the tokenizer's (it is saved with the output)."
    )
    max_length: int = Field(
        512, ge=8, description="Sequences are cut to this many tokens (keeping the start)."
    )
    warmup_ratio: WarmupRatio = 0.03
    eval_examples: int = Field(64, ge=1, description="At most this many evaluation rows per evaluation set.")

    @model_validator(mode="after")
    def _check_inputs_for_finetune(self) -> FinetuneConfig:
        if MODEL_INPUT not in self.inputs:
            raise ValueError(
                f"this kind needs a `{MODEL_INPUT}` input (the base model); inputs are {sorted(self.inputs)}"
            )
        ewc = self.regularization.ewc
        if ewc is not None and ewc.data_input not in self.inputs:
            raise ValueError(
                f"regularization.ewc.data_input {ewc.data_input!r} is not an input; inputs are {sorted(self.inputs)}"
            )
        names = self.training_inputs()
        missing = [n for n in names if n not in self.inputs]
        if missing:
            raise ValueError(f"datasets {missing} are not inputs; inputs are {sorted(self.inputs)}")
        if not names:
            raise ValueError("no training dataset: add an input such as `data: STAGE_OR_REF`")
        if ewc is not None and ewc.data_input in names:
            raise ValueError(f"input {ewc.data_input!r} is both a training dataset and the EWC data")
        return self

    def reserved_inputs(self) -> set[str]:
        out = {MODEL_INPUT, BASE_INPUT, TOKENIZER_INPUT}
        if self.regularization.ewc is not None:
            out.add(self.regularization.ewc.data_input)
        return out

    def training_inputs(self) -> list[str]:
        if self.datasets is not None:
            return list(self.datasets)
        return [n for n in self.inputs if n not in self.reserved_inputs()]

    def peft_dict(self) -> dict[str, Any]:
        return self.peft.model_dump()
