"""The ``dpo`` stage's config (pydantic only) and the ``reference_logprobs`` stage it implies."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

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

    kind: Literal["dpo"] = Field(
        ..., description="Direct preference optimisation (seed §4.6–4.7) or IPO (§4.8.1) on preference pairs."
    )
    loss: Literal["sigmoid", "ipo"] = Field(
        "sigmoid",
        description="`sigmoid`: DPO, −log σ(β·Δ); `ipo`: (Δ − 1/(2β))², a squared loss with target margin "
        "1/(2β). Δ = (log π_θ(y_w) − log π_ref(y_w)) − (log π_θ(y_l) − log π_ref(y_l)).",
    )
    beta: float = Field(
        0.1,
        gt=0,
        description="β: the KL strength of DPO (typically 0.1–0.5), IPO's regularisation τ (target 1/(2β)).",
    )
    log_ratio: Literal["sum", "mean"] | None = Field(
        None,
        description="How a completion's log-ratio log π_θ(y|x) − log π_ref(y|x) is formed: `sum` over its tokens "
        "(the seed, OpenRLHF) or the per-token `mean` (TRL's IPO). Default: sum for sigmoid, mean for ipo "
        "(as TRL 1.16); it changes IPO's objective at the same β.",
    )
    sft_weight: float = Field(
        0.0,
        ge=0,
        description="α of an added NLL term on the chosen responses, the usual remedy for chosen log-probs "
        "falling while the margin grows (TRL's `loss_type: [sigmoid, sft]` with `loss_weights: [1, α]`; RPO): "
        "L = L_DPO + α·(−Σ log π_θ(y_w|x) / Σ |y_w|), the token mean over the batch's chosen responses.",
    )
    precompute_reference: bool = precompute_reference_field()

    def allowed_inputs(self) -> tuple[str, ...]:
        return (*super().allowed_inputs(), REFERENCE_INPUT, REFERENCE_LOGPROBS_INPUT)

    def ratio(self) -> Literal["sum", "mean"]:
        """The log-ratio mode in effect (``log_ratio`` or the loss's default)."""
        if self.log_ratio is not None:
            return self.log_ratio
        return "mean" if self.loss == "ipo" else "sum"


def reference_stage(cfg: Config) -> dict[str, Any]:
    """The manifest dict of the ``reference_logprobs`` stage a dpo stage implies (pure): named
    ``{cfg.name}-reference``, output ``dataset:NS/NAME-reference-logprobs`` derived from the dpo output
    repo, its ``model`` the dpo stage's ``reference`` (default: its ``model``), ``base`` / ``data`` /
    ``tokenizer`` and the tokenisation settings copied. β, the learning rate and the epochs are not in it,
    so changing them leaves that stage up to date."""
    return reference_stage_manifest(cfg, format="pairs")
