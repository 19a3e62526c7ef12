"""The instruct stage: τ-mixing of task families, templates, CoT share, held-out (zero-shot) evaluation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("trl")
pytest.importorskip("peft")

from hubflow.errors import StageInputError  # noqa: E402
from stages import instruct  # noqa: E402
from stages.lib.testing import save_base, stage_context, write_dataset  # noqa: E402

BASE_REF = "model:demo/base@" + "c" * 40


def run_instruct(tmp: Path, inputs: dict[str, Path], **kw: Any):
    fields: dict[str, Any] = {
        "max_steps": 6,
        "per_device_train_batch_size": 8,
        "learning_rate": 1e-2,
        "logging_steps": 1,
        "save_steps": None,
    }
    fields.update(kw)
    refs = {k: ("model:demo/base" if k == "model" else f"dataset:demo/{k}") for k in inputs}
    cfg = instruct.Config(name="it", kind="instruct", inputs=refs, output="model:demo/it", **fields)
    ctx = stage_context(tmp, inputs, {"model": BASE_REF})
    return instruct.run(ctx, cfg), ctx, cfg


@pytest.fixture(scope="module")
def synthetic_data(tmp_path_factory) -> Path:
    synthetic = pytest.importorskip("stages.synthetic")
    root = tmp_path_factory.mktemp("syn")
    cfg = synthetic.Config(
        name="syn",
        kind="synthetic",
        outputs={"instructions": "dataset:demo/instructions"},
        families=["copy", "uppercase", "successor", "reverse"],
        heldout_families=["reverse"],
        family_examples={"copy": 80, "uppercase": 20, "successor": 40, "reverse": 20},
        cot_ratio=0.4,
        seed=7,
    )
    ctx = stage_context(root, {})
    ctx.outputs = {"instructions": root / "instructions"}
    ctx.outputs["instructions"].mkdir()
    synthetic.run(ctx, cfg)
    return root / "instructions"


@pytest.fixture(scope="module")
def base(tmp_path_factory, synthetic_data) -> Path:
    import pyarrow.parquet as pq

    rows = pq.read_table(synthetic_data / "data" / "train-00000-of-00001.parquet").to_pylist()
    texts = [f"{r['instruction']}\n{r['input']}\n{r['output']}" for r in rows]
    return save_base(tmp_path_factory.mktemp("ibase") / "model", corpus=texts)


def test_instruction_tuning_on_synthetic_families(tmp_path, base, synthetic_data):
    result, ctx, cfg = run_instruct(
        tmp_path,
        {"model": base, "tasks": synthetic_data},
        peft={"method": "lora", "r": 8, "alpha": 16, "target_modules": "all-linear"},
        temperature=2.0,
        cap=60,
        cot_ratio=0.5,
        max_steps=8,
        eval_steps=4,
        eval_examples=12,
        generate_examples=2,
        max_new_tokens=8,
    )
    m = result.metrics
    # §3.5: p_k ∝ min(N_k, M)^(1/τ) over the seen families; realised = what was drawn
    sizes = {k: v["rows"] for k, v in m["mix"].items()}
    assert set(sizes) == {"copy", "uppercase", "successor"} and m["seen_families"] == sorted(sizes)
    weights = {k: min(n, 60) ** 0.5 for k, n in sizes.items()}
    for k, v in m["mix"].items():
        assert v["target"] == pytest.approx(weights[k] / sum(weights.values()), abs=1e-6)
        assert v["realised"] == pytest.approx(v["target"], abs=1.0 / m["mixed_examples"])
    assert m["mixed_examples"] == sum(min(n, 60) for n in sizes.values())
    assert 0.35 <= m["cot_share"] <= 0.65  # cot_ratio 0.5, drawn per example from the rows flagged cot
    assert m["templates_used"] > len(sizes)  # several phrasings per family
    # §3.7 step 3.4: held-out family evaluated zero-shot before, during and after training
    assert m["heldout_families"] == ["reverse"]
    logged = [json.loads(x) for x in (ctx.log_dir / "metrics.jsonl").read_text().splitlines()]
    eval_steps = [r["step"] for r in logged if "eval/heldout_reverse_loss" in r]
    assert eval_steps == [0, 4, 8]
    assert m["eval_heldout_loss"] < m["eval_heldout_loss_before"]
    assert m["eval_seen_loss"] < m["eval_seen_loss_before"]
    if m["judged_families"]:  # the synthetic stage's judge grades greedy generations
        assert 0.0 <= m["eval_heldout_reverse_accuracy"] <= 1.0 and "eval_heldout_accuracy" in m
    assert result.card_metadata["base_model"] == "demo/base"
    assert result.card_metadata["base_model_relation"] == "adapter"
    assert "| reverse" not in result.card_sections["Instruction tuning"].split("| evaluation")[0]
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base)), str(ctx.output))


def test_tasks_without_family_column_heldout_input_and_templates(tmp_path, base):
    def rows(word: str, n: int) -> list[dict[str, str]]:
        return [{"instruction": f"Repeat the word {word}.", "input": "", "output": word} for _ in range(n)]

    a = write_dataset(tmp_path / "a", rows("apple", 30))
    b = write_dataset(tmp_path / "b", rows("moon", 10))
    zero = write_dataset(tmp_path / "zero", rows("star", 8))
    result, ctx, _ = run_instruct(
        tmp_path,
        {"model": base, "a": a, "b": b, "zero": zero},
        heldout_inputs=["zero"],
        temperature=1.0,
        num_examples=40,
        system_prompt="Be short.",
        task_templates={
            "b": [{"with_input": "B: {instruction} {input}", "without_input": "B: {instruction}"}]
        },
        max_steps=3,
        generate_examples=0,
    )
    m = result.metrics
    assert {k: v["examples"] for k, v in m["mix"].items()} == {"a": 30, "b": 10}  # τ = 1: proportional
    assert m["heldout_families"] == ["zero"] and "eval_heldout_zero_loss" in m
    assert m["cot_share"] == 0.0


def test_instruct_needs_instruction_columns(tmp_path, base):
    chat = write_dataset(tmp_path / "chat", [{"messages": [{"role": "user", "content": "x"}]}])
    with pytest.raises(
        StageInputError, match=r"lacks column\(s\) \['instruction', 'output'\]; it has \['messages'\]"
    ):
        run_instruct(tmp_path, {"model": base, "data": chat})


def test_cot_ratio_needs_reasoning_in_the_data(tmp_path, base):
    plain = write_dataset(tmp_path / "p", [{"instruction": "say hi", "output": "hi"}] * 4)
    with pytest.raises(StageInputError, match="no training row carries a reasoning chain"):
        run_instruct(tmp_path, {"model": base, "data": plain}, cot_ratio=0.5)
