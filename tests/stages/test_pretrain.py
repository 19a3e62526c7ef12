"""The pretrain stage on tiny models: loss goes down on real text, the output loads, bad input fails early.

The corpus is the docstrings of a fixed list of standard-library modules (real English
with code); the tokenizer is a 512-token byte-level BPE trained here with `tokenizers`.
Helpers of this module are shared by test_pretrain_resume.py and test_pretrain_ddp.py.
"""

from __future__ import annotations

import importlib
import inspect
import json
import math
import os
from pathlib import Path
from typing import Any

import pytest

from hubflow.errors import StageInputError
from hubflow.stage import StageContext

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from stages import pretrain

DOC_MODULES = (
    "json", "argparse", "collections", "textwrap", "pathlib", "functools", "string", "shutil", "logging",
    "csv", "difflib", "heapq", "fractions", "calendar", "random", "statistics", "zipfile", "tarfile",
    "enum", "dataclasses", "subprocess", "threading", "inspect",
)  # fmt: skip

TINY = {"hidden_size": 128, "num_layers": 4, "num_heads": 4, "context_length": 64}
"""About 0.87M parameters with the 512-token tokenizer."""


def docstrings() -> list[str]:
    """Paragraphs of standard-library docstrings, deduplicated, in a fixed order."""
    docs: list[str] = []
    for name in DOC_MODULES:
        mod = importlib.import_module(name)
        for obj in [mod] + [getattr(mod, a) for a in sorted(dir(mod)) if not a.startswith("_")]:
            doc = inspect.getdoc(obj)
            if doc:
                docs.extend(p.strip() for p in doc.split("\n\n") if len(p.strip()) > 40)
    return list(dict.fromkeys(docs))


def train_tokenizer(folder: Path, texts: list[str], vocab_size: int = 512) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    fast.save_pretrained(str(folder))
    return fast


def write_dataset(
    folder: Path, train: list[str], test: list[str] | None = None, column: str = "text"
) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    (folder / "data").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({column: train}), folder / "data" / "train-00000-of-00001.parquet")
    if test:
        pq.write_table(pa.table({column: test}), folder / "data" / "test-00000-of-00001.parquet")
    return folder


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> dict[str, Path]:
    """A tokenizer folder and a dataset snapshot (train + test split), made once per session."""
    root = tmp_path_factory.mktemp("pretrain-corpus")
    docs = docstrings()
    train_tokenizer(root / "tokenizer", docs)
    write_dataset(root / "data", docs[:-60], docs[-60:])
    return {"tokenizer": root / "tokenizer", "data": root / "data", "docs": docs}  # type: ignore[dict-item]


def make_ctx(
    tmp: Path, inputs: dict[str, Path], name: str = "pt", fingerprint: str = "f" * 64
) -> StageContext:
    for d in ("out", "logs", "resume"):
        (tmp / d).mkdir(parents=True, exist_ok=True)
    return StageContext(
        stage_name=name,
        fingerprint=fingerprint,
        inputs=inputs,
        outputs={"output": tmp / "out"},
        resume_dir=tmp / "resume",
        base_dir=tmp,
        log_dir=tmp / "logs",
    )


