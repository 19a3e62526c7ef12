"""evaluate on preference splits: the log-prob preference accuracy and the DPO implicit reward against a
reference (full or adapter + base) checked against plain one-sequence forwards; a reward model's (and an
ensemble's) pair accuracy, calibration and generation rewards; the new checks fail before any weight loads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hubflow.errors import StageInputError

torch = pytest.importorskip("torch")
pytest.importorskip("trl")

from stages import evaluate, reward  # noqa: E402
from stages.lib.chat import split_prompt_completion  # noqa: E402
from stages.lib.testing import save_base, save_lora, stage_context, write_dataset  # noqa: E402

BASE_REF = "model:demo/sft@" + "b" * 40


def rows_of(folder: Path, split: str) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    return pq.read_table(folder / "data" / f"{split}-00000-of-00001.parquet").to_pylist()


def ecfg(inputs: dict[str, Path], **kw: Any) -> evaluate.Config:
    return evaluate.Config(
        name="eval", kind="evaluate", inputs={k: k for k in inputs}, output="dataset:demo/eval", **kw
    )


def run_eval(
    tmp: Path, inputs: dict[str, Path], **kw: Any
) -> tuple[dict[str, Any], list[dict[str, Any]], Any]:
    ctx = stage_context(tmp, inputs)
    result = evaluate.run(ctx, ecfg(inputs, **kw))
    return result.metrics, rows_of(ctx.output, "train"), result


@pytest.fixture(scope="module")
def prefs(tmp_path_factory, synthetic_tasks) -> Path:
    """24 held-out synthetic preference pairs (conversational, with their family)."""
    test = rows_of(synthetic_tasks["preferences"], "test")[:24]
    return write_dataset(tmp_path_factory.mktemp("prefs"), test[:1], test)  # evaluate reads `test`


@pytest.fixture(scope="module")
def reward_models(tmp_path_factory, policy_factory, synthetic_tasks) -> tuple[Path, Path]:
    """(a reward stage's model, a reward stage's K=2 ensemble), both from the seed-0 policy."""
    made = []
    for k, steps in ((1, 40), (2, 10)):
        tmp = tmp_path_factory.mktemp(f"rm{k}")
        ctx = stage_context(tmp, {"model": policy_factory(), "prefs": synthetic_tasks["preferences"]})
        cfg = reward.Config(
            name="rm", kind="reward", inputs={"model": "m", "prefs": "p"}, output="model:demo/rm",
            max_steps=steps, learning_rate=1e-3, per_device_train_batch_size=16, ensemble=k, save_steps=None,
        )  # fmt: skip
        reward.run(ctx, cfg)
        made.append(ctx.output)
    return made[0], made[1]


def direct_logp(model: Any, tok: Any, prompt: Any, completion: Any) -> float:
    """log π(completion | prompt): one unpadded sequence, summed over the completion's tokens."""
    p, c = split_prompt_completion(tok, prompt, completion)
    ids = torch.tensor([p + c])
    with torch.no_grad():
        logp = model(input_ids=ids).logits[0].double().log_softmax(-1)
    return sum(float(logp[t - 1, ids[0, t]]) for t in range(len(p), len(p) + len(c)))


def direct_reward(model: Any, tok: Any, prompt: Any, completion: Any) -> float:
    ids = sum(split_prompt_completion(tok, prompt, completion), [])
    with torch.no_grad():
        return float(model(input_ids=torch.tensor([ids])).logits[0, 0])


