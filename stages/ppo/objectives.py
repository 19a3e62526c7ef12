"""PPO's losses (seed §4.4 clipped surrogate; §4.5 step 5.3) and the per-token quantities they need.

All means are token-level means over the real tokens of the minibatch (alignment notes, PPO detail 11):
every real token weighs the same, whatever its sequence's length. Losses are to be minimised. The
returned diagnostics (clip fractions, approximate KL, explained variance) are detached 0-d tensors on
the inputs' device: gather them and call ``.item()`` once per log line. Half-precision inputs (bf16
log-probs, values) are computed in float32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from stages.lib.masked import masked_mean, masked_var, validate_mask


@dataclass(frozen=True)
class PolicyTerms:
    """The clipped surrogate loss and its diagnostics (seed §4.5 steps 5.3 and 5.4)."""

    loss: Tensor
    """−mean_t min(ρ_t·Â_t, clip(ρ_t, 1 − ε, 1 + ε)·Â_t) over real tokens; carries the gradient."""
    clip_frac: Tensor
    """Fraction of real tokens where the clip binds (the clipped term is the smaller: zero gradient)."""
    approx_kl: Tensor
    """k3 estimate of KL[π_old‖π_θ] per token: mean of (ρ − 1) − log ρ over real tokens, ≥ 0."""
    ratio_mean: Tensor
    """Mean of ρ_t over real tokens (exactly 1 on the first minibatch when rollout and training agree)."""


@dataclass(frozen=True)
class ValueTerms:
    """The critic loss and its diagnostics (seed §4.5 step 5.3)."""

    loss: Tensor
    """½·mean_t of the squared error (the larger of clipped and unclipped when clipping); has gradient."""
    clip_frac: Tensor
    """Fraction of real tokens where the clipped error is the larger (0 without clipping)."""
    explained_variance: Tensor
    """1 − Var[returns − values] / Var[returns] over real tokens; NaN when the returns are constant."""


def _same_shape(ref: Tensor, ref_name: str, **others: Tensor) -> None:
    if not isinstance(ref, Tensor):
        raise ValueError(f"{ref_name} must be a torch.Tensor, got {type(ref).__name__}")
    for name, t in others.items():
        if not isinstance(t, Tensor) or t.shape != ref.shape:
            raise ValueError(
                f"{name} must have the shape of {ref_name} {tuple(ref.shape)}, got {getattr(t, 'shape', t)}"
            )


def _wide(x: Tensor) -> Tensor:
    """float16/bfloat16 (and integers) in float32: a bf16 log-ratio has ~3 digits, ρ would be off by ~1%."""
    return x.float() if not x.is_floating_point() or x.dtype in (torch.float16, torch.bfloat16) else x


def _check_eps(eps: float, name: str) -> None:
    if not (math.isfinite(eps) and 0 < eps < 1):
        raise ValueError(f"{name} must be in (0, 1), got {eps}")


def policy_loss(
    logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, *, clip_eps: float
) -> PolicyTerms:
    """PPO's clipped surrogate (seed §4.4; §4.5 step 5.3, L_actor), token-level mean over real tokens.

    ``logp`` [B, T]: log-probs of the sampled tokens under the policy being trained (with gradient);
    ``old_logp``: the same under the rollout policy (seed step 5.2); ``advantages``: Â_t, whitened
    already if they are to be. ``old_logp`` and ``advantages`` are detached here. ρ_t = exp(logp −
    old_logp); where the clip binds (Â > 0 and ρ > 1 + ε, or Â < 0 and ρ < 1 − ε) the gradient is 0.
    """
    _same_shape(logp, "logp", old_logp=old_logp, advantages=advantages)
    mask = validate_mask(logp, mask, x_name="logp")
    _check_eps(clip_eps, "clip_eps")
    log_ratio = (_wide(logp) - _wide(old_logp.detach())).masked_fill(~mask, 0.0)
    ratio = log_ratio.exp()
    adv = _wide(advantages.detach()).masked_fill(~mask, 0.0)
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        clip_frac = masked_mean((clipped > unclipped).float(), mask)
        approx_kl = masked_mean(torch.expm1(log_ratio) - log_ratio, mask)
        ratio_mean = masked_mean(ratio, mask)
    return PolicyTerms(loss=loss, clip_frac=clip_frac, approx_kl=approx_kl, ratio_mean=ratio_mean)


def value_loss(
    values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, *, clip_eps: float | None = None
) -> ValueTerms:
    """The critic's loss (seed §4.5 step 5.3, L_critic; alignment notes, PPO detail 11).

    Without clipping: ½·mean_t (V_t − G_t)². With ``clip_eps``: V_clip = V_old + clip(V − V_old, ±ε) and
    ½·mean_t max((V − G)², (V_clip − G)²), as TRL and OpenRLHF do. The ½ is there in both cases so that
    switching clipping on or off never rescales the loss; the seed writes mean[(V − G)²], which is twice
    this (fold the 2 into c₁). ``old_values`` are the rollout's values (seed step 5.2), ``returns`` the
    GAE returns; both detached here. ``clip_eps`` is in the units of the values (0.2 is usual).
    """
    _same_shape(values, "values", old_values=old_values, returns=returns)
    mask = validate_mask(values, mask, x_name="values")
    old = _wide(old_values.detach()).masked_fill(~mask, 0.0)
    target = _wide(returns.detach()).masked_fill(~mask, 0.0)
    v = _wide(values).masked_fill(~mask, 0.0)
    error = (v - target).pow(2)
    if clip_eps is None:
        loss = 0.5 * masked_mean(error, mask)
        clip_frac = loss.new_zeros(()).detach()
    else:
        if not (math.isfinite(clip_eps) and clip_eps > 0):
            raise ValueError(f"clip_eps must be > 0 or None, got {clip_eps}")
        v_clip = old + (v - old).clamp(-clip_eps, clip_eps)
        error_clip = (v_clip - target).pow(2)
        loss = 0.5 * masked_mean(torch.maximum(error, error_clip), mask)
        with torch.no_grad():
            clip_frac = masked_mean((error_clip > error).float(), mask)
    return ValueTerms(
        loss=loss, clip_frac=clip_frac, explained_variance=explained_variance(values, returns, mask)
    )


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> Tensor:
    """1 − Var[returns − values] / Var[returns] over real tokens (detached 0-d; NaN if returns are constant).

    1 is a perfect critic, 0 no better than a constant, < 0 worse than one. Needs ≥ 2 real tokens.
    """
    _same_shape(values, "values", returns=returns)
    with torch.no_grad():
        var_returns = masked_var(returns, mask)
        var_residual = masked_var(returns - values, mask)
        return torch.where(var_returns > 0, 1.0 - var_residual / var_returns, torch.nan)


def _tempered(logits: Tensor, temperature: float) -> Tensor:
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if not isinstance(logits, Tensor) or logits.dim() < 1:
        raise ValueError(f"logits must be a tensor [..., V], got {getattr(logits, 'shape', type(logits))}")
    z = _wide(logits)
    return z if temperature == 1.0 else z / temperature


def entropy_from_logits(logits: Tensor, *, temperature: float = 1.0) -> Tensor:
    """Entropy H = −Σ p·log p of softmax(z) over the last axis, in nats.

    log p = z − logsumexp(z) (``log_softmax``, max-shifted), so it is stable for large logits, where
    the textbook logsumexp(z) − Σ p·z loses digits to cancellation, and for −inf ones (masked
    vocabulary). ``temperature`` divides the logits first: use the sampling temperature, as for every
    log-prob (alignment notes, PPO detail 2). Half precision is computed in float32.
    Shape: logits [..., V] -> [...].
    """
    z = _tempered(logits, temperature)
    logp = torch.log_softmax(z, dim=-1)
    p = logp.exp()
    return -(p * logp.masked_fill(p == 0, 0.0)).sum(dim=-1)


def token_logprobs(logits: Tensor, tokens: Tensor, *, temperature: float = 1.0) -> Tensor:
    """log softmax(logits / temperature) at ``tokens``: logits [..., V], tokens [...] -> [...].

    The one way old, new and reference log-probs should all be computed (same temperature as sampling,
    alignment notes, PPO detail 2). Logits at position t score the token at t + 1: shift before calling.
    """
    z = _tempered(logits, temperature)
    if not isinstance(tokens, Tensor) or tokens.shape != z.shape[:-1]:
        raise ValueError(
            f"tokens must have shape {tuple(z.shape[:-1])}, got {getattr(tokens, 'shape', tokens)}"
        )
    return z.gather(-1, tokens.long().unsqueeze(-1)).squeeze(-1) - torch.logsumexp(z, dim=-1)
