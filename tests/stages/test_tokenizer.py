"""The tokenizer stage: trains on an in-test corpus, loads with AutoTokenizer, masks assistant turns."""

from __future__ import annotations

import json
import os
import random
import unicodedata
from pathlib import Path

import pytest
from pydantic import ValidationError

from hubflow.errors import StageInputError
from hubflow.stage import StageContext

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

pytest.importorskip("tokenizers")
pytest.importorskip("transformers")

from stages import tokenizer as tok_stage

WORDS = (
    "the quick brown fox jumps over a lazy dog while data flows through every stage of the pipeline "
    "and each model learns tokens from text written by people who like café crème naïve façade"
).split()


def _corpus(n: int = 400, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    docs = []
    for _ in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(5, 25))]
        docs.append(" ".join(words) + rng.choice([".", "!", "?\n", ", 42 ok."]))
    return docs


def _dataset(tmp_path: Path, rows: dict[str, list], name: str = "train-00000-of-00001.parquet") -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "input"
    (folder / "data").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(rows), folder / "data" / name)
    return folder


def _ctx(tmp_path: Path, folder: Path) -> StageContext:
    out, logs = tmp_path / "out", tmp_path / "logs"
    out.mkdir(exist_ok=True)
    logs.mkdir(exist_ok=True)
    return StageContext(
        stage_name="tok",
        fingerprint="0" * 64,
        inputs={"data": folder},
        outputs={"output": out},
        resume_dir=tmp_path / "resume",
        base_dir=tmp_path,
        log_dir=logs,
    )


