"""The ``domain_weights`` stage's config (pydantic only): the proxy's shape, the two runs, DoReMi's
step size η and smoothing c."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from hubflow.stage import StageConfig
from stages.lib.architecture import Architecture
from stages.lib.training import (
    AdamBeta1,
    AdamBeta2,
    AdamEpsilon,
    LearningRate,
    LoggingSteps,
    MaxGradNorm,
    ReportTo,
    Seed,
    WeightDecay,
)

TOKENIZER_INPUT = "tokenizer"
WEIGHTS_JSON = "weights.json"
PLOT_FILE = "domain_weights.png"


def _small() -> Architecture:
    return Architecture(hidden_size=128, num_layers=2, num_heads=4, context_length=128)


class Config(StageConfig):
    """DoReMi (Xie et al. 2023): a reference model on a fixed mix, then a Group-DRO proxy whose domain
    weights follow the excess loss; publishes the weights averaged over the proxy's steps."""

    OUTPUT_TYPES: ClassVar[dict[str, str]] = {"output": "dataset"}

    kind: Literal["domain_weights"] = Field(..., description="DoReMi domain weights.")
    architecture: Architecture = Field(
        default_factory=_small,
        description="Shape of the reference and of the proxy model (both Llama decoders, the same size).",
    )
    text_column: str = Field(
        "text", min_length=1, description="Column of every domain input holding the text."
    )
    max_steps: int = Field(500, ge=1, description="T: steps of the proxy run (Algorithm 1's loop).")
    reference_steps: int | None = Field(
        None, ge=1, description="Steps of the reference run; default max_steps (the paper trains both alike)."
    )
    per_domain_batch_size: int = Field(
        8,
        ge=1,
        description="Sequences of each domain in every proxy batch (the minibatch is drawn uniformly over the "
        "domains, Algorithm 1); the reference run takes the same total, split by reference_weights.",
    )
    reference_weights: dict[str, float] | None = Field(
        None,
        description="α_ref: the reference model's domain mix (normalised); default uniform over the domains.",
    )
    eta: float = Field(1.0, description="η: step size of the exponentiated-gradient update of α (paper: 1).")
    smoothing: float = Field(
        1e-3, ge=0.0, le=1.0, description="c: α ← (1−c)·α + c·u with u uniform (paper: 1e-3)."
    )
    learning_rate: LearningRate = 1e-3
    warmup_steps: int = Field(20, ge=0, description="Linear warmup steps of each run (then cosine decay).")
    min_lr: float | None = Field(
        None, ge=0, description="Learning rate at the end of the cosine; default learning_rate/10."
    )
    weight_decay: WeightDecay = 0.0
    adam_beta1: AdamBeta1 = 0.9
    adam_beta2: AdamBeta2 = 0.95
    adam_epsilon: AdamEpsilon = 1e-8
    max_grad_norm: MaxGradNorm = 1.0
    seed: Seed = 0
    logging_steps: LoggingSteps = 10
    report_to: ReportTo = []

    @model_validator(mode="after")
    def _check(self) -> Config:
        if self.eta <= 0:
            raise ValueError(
                f"eta must be > 0 (got {self.eta}): it is DoReMi's step size η in α ← α·exp(η·λ); "
                "the paper uses eta: 1"
            )
        if TOKENIZER_INPUT not in self.inputs:
            raise ValueError(
                "a domain_weights stage needs a `tokenizer` input and one dataset input per domain, e.g. "
                "`inputs: {tokenizer: TOKENIZER_STAGE, web: WEB_STAGE, code: CODE_STAGE}`"
            )
        domains = self.domains()
        if len(domains) < 2:
            raise ValueError(
                f"domain weights need at least two domain inputs besides `tokenizer` (got {domains or 'none'}); "
                "add one dataset input per domain"
            )
        if self.reference_weights is not None:
            rw = self.reference_weights
            if set(rw) != set(domains):
                raise ValueError(
                    f"reference_weights must give a weight to each domain input: domains {sorted(domains)}, "
                    f"weights for {sorted(rw)}"
                )
            if any(w < 0 for w in rw.values()) or not any(w > 0 for w in rw.values()):
                raise ValueError("reference_weights must be >= 0 with at least one > 0")
        arch = self.architecture
        if arch.hidden_size % arch.num_heads:
            raise ValueError(
                f"architecture.hidden_size {arch.hidden_size} must be a multiple of num_heads {arch.num_heads}"
            )
        if arch.context_length > arch.position_limit():
            raise ValueError(
                f"architecture.context_length {arch.context_length} exceeds max_position_embeddings "
                f"{arch.position_limit()}"
            )
        if self.min_lr is not None and self.min_lr > self.learning_rate:
            raise ValueError(f"min_lr {self.min_lr} is above learning_rate {self.learning_rate}")
        return self

    def domains(self) -> list[str]:
        """The domain inputs, in manifest order (every input but the tokenizer)."""
        return [k for k in self.inputs if k != TOKENIZER_INPUT]

    def reference_mix(self) -> dict[str, float]:
        """α_ref, normalised."""
        domains = self.domains()
        if self.reference_weights is None:
            return {d: 1.0 / len(domains) for d in domains}
        total = sum(self.reference_weights.values())
        return {d: self.reference_weights[d] / total for d in domains}

    def total_reference_steps(self) -> int:
        return self.reference_steps if self.reference_steps is not None else self.max_steps
