"""Advantage estimators (stages.ppo.advantages) against hand computations (seed §4.4, §4.5 step 5.2)."""

from __future__ import annotations

import inspect
import math

import pytest
import torch

from stages.ppo.advantages import ESTIMATORS, NEEDS_CRITIC, NEEDS_GROUPS, get_estimator
from stages.ppo.advantages.gae import gae
from stages.ppo.advantages.grpo import grpo
from stages.ppo.advantages.reinforce_pp import reinforce_pp
from stages.ppo.advantages.rloo import rloo

NAN = float("nan")


def approx(t: torch.Tensor, expected: list, tol: float = 1e-5):
    assert t.shape == torch.Size([len(expected), len(expected[0])])
    for row, want in zip(t.tolist(), expected, strict=True):
        assert row == pytest.approx(want, abs=tol)


# -- GAE ------------------------------------------------------------------------------------------


def test_gae_1x4_gamma1_lambda095_by_hand():
    # r = [0.1, -0.2, 0, 1], V = [0.5, 0.4, 0.6, 0.8], V after the end = 0, γ = 1, λ = 0.95
    # δ3 = 1 + 0 - 0.8 = 0.2        Â3 = 0.2
    # δ2 = 0 + 0.8 - 0.6 = 0.2      Â2 = 0.2 + 0.95·0.2    = 0.39
    # δ1 = -0.2 + 0.6 - 0.4 = 0     Â1 = 0 + 0.95·0.39     = 0.3705
    # δ0 = 0.1 + 0.4 - 0.5 = 0      Â0 = 0 + 0.95·0.3705   = 0.351975
    # G = Â + V = [0.851975, 0.7705, 0.99, 1.0]
    r = torch.tensor([[0.1, -0.2, 0.0, 1.0]])
    v = torch.tensor([[0.5, 0.4, 0.6, 0.8]])
    adv, ret = gae(r, v, torch.ones(1, 4, dtype=torch.bool), gamma=1.0, lam=0.95)
    approx(adv, [[0.351975, 0.3705, 0.39, 0.2]])
    approx(ret, [[0.851975, 0.7705, 0.99, 1.0]])


# Row 0 has 3 real tokens, row 1 has 2 and one padding position holding garbage (reward 7, value 9).
R2 = torch.tensor([[0.0, 0.0, 1.0], [0.5, 2.0, 7.0]])
V2 = torch.tensor([[0.2, 0.4, 0.5], [1.0, 0.5, 9.0]])
M2 = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)


def test_gae_2x3_padded_gamma09_lambda1_by_hand():
    # γ = 0.9, λ = 1 (γλ = 0.9)
    # row 0: δ2 = 1 - 0.5 = 0.5; δ1 = 0.9·0.5 - 0.4 = 0.05; δ0 = 0.9·0.4 - 0.2 = 0.16
    #        Â2 = 0.5; Â1 = 0.05 + 0.9·0.5 = 0.5; Â0 = 0.16 + 0.9·0.5 = 0.61; G = [0.81, 0.9, 1.0]
    #        (λ = 1: G is the Monte-Carlo return 0.9², 0.9, 1)
    # row 1: δ1 = 2 + 0.9·0 - 0.5 = 1.5 (V = 0 after the end, not 9); δ0 = 0.5 + 0.9·0.5 - 1 = -0.05
    #        Â1 = 1.5; Â0 = -0.05 + 0.9·1.5 = 1.3; G = [2.3, 2.0, 0]   (MC: 0.5 + 0.9·2 = 2.3)
    adv, ret = gae(R2, V2, M2, gamma=0.9, lam=1.0)
    approx(adv, [[0.61, 0.5, 0.5], [1.3, 1.5, 0.0]])
    approx(ret, [[0.81, 0.9, 1.0], [2.3, 2.0, 0.0]])


def test_gae_2x3_padded_gamma1_lambda095_by_hand():
    # row 0: δ2 = 0.5; δ1 = 0.5 - 0.4 = 0.1; δ0 = 0.4 - 0.2 = 0.2
    #        Â2 = 0.5; Â1 = 0.1 + 0.95·0.5 = 0.575; Â0 = 0.2 + 0.95·0.575 = 0.74625; G = [0.94625, 0.975, 1]
    # row 1: δ1 = 2 - 0.5 = 1.5; δ0 = 0.5 + 0.5 - 1 = 0; Â1 = 1.5; Â0 = 0.95·1.5 = 1.425; G = [2.425, 2, 0]
    adv, ret = gae(R2, V2, M2, gamma=1.0, lam=0.95)
    approx(adv, [[0.74625, 0.575, 0.5], [1.425, 1.5, 0.0]])
    approx(ret, [[0.94625, 0.975, 1.0], [2.425, 2.0, 0.0]])