def test_logprob_and_implicit_reward_accuracy(tmp_path, policy_factory, prefs):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    policy = policy_factory()
    adapter = save_lora(tmp_path / "dpo-lora", policy, seed=2)
    m, rows, result = run_eval(
        tmp_path / "a",
        {"model": adapter, "base": policy, "reference": policy, "prefs": prefs},
        max_new_tokens=4,
    )
    tok = AutoTokenizer.from_pretrained(str(policy))
    pi = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(policy)), str(adapter)).eval()
    ref = AutoModelForCausalLM.from_pretrained(str(policy)).eval()
    src = rows_of(prefs, "test")
    assert len(rows) == 24 and m["pairs"] == 24 and m["pairs_dropped"] == 0
    wins, margins = [], []
    for row, pair in zip(rows, src, strict=True):
        lc, lr = (direct_logp(pi, tok, pair["prompt"], pair[s]) for s in ("chosen", "rejected"))
        rc, rr = (direct_logp(ref, tok, pair["prompt"], pair[s]) for s in ("chosen", "rejected"))
        assert row["logp_chosen"] == pytest.approx(lc, abs=1e-4) and row["logp_rejected"] == pytest.approx(
            lr, abs=1e-4
        )
        assert row["ref_logp_chosen"] == pytest.approx(rc, abs=1e-4)
        assert row["ref_logp_rejected"] == pytest.approx(rr, abs=1e-4)
        assert row["implicit_margin"] == pytest.approx((lc - rc) - (lr - rr), abs=2e-4)
        assert (
            row["rejected"] == pair["rejected"][-1]["content"]
            and row["reference"] == pair["chosen"][-1]["content"]
        )
        wins.append(lc > lr)
        margins.append((lc - rc) - (lr - rr))
    assert m["logp_accuracy"] == pytest.approx(sum(wins) / 24, abs=1e-6)
    assert m["implicit_reward_accuracy"] == pytest.approx(sum(x > 0 for x in margins) / 24, abs=1e-6)
    assert m["implicit_margin_mean"] == pytest.approx(sum(margins) / 24, abs=1e-4)
    assert 0 < m["implicit_reward_accuracy"] < 1  # the adapter moved the policy both ways: not a constant
    assert m["model_type"] == "adapter" and m["reference_type"] == "full" and "judge_accuracy" in m
    assert set(m["families"]) == {"max", "min"} and "logp_accuracy" in m["families"]["max"]
    card = result.card_sections["Evaluation"]
    assert "| family | pairs | logp_accuracy | implicit_reward_accuracy | implicit_margin_mean |" in card

    # swapped: the full model evaluated against the adapter (on `reference_base`): every margin flips sign
    m2, rows2, _ = run_eval(
        tmp_path / "b",
        {"model": policy, "reference": adapter, "reference_base": policy, "prefs": prefs},
        generate=False,
    )
    assert m2["reference_type"] == "adapter"
    for a, b in zip(rows, rows2, strict=True):
        assert b["implicit_margin"] == pytest.approx(-a["implicit_margin"], abs=2e-4)


