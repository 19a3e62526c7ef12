"""Preference losses and reward-model diagnostics (seed §4.3–4.4, §4.6–4.8) against hand computations.

The last section runs TRL 1.16's own loss code on the same tensors: DPO's and KTO's losses are inline in
``_compute_loss``, which is called on a stand-in trainer with a stand-in model whose per-token log-probs
are the sequence log-probs under test; ORPO's ``odds_ratio_loss`` is a method that needs only ``beta``.
"""

from __future__ import annotations

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from stages.lib import preference as P


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def softplus(x: float) -> float:
    """−log σ(−x) = log(1 + e^x)."""
    return math.log1p(math.exp(x))


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


# -- Bradley–Terry (§4.3, §4.4) ------------------------------------------------------------------


def test_bradley_terry_by_hand():
    # r_w − r_l = [2 − 0, 0 − 1] = [2, −1]; −log σ(d) = log(1 + e^−d)
    loss = P.bradley_terry_loss(t(2.0, 0.0), t(0.0, 1.0))
    assert loss.item() == pytest.approx((softplus(-2) + softplus(1)) / 2)  # (0.126928 + 1.313262) / 2
    assert loss.item() == pytest.approx(0.720095, abs=1e-6)

    # margin 1: d − m = [1, −2]
    with_margin = P.bradley_terry_loss(t(2.0, 0.0), t(0.0, 1.0), margin=1.0)
    assert with_margin.item() == pytest.approx((softplus(-1) + softplus(2)) / 2)
    # per-pair margins [0, 3]: d − m = [2, −4]
    per_pair = P.bradley_terry_loss(t(2.0, 0.0), t(0.0, 1.0), margin=t(0.0, 3.0))
    assert per_pair.item() == pytest.approx((softplus(-2) + softplus(4)) / 2)


# -- DPO (§4.6) ----------------------------------------------------------------------------------

# log-ratios: chosen [−10 − (−11), −5 − (−5)] = [1, 0], rejected [−12 − (−11), −4 − (−5)] = [−1, 1]
# Δ = [1 − (−1), 0 − 1] = [2, −1]; with β = 0.1, βΔ = [0.2, −0.1]
DPO_INPUTS = dict(
    policy_chosen=t(-10.0, -5.0),
    policy_rejected=t(-12.0, -4.0),
    ref_chosen=t(-11.0, -5.0),
    ref_rejected=t(-11.0, -5.0),
)


def test_dpo_sigmoid_by_hand():
    terms = P.dpo_loss(**DPO_INPUTS, beta=0.1)
    # −log σ(βΔ) = log(1 + e^−βΔ)
    assert terms.losses.tolist() == pytest.approx([softplus(-0.2), softplus(0.1)])  # [0.598139, 0.744397]
    assert terms.loss.item() == pytest.approx((softplus(-0.2) + softplus(0.1)) / 2)
    assert terms.chosen_rewards.tolist() == pytest.approx([0.1, 0.0])  # β·[1, 0]
    assert terms.rejected_rewards.tolist() == pytest.approx([-0.1, 0.1])  # β·[−1, 1]
    assert terms.margins.tolist() == pytest.approx([0.2, -0.1])  # βΔ


def test_dpo_label_smoothing_by_hand():
    # cDPO, ε = 0.1: −0.9·log σ(βΔ) − 0.1·log σ(−βΔ) = 0.9·log(1 + e^−βΔ) + 0.1·log(1 + e^βΔ)
    terms = P.dpo_loss(**DPO_INPUTS, beta=0.1, label_smoothing=0.1)
    expected = [0.9 * softplus(-0.2) + 0.1 * softplus(0.2), 0.9 * softplus(0.1) + 0.1 * softplus(-0.1)]
    assert terms.losses.tolist() == pytest.approx(expected)
    assert terms.margins.tolist() == pytest.approx([0.2, -0.1])  # smoothing leaves the rewards alone


