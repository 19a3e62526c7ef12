"""The `curate` stage: filters, dedup, perplexity gating, mixing, executors, resume, bad inputs.

Everything is built in the test (parquet datasets, a fastText language model, a
tiny Llama reference LM with a tokenizer trained on the test text); nothing is
downloaded.
"""

from __future__ import annotations

import json
import os
import random
import re
import string
import subprocess
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from hubflow.errors import StageInputError
from hubflow.stage import StageContext
from stages import curate

# --------------------------------------------------------------------------- helpers

DET = ["the", "a", "my", "our", "her", "his", "their", "one"]
ADJ = "old small young tired quiet green bright happy careful strange busy gentle famous clever lonely brave".split()
NOUN = "cat farmer neighbour teacher dog woman engineer brother doctor student baker river house market garden library".split()
VERB = ["walked to", "looked at", "talked about", "thought of", "wrote about", "cared for", "asked about",
        "read about", "painted", "visited", "dreamed of", "found"]  # fmt: skip
TAIL = ["in the morning", "with a friend", "after the rain", "before dinner", "on a quiet day", "for a long time",
        "and then left", "because it was late", "during the summer", "with great care", "at the end of the week",
        "without a word"]  # fmt: skip
FRENCH = [
    "le chat noir dort sur le canapé pendant que la pluie tombe doucement",
    "nous sommes allés au marché pour acheter du pain et des légumes frais",
    "elle a écrit une longue lettre à sa grand-mère qui habite à la campagne",
    "les enfants jouent dans le jardin avec leur petit chien tous les matins",
    "il faut prendre le train de huit heures pour arriver à temps au bureau",
]


def sentence(rng: random.Random) -> str:
    c = rng.choice
    return f"{c(DET).capitalize()} {c(ADJ)} {c(NOUN)} {c(VERB)} {c(DET)} {c(ADJ)} {c(NOUN)} {c(TAIL)}."


def english_doc(rng: random.Random, lines: int = 8) -> str:
    """~175 words over `lines` lines, passing gopher / fineweb / c4 quality rules."""
    return "\n".join(f"{sentence(rng)} {sentence(rng)}" for _ in range(lines))


def write_dataset(root: Path, name: str, columns: dict[str, list], shards: int = 1) -> Path:
    folder = root / name
    (folder / "data").mkdir(parents=True, exist_ok=True)
    table = pa.table(columns)
    n = len(table)
    for k in range(shards):
        lo, hi = k * n // shards, (k + 1) * n // shards
        pq.write_table(table.slice(lo, hi - lo), folder / "data" / f"train-{k:05d}-of-{shards:05d}.parquet")
    return folder


def make_cfg(inputs: dict[str, str], **fields) -> curate.Config:
    fields.setdefault("executor", {"type": "local", "tasks": 1, "workers": 1})
    return curate.Config.model_validate(
        {"name": "clean", "kind": "curate", "inputs": inputs, "output": "dataset:demo/clean", **fields}
    )


def make_ctx(tmp: Path, inputs: dict[str, Path], resume: str = "resume", out: str = "out") -> StageContext:
    (tmp / out).mkdir(parents=True, exist_ok=True)
    (tmp / "logs").mkdir(exist_ok=True)
    return StageContext(
        stage_name="clean",
        fingerprint="f" * 64,
        inputs=inputs,
        outputs={"output": tmp / out},
        resume_dir=tmp / resume,
        base_dir=tmp,
        log_dir=tmp / "logs",
    )


def run_stage(tmp: Path, inputs: dict[str, Path], resume: str = "resume", out: str = "out", **fields):
    cfg = make_cfg({name: f"up-{name}" for name in inputs}, **fields)
    ctx = make_ctx(tmp, inputs, resume=resume, out=out)
    result = curate.run(ctx, cfg)
    table = pa.concat_tables(pq.read_table(p) for p in sorted((tmp / out / "data").glob("*.parquet")))
    report = json.loads((tmp / out / curate.REPORT_FILE).read_text())
    return result, table, report


def step(report: dict, name: str) -> dict:
    return next(r for r in report["funnel"] if r["step"] == name)


