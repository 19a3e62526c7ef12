"""The ``rloo`` stage's config (pydantic only): the shared REINFORCE-family fields plus RLOO's own, with
TRL 1.16 ``RLOOConfig``'s names and defaults (``num_generations: 2``; β = 0.05, the sequence-summed k1 KL
subtracted from each reward)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from stages.lib.reinforce.config import Beta, NumGenerations, ReinforceConfig


class Config(ReinforceConfig):
    kind: Literal["rloo"] = Field(
        ..., description="REINFORCE Leave-One-Out through TRL's RLOOTrainer (seed §4.2, REINFORCE family)."
    )
    num_generations: NumGenerations = 2
    beta: Beta = 0.05
    normalize_advantages: bool = Field(
        False,
        description="Whiten the leave-one-out advantages over the generation batch (TRL `normalize_advantages`).",
    )
    reward_clip_range: tuple[float, float] | None = Field(
        None, description="Clip each reward to [min, max] before the KL penalty (TRL `reward_clip_range`)."
    )

    @field_validator("reward_clip_range")
    @classmethod
    def _ordered(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and not value[0] < value[1]:
            raise ValueError(f"reward_clip_range must be (min, max) with min < max, got {list(value)}")
        return value
