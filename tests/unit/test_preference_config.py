"""The reference_logprobs stage a dpo / kto stage implies (a pure function of the config, the engine adds it)
and the config checks of the preference kinds; no torch."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from stages import dpo, kto, orpo, reference_logprobs

DPO = {
    "name": "align",
    "kind": "dpo",
    "inputs": {"model": "sft", "data": "synthetic.preferences"},
    "output": "model:demo/policy-dpo",
    "max_length": 256,
    "max_prompt_length": 128,
    "beta": 0.1,
}


def test_reference_stage_of_a_dpo_stage():
    cfg = dpo.Config(**DPO)
    stage = dpo.reference_stage(cfg)
    assert stage == {
        "name": "align-reference",
        "kind": "reference_logprobs",
        "description": "Reference log-probabilities of stage 'align' (seed §4.7 step 2)",
        "inputs": {"model": "sft", "data": "synthetic.preferences"},
        "format": "pairs",
        "max_length": 256,
        "max_prompt_length": 128,
        "split": "train",
        "eval_split": "test",
        "output": "dataset:demo/policy-dpo-reference-logprobs",
    }
    reference_logprobs.Config(**stage)  # a valid stage of that kind
    # β, the learning rate and the epochs do not reach it: changing them leaves the reference stage as is
    changed = dpo.Config(**{**DPO, "beta": 0.5, "learning_rate": 1e-4, "num_train_epochs": 3})
    assert dpo.reference_stage(changed) == stage
    assert dpo.reference_stage(dpo.Config(**{**DPO, "max_length": 512}))["max_length"] == 512


def test_reference_stage_follows_the_reference_base_and_tokenizer_inputs():
    inputs = {
        "model": "sft-lora",
        "base": "model:demo/base",
        "data": "prefs",
        "tokenizer": "tok",
        "reference": "ref",
    }
    stage = dpo.reference_stage(dpo.Config(**{**DPO, "inputs": inputs, "reference_batch_size": 4}))
    assert stage["inputs"] == {"model": "ref", "base": "model:demo/base", "data": "prefs", "tokenizer": "tok"}
    assert stage["batch_size"] == 4
    pointwise = kto.reference_stage(
        kto.Config(
            name="k",
            kind="kto",
            inputs={"model": "sft", "data": "synthetic.feedback"},
            output="model:demo/k",
            per_device_train_batch_size=4,
        )
    )
    assert pointwise["format"] == "pointwise" and pointwise["kl_batch_size"] == 4
    assert pointwise["output"] == "dataset:demo/k-reference-logprobs"
    reference_logprobs.Config(**pointwise)


def test_configs_refuse_what_cannot_run():
    with pytest.raises(ValidationError, match="format pointwise needs `kl_batch_size`"):
        reference_logprobs.Config(
            name="r",
            kind="reference_logprobs",
            inputs={"model": "m", "data": "d"},
            output="dataset:a/r",
            format="pointwise",
        )
    with pytest.raises(ValidationError, match=r"unknown input\(s\) \['reference'\]"):
        reference_logprobs.Config(
            name="r",
            kind="reference_logprobs",
            inputs={"model": "m", "data": "d", "reference": "x"},
            output="dataset:a/r",
        )
    with pytest.raises(ValidationError, match="model repo"):
        dpo.Config(**{**DPO, "output": "dataset:demo/x"})
    with pytest.raises(ValidationError, match=r"unknown input\(s\) \['reference'\]"):
        orpo.Config(
            name="o", kind="orpo", inputs={"model": "m", "data": "d", "reference": "r"}, output="model:a/o"
        )
    settings = dpo.Config(**DPO).settings()
    assert "reference_batch_size" not in settings and settings["beta"] == 0.1
