"""``reinforce_pp``: REINFORCE++ (alignment notes, "Critic-free methods"): the ``ppo`` loop without a critic.

The per-token rewards are PPO's (k1 KL penalty on every token, the score on the last real token), the
advantage is the discounted return-to-go normalised over every real token of the batch
(``stages.ppo.advantages.reinforce_pp``), the loss is PPO's clipped surrogate (no value loss). Same
inputs, outputs and fields as ``ppo`` (docs/stages/ppo.md), with ``advantage_estimator`` fixed and no
critic loaded. Imports pydantic only.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from hubflow.stage import StageContext, StageResult
from stages.ppo import LIBRARIES, VERSION, describe, fingerprint_extra
from stages.ppo.config import Config as PpoConfig

__all__ = ["LIBRARIES", "VERSION", "Config", "describe", "fingerprint_extra", "run"]


class Config(PpoConfig):
    """PPO's config with the REINFORCE++ estimator (no critic)."""

    kind: Literal["reinforce_pp"] = Field(..., description="REINFORCE++: PPO without a critic.")
    advantage_estimator: Literal["reinforce_pp"] = Field(
        "reinforce_pp", description="Fixed: returns normalised over the batch, no critic."
    )


def run(ctx: StageContext, cfg: Config) -> StageResult:
    from stages.ppo.loop import train

    return train(ctx, cfg)