def test_dpo_gradient_is_seed_4_6_4():
    # ∂ℓ/∂log π_θ(y_w) = −β·σ(−βΔ) and ∂ℓ/∂log π_θ(y_l) = +β·σ(−βΔ): larger when the model is wrong (Δ < 0)
    chosen = DPO_INPUTS["policy_chosen"].clone().requires_grad_()
    rejected = DPO_INPUTS["policy_rejected"].clone().requires_grad_()
    terms = P.dpo_loss(chosen, rejected, DPO_INPUTS["ref_chosen"], DPO_INPUTS["ref_rejected"], beta=0.1)
    terms.losses.sum().backward()
    weight = [0.1 * sigmoid(-0.2), 0.1 * sigmoid(0.1)]  # β·σ(−βΔ) for Δ = [2, −1]: [0.045017, 0.052498]
    assert chosen.grad.tolist() == pytest.approx([-w for w in weight])
    assert rejected.grad.tolist() == pytest.approx(weight)
    assert weight[1] > weight[0]  # the mis-ranked pair gets the larger step
    assert not terms.chosen_rewards.requires_grad and not terms.margins.requires_grad


# -- IPO (§4.8.1) --------------------------------------------------------------------------------


def test_ipo_targets_half_over_beta():
    # β = 0.25, target 1/(2β) = 2. Reference log-probs 0, rejected 0, so Δ = policy_chosen = [2, 3, 1].
    chosen = t(2.0, 3.0, 1.0).requires_grad_()
    zeros = t(0.0, 0.0, 0.0)
    terms = P.dpo_loss(chosen, zeros, zeros, zeros, beta=0.25, loss_type="ipo")
    assert terms.losses.tolist() == [0.0, 1.0, 1.0]  # (Δ − 2)² = [0, 1, 1], exactly
    terms.losses.sum().backward()
    # ∂/∂Δ (Δ − 2)² = 2(Δ − 2) = [0, 2, −2]: above the target descent lowers Δ, below it raises Δ
    assert chosen.grad.tolist() == [0.0, 2.0, -2.0]
    assert terms.margins.tolist() == pytest.approx([0.5, 0.75, 0.25])  # βΔ


# -- KTO (§4.8.2) --------------------------------------------------------------------------------


def test_kto_by_hand():
    # log-ratios r = [−3 − (−4), −4 − (−4), −2 − (−3)] = [1, 0, 1]; labels: desirable, undesirable, undesirable
    # KL batch: mean([−5 − (−5.5), −6 − (−6.5)]) = mean([0.5, 0.5]) = 0.5 = z_ref
    terms = P.kto_loss(
        t(-3.0, -4.0, -2.0),
        t(-4.0, -4.0, -3.0),
        torch.tensor([1, 0, 0]),
        kl_policy_logps=t(-5.0, -6.0),
        kl_ref_logps=t(-5.5, -6.5),
        beta=0.5,
        desirable_weight=2.0,
        undesirable_weight=1.0,
    )
    assert terms.z_ref.item() == 0.5
    expected = [
        2.0 * (1 - sigmoid(0.5 * (1 - 0.5))),  # w_D·(1 − σ(β(r − z))) = 2·(1 − σ(0.25))
        1.0 * (1 - sigmoid(0.5 * (0.5 - 0))),  # w_U·(1 − σ(β(z − r))) = 1 − σ(0.25)
        1.0 * (1 - sigmoid(0.5 * (0.5 - 1))),  # 1 − σ(−0.25)
    ]
    assert terms.losses.tolist() == pytest.approx(expected)  # [0.875627, 0.437814, 0.562186]
    assert terms.loss.item() == pytest.approx(sum(expected) / 3)
    assert terms.rewards.tolist() == pytest.approx([0.5, 0.0, 0.5])  # β·r


