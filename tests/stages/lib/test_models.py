"""The one model loader: full models, peft LoRA / prefix adapters and hubflow bottleneck adapters load
the same as loading them by hand, and bad folders fail before any weight is read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from hubflow.errors import StageInputError  # noqa: E402
from stages.lib.models import inspect_model, load_model, task_of  # noqa: E402
from stages.lib.testing import save_base  # noqa: E402

IDS = [[1, 30, 31, 32, 33, 34, 35]]


def logits(model, ids=IDS):
    with torch.no_grad():
        return model(input_ids=torch.tensor(ids)).logits.float()


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return save_base(tmp_path_factory.mktemp("base") / "base", hidden=32, layers=2, heads=2)


def _by_hand(base: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(base)).eval()


def _lora(base: Path, folder: Path) -> Path:
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(1)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(_by_hand(base), config).save_pretrained(str(folder))
    return folder


def _prefix(base: Path, folder: Path) -> Path:
    from peft import PrefixTuningConfig, get_peft_model

    torch.manual_seed(2)
    model = get_peft_model(_by_hand(base), PrefixTuningConfig(num_virtual_tokens=3, task_type="CAUSAL_LM"))
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_()
    model.save_pretrained(str(folder))
    return folder


def _bottleneck(base: Path, folder: Path) -> Path:
    from stages.lib.adapters import adapter_parameters, insert_adapters, save_adapter

    torch.manual_seed(3)
    model = _by_hand(base)
    insert_adapters(model, bottleneck=4, activation="gelu", positions=["attention", "mlp"])
    with torch.no_grad():
        for p in adapter_parameters(model).values():
            p.normal_(std=0.2)
    save_adapter(model, folder)
    return folder


def test_full_model_loads_as_by_hand(base):
    mine = load_model(base)
    assert not mine.training  # eval mode: dropout off
    assert torch.equal(logits(mine), logits(_by_hand(base)))
    assert inspect_model(base).kind == "full" and task_of(base) == "causal_lm"


def test_lora_adapter_loads_on_its_base_and_merges(tmp_path, base):
    from peft import PeftModel

    folder = _lora(base, tmp_path / "lora")
    by_hand = PeftModel.from_pretrained(_by_hand(base), str(folder)).eval()
    mine = load_model(folder, base=base)
    assert torch.allclose(logits(mine), logits(by_hand), atol=1e-6)
    assert (logits(mine) - logits(_by_hand(base))).abs().max() > 1e-3  # the adapter does something
    merged = load_model(folder, base=base, merge=True)
    assert not hasattr(merged, "peft_config")  # a plain model, the LoRA folded into its weights
    assert torch.allclose(logits(merged), logits(by_hand), atol=1e-5)
    assert not any(p.requires_grad for n, p in mine.named_parameters() if "lora_" in n)
    trainable = load_model(folder, base=base, trainable=True)
    assert any(p.requires_grad for n, p in trainable.named_parameters() if "lora_" in n)


def test_prefix_adapter_loads_and_refuses_to_merge(tmp_path, base):
    from peft import PeftModel

    folder = _prefix(base, tmp_path / "prefix")
    by_hand = PeftModel.from_pretrained(_by_hand(base), str(folder)).eval()
    mine = load_model(folder, base=base)
    assert torch.allclose(logits(mine), logits(by_hand), atol=1e-6)
    with pytest.raises(StageInputError, match="prefix_tuning adapter: it prepends learned virtual tokens"):
        load_model(folder, base=base, merge=True)


def test_bottleneck_adapter_loads_as_by_hand(tmp_path, base):
    from stages.lib.adapters import load_with_adapter

    folder = _bottleneck(base, tmp_path / "bottleneck")
    by_hand = load_with_adapter(_by_hand(base), folder).eval()
    mine = load_model(folder, base=base)
    assert torch.equal(logits(mine), logits(by_hand))
    assert (logits(mine) - logits(_by_hand(base))).abs().max() > 1e-3
    assert inspect_model(folder, base=base).adapter_kind == "bottleneck"


def test_a_task_head_on_a_causal_lm(base):
    model = load_model(base, task="classification", head_kwargs={"num_labels": 1})
    assert type(model).__name__ == "LlamaForSequenceClassification" and model.config.num_labels == 1


def test_a_causal_lm_lora_merged_under_a_fresh_task_head(tmp_path, base):
    """An SFT LoRA loaded as a reward model: merged on a causal LM (peft attaches it only there), then the
    merged backbone under a new one-label head; the backbone is exactly the merged model's."""
    from stages.lib.testing import save_lora

    adapter = save_lora(tmp_path / "lora", base, seed=3)
    merged = load_model(adapter, base=base, merge=True)
    reward = load_model(adapter, base=base, merge=True, task="classification", head_kwargs={"num_labels": 1})
    assert type(reward).__name__ == "LlamaForSequenceClassification" and reward.config.num_labels == 1
    ids = torch.tensor(IDS)
    with torch.no_grad():
        want = merged.model(input_ids=ids).last_hidden_state
        got = reward.model(input_ids=ids).last_hidden_state
        plain = load_model(base, task="classification", head_kwargs={"num_labels": 1}).model(input_ids=ids)
    assert torch.equal(want, got) and not torch.allclose(plain.last_hidden_state, got)
    assert reward.score.weight.shape == (1, 32)


