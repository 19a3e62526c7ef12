"""The KL coefficient β and the hard KL budget (seed §4.4 objective; §4.5 step 5.4; §4.12 items 1 and 4).

UNIT: every KL number here is in nats PER SEQUENCE: for each response the sum over its real tokens of
the per-token k1 estimate (logπ_old − logπ_ref), averaged over the batch's sequences. That is the seed's
D_KL[π_θ‖π_ref](x) = Σ_t (log π_θ − log π_ref), and what Ziegler et al.'s target of 6 nats means. A
per-token mean is ~T times smaller and would make the controller drive β down forever (alignment notes,
PPO detail 8, about OpenRLHF); ``mean_kl_per_sequence`` computes the right number from [B, T] tensors.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

from torch import Tensor

from stages.lib.masked import masked_sum


def mean_kl_per_sequence(kl: Tensor, mask: Tensor) -> float:
    """Batch mean of Σ_t kl[i, t] over the real tokens of each row: the number the controllers take."""
    if not isinstance(kl, Tensor) or kl.dim() != 2:
        raise ValueError(f"kl must be a 2-D tensor [B, T], got {getattr(kl, 'shape', type(kl))}")
    return float(masked_sum(kl, mask, dim=1).mean())


def _check_kl(kl_per_sequence: float) -> float:
    value = float(kl_per_sequence)
    if math.isnan(value):
        raise ValueError("kl_per_sequence is NaN")
    return value


def _check_beta(beta: float, name: str) -> float:
    value = float(beta)
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {beta}")
    return value


def _check_state(state: dict[str, Any], kind: str, keys: set[str]) -> None:
    if state.get("kind") != kind:
        raise ValueError(f"state: expected a {kind!r} KL controller state, got kind {state.get('kind')!r}")
    missing = keys - set(state)
    if missing:
        raise ValueError(f"state: {kind} state lacks {sorted(missing)}")


class KLController(Protocol):
    """What the PPO loop uses: the current β and one update per rollout batch (seed §4.5 step 5.4)."""

    @property
    def value(self) -> float: ...

    def update(self, kl_per_sequence: float, n_sequences: int) -> float: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class FixedKLController:
    """A constant β (seed §4.12 item 1, KL penalty)."""

    def __init__(self, beta: float) -> None:
        self._beta = _check_beta(beta, "beta")

    @property
    def value(self) -> float:
        """The current β."""
        return self._beta

    def update(self, kl_per_sequence: float, n_sequences: int) -> float:
        """Nothing changes; the arguments are checked as the adaptive controller's are. Returns β."""
        _check_kl(kl_per_sequence)
        if n_sequences < 1:
            raise ValueError(f"n_sequences must be >= 1, got {n_sequences}")
        return self._beta

    def state_dict(self) -> dict[str, Any]:
        """β, for a checkpoint."""
        return {"kind": "fixed", "beta": self._beta}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore β from ``state_dict``."""
        _check_state(state, "fixed", {"beta"})
        self._beta = _check_beta(state["beta"], "state['beta']")


class AdaptiveKLController:
    """Ziegler et al.'s proportional controller (seed §4.5 step 5.4; alignment notes, PPO detail 8).

    After each rollout batch of ``n_sequences`` responses whose mean KL is ``kl_per_sequence`` nats:

        e = clip(kl_per_sequence / target_kl_per_sequence − 1, −0.2, 0.2)
        β ← β · (1 + e · n_sequences / horizon)

    so β rises when the KL overshoots the target and falls when it undershoots, by at most a factor
    1 ± 0.2·n/horizon per batch. Defaults are the classic constants: β₀ 0.15, target 6 nats per
    sequence, horizon 10,000 sequences.
    """

    def __init__(
        self, init_beta: float = 0.15, target_kl_per_sequence: float = 6.0, horizon: int = 10_000
    ) -> None:
        self._beta = _check_beta(init_beta, "init_beta")
        if self._beta == 0:
            raise ValueError("init_beta must be > 0: a multiplicative controller cannot move β away from 0")
        if not (math.isfinite(target_kl_per_sequence) and target_kl_per_sequence > 0):
            raise ValueError(f"target_kl_per_sequence must be > 0 nats, got {target_kl_per_sequence}")
        if horizon <= 0:
            raise ValueError(f"horizon must be > 0 sequences, got {horizon}")
        self.target_kl_per_sequence = float(target_kl_per_sequence)
        self.horizon = horizon

    @property
    def value(self) -> float:
        """The current β."""
        return self._beta

    def update(self, kl_per_sequence: float, n_sequences: int) -> float:
        """One step of the controller after a batch of ``n_sequences``; returns the new β."""
        kl = _check_kl(kl_per_sequence)
        if n_sequences < 1:
            raise ValueError(f"n_sequences must be >= 1, got {n_sequences}")
        error = min(max(kl / self.target_kl_per_sequence - 1.0, -0.2), 0.2)
        self._beta *= 1.0 + error * n_sequences / self.horizon
        return self._beta

    def state_dict(self) -> dict[str, Any]:
        """β, for a checkpoint (target and horizon come from the configuration)."""
        return {"kind": "adaptive", "beta": self._beta}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore β from ``state_dict``."""
        _check_state(state, "adaptive", {"beta"})
        self._beta = _check_beta(state["beta"], "state['beta']")


