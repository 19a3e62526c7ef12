"""The merge stage: LoRA + base -> full model with the same logits; refusals before any compute."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from hubflow.errors import HubflowError, StageInputError
from hubflow.stage import StageContext

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from stages import merge  # noqa: E402

BASE_REV = "a" * 40


OTHER_REV = "b" * 40
WORDS = "the cat sat on a mat and one two three four five six seven eight nine ten".split()


def make_tokenizer(folder: Path) -> object:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["<unk>", "<s>", "</s>", "<pad>", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    fast.save_pretrained(str(folder))
    return fast


def make_base(folder: Path, seed: int = 0) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=4 + len(WORDS),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    LlamaForCausalLM(cfg).save_pretrained(str(folder))
    make_tokenizer(folder)


def lineage(folder: Path, repo_id: str = "demo/base", revision: str = BASE_REV) -> None:
    record = {
        "stage": "sft",
        "inputs": {
            "model": {
                "ref": f"model:{repo_id}",
                "repo_type": "model",
                "repo_id": repo_id,
                "revision": revision,
            },
            "data": {
                "ref": "dataset:demo/d",
                "repo_type": "dataset",
                "repo_id": "demo/d",
                "revision": "c" * 40,
            },
        },
    }
    (folder / "lineage.json").write_text(json.dumps(record))


def make_lora(
    base_dir: Path, folder: Path, *, targets: tuple[str, ...] = ("q_proj", "v_proj", "down_proj")
) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    torch.manual_seed(1)
    base = LlamaForCausalLM.from_pretrained(str(base_dir))
    # init_lora_weights=False: B is random, so the adapter really changes the logits
    model = get_peft_model(
        base, LoraConfig(r=4, lora_alpha=8, target_modules=list(targets), init_lora_weights=False)
    )
    model.save_pretrained(str(folder))
    lineage(folder)


@pytest.fixture
def models(tmp_path: Path) -> tuple[Path, Path]:
    base, adapter = tmp_path / "base", tmp_path / "adapter"
    make_base(base)
    make_lora(base, adapter)
    return base, adapter


def ctx_for(tmp_path: Path, inputs: dict[str, Path], refs: dict[str, str] | None = None) -> StageContext:
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    (tmp_path / "logs").mkdir(exist_ok=True)
    return StageContext(
        stage_name="merge",
        fingerprint="0" * 64,
        inputs=inputs,
        input_refs=refs if refs is not None else {"base": f"model:demo/base@{BASE_REV}"},
        outputs={"output": out},
        resume_dir=tmp_path / "resume",
        base_dir=tmp_path,
        log_dir=tmp_path / "logs",
    )


def cfg(**kw: object) -> merge.Config:
    return merge.Config(
        name="merge",
        kind="merge",
        inputs={"base": "base", "adapter": "sft"},
        output="model:demo/merged",
        **kw,
    )


def test_merged_logits_equal_adapter_logits(tmp_path: Path, models: tuple[Path, Path]) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    base_dir, adapter_dir = models
    ctx = ctx_for(tmp_path, {"base": base_dir, "adapter": adapter_dir})
    result = merge.run(ctx, cfg())

    m = result.metrics
    assert m["max_abs_logit_diff"] <= 1e-4 and m["tolerance"] == 1e-4 and m["adapter_kind"] == "lora"
    assert result.card_metadata == {"base_model_relation": "merge", "base_model": "demo/base"}
    files = {p.name for p in ctx.output.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json"} <= files
    assert "adapter_config.json" not in files and not list(ctx.output.glob("*.bin"))

    # independent check on fresh text: merged model == base + adapter, and != base alone
    tok = AutoTokenizer.from_pretrained(str(ctx.output))
    ids = torch.tensor([tok("the cat sat on a mat one two three")["input_ids"]])
    merged = AutoModelForCausalLM.from_pretrained(str(ctx.output)).eval()
    adapted = PeftModel.from_pretrained(
        LlamaForCausalLM.from_pretrained(str(base_dir)), str(adapter_dir)
    ).eval()
    plain = LlamaForCausalLM.from_pretrained(str(base_dir)).eval()
    with torch.no_grad():
        a, b, c = merged(ids).logits, adapted(ids).logits, plain(ids).logits
    assert torch.allclose(a, b, atol=1e-5)
    assert (a - c).abs().max() > 1e-2  # the adapter changed something


def test_merge_fails_above_tolerance(tmp_path: Path, models: tuple[Path, Path]) -> None:
    ctx = ctx_for(tmp_path, {"base": models[0], "adapter": models[1]})
    with pytest.raises(
        HubflowError, match=r"differ from the adapter model's by up to .* more than tolerance 1e-12"
    ):
        merge.run(ctx, cfg(tolerance=1e-12))


def test_refuses_adapter_of_another_base(tmp_path: Path, models: tuple[Path, Path]) -> None:
    base_dir, adapter_dir = models
    ctx = ctx_for(
        tmp_path, {"base": base_dir, "adapter": adapter_dir}, {"base": f"model:demo/other@{BASE_REV}"}
    )
    with pytest.raises(StageInputError) as err:
        merge.run(ctx, cfg())
    text = str(err.value)
    assert "model:demo/base@" + BASE_REV in text and "model:demo/other@" + BASE_REV in text
    assert "check_base: false" in text
    assert not (ctx.output / "model.safetensors").exists()

    # same repo, another revision (the base was re-trained since the adapter was made)
    ctx = ctx_for(
        tmp_path, {"base": base_dir, "adapter": adapter_dir}, {"base": f"model:demo/base@{OTHER_REV}"}
    )
    with pytest.raises(StageInputError, match=f"revision {BASE_REV}.*revision {OTHER_REV}"):
        merge.run(ctx, cfg())
    # check_base: false lets a user vouch for it
    assert merge.run(ctx, cfg(check_base=False)).metrics["max_abs_logit_diff"] <= 1e-4


def test_refuses_nonlinear_bottleneck_and_prefix_tuning(tmp_path: Path, models: tuple[Path, Path]) -> None:
    from peft import PrefixTuningConfig, get_peft_model
    from transformers import LlamaForCausalLM

    from stages.lib.adapters import insert_adapters, save_adapter

    base_dir = models[0]
    bottleneck = tmp_path / "bottleneck"  # what the sft stage's `adapter` method publishes
    model = LlamaForCausalLM.from_pretrained(str(base_dir))
    insert_adapters(model, bottleneck=4, activation="gelu", positions=["mlp"])
    save_adapter(model, bottleneck)
    lineage(bottleneck)
    ctx = ctx_for(tmp_path, {"base": base_dir, "adapter": bottleneck})
    with pytest.raises(StageInputError) as err:
        merge.run(ctx, cfg())
    assert "nonlinearity 'gelu'" in str(err.value) and "cannot be merged" in str(err.value)
    assert "keep it as an adapter" in str(err.value)

    prefix = tmp_path / "prefix"
    model = get_peft_model(
        LlamaForCausalLM.from_pretrained(str(base_dir)),
        PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3),
    )
    model.save_pretrained(str(prefix))
    ctx = ctx_for(tmp_path, {"base": base_dir, "adapter": prefix})
    with pytest.raises(StageInputError, match="prefix_tuning adapter.*nothing to merge"):
        merge.run(ctx, cfg())


def test_refuses_full_model_as_adapter_and_bad_inputs(tmp_path: Path, models: tuple[Path, Path]) -> None:
    ctx = ctx_for(tmp_path, {"base": models[0], "adapter": models[0]})
    with pytest.raises(StageInputError, match="full model, there is nothing to merge"):
        merge.run(ctx, cfg())
    with pytest.raises(ValidationError, match="missing \\['adapter'\\]"):
        merge.Config(name="m", kind="merge", inputs={"base": "b"}, output="model:demo/m")
    with pytest.raises(ValidationError, match="must be a model repo"):
        merge.Config(name="m", kind="merge", inputs={"base": "b", "adapter": "a"}, output="dataset:demo/m")


E2E_MANIFEST = """
stages:
  - {name: merged, kind: merge, inputs: {base: 'model:demo/BASE', adapter: 'model:demo/sft'}, output: 'model:demo/merged'}
  - {name: eval-sft, kind: evaluate, inputs: {model: 'model:demo/sft', base: 'model:demo/base', qa: 'dataset:demo/qa'},
     max_new_tokens: 3, output: 'dataset:demo/eval-sft'}
