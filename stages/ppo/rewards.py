"""Per-token KL penalties, per-token rewards and reward normalisation (seed §4.4, §4.5 step 5.2, §4.12).

Sign and unit conventions:

- ``logp`` are the log-probs of the sampled tokens under the policy that generated them (π_θ_old,
  seed step 5.2), ``ref_logp`` under the frozen reference; both [B, T], natural log, so KL is in nats.
- k1 = logπ − logπ_ref (unbiased for KL[π‖π_ref] when tokens are sampled from π, can be negative per
  token); k2 = ½(logπ − logπ_ref)²; k3 = exp(ref − logp) − (ref − logp) − 1 (≥ 0, unbiased, low
  variance). Use k1 in the reward and k2/k3 only when KL is a loss term (alignment notes, PPO detail 7).
- The reward is the seed's r_t = −β·kl_t for t < T and r_T = R − β·kl_T: the score R lands on the last
  real token only (PPO detail 6).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import Tensor

from stages.lib.masked import last_index, validate_mask

KLKind = Literal["k1", "k2", "k3"]


def kl_penalty(logp: Tensor, ref_logp: Tensor, kind: KLKind = "k1") -> Tensor:
    """Per-token KL estimate between the sampling policy and the reference, elementwise, in nats.

    k1 = logp − ref_logp; k2 = ½(logp − ref_logp)²; k3 = expm1(d) − d with d = ref_logp − logp
    (the same as exp(d) − d − 1, computed without cancellation; clamped at 0 against rounding).
    Padding is not masked here: ``per_token_rewards`` and the masked reductions ignore it.
    """
    if not isinstance(logp, Tensor) or not isinstance(ref_logp, Tensor):
        raise ValueError("logp and ref_logp must be torch tensors")
    if logp.shape != ref_logp.shape:
        raise ValueError(f"ref_logp has shape {tuple(ref_logp.shape)} but logp has {tuple(logp.shape)}")
    if kind == "k1":
        return logp - ref_logp
    if kind == "k2":
        return 0.5 * (logp - ref_logp).pow(2)
    if kind == "k3":
        d = ref_logp - logp
        return (torch.expm1(d) - d).clamp_min(0.0)
    raise ValueError(f"kind must be 'k1', 'k2' or 'k3', got {kind!r}")


def per_token_rewards(score: Tensor, kl: Tensor, mask: Tensor, *, beta: float) -> Tensor:
    """Seed §4.5 step 5.2 reward signal [B, T]: −β·kl_t on every real token, plus ``score`` at the last.

    ``score`` [B]: the (normalised, clipped) reward-model score of each response; ``kl`` [B, T]: per-token
    KL (k1, from ``kl_penalty``); ``mask`` [B, T]: real response tokens, left or right padded. Masked
    positions are 0 whatever ``kl`` holds there. The result is detached: rewards are targets.
    """
    if not isinstance(kl, Tensor) or kl.dim() != 2:
        raise ValueError(f"kl must be a 2-D tensor [B, T], got {getattr(kl, 'shape', type(kl))}")
    mask = validate_mask(kl, mask, x_name="kl")
    if not isinstance(score, Tensor) or score.shape != (kl.shape[0],):
        raise ValueError(
            f"score must be a 1-D tensor of {kl.shape[0]} scores (one per row of kl), "
            f"got {getattr(score, 'shape', type(score))}"
        )
    if not (math.isfinite(beta) and beta >= 0):
        raise ValueError(f"beta must be a finite number >= 0, got {beta}")
    last = last_index(mask)
    kl = kl.detach()
    if not kl.is_floating_point() or kl.dtype in (torch.float16, torch.bfloat16):
        kl = kl.float()
    rewards = (kl * -beta).masked_fill(~mask, 0.0)  # garbage (even NaN) in padding becomes 0
    return rewards.scatter_add(1, last[:, None], score.detach().to(rewards.dtype)[:, None])


class RunningMoments:
    """Running count, mean and variance of scalar samples (Welford, merged with Chan et al.'s formula).

    For reward normalisation (alignment notes, PPO detail 5): feed scores of reference-policy samples
    (or of every rollout, for running normalisation) and normalise with ``normalize_and_clip``. Sums
    are kept in float64 on the host; ``state_dict``/``load_state_dict`` carry them across a resume.
    """

    def __init__(self) -> None:
        self._count = 0
        self._mean = 0.0
        self._m2 = 0.0  # Σ (x − mean)²

    @property
    def count(self) -> int:
        """Number of samples seen."""
        return self._count

    @property
    def mean(self) -> float:
        """Mean of the samples seen (ValueError before the first)."""
        if self._count == 0:
            raise ValueError("RunningMoments: no samples yet")
        return self._mean

    def var(self, unbiased: bool = True) -> float:
        """Variance of the samples seen: Σ(x − mean)² / (n − 1), or / n when not ``unbiased``."""
        needed = 2 if unbiased else 1
        if self._count < needed:
            raise ValueError(f"RunningMoments: a variance needs {needed} samples, have {self._count}")
        return self._m2 / (self._count - 1 if unbiased else self._count)

    @property
    def std(self) -> float:
        """Unbiased standard deviation (as ``numpy.std(ddof=1)``)."""
        return math.sqrt(self.var(unbiased=True))

    def update(self, values: Tensor, mask: Tensor | None = None) -> None:
        """Add the elements of ``values`` (any shape; only where ``mask`` is true if given)."""
        if not isinstance(values, Tensor):
            raise ValueError(f"values must be a torch.Tensor, got {type(values).__name__}")
        x = values.detach()
        if mask is not None:
            x = x[validate_mask(x, mask, x_name="values")]
        x = x.reshape(-1).double()
        n = x.numel()
        if n == 0:
            raise ValueError("values: RunningMoments.update got no element")
        if not bool(torch.isfinite(x).all()):
            raise ValueError("values: RunningMoments.update got NaN or inf")
        mean = float(x.mean())
        self._merge(n, mean, float((x - mean).pow(2).sum()))

    def merge(self, other: RunningMoments) -> None:
        """Add everything ``other`` has seen (e.g. moments gathered on another rank)."""
        if not isinstance(other, RunningMoments):
            raise ValueError(f"other must be RunningMoments, got {type(other).__name__}")
        if other._count:
            self._merge(other._count, other._mean, other._m2)

    def _merge(self, n: int, mean: float, m2: float) -> None:
        total = self._count + n
        delta = mean - self._mean
        self._mean += delta * n / total
        self._m2 += m2 + delta * delta * self._count * n / total
        self._count = total

    def state_dict(self) -> dict[str, Any]:
        """Plain numbers, for a checkpoint."""
        return {"count": self._count, "mean": self._mean, "m2": self._m2}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""
        missing = {"count", "mean", "m2"} - set(state)
        if missing:
            raise ValueError(f"state: RunningMoments state lacks {sorted(missing)}")
        count, mean, m2 = int(state["count"]), float(state["mean"]), float(state["m2"])
        if count < 0 or m2 < 0 or not (math.isfinite(mean) and math.isfinite(m2)):
            raise ValueError(f"state: invalid RunningMoments state {state}")
        self._count, self._mean, self._m2 = count, mean, m2


def normalize_and_clip(
    scores: Tensor, moments: RunningMoments, clip: float | None = None, *, eps: float = 1e-8
) -> Tensor:
    """``(scores − mean) / (std + eps)``, then clamped to [−clip, clip] when ``clip`` is given.

    Alignment notes, PPO detail 5: mean 0 / std 1 with moments of reference-policy samples, optional
    clipping (OpenRLHF uses 10). ``moments`` is read, not updated, and needs ≥ 2 samples.
    """
    if not isinstance(scores, Tensor):
        raise ValueError(f"scores must be a torch.Tensor, got {type(scores).__name__}")
    if clip is not None and not clip > 0:
        raise ValueError(f"clip must be > 0 or None, got {clip}")
    if moments.count < 2:
        raise ValueError(f"moments: normalisation needs at least 2 samples, have {moments.count}")
    x = scores.detach()
    if not x.is_floating_point():
        x = x.float()
    out = (x - moments.mean) / (moments.std + eps)
    return out if clip is None else out.clamp(-clip, clip)
