"""Masked reductions (stages.lib.masked): padding never enters a mean, a variance or a whitening."""

from __future__ import annotations

import math

import pytest
import torch

from stages.lib.masked import last_index, masked_mean, masked_sum, masked_var, masked_whiten

# Three real values and a padded copy: same values, garbage (huge, inf, nan) appended where mask is 0.
X = torch.tensor([[1.0, 2.0, 6.0]])
M = torch.tensor([[True, True, True]])
X_PAD = torch.tensor([[1.0, 1e6, 2.0, float("inf"), 6.0, float("nan")]])
M_PAD = torch.tensor([[True, False, True, False, True, False]])


def test_mean_and_var_by_hand():
    # mean = (1 + 2 + 6) / 3 = 3; squared deviations 4 + 1 + 9 = 14; unbiased 14/2 = 7, biased 14/3.
    assert masked_mean(X, M).item() == pytest.approx(3.0)
    assert masked_var(X, M).item() == pytest.approx(7.0)
    assert masked_var(X, M, unbiased=False).item() == pytest.approx(14 / 3)
    assert masked_sum(X, M).item() == pytest.approx(9.0)


def test_padding_garbage_does_not_change_mean_var_whiten():
    assert masked_mean(X_PAD, M_PAD).item() == pytest.approx(masked_mean(X, M).item())
    assert masked_var(X_PAD, M_PAD).item() == pytest.approx(masked_var(X, M).item())
    w = masked_whiten(X, M)
    w_pad = masked_whiten(X_PAD, M_PAD)
    assert torch.allclose(w_pad[M_PAD], w[M])
    assert w_pad[~M_PAD].tolist() == [0.0, 0.0, 0.0]  # padding comes back as 0, not garbage


def test_whiten_by_hand():
    # (x - 3) / sqrt(7): [-2, -1, 3] / 2.6458
    s = math.sqrt(7.0)
    assert masked_whiten(X, M).flatten().tolist() == pytest.approx([-2 / s, -1 / s, 3 / s], rel=1e-6)
    # shift_mean=False keeps the mean: 3 + [-2, -1, 3] / sqrt(7)
    kept = masked_whiten(X, M, shift_mean=False).flatten().tolist()
    assert kept == pytest.approx([3 - 2 / s, 3 - 1 / s, 3 + 3 / s], rel=1e-6)
    w = masked_whiten(torch.randn(4, 7), torch.rand(4, 7) > 0.3)
    assert w.sum().item() == pytest.approx(0.0, abs=1e-5)


def test_mean_along_dim_and_empty_rows():
    x = torch.tensor([[1.0, 3.0, 100.0], [4.0, -5.0, -5.0]])
    m = torch.tensor([[1, 1, 0], [1, 0, 0]])  # numeric 0/1 masks are accepted
    assert masked_mean(x, m, dim=1).tolist() == [2.0, 4.0]
    empty = torch.tensor([[1, 1, 0], [0, 0, 0]])
    with pytest.raises(ValueError, match="no element"):
        masked_mean(x, empty, dim=1)
    assert masked_mean(x, empty, dim=1, allow_empty=True).tolist() == [2.0, 0.0]


def test_all_masked_raises_and_bad_arguments():
    none = torch.zeros(1, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="no element"):
        masked_mean(X, none)
    with pytest.raises(ValueError, match="no element"):
        masked_var(X, none)
    with pytest.raises(ValueError, match="no element"):
        masked_whiten(X, none)
    assert masked_sum(X, none).item() == 0.0  # documented: an empty sum is 0
    with pytest.raises(ValueError, match="at least 2"):
        masked_var(X, torch.tensor([[True, False, False]]))
    with pytest.raises(ValueError, match="mask has shape"):
        masked_mean(X, torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="0 and 1"):
        masked_mean(X, torch.tensor([[0.0, 0.5, 1.0]]))
    with pytest.raises(ValueError, match="x must be a torch.Tensor"):
        masked_mean([1.0, 2.0], M)  # type: ignore[arg-type]


def test_gradient_is_finite_through_nan_padding():
    x = X_PAD.clone().requires_grad_(True)
    masked_whiten(x, M_PAD).pow(2).sum().backward()
    assert torch.isfinite(x.grad).all()
    assert x.grad[~M_PAD].tolist() == [0.0, 0.0, 0.0]


def test_half_precision_is_reduced_in_float32():
    x = torch.full((1, 4096), 1.0, dtype=torch.bfloat16)
    out = masked_mean(x, torch.ones_like(x, dtype=torch.bool))
    assert out.dtype == torch.float32 and out.item() == 1.0


def test_last_index_left_and_right_padding():
    right = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    left = torch.tensor([[0, 1, 1, 1], [0, 0, 0, 1]])
    assert last_index(right).tolist() == [2, 0]
    assert last_index(left).tolist() == [3, 3]
    with pytest.raises(ValueError, match=r"rows \[1\]"):
        last_index(torch.tensor([[1, 0], [0, 0]]))
