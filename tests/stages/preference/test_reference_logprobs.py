"""The reference_logprobs artifact: what it holds (pairs and KTO's pointwise rows with their mismatched
pairs), that dpo and kto train on it exactly as on their own reference pass, and that an artifact of other
settings, another dataset revision, another format or other tokens is refused, naming what differs."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

torch = pytest.importorskip("torch")

from hubflow.errors import StageInputError  # noqa: E402
from stages import dpo, kto, reference_logprobs  # noqa: E402
from stages.lib.chat import split_prompt_completion  # noqa: E402
from stages.lib.datasets import read_rows  # noqa: E402
from stages.lib.models import load_model  # noqa: E402
from stages.lib.pairs import completion_logps  # noqa: E402
from stages.lib.tokenizers import load_tokenizer  # noqa: E402

TRAIN = {"max_steps": 1, "per_device_train_batch_size": 8, "learning_rate": 1e-3}


@pytest.fixture(scope="module")
def pairs_artifact(tmp_path_factory, run, weak_policy, small_prefs):
    result, ctx = run(
        reference_logprobs, tmp_path_factory.mktemp("ref-pairs"), {"model": weak_policy, "data": small_prefs}
    )
    return ctx.output, result


def test_the_pairs_artifact_holds_summed_reference_logps_and_its_settings(
    pairs_artifact, weak_policy, small_prefs
):
    folder, result = pairs_artifact
    info = json.loads((folder / "reference_logprobs.json").read_text())
    assert info["format"] == "pairs" and info["settings"] == {"max_length": 1024, "max_prompt_length": None}
    assert info["inputs"]["model"].endswith("@" + "a" * 40) and info["splits"]["train"]["rows"] == 8
    table = pq.read_table(folder / "data" / "train-00000-of-00001.parquet").to_pylist()
    tok = load_tokenizer(weak_policy)
    rows = read_rows(small_prefs, "train", ["prompt", "chosen", "rejected"], input_name="data")
    model = load_model(weak_policy)
    for got, row in zip(table, rows, strict=True):
        prompt, chosen = split_prompt_completion(tok, row["prompt"], row["chosen"])
        assert got["prompt_ids"] == prompt and got["chosen_ids"] == chosen
        with torch.no_grad():
            by_hand = completion_logps(model, [prompt], [chosen], pad_id=tok.pad_token_id)
        assert got["ref_chosen_logps"] == pytest.approx(float(by_hand[0]), abs=1e-4)
    assert (folder / "data" / "test-00000-of-00001.parquet").is_file()
    assert "Reference log-probabilities (pairs)" in result.card_sections["Reference log-probabilities"]


def test_dpo_on_the_artifact_trains_as_on_its_own_reference_pass(
    tmp_path, run, policy, weak_policy, small_prefs, pairs_artifact
):
    folder, _ = pairs_artifact
    own, _ = run(
        dpo, tmp_path / "own", {"model": policy, "data": small_prefs, "reference": weak_policy}, **TRAIN
    )
    refs = {
        "model": "model:demo/model@" + "a" * 40,
        "data": "dataset:demo/data@" + "a" * 40,
        "reference_logprobs": "dataset:demo/ref@" + "c" * 40,
    }
    used, ctx = run(
        dpo,
        tmp_path / "art",
        {"model": policy, "data": small_prefs, "reference_logprobs": folder},
        refs,
        **TRAIN,
    )
    assert (
        used.metrics["reference_computed_here"] is False and "reference_logprobs" in used.metrics["reference"]
    )
    assert used.metrics["train_loss_first"] == pytest.approx(own.metrics["train_loss_first"], abs=1e-5)
    assert used.metrics["eval_loss_before"] == pytest.approx(own.metrics["eval_loss_before"], abs=1e-5)
    assert not any("reference" in h for h in used.metrics["models_held"])  # the reference never loaded


def _copy(src, dest):
    import shutil

    shutil.copytree(src, dest)
    return dest


def test_a_mismatched_artifact_is_refused_naming_what_differs(
    tmp_path, run, policy, small_prefs, small_feedback, pairs_artifact
):
    folder, _ = pairs_artifact
    inputs = {"model": policy, "data": small_prefs, "reference_logprobs": folder}
    with pytest.raises(StageInputError, match="computed with max_length=1024, this stage uses max_length=64"):
        run(dpo, tmp_path / "a", inputs, max_length=64, **TRAIN)

    other_data = {"model": "model:demo/model@" + "a" * 40, "data": "dataset:demo/data@" + "e" * 40}
    with pytest.raises(
        StageInputError,
        match=r"computed from data demo/data@aaaaaaaaaaaa, but this stage's 'data' is demo/data@eeeeeeeeeeee",
    ):
        run(
            dpo,
            tmp_path / "b",
            inputs,
            {**other_data, "reference_logprobs": "dataset:demo/r@" + "c" * 40},
            **TRAIN,
        )

    tampered = _copy(folder, tmp_path / "tampered")
    path = tampered / "data" / "train-00000-of-00001.parquet"
    rows = pq.read_table(path).to_pylist()
    rows[3]["chosen_ids"] = rows[3]["chosen_ids"][:-1] + [rows[3]["chosen_ids"][-1] + 1]
    import pyarrow as pa

    pq.write_table(pa.Table.from_pylist(rows, schema=pq.read_schema(path)), path)
    with pytest.raises(
        StageInputError, match=r"\(train\) row 3: its chosen_ids differ from this stage's tokenisation"
    ):
        run(dpo, tmp_path / "c", {**inputs, "reference_logprobs": tampered}, **TRAIN)

    _, pctx = run(
        reference_logprobs,
        tmp_path / "pointwise",
        {"model": policy, "data": small_feedback},
        format="pointwise",
        kl_batch_size=4,
    )
    with pytest.raises(StageInputError, match="holds pointwise reference log-probs; this stage needs pairs"):
        run(dpo, tmp_path / "d", {**inputs, "reference_logprobs": pctx.output}, **TRAIN)
    feedback = {"model": policy, "data": small_feedback, "reference_logprobs": pctx.output}
    with pytest.raises(
        StageInputError, match="computed with kl_batch_size=4, this stage uses kl_batch_size=2"
    ):
        run(kto, tmp_path / "e", feedback, max_steps=1, per_device_train_batch_size=2)
    with pytest.raises(StageInputError, match="is not a reference log-prob artifact"):
        run(dpo, tmp_path / "f", {**inputs, "reference_logprobs": small_prefs}, **TRAIN)
    for sub in "abcdef":
        assert not (tmp_path / sub / "logs" / "metrics.jsonl").exists()  # refused before any training step


def test_kto_on_a_pointwise_artifact_trains_as_on_its_own_pass(tmp_path, run, policy, small_feedback):
    _, rctx = run(
        reference_logprobs,
        tmp_path / "ref",
        {"model": policy, "data": small_feedback},
        format="pointwise",
        kl_batch_size=4,
    )
    table = pq.read_table(rctx.output / "data" / "train-00000-of-00001.parquet").to_pylist()
    # KL groups of 4 consecutive rows, the 13th joining the last: rotated by one within each group
    groups = [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11, 12]]
    for group in groups:
        for k, i in enumerate(group):
            assert table[i]["kl_completion_ids"] == table[group[k - 1]]["completion_ids"]
    tok = load_tokenizer(policy)
    model = load_model(policy)
    with torch.no_grad():
        kl = completion_logps(
            model, [table[5]["prompt_ids"]], [table[5]["kl_completion_ids"]], pad_id=tok.pad_token_id
        )
    assert table[5]["ref_kl_logps"] == pytest.approx(float(kl[0]), abs=1e-4)

    fields = {"max_steps": 2, "per_device_train_batch_size": 4, "learning_rate": 1e-3, "beta": 0.5}
    own, _ = run(kto, tmp_path / "own", {"model": policy, "data": small_feedback}, **fields)
    used, _ = run(
        kto,
        tmp_path / "art",
        {"model": policy, "data": small_feedback, "reference_logprobs": rctx.output},
        **fields,
    )
    assert used.metrics["reference_computed_here"] is False
    assert used.metrics["train_loss_last"] == pytest.approx(own.metrics["train_loss_last"], abs=1e-5)