NO_DEDUP = {"exact": False, "minhash": None}


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def lid_model(tmp_path_factory) -> Path:
    """A tiny fastText language-ID model (labels __label__en / __label__fr) trained here."""
    from stages.lib.fasttext_models import train_in_fresh_process

    folder = tmp_path_factory.mktemp("lid")
    rng = random.Random(1)
    with open(folder / "train.txt", "w", encoding="utf-8") as fh:
        for _ in range(300):
            fh.write(f"__label__en {sentence(rng).lower()}\n")
            fh.write(f"__label__fr {rng.choice(FRENCH)}\n")
    # in a spawned interpreter: inside the suite's process fastText can stop with "Encountered NaN"
    train_in_fresh_process(
        folder / "train.txt",
        folder / "lid.bin",
        {"epoch": 20, "lr": 0.5, "dim": 16, "minn": 2, "maxn": 4, "bucket": 20000, "thread": 1, "seed": 0},
    )
    return folder / "lid.bin"


@pytest.fixture(scope="module")
def ref_lm(tmp_path_factory) -> Path:
    """A tiny Llama causal LM (random weights) with a word-level tokenizer trained on the test text."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("ref_lm")
    rng = random.Random(2)
    corpus = [english_doc(rng, 2) for _ in range(50)] + FRENCH
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(
        corpus, trainers.WordLevelTrainer(special_tokens=["<pad>", "<unk>", "<s>", "</s>"])
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )
    fast.save_pretrained(folder)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=fast.vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=3,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


# --------------------------------------------------------------------------- config validation


def test_importing_the_stage_imports_no_heavy_library():
    code = (
        "import sys, hubflow.stage, hubflow.errors; before = set(sys.modules); import stages.curate; "
        "heavy = ('datatrove', 'torch', 'transformers', 'pyarrow', 'matplotlib', 'numpy', 'ray'); "
        "print(sorted({m.split('.')[0] for m in set(sys.modules) - before} & set(heavy)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_filters_normalise_names_and_mappings():
    cfg = make_cfg(
        {"docs": "corpus"}, filters=["gopher_repetition", {"gopher_quality": {"min_doc_words": 20}}, "pii"]
    )
    assert cfg.filters == [{"gopher_repetition": {}}, {"gopher_quality": {"min_doc_words": 20}}, {"pii": {}}]
    assert cfg.settings()["executor"] == {"tasks": 1}
    assert curate.Config.OUTPUT_TYPES == {"output": "dataset"}


def test_describe_and_fingerprint_extra(tmp_path):
    model = tmp_path / "models" / "lid.bin"
    model.parent.mkdir()
    model.write_bytes(b"one")
    cfg = make_cfg(
        {"docs": "corpus"},
        filters=["pii", {"language": {"model_path": "models/lid.bin"}}],
        mix={"temperature": 2, "cap": 100},
    )
    assert curate.describe(cfg) == [
        "curate docs: pii -> language -> exact dedup -> minhash 14x8 5-grams",
        "mix: temperature τ=2, cap M=100; executor: local, 1 task(s)",
    ]
    first = curate.fingerprint_extra(cfg, tmp_path)
    model.write_bytes(b"two")
    assert curate.fingerprint_extra(cfg, tmp_path) != first  # a new language model re-runs the stage


def test_unknown_filter_name_lists_the_known_ones():
    with pytest.raises(ValidationError) as err:
        make_cfg({"docs": "corpus"}, filters=["gopher_quality", "toxicity"])
    msg = str(err.value)
    assert "unknown filter 'toxicity'" in msg
    for known in (
        "gopher_repetition",
        "gopher_quality",
        "c4_quality",
        "fineweb_quality",
        "url",
        "regex",
        "length",
    ):
        assert known in msg


def test_unknown_filter_parameter_is_named():
    with pytest.raises(ValidationError, match="unknown parameter 'min_words'.*min_doc_words"):
        make_cfg({"docs": "corpus"}, filters=[{"gopher_quality": {"min_words": 3}}])


def test_language_filter_without_local_model_fails_validation_with_the_fix():
    with pytest.raises(ValidationError) as err:
        make_cfg({"docs": "corpus"}, filters=[{"language": {"languages": ["en"]}}])
    msg = str(err.value)
    assert "downloads" in msg and "offline" in msg
    assert "- language: {languages: [en], model_path: models/lid.176.bin}" in msg


def test_perplexity_model_must_be_an_input_and_weights_must_cover_inputs():
    with pytest.raises(ValidationError, match="perplexity.model_input 'lm' is not one of the stage's inputs"):
        make_cfg({"docs": "corpus"}, perplexity={"model_input": "lm", "max": 100})
    with pytest.raises(ValidationError, match="mix.weights must give a weight to each dataset input"):
        make_cfg({"a": "x", "b": "y"}, mix={"weights": {"a": 1}})
    with pytest.raises(ValidationError, match="either `weights` or `temperature`"):
        make_cfg({"a": "x", "b": "y"}, mix={"weights": {"a": 1, "b": 1}, "temperature": 2})


# --------------------------------------------------------------------------- filters


def test_each_filter_removes_its_planted_document(tmp_path, lid_model):
    rng = random.Random(3)
    good = [english_doc(rng) for _ in range(12)]
    planted = {
        "language": " ".join(FRENCH * 8),
        "gopher_repetition": "\n".join(
            ["The old cat and the young dog walked to the river with the farmer."] * 30
        ),
        "gopher_quality": f"{sentence(rng)} {sentence(rng)}",
        "fineweb_quality": "\n".join(
            f"{sentence(rng)[:-1]} and {sentence(rng).lower()[:-1]} and more" for _ in range(12)
        ),
        "c4_quality": english_doc(rng) + "\nLorem ipsum dolor sit amet, consectetur adipiscing elit.",
        "url": english_doc(rng),
        "regex": english_doc(rng) + "\nWin big at the online casino tonight.",
        "length": english_doc(rng, lines=2)[:-1] + " " + " ".join(sentence(rng) for _ in range(3)),
    }
    pii_doc = english_doc(rng) + "\nWrite to jane.doe@corp.com or reach the server at 8.8.4.4 today."
    texts = good + list(planted.values()) + [pii_doc]
    urls = [f"https://good.example/{i}" for i in range(len(texts))]
    urls[len(good) + list(planted).index("url")] = "https://www.spam-offers.com/offer"
    docs = write_dataset(
        tmp_path, "docs", {"text": texts, "url": urls, "doc_id": list(range(len(texts)))}, shards=2
    )
    filters = [
        {"language": {"languages": ["en"], "model_path": str(lid_model)}},
        "gopher_quality",
        "gopher_repetition",
        "fineweb_quality",
        "c4_quality",
        {"url": {"extra_domains": ["spam-offers.com"], "use_integrated_lists": False}},
        {"regex": {"pattern": "(?i)casino", "mode": "drop"}},
        {"length": {"min_words": 100}},
        "pii",
    ]
    result, table, report = run_stage(tmp_path, {"docs": docs}, filters=filters, dedup=NO_DEDUP)

    kept_ids = set(table["doc_id"].to_pylist())
    assert kept_ids == set(range(len(good))) | {len(texts) - 1}  # the good docs and the PII one survive
    for name in planted:
        row = step(report, name)
        assert row["removed"] == 1, (name, row)
    # PII: e-mail and public IP replaced
    pii_text = table.filter(pc.equal(table["doc_id"], len(texts) - 1))["text"][0].as_py()
    assert "jane.doe@corp.com" not in pii_text and "8.8.4.4" not in pii_text
    assert re.search(r"@example\.(com|org)", pii_text)
    # the language filter's values become columns; the input's columns are kept
    assert {"language", "language_score", "url", "doc_id", "source"} <= set(table.column_names)
    assert set(table["language"].to_pylist()) == {"en"}
    # report, card and funnel plot
    assert [r["step"] for r in report["funnel"]] == ["read"] + [
        "language", "gopher_quality", "gopher_repetition", "fineweb_quality", "c4_quality", "url", "regex",
        "length", "pii", "mix",
    ]  # fmt: skip
    assert report["documents"] == {"in": len(texts), "out": len(kept_ids)}
    assert report["tokens_estimate"]["out"] == report["bytes"]["out"] // 4
    assert result.images == {"Curation funnel": "funnel.png"}
    assert (tmp_path / "out" / "funnel.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| gopher_quality |" in result.card_sections["Curation"]
    assert result.metrics["docs_out"] == len(kept_ids)


@pytest.mark.parametrize(
    "spec, keep, drop",
    [
        ({"regex": {"pattern": "python", "mode": "keep"}}, "I like python a lot.", "I like snakes a lot."),
        ({"length": {"max_chars": 20}}, "short text", "a much longer text than twenty characters"),
        ({"length": {"min_words": 3, "max_words": 4}}, "one two three", "one two"),
        (
            {"url": {"banned_words": ["casino"], "use_integrated_lists": False}},
            "https://a.org/news",
            "https://casino.a.org/x",
        ),
    ],
)
def test_filter_parameters_reach_datatrove(spec, keep, drop):
    from datatrove.data import Document

    from stages.curate.config import normalize_filters
    from stages.curate.steps import build_filter

    (item,) = normalize_filters([spec])
    name, params = next(iter(item.items()))
    block = build_filter(name, params)
    is_url = name == "url"
    docs = [
        Document(text="x" if is_url else t, id=str(i), metadata={"url": t} if is_url else {})
        for i, t in enumerate([keep, drop])
    ]
    assert [d.id for d in block.run(iter(docs))] == ["0"]


def test_pii_replaces_emails_and_public_ips_only(tmp_path):
    texts = ["Mail bob@example.net, alice.smith@uni.edu and ping 1.2.3.4 or 10.0.0.1 now."]
    docs = write_dataset(tmp_path, "docs", {"text": texts})
    _, table, _ = run_stage(tmp_path, {"docs": docs}, filters=["pii"], dedup=NO_DEDUP)
    out = table["text"][0].as_py()
    assert "bob@example.net" not in out and "alice.smith@uni.edu" not in out and "1.2.3.4" not in out
    assert "10.0.0.1" in out  # private addresses are not PII (datatrove's only_remove_public_ips)


PHONES = [
    "+1 415 555 2671",
    "+44 (0)20 7946 0958",
    "+33 6 12 34 56 78",
    "+4930123456",
    "(415) 555-2671",
    "415-555-2671",
    "415.555.2671",
    "020 7946 0958",
    "06 12 34 56 78",
    "030 12345678",
    "0171 1234567",
]
NOT_PHONES = [
    "2024-01-15",
    "12:30",
    "192.168.1.1",
    "order 123456789",
    "pages 12-34",
    "costs 1 234 567 dollars",
    "ISBN 978-3-16-148410-0",
    "in 2019 2020 2021",
    "0.5 0.25 0.125",
    "score 3-2",
]


def test_pii_replaces_phone_numbers_in_international_and_national_formats(tmp_path):
    texts = [f"Call {p} today, ask for Ann." for p in PHONES] + [f"Keep {t} as it is." for t in NOT_PHONES]
    docs = write_dataset(tmp_path, "docs", {"text": texts})
    _, table, _ = run_stage(tmp_path, {"docs": docs}, filters=["pii"], dedup=NO_DEDUP)
    out = table["text"].to_pylist()
    for phone, text in zip(PHONES, out, strict=False):
        assert phone not in text and text == "Call +1 555 010 0000 today, ask for Ann.", (phone, text)
    for kept, text in zip(NOT_PHONES, out[len(PHONES) :], strict=True):
        assert text == f"Keep {kept} as it is.", kept
    _, table, _ = run_stage(
        tmp_path / "off", {"docs": docs}, filters=[{"pii": {"remove_phones": False}}], dedup=NO_DEDUP
    )
    assert table["text"][0].as_py() == texts[0]


# --------------------------------------------------------------------------- dedup


def _pseudo_words(rng: random.Random, n: int) -> list[str]:
    return ["".join(rng.choices(string.ascii_lowercase, k=rng.randint(4, 9))) for _ in range(n)]


def test_minhash_recall_and_precision_on_planted_near_duplicates(tmp_path):
    rng = random.Random(4)
    vocab = _pseudo_words(rng, 3000)
    originals = [[rng.choice(vocab) for _ in range(100)] for _ in range(1000)]
    texts = [" ".join(words) + "." for words in originals]
    pairs = []  # (original index, near-duplicate index)
    for j in rng.sample(range(len(originals)), 200):
        words = list(originals[j])
        words[rng.randrange(len(words))] = rng.choice(vocab)  # one word substituted
        if rng.random() < 0.5:
            del words[rng.randrange(len(words))]  # and, for half of them, one deleted
        pairs.append((j, len(texts)))
        texts.append(" ".join(words) + ".")
    docs = write_dataset(tmp_path, "docs", {"text": texts, "doc_id": list(range(len(texts)))}, shards=2)
    _, table, report = run_stage(
        tmp_path,
        {"docs": docs},
        dedup={"exact": False, "minhash": {"num_buckets": 14, "hashes_per_bucket": 8, "n_grams": 5}},
        executor={"type": "local", "tasks": 2, "workers": 1},
    )
    removed = set(range(len(texts))) - set(table["doc_id"].to_pylist())
    in_pair = {i for pair in pairs for i in pair}
    recalled = sum(1 for a, b in pairs if (a in removed) != (b in removed))
    recall = recalled / len(pairs)
    precision = len([i for i in removed if i in in_pair]) / max(len(removed), 1)
    assert recall >= 0.95, recall
    assert precision >= 0.99, precision
    assert step(report, "minhash_dedup")["removed"] == len(removed)


def test_exact_dedup_on_normalised_text(tmp_path):
    rng = random.Random(5)
    base = [english_doc(rng, 2) for _ in range(10)]
    variants = [
        base[0].upper(),  # case
        base[1].replace(" ", "   ").replace("\n", " \n\t"),  # whitespace
        base[2].replace(".", "!").replace(" ", ", ", 3),  # punctuation
        base[3] + " extra words here",  # different: kept
    ]
    texts = base + variants + [base[4]]  # an identical copy too
    docs = write_dataset(tmp_path, "docs", {"text": texts, "doc_id": list(range(len(texts)))})
    _, table, report = run_stage(tmp_path, {"docs": docs}, dedup={"exact": True, "minhash": None})
    kept = sorted(table["doc_id"].to_pylist())
    assert kept == list(range(10)) + [13]
    assert step(report, "exact_dedup")["removed"] == 4


# --------------------------------------------------------------------------- perplexity


def _reference_ppl(model_dir: Path, texts: list[str]) -> list[float]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    out = []
    with torch.no_grad():
        for t in texts:
            ids = tok(t, return_tensors="pt")["input_ids"]
            out.append(float(torch.exp(model(input_ids=ids, labels=ids).loss)))
    return out


def test_perplexity_gating_keeps_documents_within_bounds(tmp_path, ref_lm):
    rng = random.Random(6)
    texts = [english_doc(rng, rng.randint(1, 3)) for _ in range(24)] + FRENCH[:3]
    docs = write_dataset(tmp_path, "docs", {"text": texts, "doc_id": list(range(len(texts)))})
    ref = _reference_ppl(ref_lm, texts)
    ordered = sorted(ref)
    lo = (ordered[5] + ordered[6]) / 2
    hi = (ordered[20] + ordered[21]) / 2
    _, table, report = run_stage(
        tmp_path,
        {"docs": docs, "ref_lm": ref_lm},
        dedup=NO_DEDUP,
        perplexity={"model_input": "ref_lm", "min": lo, "max": hi, "batch_size": 4},
    )
    expected = {i for i, p in enumerate(ref) if lo <= p <= hi}
    assert set(table["doc_id"].to_pylist()) == expected and len(expected) == 15
    for doc_id, ppl in zip(table["doc_id"].to_pylist(), table["perplexity"].to_pylist(), strict=True):
        assert ppl == pytest.approx(ref[doc_id], rel=1e-4)  # batched + padded == one at a time
    row = step(report, "perplexity")
    assert row["reasons"] == {"below_min": 6, "above_max": 6}
    assert report["perplexity"]["n"] == len(texts)
    assert report["perplexity"]["min"] == pytest.approx(ordered[0], rel=1e-4)


# --------------------------------------------------------------------------- mixing


def _short_docs(prefix: str, n: int) -> list[str]:
    return [f"{prefix} document number {i} with some words in it." for i in range(n)]


def test_temperature_mixing_with_cap_matches_the_formula(tmp_path):
    sizes = {"web": 400, "books": 90, "code": 12}
    inputs = {n: write_dataset(tmp_path, n, {"text": _short_docs(n, k)}) for n, k in sizes.items()}
    tau, cap = 2.0, 200
    _, table, report = run_stage(
        tmp_path, inputs, dedup=NO_DEDUP, mix={"temperature": tau, "cap": cap}, seed=7
    )
    raw = {n: min(k, cap) ** (1 / tau) for n, k in sizes.items()}
    p = {n: v / sum(raw.values()) for n, v in raw.items()}
    total = int(min(sizes[n] / p[n] for n in sizes))  # as many as the mix allows without repeating documents
    per = report["mix"]["per_input"]
    assert sum(m["drawn"] for m in per.values()) == len(table) == total
    for n in sizes:
        assert per[n]["target_proportion"] == pytest.approx(p[n])
        assert abs(per[n]["drawn"] - p[n] * total) <= 1
        assert per[n]["realised_proportion"] == pytest.approx(p[n], abs=1 / total)
    assert per["code"]["drawn"] == sizes["code"]  # the scarcest input (for its share) is taken whole
    counts = dict(zip(*[c.to_pylist() for c in pc.value_counts(table["source"]).flatten()], strict=True))
    assert counts == {n: m["drawn"] for n, m in per.items()}
    assert len(set(table["text"].to_pylist())) == len(table)  # no document repeated


def test_weighted_mixing_with_target_and_seed(tmp_path):
    inputs = {n: write_dataset(tmp_path, n, {"text": _short_docs(n, 100)}) for n in ("a", "b")}
    mix = {"weights": {"a": 3, "b": 1}, "target_docs": 80}
    _, t1, report = run_stage(tmp_path, inputs, dedup=NO_DEDUP, mix=mix, seed=1, out="o1", resume="r1")
    _, t2, _ = run_stage(tmp_path, inputs, dedup=NO_DEDUP, mix=mix, seed=1, out="o2", resume="r2")
    _, t3, _ = run_stage(tmp_path, inputs, dedup=NO_DEDUP, mix=mix, seed=2, out="o3", resume="r3")
    per = report["mix"]["per_input"]
    assert (per["a"]["drawn"], per["b"]["drawn"]) == (60, 20)
    assert t1["text"].to_pylist() == t2["text"].to_pylist()  # fixed seed: same draw
    assert t1["text"].to_pylist() != t3["text"].to_pylist()
    with pytest.raises(StageInputError, match="target_docs=500 needs more documents"):
        run_stage(tmp_path, inputs, dedup=NO_DEDUP, mix={**mix, "target_docs": 500}, out="o4", resume="r4")


# --------------------------------------------------------------------------- resume


def test_interrupted_curation_resumes_finished_tasks(tmp_path, monkeypatch):
    from stages.curate import steps

    rng = random.Random(8)
    texts = [english_doc(rng, 4) for _ in range(40)]
    texts += texts[:5]  # duplicates for the dedup stages
    docs = write_dataset(tmp_path, "docs", {"text": texts, "doc_id": list(range(len(texts)))}, shards=2)
    fields = {"filters": ["gopher_quality"], "executor": {"type": "local", "tasks": 2, "workers": 1}}
    original_run = steps.SourceParquetReader.run
    ranks_run: list[int] = []

    def failing_run(self, data=None, rank=0, world_size=1):
        ranks_run.append(rank)
        if rank == 1:
            raise RuntimeError("simulated crash in task 1")
        yield from original_run(self, data, rank, world_size)

    monkeypatch.setattr(steps.SourceParquetReader, "run", failing_run)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_stage(tmp_path, {"docs": docs}, **fields)
    completions = tmp_path / "resume" / "datatrove" / "filter" / "completions"
    assert sorted(os.listdir(completions)) == ["00000"]
    done_at = (completions / "00000").stat().st_mtime_ns

    def recording_run(self, data=None, rank=0, world_size=1):
        ranks_run.append(rank)
        yield from original_run(self, data, rank, world_size)

    ranks_run.clear()
    monkeypatch.setattr(steps.SourceParquetReader, "run", recording_run)
    _, table, report = run_stage(tmp_path, {"docs": docs}, **fields)
    assert ranks_run == [1]  # task 0 finished before the crash and was skipped
    assert (completions / "00000").stat().st_mtime_ns == done_at
    assert sorted(os.listdir(completions)) == ["00000", "00001"]
    assert step(report, "read")["docs_in"] == len(texts)  # stats of both runs' tasks are counted

    _, fresh, _ = run_stage(tmp_path, {"docs": docs}, resume="fresh", out="out2", **fields)
    assert sorted(table["doc_id"].to_pylist()) == sorted(fresh["doc_id"].to_pylist())
    assert len(table) == len(fresh) > 30


# --------------------------------------------------------------------------- executors


def test_local_executor_with_worker_processes(tmp_path):
    rng = random.Random(9)
    texts = [english_doc(rng, 2) for _ in range(30)] + ["Short."]
    texts += texts[:4]
    docs = write_dataset(tmp_path, "docs", {"text": texts}, shards=2)
    _, table, report = run_stage(
        tmp_path,
        {"docs": docs},
        filters=[{"length": {"min_words": 5}}],
        dedup={"exact": True, "minhash": None},  # MinHash's spacy start-up per worker is slow; covered above
        executor={"type": "local", "tasks": 2, "workers": 2},
    )
    assert len(table) == 30
    assert step(report, "length")["removed"] == 1
    assert step(report, "exact_dedup")["removed"] == 4


@pytest.mark.slow
def test_ray_executor(tmp_path):
    pytest.importorskip("ray")
    rng = random.Random(10)
    texts = [english_doc(rng, 4) for _ in range(20)] + ["Short."]
    docs = write_dataset(tmp_path, "docs", {"text": texts, "doc_id": list(range(len(texts)))}, shards=2)
    _, table, report = run_stage(
        tmp_path,
        {"docs": docs},
        filters=[{"length": {"min_words": 5}}],
        dedup=NO_DEDUP,
        executor={"type": "ray", "tasks": 2, "workers": 2, "mem_per_cpu_gb": 0.5},
    )
    assert sorted(table["doc_id"].to_pylist()) == list(range(20))
    assert step(report, "length")["removed"] == 1
    assert sorted(os.listdir(tmp_path / "resume" / "datatrove" / "filter" / "completions")) == [
        "00000",
        "00001",
    ]


def test_slurm_executor_submits_a_dependent_chain(tmp_path, monkeypatch):
    """What the stage submits (sbatch scripts, dependencies), with sbatch replaced by an in-process runner."""
    import dill
    from datatrove.executor import slurm

    submitted: list[tuple[str, tuple[str, ...]]] = []

    def fake_sbatch(script: str, job_id_retriever, *args) -> str:
        submitted.append((script, args))
        job_id = str(1000 + len(submitted))
        launch = re.search(r"launch_pickled_pipeline (\S+)", script)
        if launch is None:  # datatrove's merge_stats job
            return job_id
        with open(launch.group(1), "rb") as fh:
            executor = dill.load(fh)
        last = int(re.search(r"#SBATCH --array=0-(\d+)", script).group(1))
        for task in range(last + 1):  # run the array's tasks here, as the cluster would
            monkeypatch.setenv("SLURM_ARRAY_TASK_ID", str(task))
            executor.run()
        monkeypatch.delenv("SLURM_ARRAY_TASK_ID")
        return job_id

    monkeypatch.setattr(slurm, "launch_slurm_job", fake_sbatch)
    monkeypatch.setattr(slurm, "expand_slurm_nodelist", lambda nodelist: ["node1"])
    monkeypatch.setenv("SLURM_NODELIST", "node1")
    rng = random.Random(11)
    texts = [english_doc(rng, 2) for _ in range(12)]
    texts += texts[:2]
    docs = write_dataset(tmp_path, "docs", {"text": texts}, shards=2)
    executor = {
        "type": "slurm",
        "tasks": 2,
        "partition": "cpu",
        "time": "02:00:00",
        "cpus_per_task": 2,
        "mem_per_cpu_gb": 4,
        "qos": "high",
        "sbatch_args": {"account": "team-data"},
        "env_command": "source /opt/venv/bin/activate",
        "job_name": "curate-demo",
        "poll_seconds": 0.1,
    }
    _, table, report = run_stage(
        tmp_path, {"docs": docs}, dedup={"exact": True, "minhash": {"num_buckets": 2}}, executor=executor
    )
    assert len(table) == 12 and step(report, "exact_dedup")["removed"] == 2

    jobs = [(s, a) for s, a in submitted if "launch_pickled_pipeline" in s]
    names = [re.search(r"#SBATCH --job-name=(\S+)", s).group(1) for s, _ in jobs]
    assert names == [
        f"curate-demo-{p}"
        for p in ("filter", "exact_signatures", "exact_duplicates", "minhash_signatures", "minhash_buckets",
                  "minhash_clusters", "finalize")
    ]  # fmt: skip
    arrays = [re.search(r"#SBATCH --array=(\S+)", s).group(1) for s, _ in jobs]
    assert arrays == ["0-1", "0-1", "0-0", "0-1", "0-1", "0-0", "0-1"]
    first = jobs[0][0]
    for directive in (
        "--partition=cpu",
        "--time=02:00:00",
        "--cpus-per-task=2",
        "--mem-per-cpu=4G",
        "--qos=high",
        "--account=team-data",
    ):
        assert f"#SBATCH {directive}" in first
    assert "source /opt/venv/bin/activate" in first
    assert str(tmp_path / "resume" / "datatrove" / "filter") in first  # logging dir keyed by the fingerprint
    # each pipeline waits for the previous one: afterok on the job id sbatch returned for it
    job_ids = {s: str(1001 + i) for i, (s, _) in enumerate(submitted)}
    for (prev, _), (_, args) in zip(jobs, jobs[1:], strict=False):
        assert f"--dependency=afterok:{job_ids[prev]}" in args


# --------------------------------------------------------------------------- bad inputs


def test_missing_text_column_names_input_column_and_fix(tmp_path):
    docs = write_dataset(tmp_path, "docs", {"content": ["hello world"], "n": [1]})
    with pytest.raises(StageInputError) as err:
        run_stage(tmp_path, {"docs": docs})
    msg = str(err.value)
    assert "dataset input 'docs' has no column 'text'" in msg
    assert "columns found: content, n" in msg
    assert "text_column: content" in msg
    assert not (tmp_path / "resume").exists()  # raised before any datatrove work


def test_empty_dataset_is_an_error(tmp_path):
    docs = write_dataset(tmp_path, "docs", {"text": pa.array([], type=pa.string())})
    with pytest.raises(StageInputError, match="dataset input 'docs' is empty"):
        run_stage(tmp_path, {"docs": docs})


def test_dataset_without_parquet_files_is_an_error(tmp_path):
    (tmp_path / "docs").mkdir()
    with pytest.raises(StageInputError, match="no parquet files matching 'data/\\*\\*/\\*.parquet'"):
        run_stage(tmp_path, {"docs": tmp_path / "docs"})


def test_language_model_path_must_exist(tmp_path):
    docs = write_dataset(tmp_path, "docs", {"text": ["hello world"]})
    with pytest.raises(StageInputError, match="model file .*lid.176.bin does not exist"):
        run_stage(tmp_path, {"docs": docs}, filters=[{"language": {"model_path": "models/lid.176.bin"}}])


def test_everything_filtered_out_is_an_error(tmp_path):
    docs = write_dataset(tmp_path, "docs", {"text": ["tiny", "also tiny"]})
    with pytest.raises(StageInputError, match="removed every document"):
        run_stage(tmp_path, {"docs": docs}, filters=[{"length": {"min_chars": 100}}])
