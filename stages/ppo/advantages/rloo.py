"""RLOO: REINFORCE with a leave-one-out baseline (alignment notes, "Critic-free methods").

k samples per prompt; the baseline of sample i is the mean reward of the other k − 1 samples of its
prompt, so it is unbiased (it does not depend on sample i). The advantage is the same on every token.
"""

from __future__ import annotations

from torch import Tensor

from stages.lib.masked import masked_sum
from stages.ppo.advantages.common import check_inputs, group_index, group_sum, per_token, reject_values


def rloo(
    rewards: Tensor,
    values: Tensor | None,
    mask: Tensor,
    *,
    gamma: float = 1.0,
    lam: float = 1.0,
    group_ids: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """(advantages, returns), both [B, T], 0 at masked positions, without gradient.

    R_i = Σ_t rewards[i, t] over real tokens: with PPO's per-token rewards that is the score minus
    β·(sequence-summed k1 KL), as TRL's RLOO does (β 0.05 there). A_i = R_i − (Σ_{j∈g} R_j − R_i)/(k − 1),
    broadcast to every real token; returns = R_i on every real token. ``group_ids`` [B]: one integer per
    row, equal for the samples of one prompt, ≥ 2 per group (groups may differ in size). ``values`` must
    be None; ``gamma`` and ``lam`` are accepted for the common signature and unused.
    """
    reject_values(values, "rloo")
    rewards, _, mask = check_inputs(rewards, mask, gamma=gamma, lam=lam)
    inverse, size = group_index(group_ids, rewards.shape[0], "rloo")
    score = masked_sum(rewards, mask, dim=1)
    baseline = (group_sum(score, inverse) - score) / (size - 1)
    adv = score - baseline
    return per_token(adv, mask), per_token(score, mask)
