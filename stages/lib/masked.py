"""Masked reductions over padded tensors: padding never enters a sum, a mean or a std.

Used wherever per-token quantities of padded batches are averaged: the PPO losses and advantage
whitening (seed §4.5 steps 5.2–5.3; alignment notes, PPO details 10–11 and the "padding inside means
and stds" bug), and any other kind that reduces over a loss mask.

Conventions shared by every function here:

- ``mask`` has exactly the shape of ``x``; it is boolean, or numeric with values in {0, 1}
  (``attention_mask`` style). A non-boolean mask costs one check of its values, so pass ``bool``
  in hot loops.
- Masked positions of ``x`` may hold anything, NaN and inf included: they are replaced by 0 before
  any arithmetic, so they reach neither the result nor the gradient.
- float16/bfloat16 (and integer) inputs are reduced in float32, and the result is float32.
- A reduction that selects no element raises ValueError, except ``masked_sum`` (an empty sum is 0)
  and ``masked_mean(..., allow_empty=True)`` (empty slices give 0).

torch is imported inside functions, as everywhere in ``stages.lib``, so importing this is cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor

Dim = int | tuple[int, ...] | None


def validate_mask(x: Tensor, mask: Tensor, *, x_name: str = "x") -> Tensor:
    """``mask`` as a bool tensor after checking it against ``x``; ValueError naming the bad argument."""
    import torch

    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{x_name} must be a torch.Tensor, got {type(x).__name__}")
    if not isinstance(mask, torch.Tensor):
        raise ValueError(f"mask must be a torch.Tensor, got {type(mask).__name__}")
    if mask.shape != x.shape:
        raise ValueError(
            f"mask has shape {tuple(mask.shape)} but {x_name} has shape {tuple(x.shape)}; they must match"
        )
    if mask.dtype == torch.bool:
        return mask
    if mask.is_complex() or not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError("mask must be boolean or hold only 0 and 1")
    return mask != 0


def _prepare(x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """(x in at least float32 with 0 at masked positions, bool mask)."""
    import torch

    mask = validate_mask(x, mask)
    if not x.is_floating_point() or x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    return x.masked_fill(~mask, 0.0), mask


def masked_sum(x: Tensor, mask: Tensor, dim: Dim = None, keepdim: bool = False) -> Tensor:
    """Sum of ``x`` over the positions where ``mask`` is true; 0 where nothing is selected."""
    x, _ = _prepare(x, mask)
    return x.sum(dim=dim, keepdim=keepdim)


def masked_mean(
    x: Tensor, mask: Tensor, dim: Dim = None, keepdim: bool = False, *, allow_empty: bool = False
) -> Tensor:
    """Mean of ``x`` over real positions (all of them when ``dim`` is None, else along ``dim``).

    A slice with no real position raises ValueError, or gives 0 when ``allow_empty`` (e.g. per-row
    means of a batch where a row may be empty).
    """
    x, mask = _prepare(x, mask)
    count = mask.sum(dim=dim, keepdim=keepdim)
    if not allow_empty and bool((count == 0).any()):
        where = "" if dim is None else f" in at least one slice along dim {dim}"
        raise ValueError(f"masked_mean: mask selects no element{where}")
    return x.sum(dim=dim, keepdim=keepdim) / count.clamp_min(1)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of the real elements of ``x`` (a scalar), two-pass: mean first, then squared deviations.

    ``unbiased`` divides by n − 1 (Bessel) and then needs at least 2 real elements; otherwise by n.
    """
    x, mask = _prepare(x, mask)
    n = int(mask.sum())
    if n == 0:
        raise ValueError("masked_var: mask selects no element")
    if unbiased and n < 2:
        raise ValueError("masked_var: an unbiased variance needs at least 2 real elements, mask selects 1")
    mean = x.sum() / n
    dev = (x - mean).masked_fill(~mask, 0.0)
    return dev.pow(2).sum() / (n - 1 if unbiased else n)


def masked_whiten(
    x: Tensor, mask: Tensor, shift_mean: bool = True, *, unbiased: bool = True, eps: float = 1e-8
) -> Tensor:
    """``(x − mean) / sqrt(var + eps)`` with mean and var over real elements only; 0 at masked positions.

    With ``shift_mean=False`` the mean is added back (only the spread is rescaled), as TRL does for
    rewards. This is the advantage whitening of the alignment notes, PPO detail 10 (seed §4.5 step 5.2).
    """
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    x, mask = _prepare(x, mask)
    mean = masked_mean(x, mask)
    var = masked_var(x, mask, unbiased=unbiased)
    out = (x - mean) * (var + eps).rsqrt()
    if not shift_mean:
        out = out + mean
    return out.masked_fill(~mask, 0.0)


def last_index(mask: Tensor) -> Tensor:
    """Index of the last true position of each row of a 2-D ``mask`` (long, shape [B]).

    This is the "last real token" where a sequence score lands (alignment notes, PPO details 6 and 14);
    it is right for left and right padding alike. A row with no true position raises ValueError.
    """
    import torch

    if not isinstance(mask, torch.Tensor) or mask.dim() != 2:
        raise ValueError(f"mask must be a 2-D tensor [B, T], got {getattr(mask, 'shape', type(mask))}")
    mask = validate_mask(mask, mask, x_name="mask")
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    last = positions.masked_fill(~mask, -1).amax(dim=1)
    if bool((last < 0).any()):
        rows = (last < 0).nonzero().flatten().tolist()
        raise ValueError(f"mask: rows {rows} have no real token")
    return last