def test_gae_left_padding_and_nan_garbage_give_the_same_numbers():
    right_adv, right_ret = gae(R2, V2, M2, gamma=1.0, lam=0.95)
    # row 1 left-padded, with NaN in the padding
    r = torch.tensor([[0.0, 0.0, 1.0], [NAN, 0.5, 2.0]])
    v = torch.tensor([[0.2, 0.4, 0.5], [NAN, 1.0, 0.5]])
    m = torch.tensor([[1, 1, 1], [0, 1, 1]], dtype=torch.bool)
    adv, ret = gae(r, v, m, gamma=1.0, lam=0.95)
    assert torch.allclose(adv[1, 1:], right_adv[1, :2]) and adv[1, 0].item() == 0.0
    assert torch.allclose(ret[1, 1:], right_ret[1, :2]) and ret[1, 0].item() == 0.0
    assert torch.allclose(adv[0], right_adv[0])


def test_gae_lambda1_gamma1_is_monte_carlo_return_minus_value():
    g = torch.Generator().manual_seed(0)
    r, v = torch.randn(5, 9, generator=g), torch.randn(5, 9, generator=g)
    lengths = [9, 1, 4, 7, 2]
    m = torch.arange(9)[None, :] < torch.tensor(lengths)[:, None]
    adv, ret = gae(r, v, m, gamma=1.0, lam=1.0)
    for i, n in enumerate(lengths):
        mc = torch.flip(torch.cumsum(torch.flip(r[i, :n], [0]), 0), [0])  # G_t = Σ_{s≥t} r_s
        assert torch.allclose(ret[i, :n], mc, atol=1e-5)
        assert torch.allclose(adv[i, :n], mc - v[i, :n], atol=1e-5)
        assert adv[i, n:].abs().sum().item() == 0.0 and ret[i, n:].abs().sum().item() == 0.0


def test_gae_matches_the_seed_sum_written_out():
    # Â_t = Σ_l (γλ)^l δ_{t+l}, δ_t = r_t + γ V_{t+1} - V_t with V = 0 past the end, evaluated term by term
    g = torch.Generator().manual_seed(3)
    r, v = (
        torch.randn(4, 6, generator=g, dtype=torch.float64),
        torch.randn(4, 6, generator=g, dtype=torch.float64),
    )
    lengths = [6, 3, 1, 5]
    m = torch.arange(6)[None, :] < torch.tensor(lengths)[:, None]
    gamma, lam = 0.97, 0.9
    adv, ret = gae(r, v, m, gamma=gamma, lam=lam)
    for i, n in enumerate(lengths):
        vals = v[i, :n].tolist() + [0.0]
        deltas = [r[i, t].item() + gamma * vals[t + 1] - vals[t] for t in range(n)]
        for t in range(n):
            want = sum((gamma * lam) ** k * deltas[t + k] for k in range(n - t))
            assert adv[i, t].item() == pytest.approx(want, abs=1e-12)
            assert ret[i, t].item() == pytest.approx(want + vals[t], abs=1e-12)


def test_gae_whiten_flag_whitens_advantages_not_returns():
    raw_adv, raw_ret = gae(R2, V2, M2, gamma=1.0, lam=0.95)
    adv, ret = gae(R2, V2, M2, gamma=1.0, lam=0.95, whiten=True)
    assert torch.equal(ret, raw_ret)  # returns come from the advantages before whitening
    real = raw_adv[M2]
    assert torch.allclose(adv[M2], (real - real.mean()) / real.std(), atol=1e-5)
    assert adv[~M2].tolist() == [0.0]


def test_gae_outputs_carry_no_gradient_and_bad_arguments_raise():
    v = V2.clone().requires_grad_(True)
    adv, ret = gae(R2, v, M2, gamma=1.0, lam=0.95)
    assert not adv.requires_grad and not ret.requires_grad
    with pytest.raises(ValueError, match="values"):
        gae(R2, None, M2, gamma=1.0, lam=0.95)
    with pytest.raises(ValueError, match="values must have the shape"):
        gae(R2, V2[:, :2], M2, gamma=1.0, lam=0.95)
    with pytest.raises(ValueError, match="gamma"):
        gae(R2, V2, M2, gamma=1.5, lam=0.95)
    with pytest.raises(ValueError, match="lam"):
        gae(R2, V2, M2, gamma=1.0, lam=-0.1)
    with pytest.raises(ValueError, match="rewards must be a 2-D"):
        gae(R2[0], V2[0], M2[0], gamma=1.0, lam=0.95)
    with pytest.raises(ValueError, match=r"rows \[1\] have no real token"):
        gae(R2, V2, torch.tensor([[1, 1, 1], [0, 0, 0]]), gamma=1.0, lam=0.95)


# -- REINFORCE++ ----------------------------------------------------------------------------------

RR = torch.tensor([[-0.1, -0.2, 1.0], [0.0, 0.5, 3.0]])  # row 1: last position is padding


