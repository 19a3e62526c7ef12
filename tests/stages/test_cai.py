"""The cai stage (seed §4.8.4) with a tiny policy: every step (draft, critique, revision) produced text, the
(A)/(B) log-prob judge is computed as documented and averaged over both orders, the outputs have the columns
an sft stage and a reward / dpo stage read, the gold judge labels by correctness, bad input fails first."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from hubflow.errors import StageInputError  # noqa: E402
from stages import cai  # noqa: E402
from stages.cai.config import CHOICES, JUDGE_TEMPLATE  # noqa: E402
from stages.lib.testing import stage_context  # noqa: E402


def run_stage(tmp: Path, inputs: dict[str, Path], **kw: Any) -> tuple[Any, Any, cai.Config]:
    ctx = stage_context(tmp, inputs)
    ctx.outputs = {"revisions": tmp / "revisions", "preferences": tmp / "preferences"}
    for folder in ctx.outputs.values():
        folder.mkdir(exist_ok=True)
    cfg = cai.Config(
        name="cai",
        kind="cai",
        inputs={k: f"stage-{k}" for k in inputs},
        outputs={"revisions": "dataset:t/revisions", "preferences": "dataset:t/preferences"},
        **{"max_new_tokens": 12, "max_prompts": 24, **kw},
    )
    return cai.run(ctx, cfg), ctx, cfg


def rows_of(folder: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    return pq.read_table(folder / "data" / "train-00000-of-00001.parquet").to_pylist()


@pytest.fixture(scope="module")
def model_judged(tmp_path_factory, policy_factory, synthetic_tasks):
    tmp = tmp_path_factory.mktemp("cai")
    inputs = {"model": policy_factory(), "prompts": synthetic_tasks["prompts"]}
    return (*run_stage(tmp, inputs), inputs)


def test_every_step_produced_text_and_the_outputs_have_their_columns(model_judged):
    result, ctx, cfg, _ = model_judged
    revisions, preferences = rows_of(ctx.outputs["revisions"]), rows_of(ctx.outputs["preferences"])
    assert len(revisions) == 24
    for r in revisions:
        assert {"prompt", "completion", "draft", "critique", "principle", "principle_index"} <= set(r)
        assert r["principle"] == cfg.constitution[r["principle_index"]]
        assert r["completion"][0]["role"] == "assistant" and isinstance(r["completion"][0]["content"], str)
    m = result.metrics
    for step in ("drafts", "critiques", "revisions"):  # a tiny model may emit its end token first, rarely
        assert m[f"empty_{step}"] <= 24 // 4, m
    assert len({r["principle_index"] for r in revisions}) > 1  # principles are drawn per prompt
    assert len(preferences) == m["pairs"] and m["pairs"] + m["ties_dropped"] == 24
    for p in preferences:
        assert {"prompt", "chosen", "rejected", "p_revision", "chosen_is_revision"} <= set(p)
        assert (p["p_revision"] > 0.5) == p["chosen_is_revision"]


def test_the_judge_is_the_order_averaged_ab_log_prob(model_judged):
    from stages.lib.chat import split_prompt_completion
    from stages.lib.models import load_model
    from stages.lib.pairs import completion_logps
    from stages.lib.tokenizers import load_tokenizer

    _, ctx, cfg, inputs = model_judged
    row = rows_of(ctx.outputs["preferences"])[0]
    revision = row["chosen"] if row["chosen_is_revision"] else row["rejected"]
    draft = row["rejected"] if row["chosen_is_revision"] else row["chosen"]
    tok, judge = load_tokenizer(inputs["model"]), load_model(inputs["model"])

    def ab(first: str, second: str) -> tuple[float, float]:
        text = JUDGE_TEMPLATE.format(
            prompt=row["prompt"][-1]["content"],
            principle=row["principle"],
            response_a=first,
            response_b=second,
        )
        out = []
        for choice in CHOICES:
            p, c = split_prompt_completion(
                tok, [{"role": "user", "content": text}], [{"role": "assistant", "content": choice}]
            )
            with torch.no_grad():
                out.append(float(completion_logps(judge, [p], [c], pad_id=tok.pad_token_id)[0]))
        return out[0], out[1]

    a1, b1 = ab(draft[0]["content"], revision[0]["content"])
    a2, b2 = ab(revision[0]["content"], draft[0]["content"])
    assert (row["logp_a_draft_first"], row["logp_b_draft_first"]) == pytest.approx((a1, b1), abs=1e-4)
    assert (row["logp_a_revision_first"], row["logp_b_revision_first"]) == pytest.approx((a2, b2), abs=1e-4)

    def sigmoid(x: float) -> float:
        return 1 / (1 + math.exp(-x))

    assert row["p_revision"] == pytest.approx(0.5 * (sigmoid(b1 - a1) + sigmoid(a2 - b2)), abs=1e-6)


def test_the_outputs_feed_sft_and_preference_stages(model_judged):
    from stages import sft
    from stages.lib.pairs import encode_pairs, read_pairs
    from stages.lib.tokenizers import load_tokenizer

    _, ctx, _, inputs = model_judged
    pairs = read_pairs(
        ctx.outputs["preferences"], input_name="preferences"
    )  # what reward / dpo / evaluate read
    encoded, dropped = encode_pairs(load_tokenizer(inputs["model"]), pairs, max_length=512)
    assert len(encoded) == len(pairs) > 0 and dropped == 0
    sft.Config(
        name="sl-cai",
        kind="sft",
        inputs={"model": "sft", "data": "cai.revisions"},
        output="model:t/sl-cai",
        format="prompt_completion",
    )
    from stages.sft.formats import FORMAT_COLUMNS

    assert set(FORMAT_COLUMNS["prompt_completion"]) <= set(rows_of(ctx.outputs["revisions"])[0])


def test_the_gold_judge_labels_by_correctness(tmp_path, policy_factory, synthetic_tasks):
    result, ctx, _ = run_stage(
        tmp_path, {"model": policy_factory(), "prompts": synthetic_tasks["prompts"]}, judge="synthetic"
    )
    for p in rows_of(ctx.outputs["preferences"]):
        chosen_gold = p["gold_revision"] if p["chosen_is_revision"] else p["gold_draft"]
        rejected_gold = p["gold_draft"] if p["chosen_is_revision"] else p["gold_revision"]
        assert chosen_gold > rejected_gold
    assert "judge_position_bias_a" not in result.metrics and result.metrics["judge"] == "synthetic"


def test_bad_input_fails_before_sampling(tmp_path, monkeypatch, policy_factory, synthetic_tasks):
    import stages.lib.generation
    from stages.lib.tokenizers import load_tokenizer

    def no_sampling(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("sampled before the inputs were checked")

    monkeypatch.setattr(stages.lib.generation, "sample", no_sampling)
    tok = load_tokenizer(policy_factory())
    tok.chat_template = None
    tok.save_pretrained(str(tmp_path / "tok"))
    inputs = {"model": policy_factory(), "prompts": synthetic_tasks["prompts"], "tokenizer": tmp_path / "tok"}
    with pytest.raises(StageInputError, match="has no chat template"):
        run_stage(tmp_path / "a", inputs)
    with pytest.raises(StageInputError, match=r"row 0: .* more than the model's 512 positions"):
        run_stage(
            tmp_path / "b",
            {"model": policy_factory(), "prompts": synthetic_tasks["prompts"]},
            max_new_tokens=200,
        )


def test_templates_and_constitution_are_checked():
    base = {
        "name": "c",
        "kind": "cai",
        "inputs": {"model": "sft", "prompts": "tasks.prompts"},
        "outputs": {"revisions": "dataset:t/r", "preferences": "dataset:t/p"},
    }
    with pytest.raises(ValueError, match=r"unknown placeholder\(s\) \['answer'\]"):
        cai.Config(**base, critique_request="Critique {answer}")
    with pytest.raises(ValueError, match=r"judge_template: needs placeholder\(s\) \['response_b'\]"):
        cai.Config(**base, judge_template="{response_a} or?")
    with pytest.raises(ValueError, match="a principle is empty"):
        cai.Config(**base, constitution=["be nice", " "])
    with pytest.raises(ValueError, match="the `judge` input is unused"):
        cai.Config(**{**base, "inputs": {**base["inputs"], "judge": "big"}}, judge="synthetic")
    assert json.loads(cai.Config(**base).model_dump_json())["constitution"][0].startswith(
        "Choose the response"
    )


def test_a_separate_judge_model_labels_the_pairs(tmp_path, policy_factory, synthetic_tasks):
    inputs = {"model": policy_factory(), "prompts": synthetic_tasks["prompts"], "judge": policy_factory()}
    result, ctx, _ = run_stage(tmp_path, inputs, max_prompts=6)
    assert 0.0 < result.metrics["judge_position_bias_a"] < 1.0
    assert all(0.0 <= p["p_revision"] <= 1.0 for p in rows_of(ctx.outputs["preferences"]))
