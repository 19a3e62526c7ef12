"""Preference-learning losses and reward-model diagnostics, in plain torch (seed §4.3, §4.4, §4.6–4.8).

Every loss takes per-example quantities the caller has already computed (sequence log-probs, scalar
rewards), so the same code serves the ``reward``, ``dpo``, ``kto`` and ``orpo`` stage kinds and is
tested without a model. ``sequence_logps`` turns per-token log-probs into those per-example values.

torch is imported inside the functions: importing this module stays cheap.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import torch

DpoLossType = Literal["sigmoid", "ipo"]


# -- argument checks -----------------------------------------------------------------------------


def _check_1d(name: str, value: Any, size: int | None = None) -> int:
    """Require a floating-point tensor of shape [B] (B ≥ 1, or B == ``size``); return B."""
    import torch

    if not isinstance(value, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor of shape [B], got {type(value).__name__}")
    if not value.is_floating_point():
        raise ValueError(
            f"`{name}` must be a floating-point tensor, got {value.dtype}; cast it with .float()"
        )
    if value.dim() != 1 or value.numel() == 0:
        raise ValueError(f"`{name}` must have shape [B] with B ≥ 1, got {tuple(value.shape)}")
    if size is not None and value.shape[0] != size:
        raise ValueError(
            f"`{name}` has {value.shape[0]} entries but the other inputs have {size}: pass one per example"
        )
    return value.shape[0]


def _check_positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"`{name}` must be > 0, got {value}")


# -- reward model: Bradley–Terry (§4.3, §4.4 phase 2) --------------------------------------------


def bradley_terry_loss(
    r_chosen: torch.Tensor, r_rejected: torch.Tensor, *, margin: float | torch.Tensor | None = None
) -> torch.Tensor:
    """Reward-model loss L_RM = −E[log σ(r(x, y_w) − r(x, y_l) [− m])] (seed §4.4, Bradley–Terry §4.3).

    ``r_chosen``/``r_rejected``: scalar rewards, shape [B]. ``margin`` (a float or a [B] tensor) is the
    optional per-pair margin of Llama 2's reward model, subtracted inside the sigmoid. Returns the mean.
    """
    import torch.nn.functional as F

    n = _check_1d("r_chosen", r_chosen)
    _check_1d("r_rejected", r_rejected, n)
    diff = r_chosen - r_rejected
    if margin is not None:
        if not isinstance(margin, (int, float)):
            _check_1d("margin", margin, n)
        diff = diff - margin
    return -F.logsigmoid(diff).mean()


# -- DPO and IPO (§4.6, §4.8.1) ------------------------------------------------------------------


@dataclass(frozen=True)
class DpoTerms:
    """Per-example DPO/IPO terms, each of shape [B]; the rewards and margins are detached."""

    losses: torch.Tensor
    chosen_rewards: torch.Tensor  # β·(log π_θ(y_w) − log π_ref(y_w))
    rejected_rewards: torch.Tensor  # β·(log π_θ(y_l) − log π_ref(y_l))
    margins: torch.Tensor  # chosen_rewards − rejected_rewards

    @property
    def loss(self) -> torch.Tensor:
        """The batch loss: the mean of ``losses`` (seed §4.7 step 3.3)."""
        return self.losses.mean()


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    *,
    beta: float,
    loss_type: DpoLossType = "sigmoid",
    label_smoothing: float = 0.0,
) -> DpoTerms:
    """DPO (seed §4.6.3) or IPO (seed §4.8.1) from sequence log-probs of shape [B].

    With Δ = (log π_θ(y_w) − log π_ref(y_w)) − (log π_θ(y_l) − log π_ref(y_l)):

    - ``"sigmoid"``: ℓ = −log σ(βΔ), the DPO loss. With ``label_smoothing`` ε ∈ [0, 0.5) it is the
      conservative DPO of cDPO (the form older TRL applied to "sigmoid"): ℓ = −(1−ε) log σ(βΔ) − ε log σ(−βΔ).
      Its gradient wrt log π_θ(y_w) is −β σ(−βΔ) at ε = 0 (seed §4.6.4), and the opposite for y_l.
    - ``"ipo"``: ℓ = (Δ − 1/(2β))², zero at the target margin Δ = 1/(2β). IPO admits no label smoothing.

    Whether the log-probs are token sums or per-token means is the caller's choice (see
    ``sequence_logps``), and for IPO it changes the objective at the same β: TRL 1.16 divides each
    log-ratio by its completion length before the square, OpenRLHF uses sums. For DPO both use sums.
    """
    import torch.nn.functional as F

    n = _check_1d("policy_chosen", policy_chosen)
    _check_1d("policy_rejected", policy_rejected, n)
    _check_1d("ref_chosen", ref_chosen, n)
    _check_1d("ref_rejected", ref_rejected, n)
    _check_positive("beta", beta)
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"`label_smoothing` must lie in [0, 0.5), got {label_smoothing}")

    chosen_logratios = policy_chosen - ref_chosen
    rejected_logratios = policy_rejected - ref_rejected
    delta = chosen_logratios - rejected_logratios
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * delta)
        if label_smoothing:
            losses = (1 - label_smoothing) * losses - label_smoothing * F.logsigmoid(-beta * delta)
    elif loss_type == "ipo":
        if label_smoothing:
            raise ValueError("`label_smoothing` applies to loss_type='sigmoid' only; set it to 0 for 'ipo'")
        losses = (delta - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"`loss_type` must be 'sigmoid' or 'ipo', got {loss_type!r}")

    chosen_rewards = beta * chosen_logratios.detach()
    rejected_rewards = beta * rejected_logratios.detach()
    return DpoTerms(losses, chosen_rewards, rejected_rewards, chosen_rewards - rejected_rewards)


# -- KTO (§4.8.2) --------------------------------------------------------------------------------


@dataclass(frozen=True)
class KtoTerms:
    """Per-example KTO losses and rewards ([B], in input order) and the detached baseline z_ref (0-dim)."""

    losses: torch.Tensor
    rewards: torch.Tensor  # β·(log π_θ(y) − log π_ref(y)), detached
    z_ref: torch.Tensor

    @property
    def loss(self) -> torch.Tensor:
        """The batch loss: the mean of the weighted ``losses`` (as TRL: not divided by the weights)."""
        return self.losses.mean()


def kto_loss(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    labels: torch.Tensor,
    *,
    kl_policy_logps: torch.Tensor,
    kl_ref_logps: torch.Tensor,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> KtoTerms:
    """KTO loss w(b)·(1 − v(x, y, b)) per example (seed §4.8.2; KTO paper eq. 7).

    With the log-ratio r = log π_θ(y|x) − log π_ref(y|x) (unscaled, so β appears once, as in the paper
    and TRL; the seed's r̂ = β·r would count it twice):

    - desirable (label 1): w_D · (1 − σ(β(r − z_ref)))
    - undesirable (label 0): w_U · (1 − σ(β(z_ref − r)))

    z_ref = max(0, mean(kl_policy_logps − kl_ref_logps)) estimates KL(π_θ ‖ π_ref) from *mismatched*
    pairs: the caller scores completions rotated by one within the batch, (x_1, y_n), (x_2, y_1), …,
    which needs a batch of more than one. It is detached, so no gradient flows through the baseline.
    The KL batch may have any size K ≥ 1.
    """
    import torch

    n = _check_1d("policy_logps", policy_logps)
    _check_1d("ref_logps", ref_logps, n)
    if not isinstance(labels, torch.Tensor) or labels.shape != (n,):
        raise ValueError(f"`labels` must be a tensor of shape [{n}] (1 desirable, 0 undesirable)")
    if not ((labels == 0) | (labels == 1)).all():
        raise ValueError("`labels` must hold only 0/1 or False/True (1 = desirable)")
    k = _check_1d("kl_policy_logps", kl_policy_logps)
    _check_1d("kl_ref_logps", kl_ref_logps, k)
    _check_positive("beta", beta)
    _check_positive("desirable_weight", desirable_weight)
    _check_positive("undesirable_weight", undesirable_weight)

    z_ref = (kl_policy_logps - kl_ref_logps).mean().detach().clamp(min=0)
    logratios = policy_logps - ref_logps
    desirable = labels.bool()
    losses = torch.where(
        desirable,
        desirable_weight * (1 - torch.sigmoid(beta * (logratios - z_ref))),
        undesirable_weight * (1 - torch.sigmoid(beta * (z_ref - logratios))),
    )
    return KtoTerms(losses, beta * logratios.detach(), z_ref)


def kto_weight_warning(
    n_desirable: int, n_undesirable: int, desirable_weight: float, undesirable_weight: float
) -> str | None:
    """TRL 1.16's warning when the class weights do not balance the data (KTO paper eq. 8), else None.

    The paper recommends w_D·n_D / (w_U·n_U) ∈ [1, 4/3]. TRL's rule (``KTOTrainer._prepare_dataset``
    in trl/trainer/kto_trainer.py) is reproduced exactly: counts are floored at 1; no warning at all
    when n_D == n_U (whatever the weights); otherwise it warns unless w_D lies in
    [round(n_U·w_U/n_D, 2), round(1.33·n_U·w_U/n_D, 2)] or w_U lies in
    [round(n_D·w_D/(1.33·n_U), 2), round(n_D·w_D/n_U, 2)], i.e. the ratio in [1, 1.33] up to rounding.
    """
    if n_desirable < 0 or n_undesirable < 0:
        raise ValueError(f"counts must be ≥ 0, got n_desirable={n_desirable}, n_undesirable={n_undesirable}")
    _check_positive("desirable_weight", desirable_weight)
    _check_positive("undesirable_weight", undesirable_weight)
    n_d, n_u = max(n_desirable, 1), max(n_undesirable, 1)
    if n_d == n_u:
        return None
    des_lo = round((n_u * undesirable_weight / n_d) * 1, 2)
    des_hi = round((n_u * undesirable_weight / n_d) * 1.33, 2)
    und_lo = round((n_d * desirable_weight / n_u) / 1.33, 2)
    und_hi = round((n_d * desirable_weight / n_u) / 1, 2)
    if des_lo <= desirable_weight <= des_hi or und_lo <= undesirable_weight <= und_hi:
        return None
    return (
        "You have different amounts of desirable/positive and undesirable/negative examples but the "
        "weights on the desirable and undesirable losses don't seem to be in an ideal range. Based "
        f"on your data, we recommend EITHER desirable_weight in [{des_lo}, {des_hi}] or "
        f"undesirable_weight in [{und_lo}, {und_hi}] (but NOT BOTH). "
        "See the documentation on how to optimally set these weights."
    )


# -- ORPO (§4.8.3) -------------------------------------------------------------------------------


@dataclass(frozen=True)
class OrpoTerms:
    """ORPO's total ``loss`` and ``or_loss`` (0-dim), and per-example ``log_odds`` and ``log_sigmoid`` ([B])."""

    loss: torch.Tensor  # L_SFT + λ·L_OR
    or_loss: torch.Tensor  # L_OR = −mean(log σ(log_odds))
    log_odds: torch.Tensor  # log(odds(y_w) / odds(y_l))
    log_sigmoid: torch.Tensor  # log σ(log_odds)


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 − e^x) for x ≤ 0 without cancellation (Mächler 2012): branch at x = −log 2."""
    import torch

    return torch.where(x < -0.6931471805599453, torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def orpo_loss(
    chosen_avg_logps: torch.Tensor,
    rejected_avg_logps: torch.Tensor,
    chosen_nll: torch.Tensor,
    *,
    lam: float,
) -> OrpoTerms:
    """ORPO: L = L_SFT(y_w) + λ·L_OR with L_OR = −mean log σ(log odds(y_w)/odds(y_l)) (seed §4.8.3).

    ``chosen_avg_logps``/``rejected_avg_logps`` are length-averaged log-probs lp = (1/|y|) Σ_t log p, so
    p = e^lp and odds = p/(1 − p); the log odds ratio is (lp_w − lp_l) − (log(1 − e^lp_w) − log(1 − e^lp_l)),
    computed with a stable log(1 − e^x). ``chosen_nll`` is the SFT loss on the chosen sequences, a scalar
    (or [B], then averaged); TRL's covers prompt + chosen tokens. TRL names λ ``beta``. No reference model.
    """
    import torch
    import torch.nn.functional as F

    n = _check_1d("chosen_avg_logps", chosen_avg_logps)
    _check_1d("rejected_avg_logps", rejected_avg_logps, n)
    for name, lp in (("chosen_avg_logps", chosen_avg_logps), ("rejected_avg_logps", rejected_avg_logps)):
        if (lp >= 0).any():
            raise ValueError(f"`{name}` must be < 0 (log-probs of a probability below 1); pass log-probs")
    if not isinstance(chosen_nll, torch.Tensor) or chosen_nll.dim() > 1:
        raise ValueError("`chosen_nll` must be a 0-dim tensor (the mean NLL) or a [B] tensor")
    if chosen_nll.dim() == 1:
        _check_1d("chosen_nll", chosen_nll, n)
        chosen_nll = chosen_nll.mean()
    if not lam >= 0:
        raise ValueError(f"`lam` must be ≥ 0, got {lam}")

    log_odds = (chosen_avg_logps - rejected_avg_logps) - (
        _log1mexp(chosen_avg_logps) - _log1mexp(rejected_avg_logps)
    )
    log_sigmoid = F.logsigmoid(log_odds)
    or_loss = -log_sigmoid.mean()
    return OrpoTerms(chosen_nll + lam * or_loss, or_loss, log_odds, log_sigmoid)


# -- reward-model diagnostics (§4.4) -------------------------------------------------------------


def pair_accuracy(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> float:
    """Held-out pair accuracy (seed §4.4): the share of pairs with r(y_w) > r(y_l), a tie counting half."""
    n = _check_1d("r_chosen", r_chosen)
    _check_1d("r_rejected", r_rejected, n)
    wins = (r_chosen > r_rejected).double().sum() + 0.5 * (r_chosen == r_rejected).double().sum()
    return float(wins / n)


def expected_calibration_error(
    r_chosen: torch.Tensor, r_rejected: torch.Tensor, *, n_bins: int = 10
) -> dict[str, Any]:
    """Expected calibration error of the Bradley–Terry probabilities (seed §4.4 "Calibration").

    The model's probability that the chosen response wins is p = σ(r_w − r_l). It predicts "chosen" when
    p ≥ 0.5, with confidence c = max(p, 1 − p) = σ(|r_w − r_l|), and is correct exactly when p ≥ 0.5 (an
    exact tie counts as correct here, half in ``pair_accuracy``). Calibration means
    p(correct) ≈ σ(|r(y_w) − r(y_l)|). With ``n_bins`` equal-width bins on [0.5, 1] (each [lo, hi), the
    last closed), ECE = Σ_b (n_b/N)·|acc_b − conf_b|.

    Returns ``{"ece": float, "n": N, "bins": [...]}``, one bin dict per bin with ``lower``, ``upper``,
    ``count``, ``confidence`` (mean) and ``accuracy`` (the last two None for an empty bin): the
    reliability-diagram table.
    """
    import torch

    n = _check_1d("r_chosen", r_chosen)
    _check_1d("r_rejected", r_rejected, n)
    if not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"`n_bins` must be an integer ≥ 1, got {n_bins!r}")

    p = torch.sigmoid((r_chosen.detach() - r_rejected.detach()).double())
    confidence = torch.maximum(p, 1 - p)
    correct = (p >= 0.5).double()
    index = ((confidence - 0.5) * (2 * n_bins)).floor().long().clamp(0, n_bins - 1)

    ece = 0.0
    bins = []
    for b in range(n_bins):
        in_bin = index == b
        count = int(in_bin.sum())
        row: dict[str, Any] = {
            "lower": 0.5 + 0.5 * b / n_bins,
            "upper": 0.5 + 0.5 * (b + 1) / n_bins,
            "count": count,
            "confidence": None,
            "accuracy": None,
        }
        if count:
            row["confidence"] = float(confidence[in_bin].mean())
            row["accuracy"] = float(correct[in_bin].mean())
            ece += count / n * abs(row["accuracy"] - row["confidence"])
        bins.append(row)
    return {"ece": ece, "n": n, "bins": bins}


# -- per-token to per-sequence log-probs ---------------------------------------------------------


def sequence_logps(token_logps: torch.Tensor, mask: torch.Tensor, *, average: bool = False) -> torch.Tensor:
    """Sequence log-prob log π(y|x) = Σ_t mask_t·log π(y_t|…) of shape [B] from [B, T] (seed §4.7 step 3.2).

    ``mask`` (bool or 0/1) marks the completion tokens. ``average=True`` divides by their number instead
    (the length-averaged log-prob ORPO uses, and TRL's IPO). Masked positions are never read, so -inf or
    NaN padding is harmless, and a row with no real token gives 0 (no NaN, zero gradient).
    """
    import torch

    if not isinstance(token_logps, torch.Tensor) or token_logps.dim() != 2:
        raise ValueError("`token_logps` must be a tensor of shape [B, T]")
    if not token_logps.is_floating_point():
        raise ValueError(f"`token_logps` must be a floating-point tensor, got {token_logps.dtype}")
    if not isinstance(mask, torch.Tensor) or mask.shape != token_logps.shape:
        raise ValueError(
            f"`mask` must be a tensor of the same shape as token_logps, {tuple(token_logps.shape)}"
        )
    if not ((mask == 0) | (mask == 1)).all():
        raise ValueError("`mask` must hold only 0/1 or False/True")

    real = mask.bool()
    total = torch.where(real, token_logps, torch.zeros_like(token_logps)).sum(dim=1)
    if not average:
        return total
    return total / real.sum(dim=1).clamp(min=1).to(total.dtype)