def test_reinforce_pp_returns_to_go_and_batch_whitening_by_hand():
    # γ = 1: row 0 G = [-0.1-0.2+1, -0.2+1, 1] = [0.7, 0.8, 1.0]; row 1 G = [0.5, 0.5, 0 (pad)]
    # real G: 0.7, 0.8, 1.0, 0.5, 0.5 -> mean 0.7; deviations 0, 0.1, 0.3, -0.2, -0.2
    # Σ dev² = 0.18, unbiased var = 0.18 / 4 = 0.045
    adv, ret = reinforce_pp(RR, None, M2, gamma=1.0)
    approx(ret, [[0.7, 0.8, 1.0], [0.5, 0.5, 0.0]])
    s = math.sqrt(0.045)
    approx(adv, [[0.0, 0.1 / s, 0.3 / s], [-0.2 / s, -0.2 / s, 0.0]])


def test_reinforce_pp_discount_by_hand():
    # γ = 0.5: row 0 G2 = 1, G1 = -0.2 + 0.5·1 = 0.3, G0 = -0.1 + 0.5·0.3 = 0.05; row 1 G1 = 0.5, G0 = 0.25
    _, ret = reinforce_pp(RR, None, M2, gamma=0.5)
    approx(ret, [[0.05, 0.3, 1.0], [0.25, 0.5, 0.0]])


def test_reinforce_pp_refuses_values():
    with pytest.raises(ValueError, match="critic-free"):
        reinforce_pp(RR, V2, M2, gamma=1.0)


# -- GRPO / RLOO ----------------------------------------------------------------------------------

# Four rows, two prompts (groups 7 and 3); the score sits at the last real token (rows 1 and 3 padded).
SCORE_R = torch.tensor([[0.0, 1.0, 0.0], [3.0, 5.0, 5.0], [0.0, 0.0, 0.0], [0.0, 4.0, 9.0]])
SCORE_M = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 1], [1, 1, 0]], dtype=torch.bool)
GROUPS = torch.tensor([7, 7, 3, 3])


def test_grpo_by_hand():
    # R = [1, 3, 0, 4]; group 7: mean 2, unbiased std sqrt((1 + 1)/1) = √2 -> A = ∓1/√2
    #                   group 3: mean 2, std sqrt((4 + 4)/1) = 2√2 -> A = ∓2/(2√2) = ∓1/√2
    adv, ret = grpo(SCORE_R, None, SCORE_M, group_ids=GROUPS, eps=0.0)
    a = 1 / math.sqrt(2)
    approx(adv, [[-a, -a, -a], [a, 0, 0], [-a, -a, -a], [a, a, 0]])
    approx(ret, [[1, 1, 1], [3, 0, 0], [0, 0, 0], [4, 4, 0]])


def test_rloo_by_hand():
    # groups of 2: baseline = the other sample. A = [1-3, 3-1, 0-4, 4-0] = [-2, 2, -4, 4]
    adv, _ = rloo(SCORE_R, None, SCORE_M, group_ids=GROUPS)
    approx(adv, [[-2, -2, -2], [2, 0, 0], [-4, -4, -4], [4, 4, 0]])
    # one group of 3 with R = [1, 2, 6]: baselines (2+6)/2 = 4, (1+6)/2 = 3.5, (1+2)/2 = 1.5
    adv3, _ = rloo(
        torch.tensor([[1.0], [2.0], [6.0]]), None, torch.ones(3, 1), group_ids=torch.tensor([0, 0, 0])
    )
    assert adv3.flatten().tolist() == pytest.approx([-3.0, -1.5, 4.5])


def test_group_estimators_check_group_ids():
    with pytest.raises(ValueError, match="group_ids"):
        grpo(SCORE_R, None, SCORE_M)
    with pytest.raises(ValueError, match="at least 2 samples per group"):
        rloo(SCORE_R, None, SCORE_M, group_ids=torch.tensor([0, 0, 1, 2]))
    with pytest.raises(ValueError, match="integer"):
        grpo(SCORE_R, None, SCORE_M, group_ids=torch.tensor([0.0, 0.0, 1.0, 1.0]))


# -- registry -------------------------------------------------------------------------------------


def test_registry_common_signature():
    assert set(ESTIMATORS) == {"gae", "reinforce_pp", "grpo", "rloo"}
    assert NEEDS_CRITIC == {"gae"} and NEEDS_GROUPS == {"grpo", "rloo"}
    for name, fn in ESTIMATORS.items():
        params = list(inspect.signature(fn).parameters.values())
        assert [p.name for p in params[:3]] == ["rewards", "values", "mask"], name
        assert {"gamma", "lam", "group_ids"} <= {p.name for p in params if p.kind is p.KEYWORD_ONLY}, name
        values = V2 if name in NEEDS_CRITIC else None
        groups = torch.tensor([0, 0]) if name in NEEDS_GROUPS else None
        adv, ret = fn(R2, values, M2, gamma=1.0, lam=0.95, group_ids=groups)
        assert adv.shape == ret.shape == R2.shape
        assert adv[~M2].abs().sum().item() == 0.0, name  # padding gets 0 advantage
    with pytest.raises(ValueError, match="known"):
        get_estimator("ppo2")
    assert get_estimator("gae") is gae