def test_an_adapter_without_its_base_names_the_base_input(tmp_path, base, monkeypatch):
    folder = _lora(base, tmp_path / "lora")
    config = json.loads((folder / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "someone/remote-base"  # never followed to a hub
    (folder / "adapter_config.json").write_text(json.dumps(config))
    import transformers

    def no_loading(*a, **k):
        raise AssertionError("weights were read before the checks")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_loading)
    with pytest.raises(StageInputError) as err:
        load_model(folder, input_name="model", base_input="base")
    assert "input 'model' is a lora adapter" in err.value.message
    assert "someone/remote-base" in err.value.message and "`base: STAGE_OR_REF`" in err.value.hint


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda f: None, "holds neither a model (config.json) nor an adapter"),
        (lambda f: (f / "config.json").write_text("{}"), "holds no .safetensors weights"),
        (
            lambda f: ((f / "config.json").write_text("{}"), (f / "pytorch_model.bin").write_bytes(b"x")),
            "found pickled weights ['pytorch_model.bin'], which hubflow never loads",
        ),
        (
            lambda f: (f / "adapter_config.json").write_text('{"peft_type": "LORA"}'),
            "has adapter_config.json but no adapter_model.safetensors",
        ),
        (
            lambda f: (f / "adapter_config.json").write_text('{"r": 4}'),
            "has neither `peft_type` nor `hubflow_adapter`",
        ),
    ],
)
def test_bad_folders_fail_with_the_fix(tmp_path, base, setup, message):
    folder = tmp_path / "m"
    folder.mkdir()
    setup(folder)
    with pytest.raises(StageInputError, match="input 'model'") as err:
        inspect_model(folder, base=base)
    assert message in err.value.message and err.value.hint


def test_an_adapter_on_another_base_is_refused(tmp_path, base):
    folder = _lora(base, tmp_path / "lora")
    (folder / "lineage.json").write_text(
        json.dumps(
            {"inputs": {"model": {"repo_type": "model", "repo_id": "demo/base", "revision": "a" * 40}}}
        )
    )
    with pytest.raises(
        StageInputError, match="adapter of model:demo/base@a+ .* but input 'base' is model:demo/other"
    ):
        inspect_model(folder, base=base, base_ref="model:demo/other@" + "b" * 40)
    assert "matches" in inspect_model(folder, base=base, base_ref="model:demo/base@" + "a" * 40).base_check


def test_a_policy_is_a_causal_lm_full_or_a_lora_family_adapter(tmp_path, base):
    from stages.lib.models import inspect_policy

    assert inspect_policy(_lora(base, tmp_path / "lora"), base=base).adapter_kind == "lora"
    with pytest.raises(
        StageInputError, match="input 'policy' is a prefix_tuning adapter; ppo continues or merges"
    ):
        inspect_policy(_prefix(base, tmp_path / "prefix"), base=base, kind="ppo")
    head = tmp_path / "rm"
    load_model(base, task="classification", head_kwargs={"num_labels": 1}).save_pretrained(str(head))
    with pytest.raises(StageInputError, match="input 'policy' is a classification model, not a policy"):
        inspect_policy(head, base=None)
