"""The ``pretrain`` stage's config (pydantic only): objective, architecture, size and the training
vocabulary of ``stages.lib.training``."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from hubflow.stage import UNHASHED
from stages.lib.architecture import Architecture, RopeScaling
from stages.lib.training import (
    AdamBeta2,
    BatchSize,
    CheckpointFields,
    LearningRate,
    SaveSteps,
    TrainingConfig,
    WarmupSteps,
    WeightDecay,
)
from stages.lib.weights_file import WEIGHTS_INPUT

TOKENIZER_INPUT = "tokenizer"
SIZE_FIELDS = ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size")

__all__ = ["SIZE_FIELDS", "TOKENIZER_INPUT", "Architecture", "Config", "Denoiser", "RopeScaling"]


class Denoiser(BaseModel):
    """One UL2 denoiser (seed §1.2.4)."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["R", "S", "X"] = Field(
        ..., description="R: short spans; S: prefix-LM; X: long / dense spans."
    )
    weight: float = Field(..., gt=0, description="Sampling weight among the denoisers.")
    noise_density: float = Field(0.15, gt=0, lt=1, description="Fraction of tokens corrupted (R and X).")
    mean_span_length: float = Field(3.0, ge=1, description="Mean corrupted span length (R and X).")


def _default_denoisers() -> list[Denoiser]:
    return [
        Denoiser(mode="R", weight=0.4, noise_density=0.15, mean_span_length=3.0),
        Denoiser(mode="S", weight=0.2),
        Denoiser(mode="X", weight=0.4, noise_density=0.5, mean_span_length=12.0),
    ]


class Config(CheckpointFields, TrainingConfig):
    OUTPUT_TYPES: ClassVar[dict[str, str]] = {"output": "model"}
    POLICY_OUTPUT: ClassVar[str | None] = "output"

    kind: Literal["pretrain"] = Field(..., description="Pretrain a model from scratch.")
    objective: Literal["causal", "mlm", "span_corruption", "ul2"] = Field(
        "causal", description="causal (Llama), mlm (BERT), span_corruption (T5), ul2 (T5 + R/S/X denoisers)."
    )
    architecture: Architecture = Field(default_factory=Architecture, description="The model's shape.")
    compute_budget: float | None = Field(
        None,
        gt=0,
        description="FLOPs; picks N and tokens by Chinchilla (D≈20N, C=6ND) instead of the size fields "
        "and max_steps/tokens.",
    )
    max_steps: int | None = Field(None, ge=1, description="Optimizer steps (or set tokens / compute_budget).")
    tokens: int | None = Field(
        None, ge=1, description="Training tokens; steps = ceil(tokens / tokens per step)."
    )
    per_device_train_batch_size: BatchSize = 8
    learning_rate: LearningRate = 3e-4
    lr_scheduler_type: Literal["cosine"] = Field(
        "cosine",
        description="Linear warmup, then cosine decay to `min_lr` (seed §1.6); the only schedule here.",
    )
    min_lr: float | None = Field(
        None, ge=0, description="Learning rate at the end of the cosine; default learning_rate/10."
    )
    warmup_steps: WarmupSteps = 100
    weight_decay: WeightDecay = 0.1
    adam_beta2: AdamBeta2 = 0.95
    save_steps: SaveSteps = 200
    text_column: str = Field(
        "text", min_length=1, description="Column of the data inputs holding the documents."
    )
    eval_batches: int = Field(
        8, ge=1, description="Micro-batches (per process) of the test split per evaluation."
    )
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in backward (less memory)."
    )
    mlm_probability: float = Field(0.15, gt=0, lt=1, description="mlm: fraction of tokens chosen (80/10/10).")
    noise_density: float = Field(
        0.15, gt=0, lt=1, description="span_corruption: fraction of tokens corrupted."
    )
    mean_span_length: float = Field(3.0, ge=1, description="span_corruption: mean corrupted span length.")
    denoisers: list[Denoiser] = Field(
        default_factory=_default_denoisers, min_length=1, description="ul2: the denoiser mixture."
    )
    throughput_tokens_per_s: float | None = Field(
        None,
        gt=0,
        description="Plan hint: tokens/s for the time estimate; by default the last run of the same shape on "
        "this machine.",
        json_schema_extra=UNHASHED,
    )

    @model_validator(mode="after")
    def _check_pretrain(self) -> Config:
        data = self.data_inputs()
        if TOKENIZER_INPUT not in self.inputs or not data:
            raise ValueError(
                "a pretrain stage needs a `tokenizer` input and at least one dataset input, "
                "e.g. `inputs: {tokenizer: TOKENIZER_STAGE, data: CORPUS_STAGE}`"
            )
        given = [k for k in ("max_steps", "tokens", "compute_budget") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                f"set exactly one of max_steps, tokens or compute_budget (got {given or 'none'})"
            )
        arch = self.architecture
        if self.compute_budget is not None:
            fixed = sorted(set(SIZE_FIELDS) & arch.model_fields_set)
            if fixed:
                raise ValueError(
                    f"compute_budget picks the model size; remove architecture.{', architecture.'.join(fixed)} "
                    "(or drop compute_budget and size the model yourself)"
                )
        else:
            if arch.hidden_size % arch.num_heads:
                raise ValueError(
                    f"architecture.hidden_size {arch.hidden_size} must be a multiple of num_heads {arch.num_heads}"
                )
            kv = arch.num_kv_heads or arch.num_heads
            if arch.num_heads % kv:
                raise ValueError(
                    f"architecture.num_heads {arch.num_heads} must be a multiple of num_kv_heads {kv}"
                )
        if self.objective != "causal" and (
            arch.num_kv_heads not in (None, arch.num_heads) or arch.rope_scaling
        ):
            raise ValueError(
                f"num_kv_heads and rope_scaling are Llama settings; objective {self.objective!r} "
                "builds a model without them: remove them"
            )
        if self.objective in ("span_corruption", "ul2") and not arch.tie_embeddings:
            raise ValueError(
                "transformers' T5 always shares its embedding and output head: remove tie_embeddings: false"
            )
        self._check_positions()
        if self.min_lr is not None and self.min_lr > self.learning_rate:
            raise ValueError(f"min_lr {self.min_lr} is above learning_rate {self.learning_rate}")
        return self

    def _check_positions(self) -> None:
        arch = self.architecture
        if self.objective == "span_corruption" or self.objective == "ul2":
            return  # T5's relative position buckets have no length limit
        limit = arch.position_limit()
        what = "RoPE" if self.objective == "causal" else "the position-embedding table"
        if arch.context_length > limit:
            raise ValueError(
                f"architecture.context_length {arch.context_length} exceeds max_position_embeddings {limit} "
                f"({what} is set up for {limit} positions); raise max_position_embeddings, add rope_scaling, "
                "or lower context_length"
            )
        rs = arch.rope_scaling
        if rs is not None:
            original = rs.original_max_position_embeddings or limit
            reach = int(original * rs.factor)
            if arch.context_length > reach:
                raise ValueError(
                    f"architecture.context_length {arch.context_length} exceeds what rope_scaling reaches: "
                    f"original_max_position_embeddings {original} × factor {rs.factor:g} = {reach}; "
                    "raise the factor or lower context_length"
                )

    def data_inputs(self) -> list[str]:
        """The dataset inputs (all but the tokenizer and the domain weights), sorted."""
        return sorted(k for k in self.inputs if k not in (TOKENIZER_INPUT, WEIGHTS_INPUT))

    def weighted(self) -> bool:
        """Whether examples are drawn per data input by the weights of a `domain_weights` input."""
        return WEIGHTS_INPUT in self.inputs
