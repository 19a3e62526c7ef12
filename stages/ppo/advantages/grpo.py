"""GRPO's group-relative advantage (alignment notes, "Critic-free methods").

G samples per prompt; each sample's advantage is its reward standardised within its group, the same on
every token of the response. No critic, no return-to-go.
"""

from __future__ import annotations

from torch import Tensor

from stages.lib.masked import masked_sum
from stages.ppo.advantages.common import check_inputs, group_index, group_sum, per_token, reject_values


def grpo(
    rewards: Tensor,
    values: Tensor | None,
    mask: Tensor,
    *,
    gamma: float = 1.0,
    lam: float = 1.0,
    group_ids: Tensor | None = None,
    eps: float = 1e-4,
) -> tuple[Tensor, Tensor]:
    """(advantages, returns), both [B, T], 0 at masked positions, without gradient.

    R_i = Σ_t rewards[i, t] over real tokens (the score, minus β·Σ KL_t if the rewards carry a KL
    penalty; GRPO proper has β = 0 here and puts KL in the loss); A_i = (R_i − mean_g R) / (std_g R + eps)
    with the unbiased std of the sample's group (TRL ``scale_rewards="group"``), broadcast to every real
    token; returns = R_i on every real token. ``group_ids`` [B]: one integer per row, equal for the
    samples of one prompt, ≥ 2 samples per group. ``values`` must be None; ``gamma`` and ``lam`` are
    accepted for the common signature and unused (the advantage is per sequence).
    """
    reject_values(values, "grpo")
    rewards, _, mask = check_inputs(rewards, mask, gamma=gamma, lam=lam)
    inverse, size = group_index(group_ids, rewards.shape[0], "grpo")
    score = masked_sum(rewards, mask, dim=1)
    mean = group_sum(score, inverse) / size
    std = (group_sum((score - mean).pow(2), inverse) / (size - 1)).sqrt()
    adv = (score - mean) / (std + eps)
    return per_token(adv, mask), per_token(score, mask)
