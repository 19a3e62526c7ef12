"""The ``kto`` stage's config (pydantic only) and the ``reference_logprobs`` stage it implies."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from stages.lib.preference_config import (
    REFERENCE_INPUT,
    REFERENCE_LOGPROBS_INPUT,
    PreferenceConfig,
    precompute_reference_field,
    reference_stage_manifest,
)


class Config(PreferenceConfig):
    OUTPUT_TYPES: ClassVar[dict[str, str]] = {"output": "model"}
    POLICY_OUTPUT: ClassVar[str | None] = "output"

    kind: Literal["kto"] = Field(
        ..., description="Kahneman–Tversky optimisation on pointwise feedback (seed §4.8.2)."
    )
    beta: float = Field(0.1, gt=0, description="β of v(x, y) = σ(β(r − z_ref)) (TRL's default 0.1).")
    desirable_weight: float = Field(
        1.0, gt=0, description="w(1): the weight of a desirable row's loss (λ_gain); see the balance warning."
    )
    undesirable_weight: float = Field(
        1.0,
        gt=0,
        description="w(0): the weight of an undesirable row's loss (λ_loss > λ_gain is loss aversion).",
    )
    precompute_reference: bool = precompute_reference_field()

    @model_validator(mode="after")
    def _check_kto(self) -> Config:
        if self.per_device_train_batch_size < 2:
            raise ValueError(
                "per_device_train_batch_size must be at least 2 for kto: the KL baseline z_ref scores each row's "
                "prompt with another row's completion from the same per-device batch, and a batch of 1 has no "
                "other row (z_ref would equal the row's own reward); set per_device_train_batch_size: 2 or more"
            )
        return self

    def allowed_inputs(self) -> tuple[str, ...]:
        return (*super().allowed_inputs(), REFERENCE_INPUT, REFERENCE_LOGPROBS_INPUT)


def reference_stage(cfg: Config) -> dict[str, Any]:
    """The manifest dict of the pointwise ``reference_logprobs`` stage a kto stage implies (pure): as
    ``stages.dpo.config.reference_stage``, plus ``kl_batch_size`` = this stage's
    per_device_train_batch_size (the mismatched KL pairs are formed within those groups)."""
    return reference_stage_manifest(
        cfg, format="pointwise", extra={"kl_batch_size": cfg.per_device_train_batch_size}
    )
