"""The sft stage on a tiny Llama built from config and a tokenizer trained here (no download).

Each PEFT method trains a few steps and lowers the held-out loss; outputs load back
(peft adapters with PeftModel.from_pretrained); bad inputs fail before training with
messages naming what exists.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("trl")
pytest.importorskip("peft")

from hubflow.errors import StageInputError  # noqa: E402
from hubflow.stage import StageContext, StageResult  # noqa: E402
from stages import sft  # noqa: E402
from stages.lib.testing import save_base, stage_context, tiny_tokenizer, write_dataset  # noqa: E402

BASE_REF = "model:demo/base@" + "b" * 40


WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def arith_rows(n: int, offset: int = 0) -> list[dict[str, str]]:
    return [
        {
            "prompt": f"what is {WORDS[(i + offset) % 10]} plus one ?",
            "completion": f" answer {WORDS[(i + offset + 1) % 10]}",
        }
        for i in range(n)
    ]


def corpus() -> list[str]:
    return [r["prompt"] + r["completion"] for r in arith_rows(40)] + [
        "the review was great",
        "an awful movie",
    ]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return save_base(tmp_path_factory.mktemp("base") / "model", corpus=corpus())


@pytest.fixture(scope="module")
def arith(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("arith"), arith_rows(64), arith_rows(8, offset=3))


def make_ctx(tmp: Path, inputs: dict[str, Path]) -> StageContext:
    refs = {"model": BASE_REF, **{k: f"dataset:demo/{k}@{'d' * 40}" for k in inputs if k != "model"}}
    return stage_context(tmp, inputs, refs)


def config(inputs: dict[str, Path], **kw: Any) -> sft.Config:
    fields: dict[str, Any] = {
        "max_steps": 8,
        "per_device_train_batch_size": 8,
        "learning_rate": 1e-2,
        "logging_steps": 1,
        "save_steps": None,
        "warmup_ratio": 0.0,
    }
    fields.update(kw)
    refs = {k: ("model:demo/base" if k == "model" else f"dataset:demo/{k}") for k in inputs}
    return sft.Config(name="sft", kind="sft", inputs=refs, output="model:demo/out", **fields)


def run_sft(tmp: Path, inputs: dict[str, Path], **kw: Any) -> tuple[StageResult, StageContext]:
    ctx = make_ctx(tmp, inputs)
    return sft.run(ctx, config(inputs, **kw)), ctx


def logits(model: Any, ids: list[int]) -> Any:
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits


METHODS = {
    "full": ({"method": "full"}, {}),
    "lora": ({"method": "lora", "r": 8, "alpha": 16, "target_modules": ["q_proj", "v_proj", "o_proj"]}, {}),
    "qlora": ({"method": "qlora", "r": 8, "alpha": 16, "target_modules": "all-linear"}, {}),
    "adapter": ({"method": "adapter", "bottleneck": 16}, {}),
    "prefix": ({"method": "prefix", "num_virtual_tokens": 8}, {"learning_rate": 3e-2}),
}


@pytest.mark.parametrize("method", list(METHODS))
def test_each_method_trains_and_its_output_loads(tmp_path, base, arith, method):
    if method == "qlora":
        pytest.importorskip("bitsandbytes")
    peft_spec, extra = METHODS[method]
    result, ctx = run_sft(tmp_path, {"model": base, "data": arith}, peft=peft_spec, **extra)
    m = result.metrics
    assert m["steps"] == 8 and m["method"] == method
    assert m["eval_eval_loss"] < m["eval_eval_loss_before"], m  # held-out loss goes down
    assert m["train_loss_last"] < m["train_loss_first"]
    assert 0 < m["trainable_params"] <= m["total_params"] and m["tokens_per_s"] > 0
    assert m["data"]["data"]["trained_tokens"] < m["data"]["data"]["tokens"]  # prompts are masked
    meta = result.card_metadata
    assert meta["base_model"] == "demo/base"
    assert meta["base_model_relation"] == ("finetune" if method == "full" else "adapter")
    files = {p.name for p in ctx.output.iterdir()}
    assert {"tokenizer.json", "tokenizer_config.json"} <= files and not any(f.endswith(".bin") for f in files)
    from stages.lib.models import load_model

    ids = [1, 30, 31, 32, 33, 34]
    if method == "full":
        assert "model.safetensors" in files and "adapter_config.json" not in files
        assert m["trainable_params"] == m["total_params"]
        return
    assert {"adapter_model.safetensors", "adapter_config.json"} <= files
    adapter_cfg = json.loads((ctx.output / "adapter_config.json").read_text())
    assert adapter_cfg["base_model_name_or_path"] == "demo/base" and adapter_cfg["revision"] == "b" * 40
    mine = load_model(ctx.output, base=base)
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(str(base)).eval()
    assert (logits(mine, ids) - logits(plain, ids)).abs().max() > 1e-4  # the adapter changes the model
    if method == "adapter":
        assert adapter_cfg["hubflow_adapter"] == "bottleneck" and "peft_type" not in adapter_cfg
        return
    from peft import PeftModel

    assert adapter_cfg["peft_type"] == {"lora": "LORA", "qlora": "LORA", "prefix": "PREFIX_TUNING"}[method]
    peft_model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(str(base)), str(ctx.output)
    ).eval()
    assert torch.allclose(logits(peft_model, ids), logits(mine, ids), atol=1e-5)


def test_qlora_layers_are_4bit_nf4_with_double_quantisation(base):
    bnb = pytest.importorskip("bitsandbytes")
    from stages.lib.models import load_model
    from stages.lib.peft_methods import apply_method, quantization_config
    from stages.lib.peft_spec import QloraSpec

    spec = QloraSpec(method="qlora", r=4, target_modules=["q_proj", "v_proj"])
    model = load_model(base, task="causal_lm", quantization=quantization_config(spec, "no"), device="cpu")
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(layers) == 2 * 7  # q, k, v, o, gate, up, down in both layers; lm_head stays full precision
    for layer in layers:
        assert layer.weight.quant_type == "nf4" and layer.weight.quant_state.nested  # double quantisation
        assert layer.weight.dtype == torch.uint8  # two 4-bit codes per byte
    model = apply_method(model, spec, "causal_lm")
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


def test_bottleneck_adapter_round_trip(tmp_path, base):
    from transformers import AutoModelForCausalLM

    from stages.lib.adapters import insert_adapters, load_with_adapter, save_adapter

    ids = [1, 40, 41, 42, 43]
    model = AutoModelForCausalLM.from_pretrained(str(base)).eval()
    before = logits(model, ids)
    targets = insert_adapters(model, bottleneck=4, activation="relu", positions=["attention", "mlp"])
    assert targets == [f"model.layers.{i}.{p}" for i in range(2) for p in ("self_attn", "mlp")]
    assert torch.equal(logits(model, ids), before)  # W_up = 0: identity at initialisation
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "hubflow_adapter" in name:
                p.normal_(0, 0.2)
    after = logits(model, ids)
    assert (after - before).abs().max() > 1e-3
    save_adapter(model, tmp_path / "a", extra_config={"base_model_name_or_path": "demo/base"})
    fresh = load_with_adapter(AutoModelForCausalLM.from_pretrained(str(base)).eval(), tmp_path / "a")
    assert torch.equal(logits(fresh, ids), after)  # save -> load -> same logits
    cfg = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert cfg["hubflow_adapter"] == "bottleneck" and cfg["bottleneck"] == 4 and cfg["activation"] == "relu"


def test_missing_column_fails_before_training_naming_the_columns(tmp_path, base):
    data = write_dataset(tmp_path / "d", [{"prompt": "a", "answer": "b"}])
    with pytest.raises(StageInputError) as err:
        run_sft(tmp_path, {"model": base, "data": data})
    text = str(err.value)
    assert "lacks column(s) ['completion']" in text and "it has ['prompt', 'answer']" in text
    assert "columns:" in text  # the fix: rename, or pick another format
    assert (
        not (tmp_path / "resume" / "checkpoints").exists()
        and not (tmp_path / "logs" / "metrics.jsonl").exists()
    )


def test_absent_lora_target_names_the_linear_modules(tmp_path, base, arith):
    with pytest.raises(StageInputError) as err:
        run_sft(
            tmp_path,
            {"model": base, "data": arith},
            peft={"method": "lora", "target_modules": ["q_proj", "c_attn"]},
        )
    text = str(err.value)
    assert "['c_attn'] are not in the model" in text
    assert "['down_proj', 'gate_proj', 'k_proj', 'lm_head', 'o_proj', 'q_proj', 'up_proj', 'v_proj']" in text


def test_messages_format_needs_a_chat_template(tmp_path):
    bare = save_base(tmp_path / "bare", corpus=corpus(), chat_template=False)
    data = write_dataset(
        tmp_path / "d",
        [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}],
    )
    with pytest.raises(StageInputError, match="has no chat template"):
        run_sft(tmp_path, {"model": bare, "data": data}, format="messages")


def test_a_tokenizer_larger_than_the_embeddings_is_refused(tmp_path, base, arith):
    tok_dir = tmp_path / "tok"
    bigger = tiny_tokenizer(corpus())
    bigger.add_tokens([f"extra{i}" for i in range(100)])
    bigger.save_pretrained(str(tok_dir))
    rows = len(bigger) - 100  # the model was built for the tokenizer without the extra tokens
    with pytest.raises(
        StageInputError, match=f"tokenizer has {len(bigger)} tokens but the model .* embeds only {rows}"
    ):
        run_sft(tmp_path, {"model": base, "tokenizer": tok_dir, "data": arith})


def test_messages_format_trains_on_assistant_turns(tmp_path, base):
    rows = [
        {"messages": [{"role": "user", "content": f"say {w}"}, {"role": "assistant", "content": f"{w} {w}"}]}
        for w in WORDS * 3
    ]
    data = write_dataset(tmp_path / "d", rows, rows[:6])
    result, _ = run_sft(
        tmp_path,
        {"model": base, "data": data},
        format="messages",
        peft={"method": "lora", "r": 8},
        max_steps=4,
    )
    stats = result.metrics["data"]["data"]
    assert stats["rows"] == 30 and stats["dropped"] == 0
    assert result.metrics["eval_eval_loss"] < result.metrics["eval_eval_loss_before"]


def test_ewc_regularised_training(tmp_path, base, arith):
    web = write_dataset(tmp_path / "web", [{"text": t} for t in corpus()])
    result, ctx = run_sft(
        tmp_path,
        {"model": base, "data": arith, "web": web},
        regularization={"ewc": {"lambda": 100.0, "fisher_samples": 8, "data_input": "web"}},
        max_steps=4,
    )
    m = result.metrics
    assert m["ewc_fisher_samples"] == 8 and m["ewc_fisher_mean"] > 0
    assert m["ewc_penalty_last"] > 0  # θ moved away from θ*, the penalty grew from zero
    logged = [json.loads(line) for line in (ctx.log_dir / "metrics.jsonl").read_text().splitlines()]
    penalties = [r["ewc_penalty"] for r in logged if "ewc_penalty" in r]
    assert penalties[0] == 0.0 and penalties[-1] > 0  # the first step starts at θ = θ*
    assert "EWC (lambda=100)" in result.card_sections["Fine-tuning"]


def test_a_rerun_resumes_from_the_checkpoint_in_the_resume_folder(tmp_path, base, arith):
    peft = {"method": "lora", "r": 4}
    first, ctx = run_sft(
        tmp_path, {"model": base, "data": arith}, peft=peft, max_steps=2, save_steps=2, eval_split=None
    )
    assert (ctx.resume_dir / "checkpoints" / "checkpoint-2").is_dir() and first.metrics[
        "resumed_from_step"
    ] == 0
    # the same stage run again (e.g. after a crash) finds the checkpoint and continues from it
    again, _ = run_sft(
        tmp_path, {"model": base, "data": arith}, peft=peft, max_steps=4, save_steps=2, eval_split=None
    )
    assert again.metrics["resumed_from_step"] == 2 and again.metrics["steps"] == 4


def _base_refs(tmp: Path, inputs: dict[str, Path], model_ref: str) -> StageContext:
    refs = {"model": model_ref, "base": BASE_REF, "data": f"dataset:demo/data@{'d' * 40}"}
    return stage_context(tmp, inputs, {k: v for k, v in refs.items() if k in inputs})


def test_an_adapter_as_model_continues_on_its_base_or_merges(tmp_path, base, arith):
    """issue 9 item 11: an adapter given as `model` loads on its declared `base`, never via the network."""
    lora = {"method": "lora", "r": 8, "alpha": 16, "target_modules": ["q_proj", "v_proj"]}
    first, ctx1 = run_sft(tmp_path / "first", {"model": base, "data": arith}, peft=lora)
    adapter = ctx1.output
    (adapter / "lineage.json").write_text(
        json.dumps(
            {"inputs": {"model": {"repo_type": "model", "repo_id": "demo/base", "revision": "b" * 40}}}
        )
    )
    inputs = {"model": adapter, "base": base, "data": arith}
    refs = {
        k: ("model:demo/first" if k == "model" else "model:demo/base" if k == "base" else "dataset:demo/d")
        for k in inputs
    }
    fields = {"max_steps": 4, "per_device_train_batch_size": 8, "learning_rate": 1e-2, "save_steps": None}

    # the same method continues the adapter: the output applies to the original base
    cfg = sft.Config(name="s2", kind="sft", inputs=refs, output="model:demo/s2", peft=lora, **fields)
    ctx = _base_refs(tmp_path / "continue", inputs, f"model:demo/first@{'c' * 40}")
    result = sft.run(ctx, cfg)
    assert result.metrics["continued_adapter"] is True and result.card_metadata["base_model"] == "demo/base"
    config = json.loads((ctx.output / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "demo/base" and config["r"] == 8
    from stages.lib.models import load_model

    ids = [1, 30, 31, 32, 33]
    before, after = load_model(adapter, base=base), load_model(ctx.output, base=base)
    assert (logits(before, ids) - logits(after, ids)).abs().max() > 1e-5  # it trained further

    # method full merges it into the base and trains every weight
    cfg = sft.Config(name="s3", kind="sft", inputs=refs, output="model:demo/s3", **fields)
    ctx = _base_refs(tmp_path / "merge", inputs, f"model:demo/first@{'c' * 40}")
    result = sft.run(ctx, cfg)
    assert (ctx.output / "model.safetensors").is_file() and result.metrics["trainable_params"] > 0

    # another method, other settings, or no base: refused before training, naming the fix
    for peft, message in (
        ({"method": "prefix"}, "is a lora adapter, but this stage's peft method is prefix"),
        ({**lora, "r": 4}, "settings differ from this stage's peft: r 4 (the adapter has 8)"),
    ):
        bad = sft.Config(name="s4", kind="sft", inputs=refs, output="model:demo/s4", peft=peft, **fields)
        with pytest.raises(StageInputError, match=re.escape(message)):
            sft.run(
                _base_refs(
                    tmp_path / f"bad-{peft['method']}-{peft.get('r')}", inputs, "model:demo/first@" + "c" * 40
                ),
                bad,
            )
    no_base = {"model": adapter, "data": arith}
    cfg = sft.Config(
        name="s5",
        kind="sft",
        inputs={"model": "model:demo/first", "data": "dataset:demo/d"},
        output="model:demo/s5",
        **fields,
    )
    with pytest.raises(StageInputError) as err:
        sft.run(_base_refs(tmp_path / "nobase", no_base, "model:demo/first@" + "c" * 40), cfg)
    assert "input 'model' is a lora adapter" in err.value.message and "`base: STAGE_OR_REF`" in err.value.hint