def test_kto_z_ref_is_clamped_at_zero_and_detached():
    kl_policy = t(-6.0, -7.0).requires_grad_()
    policy = t(-3.0, -4.0).requires_grad_()
    # KL batch: mean([−6 − (−5), −7 − (−6)]) = −1 < 0, clamped to 0
    terms = P.kto_loss(
        policy,
        t(-4.0, -4.0),
        torch.tensor([True, False]),
        kl_policy_logps=kl_policy,
        kl_ref_logps=t(-5.0, -6.0),
        beta=0.5,
    )
    assert terms.z_ref.item() == 0.0
    assert not terms.z_ref.requires_grad
    # r = [1, 0], z = 0: losses [1 − σ(0.5), 1 − σ(0)]
    assert terms.losses.tolist() == pytest.approx([1 - sigmoid(0.5), 0.5])
    terms.losses.sum().backward()
    assert kl_policy.grad is None  # no gradient flows through the baseline
    # ∂/∂r (1 − σ(β(r − z))) = −β·σ'(β(r − z)); ∂/∂r (1 − σ(β(z − r))) = +β·σ'(β(z − r)), σ' = σ(1 − σ)
    s0, s1 = sigmoid(0.5), sigmoid(0.0)
    assert policy.grad.tolist() == pytest.approx([-0.5 * s0 * (1 - s0), 0.5 * s1 * (1 - s1)])


def test_kto_weight_warning_follows_trl():
    assert P.kto_weight_warning(200, 200, 5.0, 1.0) is None  # TRL never warns when the counts are equal
    # n_D = 100, n_U = 300, weights 1: ratio w_D·n_D/(w_U·n_U) = 1/3. TRL's bounds:
    # w_D ∈ [round(300/100, 2), round(3·1.33, 2)] = [3.0, 3.99]; w_U ∈ [round(100/300/1.33, 2), round(1/3, 2)]
    #     = [round(0.2506, 2), 0.33] = [0.25, 0.33]
    message = P.kto_weight_warning(100, 300, 1.0, 1.0)
    assert message.startswith(
        "You have different amounts of desirable/positive and undesirable/negative examples"
    )
    assert "desirable_weight in [3.0, 3.99] or undesirable_weight in [0.25, 0.33] (but NOT BOTH)" in message
    assert P.kto_weight_warning(100, 300, 3.5, 1.0) is None  # ratio 350/300 = 1.17
    assert P.kto_weight_warning(100, 300, 1.0, 0.3) is None  # ratio 100/90 = 1.11
    assert P.kto_weight_warning(100, 300, 4.2, 1.0) is not None  # ratio 1.4 > 1.33
    assert P.kto_weight_warning(100, 300, 2.0, 1.0) is not None  # ratio 0.67 < 1
    assert P.kto_weight_warning(0, 5, 1.0, 1.0) is not None  # counts floored at 1: ratio 1/5


# -- ORPO (§4.8.3) -------------------------------------------------------------------------------


def test_orpo_log_odds_against_direct_odds():
    # p = e^lp: chosen [0.6, 0.999999, e^−50], rejected [0.2, 0.5, e^−51]
    lp_c = t(math.log(0.6), math.log(0.999999), -50.0)
    lp_r = t(math.log(0.2), math.log(0.5), -51.0)
    terms = P.orpo_loss(lp_c, lp_r, torch.tensor(1.2, dtype=torch.float64), lam=0.5)

    def odds(p: float) -> float:
        return p / (1 - p)

    direct = [
        math.log(odds(math.exp(c)) / odds(math.exp(r)))
        for c, r in zip(lp_c.tolist(), lp_r.tolist(), strict=True)
    ]
    assert terms.log_odds.tolist() == pytest.approx(direct, rel=1e-9)
    # first pair by hand: odds 0.6/0.4 = 1.5 and 0.2/0.8 = 0.25, ratio 6; log σ(log 6) = log(6/7)
    assert terms.log_odds[0].item() == pytest.approx(math.log(6))
    assert terms.log_sigmoid[0].item() == pytest.approx(math.log(6 / 7))
    log_sig = [-softplus(-x) for x in direct]  # log σ(x) = −log(1 + e^−x)
    assert terms.log_sigmoid.tolist() == pytest.approx(log_sig)
    assert terms.or_loss.item() == pytest.approx(-sum(log_sig) / 3)
    assert terms.loss.item() == pytest.approx(1.2 - 0.5 * sum(log_sig) / 3)  # nll − λ·mean(log σ)


