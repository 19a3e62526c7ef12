"""What the advantage estimators share: input checks, reverse scans over real tokens, per-group stats.

Trajectory convention (seed §4.5 step 5.2): a row of a [B, T] response tensor is one trajectory made of
its real tokens (``mask`` true) in order. Masked positions are skipped: they carry no reward, have no
value, and the discount γ counts real tokens only, so left padding, right padding and holes all give the
same numbers at the real tokens. After the last real token the episode has ended: V = 0 there.
"""

from __future__ import annotations

import torch
from torch import Tensor

from stages.lib.masked import validate_mask


def check_inputs(
    rewards: Tensor, mask: Tensor, *, values: Tensor | None = None, gamma: float, lam: float
) -> tuple[Tensor, Tensor | None, Tensor]:
    """(rewards, values, mask) detached, float32 or wider, bool mask; ValueError naming a bad argument."""
    if not isinstance(rewards, Tensor) or rewards.dim() != 2:
        raise ValueError(
            f"rewards must be a 2-D tensor [B, T], got {getattr(rewards, 'shape', type(rewards))}"
        )
    mask = validate_mask(rewards, mask, x_name="rewards")
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must be in [0, 1], got {gamma}")
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must be in [0, 1], got {lam}")
    empty = ~mask.any(dim=1)
    if bool(empty.any()):
        raise ValueError(f"mask: rows {empty.nonzero().flatten().tolist()} have no real token")
    rewards = _float(rewards).masked_fill(~mask, 0.0)
    if values is not None:
        if not isinstance(values, Tensor) or values.shape != rewards.shape:
            raise ValueError(
                f"values must have the shape of rewards {tuple(rewards.shape)}, "
                f"got {getattr(values, 'shape', type(values))}"
            )
        values = _float(values).masked_fill(~mask, 0.0)
    return rewards, values, mask


def reject_values(values: Tensor | None, name: str) -> None:
    """Critic-free estimators refuse a critic's values: a critic computed for nothing is a wiring bug."""
    if values is not None:
        raise ValueError(f"values: {name} is critic-free, pass values=None (and load no critic)")


def _float(x: Tensor) -> Tensor:
    x = x.detach()
    if not x.is_floating_point() or x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    return x


def next_real(x: Tensor, mask: Tensor) -> Tensor:
    """For each position, ``x`` at the next real position of its row, or 0 after the last real token."""
    carry = x.new_zeros(x.shape[0])
    out = []
    for t in reversed(range(x.shape[1])):
        out.append(carry)
        carry = torch.where(mask[:, t], x[:, t], carry)
    return torch.stack(out[::-1], dim=1)


def reverse_discounted_sum(x: Tensor, mask: Tensor, discount: float) -> Tensor:
    """``y_t = x_t + discount · y_{next real t}`` over real tokens, 0 at masked positions."""
    carry = x.new_zeros(x.shape[0])
    out = []
    for t in reversed(range(x.shape[1])):
        y = x[:, t] + discount * carry
        carry = torch.where(mask[:, t], y, carry)
        out.append(torch.where(mask[:, t], y, 0.0))
    return torch.stack(out[::-1], dim=1)


def group_index(group_ids: Tensor | None, batch: int, name: str) -> tuple[Tensor, Tensor]:
    """(inverse index [B] into groups, size of each sample's group [B]); every group needs ≥ 2 samples."""
    if not isinstance(group_ids, Tensor) or group_ids.shape != (batch,):
        raise ValueError(
            f"group_ids: {name} needs a 1-D tensor of {batch} group ids (one per row), "
            f"got {getattr(group_ids, 'shape', group_ids)}"
        )
    if group_ids.is_floating_point() or group_ids.is_complex() or group_ids.dtype == torch.bool:
        raise ValueError(f"group_ids must be an integer tensor, got {group_ids.dtype}")
    _, inverse, counts = torch.unique(group_ids, return_inverse=True, return_counts=True)
    if bool((counts < 2).any()):
        raise ValueError(f"group_ids: {name} needs at least 2 samples per group, some group has 1")
    return inverse, counts[inverse]


def group_sum(x: Tensor, inverse: Tensor) -> Tensor:
    """For each sample, the sum of ``x`` over its group (shape [B])."""
    n_groups = int(inverse.max()) + 1
    return x.new_zeros(n_groups).index_add(0, inverse, x)[inverse]


def per_token(x: Tensor, mask: Tensor) -> Tensor:
    """A per-sequence quantity [B] on every real token of its row ([B, T], 0 at masked positions)."""
    return x[:, None].expand(mask.shape).masked_fill(~mask, 0.0)
