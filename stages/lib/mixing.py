"""Domain-mixing arithmetic (seed §3.5), pure: proportions and per-input document counts.

Proportions, over the dataset inputs' document counts ``n_i`` after filtering and dedup:

- explicit ``weights``:   p_i = w_i / Σ_j w_j
- temperature τ, cap M:   p_i = min(n_i, M)^(1/τ) / Σ_j min(n_j, M)^(1/τ)
  (τ = 1 without a cap is proportional sampling; τ → ∞ tends to uniform; an
  input with no documents left gets p_i = 0)

Counts for a total T are p_i·T rounded by largest remainder (they sum to T).
Without ``target``, T is the largest total the proportions allow without
repeating a document: T = ⌊min_i n_i / p_i⌋ (the scarcest input, relative to its
share, is taken whole; with τ = 1 and no cap that is every document, with a cap
it is Σ min(n_i, M)).
"""

from __future__ import annotations

import math

_EPS = 1e-9


class MixError(ValueError):
    """The requested mix cannot be drawn from the documents available."""


def mix_proportions(
    sizes: dict[str, int],
    weights: dict[str, float] | None = None,
    temperature: float | None = None,
    cap: int | None = None,
) -> dict[str, float]:
    """Target proportion of each input (summing to 1, or all 0 when nothing is available)."""
    if weights is not None:
        raw = {name: float(weights.get(name, 0.0)) for name in sizes}
    else:
        tau = 1.0 if temperature is None else float(temperature)
        if tau <= 0:
            raise MixError(f"temperature must be > 0, got {tau}")
        raw = {}
        for name, n in sizes.items():
            eff = min(n, cap) if cap is not None else n
            raw[name] = float(eff) ** (1.0 / tau) if eff > 0 else 0.0
    total = sum(raw.values())
    if total <= 0:
        return {name: 0.0 for name in sizes}
    return {name: value / total for name, value in raw.items()}


def _largest_remainder(quotas: dict[str, float], total: int) -> dict[str, int]:
    floors = {name: int(math.floor(q + _EPS)) for name, q in quotas.items()}
    left = total - sum(floors.values())
    order = sorted(quotas, key=lambda name: (-(quotas[name] - floors[name]), name))
    for name in order[: max(left, 0)]:
        floors[name] += 1
    return floors


def max_total(sizes: dict[str, int], probs: dict[str, float]) -> int:
    """The largest total whose counts p_i·T never exceed n_i."""
    active = [name for name, p in probs.items() if p > 0]
    if not active:
        return 0
    return int(math.floor(min(sizes[name] / probs[name] for name in active) + _EPS))


def mix_counts(
    sizes: dict[str, int], probs: dict[str, float], target: int | None = None, upsample: bool = False
) -> dict[str, int]:
    """Documents to draw from each input; raises MixError when the mix cannot be met."""
    active = [name for name, p in probs.items() if p > 0]
    if not active:
        raise MixError("no documents are left in any input to mix")
    empty = [name for name in active if sizes[name] == 0]
    if empty:
        raise MixError(
            f"input(s) {', '.join(empty)} have a share of the mix but no documents left after curation"
        )
    if target is None:
        total = max_total(sizes, probs)
    else:
        total = target
        if not upsample:
            most = max_total(sizes, probs)
            if total > most:
                short = [name for name in active if probs[name] * total > sizes[name] + _EPS]
                raise MixError(
                    f"target_docs={total} needs more documents than {', '.join(short)} "
                    f"{'has' if len(short) == 1 else 'have'} left; at most {most} fit these proportions "
                    "without repeating documents"
                )
    counts = _largest_remainder({name: probs[name] * total for name in sizes}, total)
    if not upsample:
        counts = {name: min(c, sizes[name]) for name, c in counts.items()}
    return counts


def realised(counts: dict[str, int]) -> dict[str, float]:
    """Proportions actually drawn."""
    total = sum(counts.values())
    return {name: (c / total if total else 0.0) for name, c in counts.items()}