def test_orpo_log_odds_stay_finite_near_probability_one():
    # lp = −1e−12 in float32: 1 − e^lp rounds to 0, so the naive log(1 − e^lp) is −inf; log(−expm1(lp)) is not
    lp_c = torch.tensor([-1e-12], dtype=torch.float32)
    lp_r = torch.tensor([-1.0], dtype=torch.float32)
    assert torch.log(1 - torch.exp(lp_c)).isinf().all()
    terms = P.orpo_loss(lp_c, lp_r, torch.tensor(0.0), lam=1.0)
    # log odds ≈ (−1e−12 + 1) − (log 1e−12 − log(1 − e^−1))
    expected = 1.0 - (math.log(1e-12) - math.log(1 - math.exp(-1.0)))
    assert terms.log_odds.item() == pytest.approx(expected, rel=1e-6)
    assert torch.isfinite(terms.loss)


# -- diagnostics (§4.4) --------------------------------------------------------------------------


def test_pair_accuracy_counts_ties_half():
    # pairs: 1 > 0 win, 2 = 2 tie, 3 < 4 loss, 0 > −1 win: (1 + 0.5 + 0 + 1) / 4
    assert P.pair_accuracy(t(1.0, 2.0, 3.0, 0.0), t(0.0, 2.0, 4.0, -1.0)) == 0.625


def test_ece_by_hand():
    # r_w − r_l = [0, log 3, −log 3, log 19] → p = σ(d) = [0.5, 0.75, 0.25, 0.95]
    # confidence max(p, 1 − p) = [0.5, 0.75, 0.75, 0.95]; correct (p ≥ 0.5) = [1, 1, 0, 1]
    # 5 bins of width 0.1: [0.5, 0.6) holds #0, [0.7, 0.8) holds #1 and #2, [0.9, 1] holds #3
    # ECE = (1·|1 − 0.5| + 2·|0.5 − 0.75| + 1·|1 − 0.95|) / 4 = (0.5 + 0.5 + 0.05) / 4 = 0.2625
    d = t(0.0, math.log(3), -math.log(3), math.log(19))
    result = P.expected_calibration_error(d, torch.zeros_like(d), n_bins=5)
    assert result["ece"] == pytest.approx(0.2625)
    assert result["n"] == 4
    assert [b["count"] for b in result["bins"]] == [1, 0, 2, 0, 1]
    assert result["bins"][2] == {
        "lower": pytest.approx(0.7),
        "upper": pytest.approx(0.8),
        "count": 2,
        "confidence": pytest.approx(0.75),
        "accuracy": 0.5,
    }
    assert result["bins"][1]["confidence"] is None and result["bins"][1]["accuracy"] is None


