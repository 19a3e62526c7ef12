"""Domain-mixing arithmetic of the curate stage (seed §3.5): p_i ∝ min(n_i, M)^(1/τ), counts, targets."""

from __future__ import annotations

import math

import pytest

from stages.lib.mixing import MixError, max_total, mix_counts, mix_proportions, realised


def formula(sizes: dict[str, int], tau: float, cap: int | None = None) -> dict[str, float]:
    raw = {k: (min(n, cap) if cap else n) ** (1 / tau) for k, n in sizes.items()}
    return {k: v / sum(raw.values()) for k, v in raw.items()}


SIZES = {"web": 10_000, "books": 1_000, "code": 100}


@pytest.mark.parametrize("tau", [1.0, 2.0, 3.5, 5.0])
def test_temperature_proportions_follow_the_formula(tau):
    probs = mix_proportions(SIZES, temperature=tau)
    assert probs == pytest.approx(formula(SIZES, tau))
    assert sum(probs.values()) == pytest.approx(1.0)


def test_tau_one_is_proportional_and_large_tau_tends_to_uniform():
    assert mix_proportions(SIZES) == pytest.approx({k: n / 11_100 for k, n in SIZES.items()})
    uniform = mix_proportions(SIZES, temperature=1e6)
    assert uniform == pytest.approx({k: 1 / 3 for k in SIZES}, abs=1e-4)
    # raising τ moves mass from the largest input to the smallest
    p2, p5 = mix_proportions(SIZES, temperature=2), mix_proportions(SIZES, temperature=5)
    assert p5["web"] < p2["web"] and p5["code"] > p2["code"]


def test_cap_applies_before_the_temperature():
    probs = mix_proportions(SIZES, temperature=2, cap=500)
    assert probs == pytest.approx(formula(SIZES, 2, cap=500))
    assert probs["web"] == pytest.approx(probs["books"])  # both capped at 500


def test_explicit_weights_are_normalised():
    assert mix_proportions(SIZES, weights={"web": 2, "books": 1, "code": 1}) == pytest.approx(
        {"web": 0.5, "books": 0.25, "code": 0.25}
    )


def test_default_total_takes_everything_when_proportional():
    probs = mix_proportions(SIZES)
    assert mix_counts(SIZES, probs) == SIZES


def test_default_total_with_cap_is_the_capped_sizes():
    probs = mix_proportions(SIZES, cap=500)
    assert mix_counts(SIZES, probs) == {"web": 500, "books": 500, "code": 100}


def test_default_total_is_limited_by_the_scarcest_input_for_its_share():
    probs = mix_proportions(SIZES, temperature=2)
    counts = mix_counts(SIZES, probs)
    total = math.floor(min(SIZES[k] / probs[k] for k in SIZES))
    assert sum(counts.values()) == total == max_total(SIZES, probs)
    assert counts["code"] == SIZES["code"]
    assert all(counts[k] <= SIZES[k] for k in SIZES)
    for k in SIZES:
        assert abs(counts[k] - probs[k] * total) < 1
    assert realised(counts) == pytest.approx(probs, abs=1 / total)


def test_target_counts_sum_exactly_by_largest_remainder():
    probs = {"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}
    counts = mix_counts({"a": 100, "b": 100, "c": 100}, probs, target=100)
    assert sum(counts.values()) == 100
    assert sorted(counts.values()) == [33, 33, 34]


def test_target_beyond_the_available_documents_needs_upsampling():
    probs = mix_proportions({"a": 10, "b": 10}, weights={"a": 3, "b": 1})
    with pytest.raises(MixError, match="target_docs=40 needs more documents than a has left; at most 13"):
        mix_counts({"a": 10, "b": 10}, probs, target=40)
    assert mix_counts({"a": 10, "b": 10}, probs, target=40, upsample=True) == {"a": 30, "b": 10}


def test_inputs_without_documents():
    assert mix_proportions({"a": 0, "b": 50}, temperature=2) == {"a": 0.0, "b": 1.0}
    assert mix_counts({"a": 0, "b": 50}, {"a": 0.0, "b": 1.0}) == {"a": 0, "b": 50}
    with pytest.raises(MixError, match="a have a share of the mix but no documents left"):
        mix_counts({"a": 0, "b": 50}, {"a": 0.5, "b": 0.5})
    with pytest.raises(MixError, match="no documents are left"):
        mix_counts({"a": 0}, mix_proportions({"a": 0}))
