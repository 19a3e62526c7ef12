"""Task heads of seed §2.2 through the sft stage: sequence classification and extractive QA."""

from __future__ import annotations

import json
import random

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from hubflow.errors import StageInputError  # noqa: E402
from stages import sft  # noqa: E402
from stages.lib.testing import save_base, stage_context, tiny_tokenizer, write_dataset  # noqa: E402
from stages.sft.heads import answer_span, encode_qa, label_mapping  # noqa: E402

BASE_REF = "model:demo/base@" + "b" * 40


GOOD = ["great", "good", "lovely", "fine", "superb"]
BAD = ["awful", "bad", "poor", "dull", "boring"]


def reviews(n: int, seed: int) -> list[dict[str, str]]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "positive" if i % 2 == 0 else "negative"
        word = rng.choice(GOOD if label == "positive" else BAD)
        rows.append({"text": f"the movie was {word}", "label": label})
    return rows


def qa_rows(n: int, seed: int) -> list[dict[str, str]]:
    rng = random.Random(seed)
    names = ["anna", "bob", "carl", "dina", "eve", "fred"]
    places = ["paris", "rome", "oslo", "lima", "kyiv", "doha"]
    rows = []
    for _ in range(n):
        who, where = rng.choice(names), rng.choice(places)
        context = f"{who} lives in {where} and likes tea ."
        rows.append({"question": f"where does {who} live ?", "context": context, "answer": where})
    return rows


def run_sft(tmp, inputs, **kw):
    fields = {
        "max_steps": 8,
        "per_device_train_batch_size": 8,
        "learning_rate": 1e-2,
        "logging_steps": 1,
        "save_steps": None,
    }
    fields.update(kw)
    refs = {k: ("model:demo/base" if k == "model" else f"dataset:demo/{k}") for k in inputs}
    cfg = sft.Config(name="sft", kind="sft", inputs=refs, output="model:demo/out", **fields)
    ctx = stage_context(tmp, inputs, {"model": BASE_REF})
    return sft.run(ctx, cfg), ctx


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    texts = [r["text"] for r in reviews(40, 0)] + [r["question"] + " " + r["context"] for r in qa_rows(40, 0)]
    return save_base(tmp_path_factory.mktemp("hbase") / "model", corpus=texts)


def test_label_mapping():
    assert label_mapping(["neg", "pos", "neg"], input_name="d", column="label") == (
        ["neg", "pos"],
        {"neg": 0, "pos": 1},
    )
    assert label_mapping([2, 0, 1, 2], input_name="d", column="label")[0] == ["0", "1", "2"]
    with pytest.raises(StageInputError, match="single label"):
        label_mapping(["a", "a"], input_name="d", column="label")


def test_char_to_token_mapping_by_hand():
    tok = tiny_tokenizer(["where does anna live ? anna lives in paris and likes tea ."] * 4)
    context = "anna lives in paris and likes tea ."
    span = answer_span(context, "paris", None, where="row 0")
    assert span == (14, 19)
    enc = encode_qa(tok, "where does anna live ?", context, span, max_length=64)
    answer_tokens = enc["input_ids"][enc["start_positions"] : enc["end_positions"] + 1]
    assert tok.decode(answer_tokens).strip() == "paris"
    # a context cut before the answer drops the row instead of training on a wrong span
    assert encode_qa(tok, "where does anna live ?", context, span, max_length=9) is None
    with pytest.raises(StageInputError, match="does not occur in the context"):
        answer_span(context, "london", None, where="row 3")
    squad = {"text": ["paris"], "answer_start": [14]}
    assert answer_span(context, squad, None, where="row 0") == (14, 19)


def test_classification_head_with_lora_trains_and_loads(tmp_path, base):
    data = write_dataset(tmp_path / "reviews", reviews(64, 1), reviews(16, 2))
    result, ctx = run_sft(
        tmp_path,
        {"model": base, "data": data},
        task="classification",
        peft={"method": "lora", "r": 8, "target_modules": ["q_proj", "v_proj"]},
        max_steps=10,
        learning_rate=2e-2,
    )
    m = result.metrics
    assert m["data"]["num_labels"] == 2 and m["steps"] == 10
    assert m["eval_eval_loss"] < m["eval_eval_loss_before"]
    assert result.card_metadata["pipeline_tag"] == "text-classification"
    head = json.loads((ctx.output / "hubflow_head.json").read_text())
    assert head["num_labels"] == 2 and head["id2label"] == {"0": "negative", "1": "positive"}
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    from stages.lib.models import load_model

    model = load_model(ctx.output, base=base)
    assert model.config.id2label == {0: "negative", 1: "positive"}
    tok = tiny_tokenizer()  # any ids below the vocab size
    ids = torch.tensor([[1, 30, 31, 32, 33]])
    ref = PeftModel.from_pretrained(
        AutoModelForSequenceClassification.from_pretrained(
            str(base), num_labels=2, pad_token_id=tok.pad_token_id
        ),
        str(ctx.output),
    ).eval()
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids).logits, ref(input_ids=ids).logits, atol=1e-5)


def test_extractive_qa_head_trains(tmp_path, base):
    data = write_dataset(tmp_path / "qa", qa_rows(64, 1), qa_rows(16, 2))
    result, ctx = run_sft(
        tmp_path, {"model": base, "data": data}, task="extractive_qa", max_steps=10, learning_rate=5e-3
    )
    m = result.metrics
    assert m["steps"] == 10 and m["data"]["data"]["answer_cut_by_max_length"] == 0
    assert m["eval_eval_loss"] < m["eval_eval_loss_before"]
    from transformers import AutoModelForQuestionAnswering

    model = AutoModelForQuestionAnswering.from_pretrained(str(ctx.output))
    assert type(model).__name__ == "LlamaForQuestionAnswering"
    assert result.card_metadata["base_model_relation"] == "finetune"


def test_head_columns_are_checked(tmp_path, base):
    data = write_dataset(tmp_path / "d", [{"sentence": "x", "label": "a"}])
    with pytest.raises(
        StageInputError, match=r"lacks column\(s\) \['text'\]; it has \['sentence', 'label'\]"
    ):
        run_sft(tmp_path, {"model": base, "data": data}, task="classification")