def synthetic_pairs(scale: float, n: int = 20000) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairs whose true preference is Bradley–Terry with margin m; the model reports scale·m."""
    gen = torch.Generator().manual_seed(0)
    m = 1.5 * torch.randn(n, generator=gen, dtype=torch.float64)
    chosen_is_first = torch.rand(n, generator=gen, dtype=torch.float64) < torch.sigmoid(m)
    d = (
        torch.where(chosen_is_first, m, -m) * scale
    )  # r(y_w) − r(y_l) once the human label has ordered the pair
    return d, torch.zeros_like(d)


def test_ece_of_calibrated_data_is_near_zero_and_of_overconfident_data_large():
    calibrated = P.expected_calibration_error(*synthetic_pairs(scale=1.0))
    overconfident = P.expected_calibration_error(*synthetic_pairs(scale=5.0))
    assert calibrated["ece"] < 0.02
    assert overconfident["ece"] > 0.15
    # the same pairs are ranked the same way: calibration, not accuracy, separates them
    assert P.pair_accuracy(*synthetic_pairs(1.0)) == P.pair_accuracy(*synthetic_pairs(5.0))


# -- sequence log-probs --------------------------------------------------------------------------


def test_sequence_logps_sum_mean_and_empty_rows():
    token_logps = t(-1.0, -2.0, -3.0, -0.5, float("-inf"), float("nan")).reshape(2, 3).requires_grad_()
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]])  # row 1: no real tokens, and -inf/NaN padding
    assert P.sequence_logps(token_logps, mask).tolist() == [-3.0, 0.0]  # −1 − 2; empty row 0
    mean = P.sequence_logps(token_logps, mask.bool(), average=True)
    assert mean.tolist() == [-1.5, 0.0]  # (−1 − 2) / 2
    mean.sum().backward()
    assert token_logps.grad.tolist() == [[0.5, 0.5, 0.0], [0.0, 0.0, 0.0]]  # finite, 1/n on real tokens


# -- bad arguments -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: P.bradley_terry_loss(t(1.0, 2.0), t(1.0)), "r_rejected"),
        (lambda: P.bradley_terry_loss(t(1.0).reshape(1, 1), t(1.0)), "r_chosen"),
        (lambda: P.dpo_loss(t(1.0), t(1.0), t(1.0), t(1.0), beta=0.0), "beta"),
        (lambda: P.dpo_loss(t(1.0), t(1.0), t(1.0), t(1.0), beta=0.1, loss_type="hinge"), "loss_type"),
        (
            lambda: P.dpo_loss(
                t(1.0), t(1.0), t(1.0), t(1.0), beta=0.1, loss_type="ipo", label_smoothing=0.1
            ),
            "ipo",
        ),
        (
            lambda: P.dpo_loss(t(1.0), t(1.0), t(1.0), t(1.0), beta=0.1, label_smoothing=0.5),
            "label_smoothing",
        ),
        (lambda: P.dpo_loss(t(1.0), t(1.0), t(1.0, 2.0), t(1.0), beta=0.1), "ref_chosen"),
        (
            lambda: P.kto_loss(
                t(1.0), t(1.0), torch.tensor([2]), kl_policy_logps=t(1.0), kl_ref_logps=t(1.0), beta=0.1
            ),
            "labels",
        ),
        (lambda: P.orpo_loss(t(0.1), t(-1.0), torch.tensor(0.0), lam=0.1), "chosen_avg_logps"),
        (lambda: P.expected_calibration_error(t(1.0), t(0.0), n_bins=0), "n_bins"),
        (lambda: P.sequence_logps(t(1.0, 2.0).reshape(1, 2), torch.ones(2, 1)), "mask"),
        (lambda: P.pair_accuracy(torch.tensor([1]), torch.tensor([0])), "floating-point"),
    ],
)
def test_bad_arguments_name_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# -- TRL 1.16's own loss code on the same tensors ------------------------------------------------


def trl_or_skip():
    trl = pytest.importorskip("trl")
    if not trl.__version__.startswith("1.16."):
        pytest.skip(f"the stand-ins below follow TRL 1.16's _compute_loss; installed {trl.__version__}")


def stand_in_trainer(**fields):
    identity = lambda x: x  # noqa: E731
    return SimpleNamespace(
        model=SimpleNamespace(training=True),
        accelerator=SimpleNamespace(device=torch.device("cpu"), gather=identity, gather_for_metrics=identity),
        aux_loss_enabled=False,
        precompute_ref_logps=True,
        _metrics=defaultdict(lambda: defaultdict(list)),
        _total_train_tokens=0,
        _tp_size=1,
        **fields,
    )


def trl_dpo(loss_type, beta, pc, pr, rc, rr, lengths, label_smoothing=0.0):
    """TRL's DPOTrainer._compute_loss on one prompt token + completions of ``lengths`` (chosen then rejected)."""
    from trl.trainer.dpo_trainer import DPOTrainer

    rows, width = 2 * len(pc), 1 + max(lengths)
    completion_mask = torch.zeros(rows, width, dtype=torch.long)
    for i, n in enumerate(lengths):
        completion_mask[i, 1 : 1 + n] = 1
    # TRL sums the model's shifted per-token log-probs: put each sequence log-prob on one position
    log_probs = torch.zeros(rows, width - 1, dtype=torch.float64)
    log_probs[:, 0] = torch.cat([pc, pr])
    outputs = SimpleNamespace(
        log_probs=log_probs,
        entropy=torch.zeros_like(log_probs),
        mean_logits=torch.zeros_like(log_probs),
        is_top1=torch.zeros_like(log_probs, dtype=torch.bool),
    )
    trainer = stand_in_trainer(
        ld_alpha=None,
        f_divergence_type="reverse_kl",
        loss_types=[loss_type],
        loss_weights=[1.0],
        beta=beta,
        label_smoothing=label_smoothing,
        use_weighting=False,
    )
    inputs = {
        "input_ids": torch.zeros(rows, width, dtype=torch.long),
        "attention_mask": torch.ones(rows, width, dtype=torch.long),
        "completion_mask": completion_mask,
        "ref_chosen_logps": rc,
        "ref_rejected_logps": rr,
    }
    loss = DPOTrainer._compute_loss(trainer, lambda **_: outputs, inputs, return_outputs=False)
    return loss, trainer._metrics["train"]


