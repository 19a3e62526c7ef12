"""PPO losses (stages.ppo.objectives) against hand computations (seed §4.4; §4.5 step 5.3)."""

from __future__ import annotations

import math

import pytest
import torch

from stages.ppo.objectives import (
    entropy_from_logits,
    explained_variance,
    policy_loss,
    token_logprobs,
    value_loss,
)

EPS = 0.2
# Six real tokens and one padding position (garbage NaN advantage there). old_logp = 0, so ρ = exp(logp).
#  t  Â   ρ     side                        per-token loss max(-Âρ, -Â·clip(ρ))   d loss_t / d logp_t
#  0  +1  1.5   Â>0, ρ>1+ε: clip binds      max(-1.5, -1.2) = -1.2                0
#  1  -1  0.5   Â<0, ρ<1-ε: clip binds      max( 0.5,  0.8) =  0.8                0
#  2  +1  1.1   inside                      -1.1                                  -Âρ = -1.1
#  3  -1  0.9   inside                       0.9                                  -Âρ = +0.9
#  4  +1  0.5   Â>0, ρ<1-ε: clip idle       max(-0.5, -0.8) = -0.5                -0.5
#  5  -1  1.5   Â<0, ρ>1+ε: clip idle       max( 1.5,  1.2) =  1.5                +1.5
# loss = (-1.2 + 0.8 - 1.1 + 0.9 - 0.5 + 1.5) / 6 = 0.4 / 6; gradients above divided by 6 (token mean).
RATIOS = [1.5, 0.5, 1.1, 0.9, 0.5, 1.5, 1.0]
ADV = torch.tensor([[1.0, -1.0, 1.0, -1.0, 1.0, -1.0, float("nan")]])
MASK = torch.tensor([[1, 1, 1, 1, 1, 1, 0]], dtype=torch.bool)


def test_clipped_surrogate_loss_and_gradients_by_hand():
    logp = torch.log(torch.tensor([RATIOS], dtype=torch.float64)).requires_grad_(True)
    terms = policy_loss(logp, torch.zeros_like(logp), ADV.double(), MASK, clip_eps=EPS)
    assert terms.loss.item() == pytest.approx(0.4 / 6)
    terms.loss.backward()
    grad = logp.grad.flatten().tolist()
    assert grad[0] == 0.0 and grad[1] == 0.0  # the clip binds: exactly zero
    assert grad[2:6] == pytest.approx([-1.1 / 6, 0.9 / 6, -0.5 / 6, 1.5 / 6])  # non-zero inside / idle side
    assert grad[6] == 0.0  # padding
    assert terms.clip_frac.item() == pytest.approx(2 / 6)  # tokens 0 and 1
    assert terms.ratio_mean.item() == pytest.approx(sum(RATIOS[:6]) / 6)
    # approx KL, k3 of KL[old‖new]: mean over real tokens of (ρ - 1) - log ρ
    k3 = [(r - 1) - math.log(r) for r in RATIOS[:6]]
    assert terms.approx_kl.item() == pytest.approx(sum(k3) / 6)
    assert not terms.clip_frac.requires_grad and not terms.approx_kl.requires_grad


def test_first_minibatch_ratio_is_exactly_one():
    g = torch.Generator().manual_seed(1)
    old = -torch.rand(3, 5, generator=g) * 5
    logp = old.clone().requires_grad_(True)
    adv = torch.randn(3, 5, generator=g)
    mask = torch.rand(3, 5, generator=g) > 0.2
    terms = policy_loss(logp, old, adv, mask, clip_eps=EPS)
    assert terms.ratio_mean.item() == 1.0
    assert terms.clip_frac.item() == 0.0
    assert terms.approx_kl.item() == 0.0
    # loss = -mean(Â) over real tokens, gradient -Â/N on real tokens
    n = int(mask.sum())
    assert terms.loss.item() == pytest.approx(-adv[mask].mean().item(), abs=1e-6)
    terms.loss.backward()
    assert torch.allclose(logp.grad, torch.where(mask, -adv / n, 0.0))


def test_policy_loss_bad_arguments():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="clip_eps"):
        policy_loss(x, x, x, x > -1, clip_eps=0.0)
    with pytest.raises(ValueError, match="advantages must have the shape"):
        policy_loss(x, x, torch.zeros(2, 2), x > -1, clip_eps=EPS)
    with pytest.raises(ValueError, match="mask"):
        policy_loss(x, x, x, torch.ones(3, dtype=torch.bool), clip_eps=EPS)


# Five real tokens and one padding position. ε = 0.2, V_clip = V_old + clip(V - V_old, ±0.2)
#  t  V     V_old  G     (V-G)²   V_clip  (V_clip-G)²   max    clip binds (clipped error larger)
#  0  1.0   0.5    1.0   0        0.7     0.09          0.09   yes
#  1  0.0   0.1    0.5   0.25     0.0     0.25          0.25   no (equal)
#  2  2.0   1.0    3.0   1.0      1.2     3.24          3.24   yes
#  3 -1.0   0.0   -2.0   1.0     -0.2     3.24          3.24   yes
#  4  2.0   1.0    1.1   0.81     1.2     0.01          0.81   no
# clipped loss = ½ · (0.09 + 0.25 + 3.24 + 3.24 + 0.81) / 5 = ½ · 7.63 / 5 = 0.763
# unclipped    = ½ · (0 + 0.25 + 1 + 1 + 0.81) / 5       = ½ · 3.06 / 5 = 0.306
V = torch.tensor([[1.0, 0.0, 2.0, -1.0, 2.0, 99.0]], dtype=torch.float64)
V_OLD = torch.tensor([[0.5, 0.1, 1.0, 0.0, 1.0, -99.0]], dtype=torch.float64)
G = torch.tensor([[1.0, 0.5, 3.0, -2.0, 1.1, float("nan")]], dtype=torch.float64)
VMASK = torch.tensor([[1, 1, 1, 1, 1, 0]], dtype=torch.bool)