def make_cfg(**kw: Any) -> pretrain.Config:
    base: dict[str, Any] = {
        "name": "pt",
        "kind": "pretrain",
        "inputs": {"tokenizer": "tok", "data": "corpus"},
        "output": "model:demo/pt",
        "architecture": dict(TINY),
        "per_device_train_batch_size": 8,
        "learning_rate": 3e-3,
        "warmup_steps": 4,
        "logging_steps": 4,
        "save_steps": None,
    }
    if "max_steps" not in kw and "tokens" not in kw and "compute_budget" not in kw:
        base["max_steps"] = 8
    return pretrain.Config.model_validate({**base, **kw})


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line]


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """Measured throughput goes to a temp cache, never the user's."""
    monkeypatch.setenv("HUBFLOW_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: tiny models gain little from two, and on a shared 2-core
    machine two OpenMP threads per process slow a step down up to tenfold."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# -- training --------------------------------------------------------------------------


@pytest.mark.slow
def test_causal_loss_decreases_and_output_loads(corpus, tmp_path):
    ctx = make_ctx(tmp_path, {"tokenizer": corpus["tokenizer"], "data": corpus["data"]})
    cfg = make_cfg(max_steps=32, eval_steps=16)
    result = pretrain.run(ctx, cfg)

    log = [r for r in records(ctx.output / "metrics.jsonl") if r["split"] == "train"]
    assert [r["step"] for r in log] == [4, 8, 12, 16, 20, 24, 28, 32]
    assert log[-1]["loss"] < log[0]["loss"] - 0.8, [r["loss"] for r in log]
    assert log[0]["loss"] < math.log(512) + 1.0  # starts near uniform over the vocabulary
    for r in log:
        assert {"perplexity", "grad_norm", "learning_rate", "tokens", "tokens_per_s", "mfu"} <= set(r)
        assert math.isclose(r["perplexity"], math.exp(r["loss"]), rel_tol=1e-9)
        assert r["tokens"] == r["step"] * 8 * 64 and r["tokens_per_s"] > 0 and 0 < r["mfu"] < 1
    assert log[0]["learning_rate"] == pytest.approx(3e-3)  # step 3 of a 4-step warmup: the peak
    assert log[-1]["learning_rate"] < log[2]["learning_rate"]  # cosine decay
    evals = [r for r in records(ctx.output / "metrics.jsonl") if r["split"] == "eval"]
    assert [r["step"] for r in evals] == [16, 32] and evals[1]["eval_loss"] < evals[0]["eval_loss"]
    assert records(ctx.log_dir / "metrics.jsonl") == records(ctx.output / "metrics.jsonl")

    m = result.metrics
    assert m["steps"] == 32 and m["tokens"] == 32 * 512 and m["world_size"] == 1
    assert m["parameters"] == 869_504 and m["eval_loss"] == evals[-1]["eval_loss"]
    assert m["compute_flops"] == 6 * m["parameters"] * m["tokens"]
    assert result.images == {"Training loss": "loss_curve.png"}
    assert (ctx.output / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| objective | causal |" in result.card_sections["Pretraining"]
    assert result.card_metadata == {"pipeline_tag": "text-generation", "base_model": None}

    files = {p.name for p in ctx.output.iterdir()}
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json"} <= files
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth", ".pkl"))]

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(ctx.output), use_safetensors=True, local_files_only=True)
    tok = AutoTokenizer.from_pretrained(str(ctx.output), local_files_only=True)
    assert model.config.model_type == "llama" and model.config.vocab_size == len(tok) == 512
    assert model.config.max_position_embeddings == 64 and tok.model_max_length == 64
    assert model.generation_config.eos_token_id == tok.eos_token_id
    ids = tok("Return a new dictionary", return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        out = model(input_ids=ids, labels=ids)
    assert math.isfinite(out.loss.item()) and out.loss.item() < math.log(512)


def test_initialisation_zeroes_residual_projections_and_is_seeded(corpus):
    from stages.pretrain import model as M
    from stages.pretrain import scaling as S

    cfg = make_cfg(architecture={**TINY, "num_kv_heads": 2, "tie_embeddings": False})
    shape = S.configured_shape(cfg)
    tokens = M.ObjectiveTokens(eos_id=2, pad_id=3, bos_id=1)
    config = M.build_config(cfg, shape, 512, tokens)
    a = M.build_model(cfg, config, "llama")
    b = M.build_model(cfg, config, "llama")
    for name, p in a.named_parameters():
        assp = dict(b.named_parameters())[name]
        assert (p == assp).all(), name
        if name.endswith(("o_proj.weight", "down_proj.weight")):
            assert not p.any(), name
        elif name.endswith("q_proj.weight"):
            bound = math.sqrt(6 / (p.shape[0] + p.shape[1]))  # Xavier-uniform
            assert p.abs().max() <= bound and p.std() > bound / 3
    groups = M.parameter_groups(a, 0.1)
    decay_ids = {id(p) for p in groups[0]["params"]}
    for name, p in a.named_parameters():
        no_decay = "norm" in name or "embed" in name or p.ndim < 2
        assert (id(p) in decay_ids) != no_decay, name


@pytest.mark.parametrize("objective", ["causal", "mlm", "span_corruption"])
def test_analytic_parameter_count_matches_the_model(objective):
    from dataclasses import replace

    from stages.pretrain import model as M
    from stages.pretrain import scaling as S

    for tie in (True, False) if objective != "span_corruption" else (True,):
        cfg = make_cfg(
            objective=objective, architecture={**TINY, "tie_embeddings": tie, "intermediate_size": 200}
        )
        shape = replace(S.configured_shape(cfg), vocab_size=300)
        config = M.build_config(cfg, shape, 300, M.ObjectiveTokens(eos_id=2, pad_id=3, bos_id=1))
        model = M.model_class(shape.family)(config)
        assert sum(p.numel() for p in model.parameters()) == S.count_parameters(shape)[0], (objective, tie)


@pytest.mark.parametrize("objective", ["mlm", "span_corruption", "ul2"])
def test_other_objectives_train(objective, corpus, tmp_path):
    ctx = make_ctx(tmp_path, {"tokenizer": corpus["tokenizer"], "data": corpus["data"]})
    arch = {"hidden_size": 64, "num_layers": 2, "num_heads": 2, "context_length": 64}
    cfg = make_cfg(
        objective=objective,
        architecture=arch,
        max_steps=12,
        logging_steps=3,
        learning_rate=5e-3,
        warmup_steps=2,
    )
    result = pretrain.run(ctx, cfg)
    log = [r for r in records(ctx.output / "metrics.jsonl") if r["split"] == "train"]
    assert log[-1]["loss"] < log[0]["loss"], [r["loss"] for r in log]
    assert math.isfinite(result.metrics["eval_loss"])

    from transformers import AutoConfig, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(ctx.output), local_files_only=True)
    config = AutoConfig.from_pretrained(str(ctx.output), local_files_only=True)
    assert config.vocab_size == len(tok) == result.metrics["vocab_size"]
    if objective == "mlm":
        from transformers import AutoModelForMaskedLM

        assert tok.mask_token == "<mask>" and len(tok) == 513
        AutoModelForMaskedLM.from_pretrained(str(ctx.output), use_safetensors=True, local_files_only=True)
    else:
        from transformers import AutoModelForSeq2SeqLM

        assert tok.convert_tokens_to_ids("<extra_id_0>") >= 512
        if objective == "ul2":
            assert all(tok.convert_tokens_to_ids(t) >= 512 for t in ("[R]", "[S]", "[X]"))
        assert (
            AutoModelForSeq2SeqLM.from_pretrained(str(ctx.output), local_files_only=True).config.model_type
            == "t5"
        )


def test_several_data_inputs_are_concatenated(corpus, tmp_path):
    docs = corpus["docs"]
    a = write_dataset(tmp_path / "a", docs[:300])
    b = write_dataset(tmp_path / "b", docs[300:600], column="body")
    ctx = make_ctx(tmp_path / "run", {"tokenizer": corpus["tokenizer"], "web": a, "books": b})
    cfg = make_cfg(inputs={"tokenizer": "t", "web": "a", "books": "b"}, text_column="body", max_steps=1)
    with pytest.raises(StageInputError) as err:  # `a` has no `body` column
        pretrain.run(ctx, cfg)
    assert "input 'web' lacks column(s) ['body']" in str(err.value) and "text_column" in str(err.value)

    b2 = write_dataset(tmp_path / "b2", docs[300:600])
    ctx = make_ctx(tmp_path / "run2", {"tokenizer": corpus["tokenizer"], "web": a, "books": b2})
    result = pretrain.run(ctx, make_cfg(inputs={"tokenizer": "t", "web": "a", "books": "b"}, max_steps=1))
    [meta] = [json.loads(p.read_text()) for p in (ctx.resume_dir / "tokens").glob("train-*.json")]
    assert meta["documents"] == 600 and result.metrics["steps"] == 1
    assert "eval_loss" not in result.metrics  # no test split


# -- errors before training ---------------------------------------------------------------


def test_vocabulary_mismatch_fails_before_training(corpus, tmp_path):
    ctx = make_ctx(tmp_path, {"tokenizer": corpus["tokenizer"], "data": corpus["data"]})
    with pytest.raises(StageInputError) as err:
        pretrain.run(ctx, make_cfg(architecture={**TINY, "vocab_size": 1000}))
    text = str(err.value)
    assert "architecture.vocab_size is 1000 but the tokenizer input has 512 tokens" in text
    assert "set architecture.vocab_size: 512" in text
    assert not (ctx.resume_dir / "tokens").exists()  # nothing tokenized, nothing trained

    with pytest.raises(StageInputError) as err:  # the objective's added tokens are named
        pretrain.run(ctx, make_cfg(objective="mlm", architecture={**TINY, "vocab_size": 512}))
    assert "has 513 tokens (512 tokens + 1 the mlm objective adds)" in str(err.value)


def test_context_length_beyond_rope_is_a_config_error():
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as err:
        make_cfg(architecture={**TINY, "context_length": 128, "max_position_embeddings": 64})
    assert "context_length 128 exceeds max_position_embeddings 64" in str(err.value)
    with pytest.raises(ValidationError) as err:
        make_cfg(
            architecture={
                **TINY,
                "context_length": 512,
                "max_position_embeddings": 1024,
                "rope_scaling": {"type": "linear", "factor": 2, "original_max_position_embeddings": 128},
            }
        )
    assert "original_max_position_embeddings 128 × factor 2 = 256" in str(err.value)
    ok = make_cfg(
        architecture={
            **TINY,
            "context_length": 256,
            "rope_scaling": {"type": "linear", "factor": 4, "original_max_position_embeddings": 64},
        }
    )
    assert ok.architecture.position_limit() == 256


def test_missing_eos_and_tiny_corpus_fail_early(corpus, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(corpus["tokenizer"]))
    tok.eos_token = None
    tok.save_pretrained(str(tmp_path / "tok"))
    ctx = make_ctx(tmp_path / "a", {"tokenizer": tmp_path / "tok", "data": corpus["data"]})
    with pytest.raises(StageInputError, match="has no eos token"):
        pretrain.run(ctx, make_cfg())

    small = write_dataset(tmp_path / "small", ["just a few words"])
    ctx = make_ctx(tmp_path / "b", {"tokenizer": corpus["tokenizer"], "data": small})
    with pytest.raises(StageInputError) as err:
        pretrain.run(ctx, make_cfg())
    assert "fewer than one context_length chunk (64 tokens)" in str(err.value)


def test_token_file_is_written_batch_by_batch(corpus, tmp_path, monkeypatch):
    """The corpus is streamed in record batches and appended to a memmapped file: the result
    equals tokenizing every document at once, joined by eos."""
    import numpy as np
    from transformers import AutoTokenizer

    from stages.pretrain import data as D

    docs = corpus["docs"][:200]
    folder = write_dataset(tmp_path / "d", docs[:120])
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(
        pa.table({"text": docs[120:] + [None, ""]}), folder / "data" / "train-00001-of-00002.parquet"
    )
    monkeypatch.setattr(D, "READ_BATCH_ROWS", 7)
    tok = AutoTokenizer.from_pretrained(str(corpus["tokenizer"]))
    tf = D.tokenize_corpus(
        [("d", folder)], "train", tokenizer=tok, text_column="text", eos_id=2, dest=tmp_path / "t.bin"
    )
    want = [t for d in docs for t in [*tok(d, add_special_tokens=False)["input_ids"], 2]]
    assert tf.documents == 200 and tf.dtype == "uint16" and isinstance(tf.array(), np.memmap)
    assert tf.array().tolist() == want
    again = D.tokenize_corpus(
        [("d", folder)], "train", tokenizer=None, text_column="text", eos_id=2, dest=tmp_path / "t.bin"
    )
    assert again == tf  # reused, not re-made


def test_grad_accum_and_checkpointing_train_the_same_model(corpus, tmp_path):
    """8 sequences in one micro-batch == 2 micro-batches of 4 with activation checkpointing:
    the same examples per step (positions are global), the same mean loss, the same update."""
    from safetensors.torch import load_file

    arch = {"hidden_size": 64, "num_layers": 2, "num_heads": 2, "context_length": 64}
    outs = []
    runs = {
        "one": {"per_device_train_batch_size": 8},
        "two": {
            "per_device_train_batch_size": 4,
            "gradient_accumulation_steps": 2,
            "gradient_checkpointing": True,
        },
    }
    for name, kw in runs.items():
        ctx = make_ctx(tmp_path / name, {"tokenizer": corpus["tokenizer"], "data": corpus["data"]})
        result = pretrain.run(ctx, make_cfg(architecture=arch, max_steps=3, logging_steps=1, **kw))
        outs.append((load_file(str(ctx.output / "model.safetensors")), result.metrics))
    (a, ma), (b, mb) = outs
    assert ma["tokens"] == mb["tokens"] == 3 * 8 * 64
    assert ma["train_loss"] == pytest.approx(mb["train_loss"], abs=1e-5)
    # Summation order differs (fp32 round-off ~1e-7 in the gradients); Adam divides by
    # sqrt(v), which turns that into up to ~lr/10 for weights whose gradient is ~0.
    for key in a:
        assert (a[key] - b[key]).abs().max() < 1e-4, key
    moved = sum(((a[k] - b[k]).abs() > 1e-6).sum().item() for k in a)
    assert moved / sum(v.numel() for v in a.values()) < 1e-2