PAIRS = dict(
    policy_chosen=t(-12.0, -30.5, -7.25, -3.0),
    policy_rejected=t(-14.0, -29.0, -9.5, -3.0),
    ref_chosen=t(-13.0, -31.0, -6.0, -2.0),
    ref_rejected=t(-13.5, -30.0, -9.0, -4.0),
)
CHOSEN_LENGTHS, REJECTED_LENGTHS = [4, 10, 3, 1], [5, 8, 3, 2]


def per_pair(name: str, i: int) -> torch.Tensor:
    return PAIRS[name][i : i + 1]


def test_dpo_sigmoid_matches_trl():
    trl_or_skip()
    ours = P.dpo_loss(**PAIRS, beta=0.1)
    for i in range(4):
        theirs, _ = trl_dpo("sigmoid", 0.1, *(per_pair(k, i) for k in PAIRS), [1, 1])
        assert theirs.item() == pytest.approx(ours.losses[i].item(), rel=1e-12)
    theirs, metrics = trl_dpo("sigmoid", 0.1, *PAIRS.values(), [1] * 8)
    assert theirs.item() == pytest.approx(ours.loss.item(), rel=1e-12)
    assert metrics["rewards/chosen"][0] == pytest.approx(ours.chosen_rewards.mean().item(), rel=1e-12)
    assert metrics["rewards/margins"][0] == pytest.approx(ours.margins.mean().item(), rel=1e-12)


def test_dpo_label_smoothing_matches_trl_cdpo_form():
    # TRL 1.16's "sigmoid" ignores label_smoothing; its "aot" loss is the cDPO form on sorted batch
    # log-ratios, which for one pair is Δ itself.
    trl_or_skip()
    ours = P.dpo_loss(**PAIRS, beta=0.1, label_smoothing=0.2)
    for i in range(4):
        theirs, _ = trl_dpo("aot", 0.1, *(per_pair(k, i) for k in PAIRS), [1, 1], label_smoothing=0.2)
        assert theirs.item() == pytest.approx(ours.losses[i].item(), rel=1e-12)
    ignored, _ = trl_dpo("sigmoid", 0.1, *PAIRS.values(), [1] * 8, label_smoothing=0.2)
    assert ignored.item() == pytest.approx(P.dpo_loss(**PAIRS, beta=0.1).loss.item(), rel=1e-12)


def test_ipo_matches_trl_once_log_ratios_are_length_normalised():
    trl_or_skip()
    beta = 0.5
    theirs, _ = trl_dpo("ipo", beta, *PAIRS.values(), CHOSEN_LENGTHS + REJECTED_LENGTHS)
    lc, lr = t(*CHOSEN_LENGTHS), t(*REJECTED_LENGTHS)
    normalised = dict(
        policy_chosen=PAIRS["policy_chosen"] / lc,
        policy_rejected=PAIRS["policy_rejected"] / lr,
        ref_chosen=PAIRS["ref_chosen"] / lc,
        ref_rejected=PAIRS["ref_rejected"] / lr,
    )
    assert P.dpo_loss(**normalised, beta=beta, loss_type="ipo").loss.item() == pytest.approx(
        theirs.item(), rel=1e-12
    )
    # with sums (OpenRLHF's form) the same β gives a different objective
    summed = P.dpo_loss(**PAIRS, beta=beta, loss_type="ipo").loss.item()
    assert abs(summed - theirs.item()) > 0.1