"""


def test_merge_and_evaluate_through_the_cli(tmp_path: Path, write_manifest, cli, monkeypatch) -> None:
    """Through the runner: the exact input refs meet the adapter's lineage.json (what an sft stage publishes)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import yaml

    from hubflow import cards
    from hubflow.hub.local import LocalHub
    from hubflow.refs import RepoRef

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    manifest = write_manifest(E2E_MANIFEST.replace("BASE", "base"))
    for name, seed in (("base", 0), ("other", 1)):
        make_base(tmp_path / name, seed=seed)
        assert cli("import", tmp_path / name, f"model:demo/{name}", "--manifest", manifest)[0] == 0
    hub = LocalHub(tmp_path / ".hubflow" / "hub")
    base_rev = hub.resolve(RepoRef("model", "demo/base"), "main")
    make_lora(tmp_path / "base", tmp_path / "sft")
    make_tokenizer(tmp_path / "sft")
    record = cards.lineage(
        stage="sft",
        kind="sft",
        fingerprint="0" * 64,
        components={},
        inputs={"model": f"model:demo/base@{base_rev}", "data": f"dataset:demo/qa@{'c' * 40}"},
        outputs={"output": "model:demo/sft"},
    )
    (tmp_path / "sft" / "lineage.json").write_text(cards.dumps(record))
    assert cli("import", tmp_path / "sft", "model:demo/sft", "--manifest", manifest)[0] == 0
    rows = [
        {"prompt": "one two", "completion": " three four"},
        {"prompt": "the cat", "completion": " sat on"},
    ]
    (tmp_path / "qa" / "data").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "qa" / "data" / "test-00000-of-00001.parquet")
    assert cli("import", tmp_path / "qa", "dataset:demo/qa", "--manifest", manifest)[0] == 0

    code, out, err = cli("run", manifest, "--quiet")
    assert code == 0, out + err
    card = hub.read_file(RepoRef("model", "demo/merged"), "README.md", "main").decode()
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["base_model"] == "demo/base" and meta["base_model_relation"] == "merge"
    assert f"trained on model:demo/base@{base_rev}; input 'base' matches" in card
    merged = json.loads(hub.read_file(RepoRef("model", "demo/merged"), "metrics.json", "main"))
    assert merged["max_abs_logit_diff"] <= 1e-4
    files = {f.path for f in hub.list_files(RepoRef("dataset", "demo/eval-sft"), "main")}
    assert "data/train-00000-of-00001.parquet" in files
    scores = json.loads(hub.read_file(RepoRef("dataset", "demo/eval-sft"), "metrics.json", "main"))
    assert scores["model_type"] == "adapter" and scores["examples"] == 2 and scores["loss"] > 0
    eval_card = hub.read_file(RepoRef("dataset", "demo/eval-sft"), "README.md", "main").decode()
    assert "## Evaluation" in eval_card and "| **all** |" in eval_card and "input 'base' matches" in eval_card

    # the same adapter against another base: refused before any compute, nothing published
    manifest.write_text(E2E_MANIFEST.replace("BASE", "other"))
    code, out, err = cli("run", manifest, "merged", "--quiet")
    assert code == 2
    assert f"input 'adapter' is an adapter of model:demo/base@{base_rev}" in err
    assert "input 'base' is model:demo/other@" in err and "check_base: false" in err
    assert len(hub.list_commits(RepoRef("model", "demo/merged"), "main")) == 1