class KLBudget:
    """The hard KL budget D_KL ≤ δ of seed §4.12 item 4, checked once per rollout batch.

    ``observe`` returns True once the mean KL per sequence has been above ``max_kl_per_sequence`` on
    ``patience`` consecutive checks (1: the first time); from then on the budget stays exceeded, and the
    loop should stop and keep the last checkpoint within budget. ``sentence`` says where things stand.
    """

    def __init__(self, max_kl_per_sequence: float, *, patience: int = 1) -> None:
        if not (math.isfinite(max_kl_per_sequence) and max_kl_per_sequence > 0):
            raise ValueError(f"max_kl_per_sequence must be > 0 nats, got {max_kl_per_sequence}")
        if patience < 1:
            raise ValueError(f"patience must be >= 1, got {patience}")
        self.max_kl_per_sequence = float(max_kl_per_sequence)
        self.patience = patience
        self._over = 0
        self._last: tuple[int, float] | None = None
        self._exceeded: tuple[int, float] | None = None

    @property
    def exceeded(self) -> bool:
        """Whether the budget has been exceeded (it stays so)."""
        return self._exceeded is not None

    def observe(self, kl_per_sequence: float, *, step: int) -> bool:
        """Record the mean KL per sequence of the batch at ``step``; True once the budget is exceeded."""
        kl = _check_kl(kl_per_sequence)
        self._last = (int(step), kl)
        self._over = self._over + 1 if kl > self.max_kl_per_sequence else 0
        if self._exceeded is None and self._over >= self.patience:
            self._exceeded = self._last
        return self.exceeded

    def sentence(self) -> str:
        """One sentence for the log about the budget."""
        budget = f"{self.max_kl_per_sequence:.3g} nats per sequence"
        if self._exceeded is not None:
            step, kl = self._exceeded
            checks = "" if self.patience == 1 else f" on {self.patience} consecutive checks"
            return (
                f"KL budget exceeded at step {step}: mean KL {kl:.3g} nats per sequence is over the hard "
                f"budget of {budget}{checks} (seed §4.12 item 4); training should stop."
            )
        if self._last is None:
            return f"KL budget {budget}: nothing observed yet."
        step, kl = self._last
        if self._over:
            return (
                f"Step {step}: mean KL {kl:.3g} nats per sequence is over the budget of {budget} "
                f"({self._over} of {self.patience} consecutive checks before it counts as exceeded)."
            )
        return (
            f"Step {step}: mean KL {kl:.3g} nats per sequence, "
            f"{100 * kl / self.max_kl_per_sequence:.0f}% of the budget of {budget}."
        )

    def state_dict(self) -> dict[str, Any]:
        """Counters and the last/exceeding observations, for a checkpoint."""
        return {
            "kind": "kl_budget",
            "over": self._over,
            "last": list(self._last) if self._last else None,
            "exceeded": list(self._exceeded) if self._exceeded else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""
        _check_state(state, "kl_budget", {"over", "last", "exceeded"})
        over = int(state["over"])
        if over < 0:
            raise ValueError(f"state['over'] must be >= 0, got {over}")
        self._over = over
        self._last = (int(state["last"][0]), float(state["last"][1])) if state["last"] else None
        self._exceeded = (
            (int(state["exceeded"][0]), float(state["exceeded"][1])) if state["exceeded"] else None
        )
