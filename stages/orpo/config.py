"""The ``orpo`` stage's config (pydantic only)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import ConfigDict, Field

from stages.lib.preference_config import PreferenceConfig


class Config(PreferenceConfig):
    OUTPUT_TYPES: ClassVar[dict[str, str]] = {"output": "model"}
    POLICY_OUTPUT: ClassVar[str | None] = "output"
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    kind: Literal["orpo"] = Field(
        ...,
        description="Odds-ratio preference optimisation: SFT and alignment in one loss, no reference (§4.8.3).",
    )
    lambda_: float = Field(
        0.1,
        alias="lambda",
        ge=0,
        description="λ: the weight of the odds-ratio term L_OR beside the SFT term (TRL calls it `beta`; 0.1).",
    )
    nll_tokens: Literal["completion", "prompt_and_completion"] = Field(
        "completion",
        description="Tokens of the chosen sequence the SFT term L_SFT(y_w) averages over: the `completion`'s "
        "(the tokens a policy produces; the default) or, as TRL's ORPOTrainer, `prompt_and_completion`.",
    )
