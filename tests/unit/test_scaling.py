"""Sizing a pretrain stage without torch (seed §1.4): parameter counts, Chinchilla, the
schedule, the plan lines, and the config's own checks."""

from __future__ import annotations

import math
import subprocess
import sys
from dataclasses import replace
from typing import Any

import pytest
from pydantic import ValidationError

from stages import pretrain
from stages.pretrain import config as pretrain_config
from stages.pretrain import scaling as S


def cfg(**kw: Any) -> pretrain.Config:
    base: dict[str, Any] = {
        "name": "lm",
        "kind": "pretrain",
        "inputs": {"tokenizer": "tok", "data": "corpus"},
        "output": "model:demo/lm",
    }
    if not {"max_steps", "tokens", "compute_budget"} & set(kw):
        base["max_steps"] = 100
    return pretrain.Config.model_validate({**base, **kw})


def test_llama_count_by_hand():
    shape = S.Shape("llama", 128, 4, 4, 2, 352, 256, True, vocab_size=1000)
    # per block: q,o 128·128 each; k,v 128·64 each; SwiGLU 3·128·352; two RMSNorms
    block = 2 * 128 * 128 + 2 * 128 * 64 + 3 * 128 * 352 + 2 * 128
    assert S.count_parameters(shape) == (1000 * 128 + 4 * block + 128, 4 * block + 128) == (866_432, 738_432)
    untied = replace(shape, tie_embeddings=False)
    assert S.count_parameters(untied)[0] == 866_432 + 128_000
    assert S.count_parameters(replace(shape, vocab_size=None)) == (None, 738_432)
    assert S.default_intermediate("llama", 128) == 352 and S.default_intermediate("bert", 128) == 512


def test_chinchilla_allocation():
    n, d = S.chinchilla(1e21)
    assert d == pytest.approx(20 * n) and 6 * n * d == pytest.approx(1e21)
    assert n == pytest.approx(2.887e9, rel=1e-3)
    n2, d2 = S.chinchilla(4e21)  # N, D ∝ C^0.5
    assert n2 / n == pytest.approx(2.0) and d2 / d == pytest.approx(2.0)


@pytest.mark.parametrize(("target", "vocab"), [(1.5e6, 512), (1.2e8, 32000), (7e9, None)])
def test_shape_for_hits_the_target(target, vocab):
    base = S.Shape("llama", 64, 1, 2, 2, 192, 256, True, vocab_size=vocab)
    shape = S.shape_for(target, base)
    n = S.counted_parameters(shape)
    assert abs(n / target - 1) <= 0.1, (shape, n)
    assert shape.hidden_size % 32 == 0 and shape.hidden_size % shape.num_heads == 0
    assert 16 <= shape.hidden_size / shape.num_layers <= 256


def test_sizing_from_steps_tokens_and_budget():
    arch = {"hidden_size": 128, "num_layers": 4, "num_heads": 4, "context_length": 64, "vocab_size": 512}
    s = S.sizing(
        cfg(architecture=arch, per_device_train_batch_size=8, gradient_accumulation_steps=2, max_steps=10)
    )
    assert s.tokens_per_step == 8 * 2 * 64 and s.steps == 10 and s.tokens == 10_240
    assert s.parameters == 869_504 and s.flops == 6 * 869_504 * 10_240
    assert (
        S.sizing(cfg(architecture=arch, per_device_train_batch_size=8, tokens=10_000)).steps == 20
    )  # ceil(10000/512)
    s2 = S.sizing(
        cfg(architecture=arch, per_device_train_batch_size=8, tokens=10_000, resources={"num_processes": 2})
    )
    assert s2.steps == 10 and s2.tokens_per_step == 1024

    budget = cfg(
        architecture={"context_length": 64, "vocab_size": 512},
        compute_budget=6e13,
        per_device_train_batch_size=8,
    )
    b = S.sizing(budget)
    n_opt, d_opt = S.chinchilla(6e13)
    assert abs(b.parameters / n_opt - 1) <= 0.1
    assert b.tokens / b.parameters == pytest.approx(6e13 / 6 / b.parameters**2, rel=0.01)
    assert abs(b.tokens / d_opt - 1) <= 0.15
    assert b.flops == pytest.approx(6e13, rel=0.01)


def test_lr_schedule_warmup_then_cosine():
    lrs = [S.lr_at(s, lr=1.0, min_lr=0.1, warmup_steps=4, total_steps=20) for s in range(20)]
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0]
    assert lrs[4] == pytest.approx(1.0) and lrs[-1] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:], strict=False))
    mid = 4 + (20 - 4 - 1) / 2
    assert S.lr_at(int(mid), lr=1.0, min_lr=0.1, warmup_steps=4, total_steps=20) == pytest.approx(
        0.1 + 0.45 * (1 + math.cos(math.pi * (int(mid) - 4) / 15))
    )
    assert S.lr_at(0, lr=1.0, min_lr=0.0, warmup_steps=100, total_steps=5) == pytest.approx(
        0.2
    )  # capped warmup