def test_value_loss_clipping_by_hand():
    values = V.clone().requires_grad_(True)
    terms = value_loss(values, V_OLD, G, VMASK, clip_eps=0.2)
    assert terms.loss.item() == pytest.approx(0.763)
    assert terms.clip_frac.item() == pytest.approx(3 / 5)
    terms.loss.backward()
    # tokens 0, 2, 3: the clipped branch wins and V_clip is constant in V there -> zero gradient
    # tokens 1, 4: gradient ½ · 2 (V - G) / 5 = (V - G) / 5 -> -0.1, 0.18
    assert values.grad.flatten().tolist() == pytest.approx([0.0, -0.1, 0.0, 0.0, 0.18, 0.0])


def test_value_loss_unclipped_is_half_mse():
    terms = value_loss(V, V_OLD, G, VMASK)
    assert terms.loss.item() == pytest.approx(0.306)
    assert terms.clip_frac.item() == 0.0


def test_explained_variance():
    g = torch.Generator().manual_seed(0)
    returns = torch.randn(4, 6, generator=g)
    mask = torch.ones(4, 6, dtype=torch.bool)
    assert value_loss(returns, returns, returns, mask).explained_variance.item() == pytest.approx(1.0)
    # returns [1, 2, 3, 4], values [1, 2, 3, 3]: residual [0, 0, 0, 1], Var = 0.75/3 = 0.25 (unbiased);
    # Var[returns] = 5/3; EV = 1 - 0.25 / (5/3) = 0.85. A fifth, padded position holds garbage.
    r = torch.tensor([[1.0, 2.0, 3.0, 4.0, 50.0]])
    v = torch.tensor([[1.0, 2.0, 3.0, 3.0, -50.0]])
    m = torch.tensor([[1, 1, 1, 1, 0]], dtype=torch.bool)
    assert explained_variance(v, r, m).item() == pytest.approx(0.85)
    assert explained_variance(torch.zeros(1, 4), r[:, :4] * 0 + 1, m[:, :4]).isnan()  # constant returns


def test_entropy():
    for vocab in (2, 7, 50_000):
        uniform = torch.full((3, vocab), 4.2)
        assert torch.allclose(entropy_from_logits(uniform), torch.full((3,), math.log(vocab)))
    # logits [0, ln 3]: p = [1/4, 3/4], H = -(¼ ln ¼ + ¾ ln ¾) = 0.562335
    assert entropy_from_logits(torch.tensor([0.0, math.log(3)])).item() == pytest.approx(0.562335, abs=1e-6)
    # stable: huge logits, and -inf ones (a masked vocabulary entry contributes nothing)
    assert entropy_from_logits(torch.tensor([1e4, 1e4 - math.log(3)])).item() == pytest.approx(
        0.562335, abs=1e-4
    )
    h = entropy_from_logits(torch.tensor([0.0, math.log(3), -math.inf]))
    assert h.item() == pytest.approx(0.562335, abs=1e-6)
    # temperature: logits / T; [0, 2 ln 3] at T = 2 is the same distribution
    assert entropy_from_logits(torch.tensor([0.0, 2 * math.log(3)]), temperature=2.0).item() == pytest.approx(
        0.562335, abs=1e-6
    )
    bf16 = entropy_from_logits(torch.zeros(2, 8, dtype=torch.bfloat16))
    assert bf16.dtype == torch.float32


def test_token_logprobs_by_hand():
    # logits [0, ln 3] -> log p = [ln ¼, ln ¾]; at T = 2 on [0, 2 ln 3] the same
    logits = torch.tensor([[[0.0, math.log(3)], [0.0, math.log(3)]]])
    lp = token_logprobs(logits, torch.tensor([[0, 1]]))
    assert lp.flatten().tolist() == pytest.approx([math.log(0.25), math.log(0.75)])
    lp_t = token_logprobs(logits * 2, torch.tensor([[0, 1]]), temperature=2.0)
    assert lp_t.flatten().tolist() == pytest.approx([math.log(0.25), math.log(0.75)])
    with pytest.raises(ValueError, match="tokens must have shape"):
        token_logprobs(logits, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="temperature"):
        token_logprobs(logits, torch.tensor([[0, 1]]), temperature=0.0)


def test_bf16_log_probs_are_compared_in_float32():
    # bf16 log-probs -4.96875 and -5 (exact in bf16): the ratio is e^0.03125 = 1.031743; computed in bf16
    # it would round to 1.03125 (bf16 spacing near 1 is 2^-7).
    old = torch.full((1, 4), -5.0, dtype=torch.bfloat16)
    logp = torch.full((1, 4), -4.96875, dtype=torch.bfloat16).requires_grad_(True)
    terms = policy_loss(logp, old, torch.ones(1, 4), torch.ones(1, 4, dtype=torch.bool), clip_eps=EPS)
    assert terms.ratio_mean.dtype == torch.float32
    assert terms.ratio_mean.item() == pytest.approx(math.exp(0.03125), rel=1e-6)
    terms.loss.backward()
    assert logp.grad.dtype == torch.bfloat16
