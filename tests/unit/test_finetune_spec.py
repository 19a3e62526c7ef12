"""Config validation of the sft and instruct kinds (no training, no heavy imports)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from pydantic import ValidationError

from stages import instruct, sft

BASE = {
    "name": "s",
    "kind": "sft",
    "inputs": {"model": "model:a/base", "data": "dataset:a/d"},
    "output": "model:a/o",
}


def test_defaults_and_peft_union():
    cfg = sft.Config(**BASE)
    assert cfg.peft.method == "full" and cfg.task.type == "causal_lm" and cfg.training_inputs() == ["data"]
    lora = sft.Config(**BASE, peft={"method": "lora", "r": 8, "target_modules": ["q_proj"]})
    assert lora.peft.r == 8 and lora.peft.alpha == 32.0
    q = sft.Config(**BASE, peft={"method": "qlora"})
    assert q.peft.quant_type == "nf4" and q.peft.double_quant is True
    with pytest.raises(ValidationError, match="bottleneck"):
        sft.Config(**BASE, peft={"method": "lora", "bottleneck": 4})  # a field of another method
    with pytest.raises(ValidationError):
        sft.Config(**BASE, peft={"method": "dora"})


def test_ewc_uses_the_lambda_key_and_a_real_input():
    inputs = {**BASE["inputs"], "web": "dataset:a/web"}
    cfg = sft.Config(
        **{**BASE, "inputs": inputs}, regularization={"ewc": {"lambda": 50, "data_input": "web"}}
    )
    assert cfg.regularization.ewc.lambda_ == 50 and cfg.training_inputs() == ["data"]
    again = sft.Config.model_validate(cfg.model_dump(mode="json"))  # what the worker re-validates
    assert again.regularization.ewc.lambda_ == 50
    with pytest.raises(ValidationError, match="'nope' is not an input"):
        sft.Config(**BASE, regularization={"ewc": {"lambda": 1, "data_input": "nope"}})


def test_inputs_are_checked():
    with pytest.raises(ValidationError, match="needs a `model` input"):
        sft.Config(**{**BASE, "inputs": {"data": "dataset:a/d"}})
    with pytest.raises(ValidationError, match="no training dataset"):
        sft.Config(**{**BASE, "inputs": {"model": "model:a/b"}})
    with pytest.raises(ValidationError, match=r"datasets \['x'\] are not inputs"):
        sft.Config(**BASE, datasets=["x"])
    with pytest.raises(ValidationError, match="unknown key"):
        sft.Config(**BASE, columns={"question": "q"})


def test_heads_allow_only_some_methods_and_no_ewc():
    with pytest.raises(ValidationError, match="supports peft methods full, lora and adapter"):
        sft.Config(**BASE, task="classification", peft={"method": "prefix"})
    inputs = {**BASE["inputs"], "web": "dataset:a/web"}
    with pytest.raises(ValidationError, match="no language-model head"):
        sft.Config(
            **{**BASE, "inputs": inputs},
            task="extractive_qa",
            regularization={"ewc": {"lambda": 1, "data_input": "web"}},
        )


def test_instruct_config():
    base = {**BASE, "kind": "instruct", "inputs": {"model": "model:a/b", "tasks": "x", "zero": "y"}}
    cfg = instruct.Config(**base, heldout_inputs=["zero"], cap=100)
    assert cfg.training_inputs() == ["tasks"] and len(cfg.templates) == 4 and cfg.temperature == 2.0
    with pytest.raises(ValidationError, match="only \\['rationale', 'output'\\]"):
        instruct.Config(**base, cot_format="{reasoning} {output}")
    with pytest.raises(ValidationError, match="heldout_inputs"):
        instruct.Config(**base, heldout_inputs=["missing"])


def test_describe_and_output_type():
    cfg = sft.Config(**BASE, peft={"method": "lora"}, max_steps=10)
    assert sft.describe(cfg) == ["lora fine-tuning on prompt_completion data from ['data'], 10 steps"]
    with pytest.raises(ValidationError, match="must be a model repo"):
        sft.Config(**{**BASE, "output": "dataset:a/o"})


def test_importing_the_kinds_stays_light():
    code = "import sys, stages.sft, stages.instruct; print([m for m in ('torch','transformers','trl','peft') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
