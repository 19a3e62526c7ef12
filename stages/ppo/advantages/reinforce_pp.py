"""REINFORCE++: PPO without a critic (alignment notes, "Critic-free methods"; seed §4.5 step 5.2).

The per-token rewards are PPO's (k1 KL penalty on every token, score at the last real token); the
advantage is the discounted return-to-go, normalised over the real tokens of the whole batch instead of
having a learned baseline subtracted. Everything else (rollout, clipped surrogate) is PPO's.
"""

from __future__ import annotations

from torch import Tensor

from stages.lib.masked import masked_whiten
from stages.ppo.advantages.common import check_inputs, reject_values, reverse_discounted_sum


def reinforce_pp(
    rewards: Tensor,
    values: Tensor | None,
    mask: Tensor,
    *,
    gamma: float = 1.0,
    lam: float = 1.0,
    group_ids: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """(advantages, returns), both [B, T], 0 at masked positions, without gradient.

    returns G_t = Σ_l γ^l r_{t+l} over the real tokens of the row; advantages = masked_whiten(G, mask)
    (mean 0, unbiased std 1 over every real token of the batch), so the batch needs ≥ 2 real tokens.
    ``values`` must be None; ``lam`` and ``group_ids`` are accepted for the common signature and unused.
    """
    reject_values(values, "reinforce_pp")
    rewards, _, mask = check_inputs(rewards, mask, gamma=gamma, lam=lam)
    returns = reverse_discounted_sum(rewards, mask, gamma)
    return masked_whiten(returns, mask), returns
