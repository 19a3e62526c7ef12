"""KL penalties, per-token rewards, reward moments and KL control (seed §4.4, §4.5 steps 5.2/5.4, §4.12)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from stages.ppo.kl_control import AdaptiveKLController, FixedKLController, KLBudget, mean_kl_per_sequence
from stages.ppo.rewards import RunningMoments, kl_penalty, normalize_and_clip, per_token_rewards

# -- k1 / k2 / k3 ---------------------------------------------------------------------------------


def test_kl_estimators_by_hand():
    # logp = [-1, -2], ref = [-1.5, -1]: logp - ref = [0.5, -1], d = ref - logp = [-0.5, 1]
    logp = torch.tensor([-1.0, -2.0], dtype=torch.float64)
    ref = torch.tensor([-1.5, -1.0], dtype=torch.float64)
    assert kl_penalty(logp, ref, "k1").tolist() == pytest.approx([0.5, -1.0])
    assert kl_penalty(logp, ref, "k2").tolist() == pytest.approx([0.125, 0.5])  # ½·0.25, ½·1
    # k3 = e^d - d - 1: e^-0.5 + 0.5 - 1 = 0.1065307, e - 1 - 1 = 0.7182818
    assert kl_penalty(logp, ref, "k3").tolist() == pytest.approx([math.exp(-0.5) - 0.5, math.e - 2.0])
    assert kl_penalty(logp, ref).tolist() == kl_penalty(logp, ref, "k1").tolist()  # k1 is the default


def test_k3_is_nonnegative_and_zero_on_equal_logps():
    g = torch.Generator().manual_seed(0)
    logp, ref = -torch.rand(64, 33, generator=g) * 8, -torch.rand(64, 33, generator=g) * 8
    assert (kl_penalty(logp, ref, "k3") >= 0).all()
    tiny = torch.tensor([-1.0, -1.0 + 1e-7, -1.0 - 1e-7])
    assert (kl_penalty(tiny, torch.full((3,), -1.0), "k3") >= 0).all()
    assert kl_penalty(logp, logp, "k3").abs().max().item() == 0.0
    # k1 averages to the true KL under sampling from π: KL[π‖ref] of two categoricals, 200k samples
    p, q = torch.tensor([0.7, 0.2, 0.1]), torch.tensor([0.4, 0.4, 0.2])
    exact = float((p * (p / q).log()).sum())
    tokens = torch.multinomial(p, 200_000, replacement=True, generator=g)
    k1 = kl_penalty(p.log()[tokens], q.log()[tokens], "k1").mean().item()
    k3 = kl_penalty(p.log()[tokens], q.log()[tokens], "k3").mean().item()
    assert k1 == pytest.approx(exact, abs=0.01) and k3 == pytest.approx(exact, abs=0.01)


def test_kl_penalty_bad_arguments():
    with pytest.raises(ValueError, match="kind"):
        kl_penalty(torch.zeros(2), torch.zeros(2), "k4")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ref_logp has shape"):
        kl_penalty(torch.zeros(2), torch.zeros(3))


# -- per-token rewards ----------------------------------------------------------------------------


def test_per_token_rewards_right_padding_by_hand():
    # β = 0.5: -β·kl on real tokens, the score added at the last real token only, 0 on padding.
    # row 0 (3 real): [-0.05, -0.1, -0.15 + 1] ; row 1 (2 real, pad holds NaN): [-0.2, -0.25 + 2, 0]
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, float("nan")]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    r = per_token_rewards(torch.tensor([1.0, 2.0]), kl, mask, beta=0.5)
    assert r.tolist()[0] == pytest.approx([-0.05, -0.1, 0.85])
    assert r.tolist()[1] == pytest.approx([-0.2, 1.75, 0.0])


def test_per_token_rewards_left_padding_by_hand():
    # row 0 left-padded by 1, row 1 by 2: the score lands at T-1 for both
    kl = torch.tensor([[9.0, 0.2, 0.4], [9.0, 9.0, -0.6]])
    mask = torch.tensor([[0, 1, 1], [0, 0, 1]], dtype=torch.bool)
    r = per_token_rewards(torch.tensor([3.0, -1.0]), kl, mask, beta=0.1)
    assert r.tolist()[0] == pytest.approx([0.0, -0.02, 3.0 - 0.04])
    assert r.tolist()[1] == pytest.approx([0.0, 0.0, -1.0 + 0.06])
    # β = 0: the score alone, only at the last real token
    r0 = per_token_rewards(torch.tensor([3.0, -1.0]), kl, mask, beta=0.0)
    assert r0.tolist() == [[0.0, 0.0, 3.0], [0.0, 0.0, -1.0]]


def test_per_token_rewards_bad_arguments():
    kl, mask = torch.zeros(2, 3), torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="score must be a 1-D tensor of 2"):
        per_token_rewards(torch.zeros(3), kl, mask, beta=0.1)
    with pytest.raises(ValueError, match="beta"):
        per_token_rewards(torch.zeros(2), kl, mask, beta=-0.1)
    with pytest.raises(ValueError, match="no real token"):
        per_token_rewards(torch.zeros(2), kl, torch.tensor([[1, 0, 0], [0, 0, 0]]), beta=0.1)
    with pytest.raises(ValueError, match="kl must be a 2-D"):
        per_token_rewards(torch.zeros(2), torch.zeros(2), torch.ones(2), beta=0.1)


# -- RunningMoments -------------------------------------------------------------------------------


def test_running_moments_match_numpy_over_chunks_merges_and_resume():
    rng = np.random.default_rng(0)
    batches = [rng.normal(3.0, 2.0, size=rng.integers(1, 40)) * rng.uniform(0.5, 5) for _ in range(12)]
    everything = np.concatenate(batches)
    # two "ranks" see alternate batches, then merge
    a, b = RunningMoments(), RunningMoments()
    for i, x in enumerate(batches):
        (a if i % 2 == 0 else b).update(torch.tensor(x, dtype=torch.float32))
    a.merge(b)
    assert a.count == everything.size
    assert a.mean == pytest.approx(everything.mean(), rel=1e-6)
    assert a.std == pytest.approx(everything.std(ddof=1), rel=1e-6)
    assert a.var(unbiased=False) == pytest.approx(everything.var(), rel=1e-6)
    # state_dict round trip, then both continue with the same data
    resumed = RunningMoments()
    resumed.load_state_dict(a.state_dict())
    extra = rng.normal(-1, 0.5, size=17)
    a.update(torch.tensor(extra))
    resumed.update(torch.tensor(extra))
    full = np.concatenate([everything, extra])
    assert resumed.state_dict() == a.state_dict()
    assert resumed.mean == pytest.approx(full.mean(), rel=1e-6)
    assert resumed.std == pytest.approx(full.std(ddof=1), rel=1e-6)


def test_running_moments_masked_update_and_errors():
    m = RunningMoments()
    m.update(
        torch.tensor([[1.0, 2.0, 1e9], [6.0, float("nan"), 0.0]]), mask=torch.tensor([[1, 1, 0], [1, 0, 0]])
    )
    assert (m.count, m.mean, m.var()) == (3, pytest.approx(3.0), pytest.approx(7.0))  # see test_masked
    with pytest.raises(ValueError, match="NaN or inf"):
        m.update(torch.tensor([1.0, float("inf")]))
    with pytest.raises(ValueError, match="no element"):
        m.update(torch.zeros(0))
    with pytest.raises(ValueError, match="no samples"):
        _ = RunningMoments().mean
    with pytest.raises(ValueError, match="lacks"):
        RunningMoments().load_state_dict({"count": 1})


def test_normalize_and_clip_by_hand():
    m = RunningMoments()
    m.update(torch.tensor([1.0, 2.0, 6.0]))  # mean 3, std √7
    s = math.sqrt(7)
    out = normalize_and_clip(torch.tensor([3.0, 3.0 + s, 3.0 - 20 * s]), m, eps=0.0)
    assert out.tolist() == pytest.approx([0.0, 1.0, -20.0])
    clipped = normalize_and_clip(torch.tensor([3.0, 3.0 + s, 3.0 - 20 * s]), m, clip=10.0, eps=0.0)
    assert clipped.tolist() == pytest.approx([0.0, 1.0, -10.0])
    assert m.count == 3  # read, not updated
    with pytest.raises(ValueError, match="at least 2 samples"):
        normalize_and_clip(torch.zeros(2), RunningMoments())
    with pytest.raises(ValueError, match="clip"):
        normalize_and_clip(torch.zeros(2), m, clip=0.0)


# -- KL controllers -------------------------------------------------------------------------------


def test_adaptive_controller_exact_factors():
    ctl = AdaptiveKLController()  # classic constants
    assert (ctl.value, ctl.target_kl_per_sequence, ctl.horizon) == (0.15, 6.0, 10_000)
    # overshoot within the clip: KL 6.6 -> e = 6.6/6 - 1 = 0.1; n = 256 -> factor 1 + 0.1·256/10000 = 1.00256
    assert ctl.update(kl_per_sequence=6.6, n_sequences=256) == pytest.approx(0.15 * 1.00256)
    # overshoot beyond the clip: KL 9 -> e = 0.5 -> 0.2; n = 100 -> factor 1.002
    beta = ctl.value
    assert ctl.update(9.0, 100) == pytest.approx(beta * 1.002)
    # undershoot: KL 5.4 -> e = -0.1, n = 500 -> factor 0.995
    beta = ctl.value
    assert ctl.update(5.4, 500) == pytest.approx(beta * 0.995)
    # far under (and a negative k1 mean): e clipped to -0.2, n = 1000 -> factor 0.98
    beta = ctl.value
    assert ctl.update(-3.0, 1000) == pytest.approx(beta * 0.98)
    # on target: unchanged
    beta = ctl.value
    assert ctl.update(6.0, 64) == pytest.approx(beta)


def test_adaptive_controller_direction_and_resume():
    up, down = AdaptiveKLController(0.1, 2.0, 1000), AdaptiveKLController(0.1, 2.0, 1000)
    for _ in range(5):
        up.update(3.0, 64)
        down.update(1.0, 64)
    assert up.value > 0.1 > down.value
    # 5 clipped steps each: (1 ± 0.2·64/1000)^5
    assert up.value == pytest.approx(0.1 * (1 + 0.2 * 0.064) ** 5)
    assert down.value == pytest.approx(0.1 * (1 - 0.2 * 0.064) ** 5)
    resumed = AdaptiveKLController(0.1, 2.0, 1000)
    resumed.load_state_dict(up.state_dict())
    assert resumed.update(2.5, 10) == up.update(2.5, 10)
    with pytest.raises(ValueError, match="adaptive"):
        resumed.load_state_dict(FixedKLController(0.1).state_dict())


def test_controller_arguments_and_fixed():
    fixed = FixedKLController(0.05)
    assert fixed.update(100.0, 8) == 0.05 and fixed.value == 0.05
    other = FixedKLController(0.0)
    other.load_state_dict(fixed.state_dict())
    assert other.value == 0.05
    with pytest.raises(ValueError, match="init_beta"):
        AdaptiveKLController(init_beta=0.0)
    with pytest.raises(ValueError, match="target_kl_per_sequence"):
        AdaptiveKLController(target_kl_per_sequence=0.0)
    with pytest.raises(ValueError, match="horizon"):
        AdaptiveKLController(horizon=0)
    with pytest.raises(ValueError, match="n_sequences"):
        AdaptiveKLController().update(1.0, 0)
    with pytest.raises(ValueError, match="NaN"):
        AdaptiveKLController().update(float("nan"), 4)


def test_mean_kl_per_sequence_sums_tokens_then_averages_rows():
    # row sums over real tokens: 0.1 + 0.2 + 0.3 = 0.6 and 0.4 + 0.5 = 0.9 -> mean 0.75 (not a token mean)
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 100.0]])
    assert mean_kl_per_sequence(kl, torch.tensor([[1, 1, 1], [1, 1, 0]])) == pytest.approx(0.75)


# -- hard KL budget -------------------------------------------------------------------------------


def test_kl_budget():
    budget = KLBudget(6.0)
    assert "nothing observed" in budget.sentence()
    assert budget.observe(3.0, step=1) is False
    assert "50% of the budget of 6 nats per sequence" in budget.sentence()
    assert budget.observe(7.5, step=2) is True and budget.exceeded
    sentence = budget.sentence()
    assert "exceeded at step 2" in sentence and "7.5 nats per sequence" in sentence and "§4.12" in sentence
    assert budget.observe(1.0, step=3) is True  # stays exceeded
    assert "exceeded at step 2" in budget.sentence()


def test_kl_budget_patience_and_resume():
    budget = KLBudget(2.0, patience=2)
    assert budget.observe(2.5, step=10) is False
    assert "1 of 2 consecutive" in budget.sentence()
    assert budget.observe(1.5, step=11) is False  # back under: the count restarts
    assert budget.observe(2.5, step=12) is False
    resumed = KLBudget(2.0, patience=2)
    resumed.load_state_dict(budget.state_dict())
    assert resumed.observe(3.0, step=13) is True
    assert "exceeded at step 13" in resumed.sentence() and "2 consecutive checks" in resumed.sentence()
    assert budget.state_dict() != resumed.state_dict()
    with pytest.raises(ValueError, match="max_kl_per_sequence"):
        KLBudget(0.0)
    with pytest.raises(ValueError, match="kl_budget"):
        KLBudget(1.0).load_state_dict(AdaptiveKLController().state_dict())