def _cfg(**kw) -> tok_stage.Config:
    base = {"name": "tok", "kind": "tokenizer", "inputs": {"data": "corpus"}, "output": "model:demo/tok"}
    return tok_stage.Config(**{**base, **kw})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One trained tokenizer per algorithm, shared by the tests of this module."""
    made = {}
    for algo, vocab in (("bpe", 400), ("unigram", 150)):
        tmp = tmp_path_factory.mktemp(algo)
        folder = _dataset(tmp, {"text": _corpus(), "id": list(range(400))})
        ctx = _ctx(tmp, folder)
        result = tok_stage.run(ctx, _cfg(algorithm=algo, vocab_size=vocab))
        made[algo] = (ctx.output, result)
    return made


def _load(folder: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


def test_import_is_light():
    import subprocess
    import sys

    code = (
        "import sys, stages.tokenizer; "
        "bad = [m for m in ('tokenizers', 'transformers', 'torch', 'pyarrow') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])


@pytest.mark.parametrize("algo", ["bpe", "unigram"])
def test_output_loads_with_autotokenizer(trained, algo):
    folder, result = trained[algo]
    names = {p.name for p in folder.iterdir()}
    assert {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"} <= names
    config = json.loads((folder / "tokenizer_config.json").read_text())
    assert "{% generation %}" in config["chat_template"]
    tok = _load(folder)
    assert tok.bos_token == "<s>" and tok.eos_token == "</s>" and tok.pad_token == "<pad>"
    assert tok.unk_token == "<unk>"
    for marker in ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>"):
        assert marker in tok.all_special_tokens
        assert len(tok(marker, add_special_tokens=False)["input_ids"]) == 1
    assert len(tok) == result.metrics["vocab_size"] <= (400 if algo == "bpe" else 150)
    # the post-processor adds bos, and only bos
    ids = tok("the quick fox")["input_ids"]
    assert ids[0] == tok.bos_token_id and tok.eos_token_id not in ids


def test_bpe_round_trip_is_exact(trained):
    tok = _load(trained["bpe"][0])
    for text in [
        "the quick brown fox",
        "  leading and  double  spaces\n\nnew lines\t tab",
        "émoji 🦊 ünseen 漢字!",
    ]:
        ids = tok(text)["input_ids"]
        assert tok.decode(ids, skip_special_tokens=True) == text
    assert tok.unk_token_id not in tok("漢字 🦊", add_special_tokens=False)["input_ids"]


def test_unigram_round_trip_is_normalised(trained):
    tok = _load(trained["unigram"][0])
    for text in ["the quick brown fox jumps", "café crème naïve façade", "ﬁne data ﬂows"]:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == unicodedata.normalize("NFKC", text)


@pytest.mark.parametrize("algo", ["bpe", "unigram"])
def test_bytes_per_token_reported(trained, algo):
    _, result = trained[algo]
    m = result.metrics
    assert m["heldout_documents"] == 20  # 5% of 400
    assert m["train_documents"] == 380
    assert m["bytes_per_token"] == pytest.approx(m["heldout_bytes"] / m["heldout_tokens"], abs=1e-3)
    assert 1.0 < m["bytes_per_token"] < 20
    assert "bytes per token" in result.card_sections["Tokenizer"]


MESSAGES = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "the quick fox"},
    {"role": "assistant", "content": "jumps over the dog"},
    {"role": "user", "content": "and then?"},
    {"role": "assistant", "content": "data flows, 42 ok."},
]


def test_chat_template_masks_exactly_assistant_content_bpe(trained):
    tok = _load(trained["bpe"][0])
    out = tok.apply_chat_template(
        MESSAGES, return_assistant_tokens_mask=True, return_dict=True, tokenize=True
    )
    ids, mask = out["input_ids"], out["assistant_masks"]

    def enc(text: str) -> list[int]:
        return tok(text, add_special_tokens=False)["input_ids"]

    # Hand-built expectation: special tokens split the text, so each piece encodes on its own.
    special = tok.convert_tokens_to_ids
    nl = enc("\n")
    expected: list[tuple[list[int], int]] = [([tok.bos_token_id], 0)]
    for m in MESSAGES:
        marker = special(f"<|{m['role']}|>")
        if m["role"] == "assistant":
            expected += [([marker], 0), (nl, 0), (enc(m["content"]), 1), ([special("<|end|>")], 1), (nl, 0)]
        else:
            expected += [([marker], 0), (enc("\n" + m["content"]), 0), ([special("<|end|>")], 0), (nl, 0)]
    want_ids = [i for part, _ in expected for i in part]
    want_mask = [flag for part, flag in expected for _ in part]
    assert ids == want_ids
    assert mask == want_mask
    masked = [i for i, f in zip(ids, mask, strict=True) if f]
    assert tok.decode(masked) == "jumps over the dog<|end|>data flows, 42 ok.<|end|>"


def test_chat_template_masks_assistant_content_unigram(trained):
    tok = _load(trained["unigram"][0])
    out = tok.apply_chat_template(
        MESSAGES, return_assistant_tokens_mask=True, return_dict=True, tokenize=True
    )
    ids, mask = out["input_ids"], out["assistant_masks"]
    end = tok.convert_tokens_to_ids("<|end|>")
    # the masked runs are exactly the two answers, each closed by <|end|>
    runs, cur = [], []
    for i, f in zip(ids, mask, strict=True):
        if f:
            cur.append(i)
        elif cur:
            runs.append(cur)
            cur = []
    assert [r[-1] for r in runs] == [end, end]
    assert [tok.decode(r[:-1]) for r in runs] == ["jumps over the dog", "data flows, 42 ok."]


def test_trl_sees_generation_markers_and_trained_stop_token(trained):
    pytest.importorskip("trl")
    from trl.chat_template_utils import has_generation_markers, is_chat_template_stop_token_trained

    tok = _load(trained["bpe"][0])
    assert has_generation_markers(tok.chat_template)
    assert is_chat_template_stop_token_trained(tok)
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert prompt == "<s><|user|>\nhi<|end|>\n<|assistant|>\n"


def test_heldout_split_is_deterministic_and_seeded(tmp_path):
    folder = _dataset(tmp_path, {"text": _corpus(120)})
    runs = []
    for i, seed in enumerate((3, 3, 4)):
        sub = tmp_path / f"r{i}"
        sub.mkdir()
        runs.append(tok_stage.run(_ctx(sub, folder), _cfg(vocab_size=300, seed=seed)).metrics)
    assert runs[0]["heldout_bytes"] == runs[1]["heldout_bytes"]
    assert runs[0]["heldout_bytes"] != runs[2]["heldout_bytes"]
    assert runs[0]["heldout_documents"] == 6


def test_missing_text_column_names_columns(tmp_path):
    folder = _dataset(tmp_path, {"content": ["a b c"], "id": [1]})
    with pytest.raises(StageInputError) as err:
        tok_stage.run(_ctx(tmp_path, folder), _cfg())
    assert "'text'" in err.value.message and "content" in err.value.message and "id" in err.value.message
    assert "text_column" in err.value.hint


def test_empty_dataset(tmp_path):
    import pyarrow as pa

    folder = _dataset(tmp_path, {"text": pa.array([], pa.string())})
    with pytest.raises(StageInputError, match="empty"):
        tok_stage.run(_ctx(tmp_path, folder), _cfg())


def test_blank_texts_only(tmp_path):
    folder = _dataset(tmp_path, {"text": ["", None, ""]})
    with pytest.raises(StageInputError, match="no non-empty text"):
        tok_stage.run(_ctx(tmp_path, folder), _cfg(heldout_fraction=0))


def test_no_parquet_and_wrong_split(tmp_path):
    empty = tmp_path / "nothing"
    empty.mkdir()
    with pytest.raises(StageInputError, match="no parquet"):
        tok_stage.run(_ctx(tmp_path, empty), _cfg())
    folder = _dataset(tmp_path, {"text": ["x"]}, name="test-00000-of-00001.parquet")
    with pytest.raises(StageInputError, match="no 'train' shard") as err:
        tok_stage.run(_ctx(tmp_path, folder), _cfg())
    assert "split" in err.value.hint


def test_vocab_too_small_for_bytes_and_specials():
    with pytest.raises(ValidationError) as err:
        _cfg(vocab_size=200)
    text = str(err.value)
    assert "256 byte tokens + 8 special tokens = 264" in text and "raise vocab_size" in text
    _cfg(vocab_size=264)
    with pytest.raises(ValidationError, match="no room"):
        _cfg(algorithm="unigram", vocab_size=8)


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"algorithm": "unigram", "min_frequency": 3}, "bpe only"),
        ({"algorithm": "unigram", "special_tokens": {"unk": None}}, "needs an unk token"),
        ({"chat_markers": {"end": "<|user|>"}}, "four different tokens"),
        ({"special_tokens": {"eos": "<|end|>"}}, "also chat markers"),
        ({"chat_template": "{{ messages }}"}, "generation"),
        ({"inputs": {}}, "exactly one dataset input"),
        ({"add_bos_token": True, "special_tokens": {"bos": None}}, "add_bos_token"),
        ({"output": "dataset:demo/tok"}, "model repo"),
    ],
)
def test_config_errors(fields, needle):
    with pytest.raises(ValidationError, match=needle):
        _cfg(**fields)
