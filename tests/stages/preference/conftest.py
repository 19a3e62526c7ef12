"""Fixtures of the offline preference kinds (dpo, kto, orpo, reference_logprobs): small slices of the
synthetic preference and feedback data, a second (weaker) SFT policy as an explicit reference, an SFT
LoRA adapter to continue, and a helper that runs a kind in-process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("peft")

REV = "a" * 40
DATASETS = ("data", "reference_logprobs")


@pytest.fixture(scope="session")
def small_prefs(tmp_path_factory, synthetic_tasks) -> Path:
    """8 training and 8 held-out pairs of the synthetic preferences."""
    from stages.lib.datasets import read_rows
    from stages.lib.testing import write_dataset

    cols = ["prompt", "chosen", "rejected", "family"]
    train = read_rows(synthetic_tasks["preferences"], "train", cols, input_name="p")[:8]
    test = read_rows(synthetic_tasks["preferences"], "test", cols, input_name="p")[:8]
    return write_dataset(tmp_path_factory.mktemp("small-prefs"), train, test)


@pytest.fixture(scope="session")
def small_feedback(tmp_path_factory, synthetic_tasks) -> Path:
    """13 training rows (7 desirable, 6 not) and 8 held-out pointwise rows of the synthetic feedback."""
    from stages.lib.datasets import read_rows
    from stages.lib.testing import write_dataset

    cols = ["prompt", "completion", "label", "family"]
    train = read_rows(synthetic_tasks["feedback"], "train", cols, input_name="f")[:13]
    test = read_rows(synthetic_tasks["feedback"], "test", cols, input_name="f")[:8]
    assert 0 < sum(r["label"] for r in train) != len(train) / 2
    return write_dataset(tmp_path_factory.mktemp("small-feedback"), train, test)


@pytest.fixture(scope="session")
def policy(policy_factory) -> Path:
    return policy_factory()


@pytest.fixture(scope="session")
def weak_policy(policy_factory) -> Path:
    """Another SFT model of the same tokenizer: an explicit reference different from the policy."""
    return policy_factory(steps=40)


@pytest.fixture(scope="session")
def sft_adapter(tmp_path_factory, policy) -> Path:
    """A LoRA adapter on ``policy`` with non-zero weights (as an sft stage publishes it): its outputs differ
    from the base's, so a reference taken from the base instead of the adapter would show."""
    import torch
    from peft import LoraConfig, get_peft_model

    from stages.lib.models import load_model
    from stages.lib.tokenizers import load_tokenizer

    folder = tmp_path_factory.mktemp("sft-lora")
    torch.manual_seed(0)
    model = get_peft_model(
        load_model(policy),
        LoraConfig(
            r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"
        ),
    )
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.3)
    model.save_pretrained(str(folder), safe_serialization=True, save_embedding_layers=False)
    load_tokenizer(policy).save_pretrained(str(folder))
    return folder


def run_kind(
    module: Any, tmp: Path, inputs: dict[str, Path], refs: dict[str, str] | None = None, **fields: Any
):
    """Run ``module``'s stage in-process on ``inputs``; returns (result, ctx)."""
    from stages.lib.testing import stage_context

    kind = module.Config.model_fields["kind"].annotation.__args__[0]
    defaults: dict[str, Any] = {"logging_steps": 1, "save_steps": None}
    if kind == "reference_logprobs":
        defaults = {}
    output = "dataset:demo/ref" if kind == "reference_logprobs" else "model:demo/out"
    if refs is None:
        refs = {k: f"{'dataset' if k in DATASETS else 'model'}:demo/{k}@{REV}" for k in inputs}
    ctx = stage_context(tmp, inputs, refs)
    cfg = module.Config.model_validate(
        {
            "name": kind,
            "kind": kind,
            "inputs": {k: refs[k].split("@")[0] if k in refs else f"dataset:demo/{k}" for k in inputs},
            "output": output,
            **defaults,
            **fields,
        }
    )
    return module.run(ctx, cfg), ctx


@pytest.fixture(scope="session")
def run():
    """``run(module, tmp, inputs, refs=None, **fields) -> (result, ctx)``: a kind in-process."""
    return run_kind
