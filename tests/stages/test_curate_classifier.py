"""The `classifier` stage (fastText quality / toxicity) and the curate steps built on it: the `classifier`
and `wordlist` filters and exact-substring dedup with a suffix array. Everything is built in the test."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from hubflow.errors import StageInputError
from hubflow.stage import StageContext
from stages import classifier, curate
from stages.lib.testing import stage_context

GOOD = "the committee reviewed the annual report and published its findings on the budget in detail".split()
BAD = "click here buy cheap pills free casino bonus win now limited offer subscribe today".split()


def _doc(rng: random.Random, vocab: list[str], n: int = 30) -> str:
    return " ".join(rng.choice(vocab) for _ in range(n))


def write_dataset(root: Path, name: str, columns: dict[str, list]) -> Path:
    folder = root / name
    (folder / "data").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), folder / "data" / "train-00000-of-00001.parquet")
    return folder


def train_classifier(tmp: Path, inputs: dict[str, Path], **fields):
    cfg = classifier.Config.model_validate(
        {
            "name": "quality",
            "kind": "classifier",
            "inputs": {n: f"up-{n}" for n in inputs},
            "output": "model:demo/quality",
            **fields,
        }  # fmt: skip
    )
    ctx = stage_context(tmp, inputs)
    return classifier.run(ctx, cfg), tmp / "out"


def run_curate(tmp: Path, inputs: dict[str, Path], **fields):
    fields.setdefault("executor", {"type": "local", "tasks": 1, "workers": 1})
    fields.setdefault("dedup", {"exact": False, "minhash": None})
    cfg = curate.Config.model_validate(
        {
            "name": "clean",
            "kind": "curate",
            "inputs": {n: f"up-{n}" for n in inputs},
            "output": "dataset:demo/clean",
            **fields,
        }  # fmt: skip
    )
    (tmp / "out").mkdir(parents=True, exist_ok=True)
    (tmp / "logs").mkdir(exist_ok=True)
    ctx = StageContext(
        stage_name="clean", fingerprint="f" * 64, inputs=inputs, outputs={"output": tmp / "out"},
        resume_dir=tmp / "resume", base_dir=tmp, log_dir=tmp / "logs",
    )  # fmt: skip
    result = curate.run(ctx, cfg)
    table = pq.read_table(sorted((tmp / "out" / "data").glob("*.parquet"))[0])
    report = json.loads((tmp / "out" / curate.REPORT_FILE).read_text())
    return result, table, report


def step(report: dict, name: str) -> dict:
    return next(r for r in report["funnel"] if r["step"] == name)


@pytest.fixture(scope="module")
def quality(tmp_path_factory):
    """A quality classifier trained on planted separable data: (result, model folder)."""
    tmp = tmp_path_factory.mktemp("quality")
    rng = random.Random(0)
    pos = write_dataset(tmp, "positive", {"text": [_doc(rng, GOOD) for _ in range(150)]})
    neg = write_dataset(tmp, "negative", {"text": [_doc(rng, BAD) for _ in range(150)]})
    return train_classifier(tmp / "stage", {"positive": pos, "negative": neg})


def test_classifier_reaches_high_heldout_accuracy_and_publishes_the_model(quality):
    result, out = quality
    assert result.metrics["heldout_accuracy"] >= 0.9
    assert result.metrics["heldout_rows"] == 60  # 20% of each label
    for label in ("hq", "lq"):
        assert result.metrics[f"precision/{label}"] >= 0.9 and result.metrics[f"recall/{label}"] >= 0.9
    assert (out / "model.bin").is_file()
    info = json.loads((out / "classifier.json").read_text())
    assert (
        info["labels"] == ["hq", "lq"] and info["heldout"]["accuracy"] == result.metrics["heldout_accuracy"]
    )
    assert "Held-out accuracy" in result.card_sections["Classifier"]


def test_classifier_is_deterministic_with_its_seed(quality, tmp_path):
    rng = random.Random(0)
    pos = write_dataset(tmp_path, "positive", {"text": [_doc(rng, GOOD) for _ in range(150)]})
    neg = write_dataset(tmp_path, "negative", {"text": [_doc(rng, BAD) for _ in range(150)]})
    _, out = train_classifier(tmp_path / "stage", {"positive": pos, "negative": neg})
    assert (out / "model.bin").read_bytes() == (quality[1] / "model.bin").read_bytes()


def test_curate_classifier_filter_drops_the_negatives_and_keeps_the_score(quality, tmp_path):
    rng = random.Random(1)
    texts = [_doc(rng, GOOD) for _ in range(10)] + [_doc(rng, BAD) for _ in range(10)]
    docs = write_dataset(tmp_path, "docs", {"text": texts, "doc_id": list(range(20))})
    _, table, report = run_curate(
        tmp_path, {"docs": docs, "quality": quality[1]},
        filters=[{"classifier": {"model_input": "quality", "keep": {"hq": 0.5}}}],
    )  # fmt: skip
    assert sorted(table["doc_id"].to_pylist()) == list(range(10))
    assert step(report, "classifier")["removed"] == 10
    assert min(table["quality_hq"].to_pylist()) >= 0.5
    assert {"quality_hq", "quality_lq"} <= set(table.column_names)
    assert report["inputs"].keys() == {"docs"}  # the model input is not curated


def test_toxicity_classifier_on_labelled_rows_and_word_list(tmp_path):
    rng = random.Random(2)
    toxic = "idiot stupid hate moron awful trash loser dumb".split()
    texts = [_doc(rng, GOOD, 20) for _ in range(80)] + [_doc(rng, toxic, 20) for _ in range(80)]
    labels = ["ok"] * 80 + ["toxic"] * 80
    data = write_dataset(tmp_path, "labelled", {"text": texts, "label": labels})
    result, model = train_classifier(
        tmp_path / "stage", {"data": data}, data={"type": "labelled", "positive_label": "toxic"}
    )
    assert result.metrics["heldout_accuracy"] >= 0.9
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "banned.txt").write_text("# planted words\nzorblat\nfoo bar\n\n", encoding="utf-8")
    clean = [_doc(rng, GOOD) for _ in range(6)]
    planted = [
        clean[0] + " ZORBLAT.",  # case-insensitive
        clean[1] + " then foo   bar",  # a phrase, any whitespace
        clean[2] + " zorblatx foobar",  # no whole-word match: kept
        _doc(rng, toxic),  # the classifier's
    ]
    docs = write_dataset(tmp_path, "docs", {"text": clean + planted, "doc_id": list(range(10))})
    _, table, report = run_curate(
        tmp_path / "cur",
        {"docs": docs, "tox": model},
        filters=[
            {"wordlist": {"path": str(lists / "banned.txt")}},
            {"classifier": {"model_input": "tox", "remove": {"toxic": 0.5}, "score_prefix": "tox_"}},
        ],
    )
    assert sorted(table["doc_id"].to_pylist()) == [0, 1, 2, 3, 4, 5, 8]
    assert step(report, "wordlist")["removed"] == 2 and step(report, "wordlist")["reasons"] == {
        "word_list": 2
    }
    assert step(report, "classifier")["removed"] == 1
    assert max(table["tox_toxic"].to_pylist()) < 0.5


def test_word_list_is_hashed_into_the_fingerprint(tmp_path):
    (tmp_path / "w.txt").write_text("one\n")
    cfg = curate.Config.model_validate(
        {
            "name": "c",
            "kind": "curate",
            "inputs": {"d": "x"},
            "output": "dataset:a/b",
            "filters": [{"wordlist": {"path": "w.txt", "threshold": 2}}],
        }  # fmt: skip
    )
    first = curate.fingerprint_extra(cfg, tmp_path)
    (tmp_path / "w.txt").write_text("two\n")
    assert curate.fingerprint_extra(cfg, tmp_path) != first


# --------------------------------------------------------------------------- exact substrings


def _words(rng: random.Random, tag: str, n: int) -> str:
    return " ".join(f"{tag}{rng.randrange(10**6)}" for _ in range(n))


@pytest.mark.parametrize("tasks", [1, 2])
def test_substring_dedup_removes_a_repeated_span_from_every_document_but_one(tmp_path, tasks):
    rng = random.Random(3)
    span = " ".join(f"span{i}" for i in range(60))  # a 60-token span planted in 5 documents
    prefixes = [_words(rng, "p", 40) for _ in range(8)]
    suffixes = [_words(rng, "s", 40) for _ in range(8)]
    with_span = {1, 2, 4, 6, 7}
    texts = [p + " " + span + " " + s if i in with_span else p + " " + s
             for i, (p, s) in enumerate(zip(prefixes, suffixes, strict=True))]  # fmt: skip
    texts[3] = texts[3] + "\nunicode é ü 字 stays"
    folder = tmp_path / "docs" / "data"
    folder.mkdir(parents=True)
    for k in range(2):  # two files: with 2 tasks each task holds some of the copies
        pq.write_table(
            pa.table({"text": texts[k::2], "doc_id": list(range(8))[k::2]}), folder / f"{k}.parquet"
        )
    _, table, report = run_curate(
        tmp_path, {"docs": tmp_path / "docs"},
        dedup={"exact": False, "minhash": None, "substring": {"min_tokens": 50}},
        executor={"type": "local", "tasks": tasks, "workers": 1},
    )  # fmt: skip
    out = dict(zip(table["doc_id"].to_pylist(), table["text"].to_pylist(), strict=True))
    first = 2  # corpus order: task by task, file by file; file 0 (docs 0, 2, 4, 6) comes first
    for i, text in out.items():
        if i in with_span and i != first:
            assert text == prefixes[i] + " " + suffixes[i], i  # the rest is byte-identical
        else:
            assert text == texts[i], i
    row = step(report, "substring_dedup")
    assert row["spans_removed"] == len(with_span) - 1
    assert row["bytes_removed"] == (len(with_span) - 1) * len((span + " ").encode())
    assert row["tokens"] > 0 and row["tokenisation"] == "words"


def test_substring_dedup_with_byte_tokens_and_keep_none(tmp_path):
    rng = random.Random(4)
    span = "ÉTÉ " + " ".join(f"w{i}" for i in range(30))
    texts = [_words(rng, "a", 20) + " " + span + " " + _words(rng, "b", 20) for _ in range(3)]
    texts.append(_words(rng, "c", 20))
    docs = write_dataset(tmp_path, "docs", {"text": texts})
    _, table, report = run_curate(
        tmp_path, {"docs": docs},
        dedup={"exact": False, "minhash": None, "substring": {"min_tokens": 100, "tokens": "bytes", "keep": "none"}},
    )  # fmt: skip
    out = table["text"].to_pylist()
    assert all("w3 w4 w5" not in t for t in out)  # every occurrence cut
    assert out[3] == texts[3]
    assert step(report, "substring_dedup")["spans_removed"] == 3


# --------------------------------------------------------------------------- bad inputs


def test_no_positive_rows_fails_before_training(tmp_path):
    pos = write_dataset(tmp_path, "positive", {"text": ["", "  "]})
    neg = write_dataset(tmp_path, "negative", {"text": ["spam spam", "more spam"]})
    with pytest.raises(StageInputError, match="no positive rows: input 'positive' has no rows with text"):
        train_classifier(tmp_path / "stage", {"positive": pos, "negative": neg})
    assert not (tmp_path / "stage" / "out" / "model.bin").exists()
    assert not (tmp_path / "stage" / "resume" / "train.txt").exists()


def test_word_list_that_does_not_exist_fails_before_work(tmp_path):
    docs = write_dataset(tmp_path, "docs", {"text": ["hello world"]})
    with pytest.raises(StageInputError, match=r"word list file .*lists/missing.txt does not exist"):
        run_curate(tmp_path, {"docs": docs}, filters=[{"wordlist": {"path": "lists/missing.txt"}}])
    assert not (tmp_path / "resume").exists()


def test_min_tokens_below_one_is_rejected_with_a_useful_message():
    with pytest.raises(ValidationError, match="min_tokens is 0; it must be >= 1: the length, in tokens"):
        curate.Config.model_validate(
            {
                "name": "c",
                "kind": "curate",
                "inputs": {"d": "x"},
                "output": "dataset:a/b",
                "dedup": {"substring": {"min_tokens": 0}},
            }  # fmt: skip
        )


def test_classifier_input_without_a_model_fails_before_work(tmp_path):
    docs = write_dataset(tmp_path, "docs", {"text": ["hello world"]})
    empty = tmp_path / "not_a_model"
    empty.mkdir()
    (empty / "README.md").write_text("hi")
    with pytest.raises(
        StageInputError, match=r"classifier input 'quality' holds no fastText model \(model.bin\)"
    ):
        run_curate(
            tmp_path, {"docs": docs, "quality": empty},
            filters=[{"classifier": {"model_input": "quality", "keep": {"hq": 0.5}}}],
        )  # fmt: skip
    assert not (tmp_path / "resume").exists()


def test_classifier_filter_spec_errors():
    base = {"name": "c", "kind": "curate", "inputs": {"d": "x"}, "output": "dataset:a/b"}
    with pytest.raises(ValidationError, match="model_input 'm' is not one of the stage's inputs"):
        curate.Config.model_validate(
            {**base, "filters": [{"classifier": {"model_input": "m", "keep": {"hq": 0.5}}}]}
        )
    with pytest.raises(ValidationError, match="exactly one of `keep` or `remove`"):
        curate.Config.model_validate(
            {**base, "inputs": {"d": "x", "m": "y"}, "filters": [{"classifier": {"model_input": "m"}}]}
        )
