"""Generalized Advantage Estimation (seed §4.4; §4.5 step 5.2, "Compute GAE advantages" and "returns")."""

from __future__ import annotations

from torch import Tensor

from stages.lib.masked import masked_whiten
from stages.ppo.advantages.common import check_inputs, next_real, reverse_discounted_sum


def gae(
    rewards: Tensor,
    values: Tensor | None,
    mask: Tensor,
    *,
    gamma: float,
    lam: float,
    group_ids: Tensor | None = None,
    whiten: bool = False,
) -> tuple[Tensor, Tensor]:
    """Per-token advantages and returns, both [B, T], 0 at masked positions, without gradient.

    - ``rewards``: per-token rewards r_t (``rewards.per_token_rewards``: −β·KL_t, plus the score at the
      last real token); ``values``: the critic's V_t at each response token; ``mask``: real tokens.
    - δ_t = r_t + γ·V_{t+1} − V_t, with V = 0 after the last real token (the episode ends there);
    - Â_t = Σ_l (γλ)^l δ_{t+l}, computed backwards as Â_t = δ_t + γλ·Â_{t+1};
    - returns G_t = Â_t + V_t, from the advantages BEFORE any whitening (the critic's targets).

    ``whiten=True`` whitens the advantages over the real tokens of the whole batch (alignment notes, PPO
    detail 10); by default the caller does it with ``stages.lib.masked.masked_whiten``. λ = 1 gives
    Monte-Carlo returns − values. Classic settings: γ = 1 with λ = 0.95 (TRL) or 1 (OpenRLHF).
    ``group_ids`` is accepted for the common estimator signature and unused.
    """
    if values is None:
        raise ValueError("values: gae needs the critic's values [B, T]")
    rewards, values, mask = check_inputs(rewards, mask, values=values, gamma=gamma, lam=lam)
    assert values is not None
    deltas = (rewards + gamma * next_real(values, mask) - values).masked_fill(~mask, 0.0)
    advantages = reverse_discounted_sum(deltas, mask, gamma * lam)
    returns = (advantages + values).masked_fill(~mask, 0.0)
    if whiten:
        advantages = masked_whiten(advantages, mask)
    return advantages, returns