def test_describe_lines(monkeypatch, tmp_path):
    monkeypatch.setenv("HUBFLOW_CACHE_DIR", str(tmp_path))
    c = cfg(
        architecture={
            "hidden_size": 128,
            "num_layers": 4,
            "num_heads": 4,
            "context_length": 64,
            "vocab_size": 512,
        },
        per_device_train_batch_size=8,
        max_steps=100,
    )
    lines = pretrain.describe(c)
    assert lines[0] == "model: llama d=128 layers=4 heads=4 ffn=352 ctx=64"
    assert lines[1] == "N = 870k parameters (vocab 512)"
    assert lines[2] == "D = 51.2k tokens (100 steps × 512 tokens/step)"
    assert lines[3] == "C = 6·N·D = 2.67e+11 FLOPs"
    assert lines[4].startswith("tokens/parameter = 0.0589 (Chinchilla compute-optimal ≈ 20: under-trained")
    assert lines[5] == "time: unknown until a run measures tokens/s (or set throughput_tokens_per_s)"

    S.record_throughput(S.throughput_key(c), 512.0)
    assert (
        pretrain.describe(c)[5]
        == "time ≈ 2 min at 512 tokens/s (measured by the last run of this shape here)"
    )
    other = c.model_copy(update={"per_device_train_batch_size": 16})
    assert S.read_throughput(S.throughput_key(other)) is None
    hinted = cfg(
        **{
            **c.model_dump(exclude={"resources"}),
            "throughput_tokens_per_s": 1e6,
            "tokens": 10**10,
            "max_steps": None,
        }
    )
    assert pretrain.describe(hinted)[5] == "time ≈ 2.8 h at 1M tokens/s (throughput_tokens_per_s)"

    unknown_vocab = cfg(architecture={"hidden_size": 128, "num_layers": 4, "num_heads": 4})
    assert "non-embedding parameters (+ vocab×d embeddings" in pretrain.describe(unknown_vocab)[1]
    big = cfg(compute_budget=1e21)
    assert pretrain.describe(big)[0].endswith("(picked for compute_budget)")
    assert "about compute-optimal" in pretrain.describe(big)[4]


def test_describe_never_imports_torch():
    probe = (
        "import sys; from stages import pretrain; "
        "c = pretrain.Config(name='a', kind='pretrain', inputs={'tokenizer': 't', 'data': 'd'}, "
        "output='model:a/b', compute_budget=1e18); print(pretrain.describe(c)); "
        "print([m for m in ('torch', 'transformers', 'numpy', 'accelerate') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("[]"), out


def test_throughput_hint_and_trackers_stay_out_of_the_fingerprint():
    a, b = cfg(), cfg(throughput_tokens_per_s=5000.0, report_to=["tensorboard"])
    assert a.settings() == b.settings()
    assert cfg(learning_rate=1e-3).settings() != a.settings()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"inputs": {"data": "corpus"}}, "needs a `tokenizer` input and at least one dataset input"),
        ({"inputs": {"tokenizer": "tok"}}, "needs a `tokenizer` input and at least one dataset input"),
        ({"tokens": 1000, "max_steps": 10}, "set exactly one of max_steps, tokens or compute_budget"),
        ({"max_steps": None}, "set exactly one of max_steps, tokens or compute_budget (got none)"),
        ({"compute_budget": 1e18, "max_steps": None, "architecture": {"hidden_size": 64}},
         "compute_budget picks the model size; remove architecture.hidden_size"),
        ({"architecture": {"hidden_size": 100, "num_heads": 3}}, "must be a multiple of num_heads 3"),
        ({"architecture": {"num_heads": 4, "num_kv_heads": 3}}, "must be a multiple of num_kv_heads 3"),
        ({"objective": "ul2", "architecture": {"tie_embeddings": False}}, "always shares its embedding"),
        ({"objective": "mlm", "architecture": {"num_kv_heads": 2}}, "num_kv_heads and rope_scaling are Llama"),
        ({"objective": "mlm", "architecture": {"context_length": 512, "max_position_embeddings": 256}},
         "context_length 512 exceeds max_position_embeddings 256 (the position-embedding table"),
        ({"min_lr": 1.0}, "min_lr 1.0 is above learning_rate"),
        ({"output": "dataset:demo/lm"}, "output must be a model repo"),
    ],
)  # fmt: skip
def test_config_errors(fields, message):
    with pytest.raises(ValidationError) as err:
        cfg(**fields)
    assert message in str(err.value)


def test_every_field_is_documented():
    def walk(model: Any) -> None:
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name}"

    for model in (
        pretrain.Config,
        pretrain_config.Architecture,
        pretrain_config.RopeScaling,
        pretrain_config.Denoiser,
    ):
        walk(model)
