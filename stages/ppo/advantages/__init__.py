"""Advantage estimators behind one signature (seed §4.4 GAE; §4.5 step 5.2; alignment notes, critic-free).

Every estimator is called as::

    advantages, returns = ESTIMATORS[name](rewards, values, mask, gamma=..., lam=..., group_ids=...)

- ``rewards`` [B, T]: per-token rewards of the response tokens (``stages.ppo.rewards.per_token_rewards``);
- ``values`` [B, T] or None: the critic's values; only estimators in ``NEEDS_CRITIC`` take them, the
  others raise ValueError when given any;
- ``mask`` [B, T]: real response tokens (left/right padding and holes are all fine, see ``common``);
  every row needs at least one (ValueError otherwise: an empty response would lose its score);
- ``gamma``, ``lam``: discount and GAE trace decay, accepted by all, used where meaningful;
- ``group_ids`` [B] or None: which prompt each row was sampled from; needed by ``NEEDS_GROUPS``.

Both outputs are [B, T], 0 at masked positions, and carry no gradient. ``returns`` are the critic's
targets for ``gae`` and logging material for the others. Only ``reinforce_pp`` and ``grpo`` normalise
their advantages; for ``gae`` whiten them in the loop (``masked_whiten``) or pass ``whiten=True``.
"""

from __future__ import annotations

from typing import Protocol

from torch import Tensor

from stages.ppo.advantages.gae import gae
from stages.ppo.advantages.grpo import grpo
from stages.ppo.advantages.reinforce_pp import reinforce_pp
from stages.ppo.advantages.rloo import rloo


class AdvantageEstimator(Protocol):
    """The common signature: (rewards, values, mask, *, gamma, lam, group_ids) -> (advantages, returns)."""

    def __call__(
        self,
        rewards: Tensor,
        values: Tensor | None,
        mask: Tensor,
        *,
        gamma: float,
        lam: float,
        group_ids: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]: ...


ESTIMATORS: dict[str, AdvantageEstimator] = {
    "gae": gae,
    "reinforce_pp": reinforce_pp,
    "grpo": grpo,
    "rloo": rloo,
}
NEEDS_CRITIC: frozenset[str] = frozenset({"gae"})
"""Estimators that take a critic's values (so the loop loads and trains a critic)."""
NEEDS_GROUPS: frozenset[str] = frozenset({"grpo", "rloo"})
"""Estimators that need several samples per prompt and their ``group_ids``."""


def get_estimator(name: str) -> AdvantageEstimator:
    """The estimator called ``name``; ValueError listing the known names otherwise."""
    try:
        return ESTIMATORS[name]
    except KeyError:
        raise ValueError(f"advantage estimator {name!r} is unknown; known: {sorted(ESTIMATORS)}") from None


__all__ = [
    "ESTIMATORS",
    "NEEDS_CRITIC",
    "NEEDS_GROUPS",
    "AdvantageEstimator",
    "gae",
    "get_estimator",
    "grpo",
    "reinforce_pp",
    "rloo",
]
