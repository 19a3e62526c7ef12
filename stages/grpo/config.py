"""The ``grpo`` stage's config (pydantic only): the shared REINFORCE-family fields plus GRPO's own, with
TRL 1.16 ``GRPOConfig``'s names and defaults (β = 0: no reference loaded; ``scale_rewards: group``;
``loss_type: dapo``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from stages.lib.reinforce.config import Beta, NumGenerations, ReinforceConfig


class Config(ReinforceConfig):
    kind: Literal["grpo"] = Field(
        ...,
        description="Group Relative Policy Optimization through TRL's GRPOTrainer (seed §4.2, REINFORCE family).",
    )
    num_generations: NumGenerations = 8
    beta: Beta = 0.0
    scale_rewards: Literal["group", "batch", "none"] = Field(
        "group",
        description="Advantage scale (TRL `scale_rewards`): A = (r − group mean) / (std + 1e-4) with the std of "
        "the prompt's group (`group`), of the whole generation batch (`batch`), or no division (`none`, Dr. GRPO).",
    )
    loss_type: Literal["dapo", "grpo", "bnpo", "dr_grpo"] = Field(
        "dapo",
        description="How the per-token clipped losses are averaged (TRL `loss_type`): `dapo` over every completion "
        "token of the generation batch; `grpo` per sequence then over sequences; `bnpo` over the micro-batch's "
        "tokens; `dr_grpo` divided by (sequences × max_completion_length).",
    )