def test_reward_model_accuracy_calibration_and_generation_reward(
    tmp_path, policy_factory, prefs, reward_models, synthetic_tasks
):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from stages.lib.preference import expected_calibration_error

    single, ensemble = reward_models
    policy = policy_factory()
    tasks = write_dataset(
        tmp_path / "tasks", [{"x": 1}], rows_of(synthetic_tasks["instructions"], "test")[:12]
    )
    m, rows, result = run_eval(
        tmp_path / "a", {"model": policy, "reward": single, "prefs": prefs, "tasks": tasks}, max_new_tokens=6
    )
    tok = AutoTokenizer.from_pretrained(str(single))
    rm = AutoModelForSequenceClassification.from_pretrained(str(single)).eval()
    src = rows_of(prefs, "test")
    chosen = [direct_reward(rm, tok, p["prompt"], p["chosen"]) for p in src]
    rejected = [direct_reward(rm, tok, p["prompt"], p["rejected"]) for p in src]
    pref_rows = [r for r in rows if r["dataset"] == "prefs"]
    for row, c, r in zip(pref_rows, chosen, rejected, strict=True):
        assert row["reward_chosen"] == pytest.approx(c, abs=1e-4) and row["reward_rejected"] == pytest.approx(
            r, abs=1e-4
        )
    acc = sum(c > r for c, r in zip(chosen, rejected, strict=True)) / 24
    expected = expected_calibration_error(torch.tensor(chosen), torch.tensor(rejected))
    assert m["prefs/reward_accuracy"] == pytest.approx(acc, abs=1e-6) and acc > 0.6
    assert m["prefs/reward_ece"] == pytest.approx(expected["ece"], abs=1e-4)
    assert [b["count"] for b in m["prefs/reward_calibration"]] == [b["count"] for b in expected["bins"]]
    task_rows = [r for r in rows if r["dataset"] == "tasks"]
    gen_rewards = [
        direct_reward(rm, tok, p["prompt"], [{"role": "assistant", "content": r["generation"]}])
        for p, r in zip(rows_of(tasks, "test"), task_rows, strict=True)
    ]
    for row, g in zip(task_rows, gen_rewards, strict=True):
        assert row["reward_generation"] == pytest.approx(g, abs=1e-4) and row["logp_chosen"] is None
    assert m["tasks/reward_mean"] == pytest.approx(sum(gen_rewards) / 12, abs=1e-4)
    assert m["reward_members"] == 1 and "Reward model reliability:" in result.card_sections["Evaluation"]

    # an ensemble: the declared aggregate (min) of its members' scores, and each member's accuracy
    m, rows, _ = run_eval(
        tmp_path / "b", {"model": policy, "reward": ensemble, "prefs": prefs}, generate=False
    )
    members = [
        AutoModelForSequenceClassification.from_pretrained(str(ensemble / f"member-{k}")).eval()
        for k in (0, 1)
    ]
    first = src[0]
    each = [direct_reward(x, tok, first["prompt"], first["chosen"]) for x in members]
    assert rows[0]["reward_chosen"] == pytest.approx(min(each), abs=1e-4) and abs(each[0] - each[1]) > 1e-4
    assert (
        m["reward_members"] == 2 and m["reward_aggregate"] == "min" and len(m["reward_member_accuracy"]) == 2
    )


def test_new_inputs_are_checked_before_any_weight_loads(
    tmp_path, policy_factory, prefs, synthetic_tasks, monkeypatch
):
    from stages.lib import models

    def no_loading(*args: Any, **kw: Any) -> None:
        raise AssertionError("a model was loaded before the inputs were checked")

    policy = policy_factory()
    other = save_base(tmp_path / "other", hidden=16, layers=1, heads=2)  # another tokenizer
    lora = save_lora(tmp_path / "lora", policy)
    monkeypatch.setattr(models, "_from_pretrained", no_loading)
    cases = [
        (
            {"model": policy, "reward": policy, "prefs": prefs},
            "input 'reward' is not a reward model .* causal_lm",
        ),
        (
            {"model": policy, "reference": other, "prefs": prefs},
            "'reference' do not share a tokenizer: vocabulary sizes",
        ),
        ({"model": policy, "reference": lora, "prefs": prefs}, "no 'reference_base' input"),
        (
            {"model": policy, "reference": policy, "tasks": synthetic_tasks["instructions"]},
            "'reference' is only used on a preference split",
        ),
    ]
    for inputs, message in cases:
        with pytest.raises(StageInputError, match=message):
            run_eval(tmp_path / "ctx", inputs)
    bad = write_dataset(
        tmp_path / "bad",
        [{"x": 1}],
        [{"prompt": "p", "chosen": "c", "rejected": [{"role": "assistant", "content": "r"}]}],
    )
    with pytest.raises(StageInputError, match="prompt, chosen and rejected must all be strings or all chat"):
        run_eval(tmp_path / "ctx", {"model": policy, "prefs": bad})
    with pytest.raises(ValueError, match="`reference_base` is the base of a `reference` adapter"):
        ecfg({"model": policy, "reference_base": policy, "prefs": prefs})