def trl_kto(beta, desirable_weight, undesirable_weight, policy, ref, labels, kl_policy, kl_ref):
    """TRL's KTOTrainer._compute_loss; a row is one prompt token and one completion token."""
    from trl.trainer.kto_trainer import KTOTrainer

    def model(input_ids, **_):
        logps = kl_policy if bool(input_ids[0, 0] == 1) else policy  # the KL batch is marked by token 1
        zeros = torch.zeros(len(logps), 1, dtype=torch.float64)
        return SimpleNamespace(log_probs=logps[:, None], entropy=zeros, mean_logits=zeros)

    trainer = stand_in_trainer(
        calculate_KL=True,
        loss_type="kto",
        beta=beta,
        desirable_weight=desirable_weight,
        undesirable_weight=undesirable_weight,
    )
    trainer._compute_kl_logps = lambda m, batch: KTOTrainer._compute_kl_logps(trainer, m, batch)
    b, k = len(policy), len(kl_policy)
    inputs = {
        "input_ids": torch.zeros(b, 2, dtype=torch.long),
        "attention_mask": torch.ones(b, 2, dtype=torch.long),
        "completion_mask": torch.tensor([[0, 1]] * b),
        "label": labels,
        "KL_input_ids": torch.ones(k, 2, dtype=torch.long),
        "KL_attention_mask": torch.ones(k, 2, dtype=torch.long),
        "KL_completion_mask": torch.tensor([[0, 1]] * k),
        "ref_logps": ref,
        "ref_KL_logps": kl_ref,
    }
    loss = KTOTrainer._compute_loss(trainer, model, inputs, return_outputs=False)
    return loss, trainer._metrics["train"]


@pytest.mark.parametrize("kl_shift", [0.75, -0.75], ids=["z_ref>0", "z_ref-clamped"])
def test_kto_matches_trl(kl_shift):
    trl_or_skip()
    policy, ref = t(-10.0, -8.0, -15.0, -6.0, -9.0), t(-11.0, -7.5, -14.0, -6.5, -9.0)
    labels = torch.tensor([1, 0, 1, 0, 0])
    kl_ref = t(-20.0, -18.0, -16.0, -12.0, -14.0)
    kl_policy = kl_ref + kl_shift + t(0.1, -0.2, 0.3, -0.1, -0.1)  # mean log-ratio = kl_shift
    args = dict(beta=0.3, desirable_weight=1.5, undesirable_weight=0.8)
    ours = P.kto_loss(policy, ref, labels, kl_policy_logps=kl_policy, kl_ref_logps=kl_ref, **args)
    theirs, metrics = trl_kto(*args.values(), policy, ref, labels, kl_policy, kl_ref)
    assert ours.z_ref.item() == pytest.approx(max(kl_shift, 0.0), abs=1e-12)
    assert metrics["kl"][0] == pytest.approx(ours.z_ref.item(), abs=1e-12)
    assert theirs.item() == pytest.approx(ours.loss.item(), rel=1e-12)
    desirable = labels.bool()
    assert metrics["rewards/chosen"][0] == pytest.approx(ours.rewards[desirable].mean().item(), rel=1e-12)
    assert metrics["rewards/rejected"][0] == pytest.approx(ours.rewards[~desirable].mean().item(), rel=1e-12)


def test_orpo_matches_trl_odds_ratio_loss():
    trl_or_skip()
    from trl.experimental.orpo.orpo_trainer import ORPOTrainer

    lp_c, lp_r = t(-0.3, -1e-5, -2.0, -40.0), t(-0.9, -0.7, -1.0, -45.0)
    nll, lam = torch.tensor(1.7, dtype=torch.float64), 0.25
    ours = P.orpo_loss(lp_c, lp_r, nll, lam=lam)
    stand_in = SimpleNamespace(beta=lam, accelerator=SimpleNamespace(device=torch.device("cpu")))
    losses, _, _, mean_log_sigmoid, mean_log_odds = ORPOTrainer.odds_ratio_loss(stand_in, lp_c, lp_r)
    # TRL casts to float32, so agreement is to float32 precision
    assert (nll - losses.mean()).item() == pytest.approx(ours.loss.item(), rel=1e-6)  # get_batch_loss_metrics
    assert mean_log_sigmoid.item() == pytest.approx(ours.log_sigmoid.mean().item(), rel=1e-6)
    assert mean_log_odds.item() == pytest.approx(ours.log_odds.mean().item(), rel=1e-6)
