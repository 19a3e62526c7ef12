"""Temperature mixing with a cap (seed §3.5), templates per example and the chain-of-thought ratio (§3.7)."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from hubflow.errors import StageInputError
from stages.instruct.data import Task, check_cot_source, draw, group_tasks, plan_mix
from stages.lib.finetune.config import Template

COLS = {"instruction": "instruction", "input": "input", "output": "output", "family": "family",
        "rationale": "rationale", "cot": "cot"}  # fmt: skip
T1 = Template(with_input="A {instruction} | {input}", without_input="A {instruction}")
T2 = Template(with_input="B {instruction} | {input}", without_input="B {instruction}")


def formula(sizes: dict[str, int], tau: float, cap: int | None) -> dict[str, float]:
    w = {k: min(n, cap or n) ** (1 / tau) for k, n in sizes.items()}
    return {k: v / sum(w.values()) for k, v in w.items()}


@pytest.mark.parametrize(("tau", "cap"), [(1.0, None), (2.0, None), (5.0, None), (2.0, 300), (1e6, None)])
def test_proportions_follow_the_formula(tau, cap):
    sizes = {"big": 1000, "mid": 100, "small": 10}
    probs, counts = plan_mix(sizes, tau, cap, None)
    want = formula(sizes, tau, cap)
    for k in sizes:
        assert probs[k] == pytest.approx(want[k], rel=1e-12)
    total = sum(min(n, cap) if cap else n for n in sizes.values())  # T = Σ min(N_k, M)
    assert sum(counts.values()) == total
    for k in sizes:
        assert abs(counts[k] - want[k] * total) < 1.0  # largest remainder rounding
    if tau == 1e6:  # τ -> ∞ tends to uniform
        assert max(probs.values()) - min(probs.values()) < 1e-3


def test_tau_one_without_cap_is_proportional_and_larger_tau_flattens():
    sizes = {"a": 800, "b": 200}
    p1, _ = plan_mix(sizes, 1.0, None, None)
    p2, _ = plan_mix(sizes, 2.0, None, None)
    assert p1 == {"a": pytest.approx(0.8), "b": pytest.approx(0.2)}
    assert p2["b"] == pytest.approx(math.sqrt(200) / (math.sqrt(800) + math.sqrt(200)))
    assert p2["b"] > p1["b"]


def _tasks(sizes: dict[str, int], **extra) -> dict[str, Task]:
    rows = {
        name: [
            {"instruction": f"do {name}", "input": str(i), "output": f"{name}{i}", "family": name, **extra}
            for i in range(n)
        ]  # fmt: skip
        for name, n in sizes.items()
    }
    return group_tasks(rows, "family")


def _draw(tasks, counts, **kw):
    args = dict(templates={}, default_templates=[T1, T2], cols=COLS, cot_ratio=None,
                cot_format="{rationale}\nAnswer: {output}", cot_trigger="Think.", system_prompt=None, seed=0)  # fmt: skip
    args.update(kw)
    return draw(tasks, counts, **args)


def test_realised_mix_matches_counts_and_upsamples_small_tasks():
    sizes = {"big": 400, "small": 20}
    tasks = _tasks(sizes)
    probs, counts = plan_mix(sizes, 3.0, None, 200)
    drawn = _draw(tasks, counts)
    got = Counter(d.family for d in drawn)
    assert dict(got) == counts and len(drawn) == 200
    assert counts["small"] > 20  # τ = 3 repeats the small task
    small_outputs = Counter(d.messages[-1]["content"] for d in drawn if d.family == "small")
    assert set(small_outputs) == {f"small{i}" for i in range(20)}  # every row used before any repeats twice
    assert max(small_outputs.values()) - min(small_outputs.values()) <= 1
    assert [d.family for d in drawn] != sorted(d.family for d in drawn)  # interleaved


def test_templates_are_drawn_per_example_and_per_task():
    tasks = _tasks({"a": 50, "b": 50})
    special = Template(with_input="S {instruction} :: {input}", without_input="S {instruction}")
    drawn = _draw(tasks, {"a": 100, "b": 100}, templates={"b": [special]})
    users_a = [d.messages[0]["content"] for d in drawn if d.family == "a"]
    assert {u[0] for u in users_a} == {"A", "B"} and 30 < sum(u[0] == "A" for u in users_a) < 70
    assert all(d.messages[0]["content"].startswith("S do b :: ") for d in drawn if d.family == "b")


def test_cot_ratio_with_rationale_column():
    tasks = _tasks({"math": 100}, rationale="because 1+1")
    drawn = _draw(tasks, {"math": 400}, cot_ratio=0.25)
    cot = [d for d in drawn if d.cot]
    assert 0.18 < len(cot) / len(drawn) < 0.32
    d = cot[0]
    assert d.messages[-1]["content"].startswith("because 1+1\nAnswer: math")
    assert d.messages[0]["content"].endswith("Think. | " + d.messages[0]["content"].split(" | ")[-1])
    plain = next(x for x in drawn if not x.cot)
    assert "Answer:" not in plain.messages[-1]["content"]


def test_cot_ratio_with_rows_already_in_both_forms():
    rows = [{"instruction": "q", "input": "", "output": f"r{i}\nAnswer: x" if i % 2 else "x", "family": "f",
             "cot": bool(i % 2)} for i in range(40)]  # fmt: skip
    tasks = group_tasks({"d": rows}, "family")
    drawn = _draw(tasks, {"f": 500}, cot_ratio=0.8)
    share = sum(d.cot for d in drawn) / len(drawn)
    assert 0.74 < share < 0.86
    assert all(("Answer:" in d.messages[-1]["content"]) == d.cot for d in drawn)


def test_cot_ratio_without_any_reasoning_fails_before_training():
    with pytest.raises(StageInputError, match="no training row carries a reasoning chain"):
        check_cot_source(_tasks({"a": 3}), COLS, 0.5, ["data"])
    check_cot_source(_tasks({"a": 3}), COLS, None, ["data"])  # nothing asked, nothing checked


def test_rows_without_family_form_one_task_per_input():
    tasks = group_tasks(
        {"x": [{"instruction": "i", "output": "o"}] * 3, "y": [{"instruction": "i", "output": "o"}]}, "family"
    )
    assert {k: len(v.rows) for k, v in tasks.items()} == {"x": 3, "y": 1}


def test_null_cot_ratio_keeps_the_data_as_it_comes():
    rows = [
        {"instruction": "q", "input": "", "output": f"o{i}", "family": "f", "cot": i < 10} for i in range(40)
    ]
    drawn = _draw(group_tasks({"d": rows}, "family"), {"f": 40})
    assert sum(d.cot for d in drawn) == 10  # every row once, in both forms as they are
    assert {d.messages[-1]["content"] for d in drawn} == {f"o{i}" for i in range(40)}
