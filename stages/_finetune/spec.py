"""Config pieces shared by the ``sft`` and ``instruct`` stages (pydantic only: importing stays light).

- :class:`FinetuneConfig`: the training fields both kinds have (optimiser, schedule,
  batch, length, evaluation and checkpoint cadence) plus ``peft`` and ``regularization``;
- ``peft``: one of :class:`FullSpec`, :class:`LoraSpec`, :class:`QloraSpec`,
  :class:`AdapterSpec`, :class:`PrefixSpec` (seed §2.4), chosen by ``method``;
- ``regularization.ewc``: :class:`EwcSpec` (seed §2.3).
"""

from __future__ import annotations

import string
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from hubflow.stage import StageConfig

MODEL_INPUT = "model"
TOKENIZER_INPUT = "tokenizer"


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- PEFT methods (seed §2.4) ---------------------------------------------------


class FullSpec(_Spec):
    """Full fine-tuning: every weight trains; the output is a whole model."""

    method: Literal["full"] = Field("full", description="Train every parameter; publish a full model.")


class LoraSpec(_Spec):
    """LoRA (seed §2.4.1): h = W0 x + (alpha/r) B A x, A ~ N(0, s^2), B = 0."""

    method: Literal["lora"] = Field(..., description="Low-rank adapters on chosen Linear layers (peft LoRA).")
    r: int = Field(16, ge=1, description="Rank r of B (d_out x r) and A (r x d_in).")
    alpha: float = Field(32.0, gt=0, description="Scaling alpha: the update is (alpha / r) B A.")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the LoRA branch's input.")
    target_modules: list[str] | Literal["all-linear"] | None = Field(
        None,
        description="Linear layer names to adapt (e.g. [q_proj, v_proj]), `all-linear`, or null for peft's "
        "default for the architecture (W_Q and W_V in Llama).",
    )
    bias: Literal["none", "all", "lora_only"] = Field("none", description="Which biases train (peft `bias`).")


class QloraSpec(LoraSpec):
    """QLoRA (seed §2.4.2): the frozen base in 4-bit NF4 with double quantisation, LoRA on top."""

    method: Literal["qlora"] = Field(..., description="LoRA over a 4-bit quantised base (bitsandbytes).")
    quant_type: Literal["nf4", "fp4"] = Field("nf4", description="4-bit data type of the frozen weights.")
    double_quant: bool = Field(
        True, description="Quantise the quantisation constants too (double quantisation)."
    )


class AdapterSpec(_Spec):
    """Bottleneck adapters (seed §2.4.3): Adapter(h) = h + f(h W_down) W_up, after attention and feed-forward."""

    method: Literal["adapter"] = Field(..., description="Houlsby-style bottleneck adapters (hubflow's own).")
    bottleneck: int = Field(16, ge=1, description="Bottleneck width r: W_down is d x r, W_up is r x d.")
    activation: Literal["relu", "gelu", "silu"] = Field("gelu", description="The nonlinearity f.")
    positions: list[Literal["attention", "mlp"]] = Field(
        default_factory=lambda: ["attention", "mlp"],
        min_length=1,
        description="Sub-layers whose output goes through an adapter (before the residual add).",
    )

    @field_validator("positions")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"positions must not repeat, got {value}")
        return value


class PrefixSpec(_Spec):
    """Prefix tuning (seed §2.4.4): learned key/value vectors prepended at every attention layer."""

    method: Literal["prefix"] = Field(..., description="Prefix tuning (peft PrefixTuningConfig).")
    num_virtual_tokens: int = Field(16, ge=1, description="L_p: prefix vectors per layer.")
    prefix_projection: bool = Field(
        False,
        description="Reparameterise the prefix through an MLP while training (peft `prefix_projection`).",
    )
    encoder_hidden_size: int | None = Field(
        None, ge=1, description="Hidden size of that MLP (default: the model's hidden size)."
    )


PeftSpec = Annotated[
    FullSpec | LoraSpec | QloraSpec | AdapterSpec | PrefixSpec, Field(discriminator="method")
]


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


class FinetuneConfig(StageConfig):
    """Fields both ``sft`` and ``instruct`` have; each kind adds its data fields."""

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
    learning_rate: float = Field(2e-4, gt=0, description="Peak learning rate (AdamW).")
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = Field(
        "cosine", description="Learning-rate schedule after warmup."
    )
    warmup_ratio: float = Field(0.03, ge=0.0, lt=1.0, description="Fraction of the steps spent warming up.")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay (0 as in seed §2.5).")
    max_grad_norm: float = Field(1.0, ge=0.0, description="Gradient clipping norm (0 disables).")
    batch_size: int = Field(8, ge=1, description="Sequences per process per micro-batch.")
    gradient_accumulation_steps: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    max_steps: int | None = Field(
        None, ge=1, description="Optimizer steps (T_ft); when null, `epochs` passes over the data."
    )
    epochs: float = Field(1.0, gt=0, description="Passes over the training rows when max_steps is null.")
    optim: str | None = Field(
        None,
        description="transformers optimizer name (default adamw_torch; paged_adamw_32bit for qlora on a GPU, "
        "seed §2.4.2).",
    )
    seed: int = Field(0, description="Seed of initialisation, shuffling and sampling.")
    logging_steps: int = Field(10, ge=1, description="Log the training loss every this many steps.")
    eval_steps: int | None = Field(
        None, ge=1, description="Evaluate every this many steps (always once before and once after training)."
    )
    eval_examples: int = Field(64, ge=1, description="At most this many evaluation rows per evaluation set.")
    save_steps: int | None = Field(
        500, ge=1, description="Checkpoint into the resume folder every this many steps (null: never)."
    )

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
        out = {MODEL_INPUT, TOKENIZER_INPUT}
        if self.regularization.ewc is not None:
            out.add(self.regularization.ewc.data_input)
        return out

    def training_inputs(self) -> list[str]:
        if self.datasets is not None:
            return list(self.datasets)
        return [n for n in self.inputs if n not in self.reserved_inputs()]

    def peft_dict(self) -> dict[str, Any]:
        return self.peft.model_dump()
