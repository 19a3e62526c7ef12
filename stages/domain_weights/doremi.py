"""DoReMi's per-step arithmetic (Xie et al. 2023, Algorithm 1), on per-token losses.

With k domains, proxy θ, reference θ_ref, per-token losses ℓ_θ,j(x) and ℓ_ref,j(x), and B_i the
sequences of domain i in the step's minibatch (|x| tokens each):

- excess loss, clipped per token and averaged over the domain's tokens:
  λ_t[i] = 1/Σ_{x∈B_i}|x| · Σ_{x∈B_i} Σ_j max(ℓ_θ_{t-1},j(x) − ℓ_ref,j(x), 0)
- exponentiated-gradient ascent on the weights: α'_t = α_{t-1} ⊙ exp(η·λ_t)
- renormalise and smooth towards uniform u = 1/k: α_t = (1 − c)·α'_t / Σ_i α'_t[i] + c·u
- the proxy's objective: L(θ, α_t) = Σ_i α_t[i] · 1/Σ_{x∈B_i}|x| · Σ_{x∈B_i} Σ_j (ℓ_θ,j(x) − ℓ_ref,j(x))
  (α_t is a constant for the gradient; ℓ_ref carries none, so ∇L = Σ_i α_t[i]·∇(mean proxy loss on B_i))
- the output: ᾱ = 1/T · Σ_{t=1..T} α_t.

α'_t is computed in log space (log α_{t-1} + η·λ_t, then a softmax), which is the same number
without overflow when η·λ is large.
"""

from __future__ import annotations

from typing import Any


def per_token_loss(logits: Any, input_ids: Any) -> Any:
    """ℓ_j: next-token cross-entropy of every position but the last, shape (batch, length − 1)."""
    import torch.nn.functional as F

    pred = logits[:, :-1].float()
    target = input_ids[:, 1:]
    return F.cross_entropy(pred.reshape(-1, pred.shape[-1]), target.reshape(-1), reduction="none").view(
        target.shape
    )


def domain_means(values: Any, domain_of_row: Any, k: int) -> Any:
    """Mean of ``values`` (batch, tokens) over each domain's tokens, shape (k,) (0 for an absent domain)."""
    import torch

    per_row = values.sum(dim=1)
    tokens = torch.full_like(per_row, values.shape[1])
    sums = torch.zeros(k, dtype=values.dtype, device=values.device).index_add_(0, domain_of_row, per_row)
    counts = torch.zeros(k, dtype=values.dtype, device=values.device).index_add_(0, domain_of_row, tokens)
    return sums / counts.clamp_min(1)


def excess_loss(proxy_loss: Any, reference_loss: Any, domain_of_row: Any, k: int) -> Any:
    """λ_t: per-token excess loss clipped at 0, averaged over each domain's tokens (no gradient)."""
    return domain_means((proxy_loss.detach() - reference_loss).clamp_min(0.0), domain_of_row, k)


def update_weights(alpha: Any, excess: Any, *, eta: float, smoothing: float) -> Any:
    """α_t from α_{t-1} and λ_t: exponentiated gradient, renormalised, smoothed towards uniform."""
    import torch

    k = alpha.shape[0]
    raised = torch.softmax(torch.log(alpha) + eta * excess, dim=0)  # α_{t-1}·exp(ηλ) / Σ
    return (1.0 - smoothing) * raised + smoothing / k


def proxy_objective(proxy_loss: Any, reference_loss: Any, domain_of_row: Any, alpha: Any) -> Any:
    """L(θ, α_t) = Σ_i α_t[i] · (mean over domain i's tokens of ℓ_θ − ℓ_ref), differentiable in θ."""
    per_domain = domain_means(proxy_loss - reference_loss, domain_of_row, alpha.shape[0])
    return (alpha.detach() * per_domain).sum()
