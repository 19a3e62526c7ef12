"""dpo, kto and orpo with `checkpoints: {every: K}`: the shared preference loop writes a checkpoint (a full
model, or a LoRA adapter with its tokenizer) every K steps, returned as revisions with the files of the
final output."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

from test_checkpoint_kinds import check_revisions


def test_dpo_publishes_full_model_checkpoints(tmp_path, run, policy, small_prefs):
    from transformers import AutoModelForCausalLM

    from stages import dpo

    result, ctx = run(
        dpo,
        tmp_path / "stage",
        {"model": policy, "data": small_prefs},
        max_steps=2,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        eval_examples=4,
        checkpoints={"every": 1},
        precompute_reference=False,
    )
    check_revisions(result, ctx, ["step-1", "step-2"])
    model = AutoModelForCausalLM.from_pretrained(str(result.revisions[0].folder), local_files_only=True)
    assert model.num_parameters() > 0
    assert "loss" in result.revisions[0].metrics


@pytest.mark.parametrize("kind", ["kto", "orpo"])
def test_kto_and_orpo_publish_adapter_checkpoints(tmp_path, run, policy, small_prefs, small_feedback, kind):
    from stages import kto, orpo
    from stages.lib.models import load_model

    module, data = (kto, small_feedback) if kind == "kto" else (orpo, small_prefs)
    extra = {"precompute_reference": False} if kind == "kto" else {}
    result, ctx = run(
        module,
        tmp_path / "stage",
        {"model": policy, "data": data},
        max_steps=2,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        eval_examples=4,
        peft={"method": "lora", "r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
        checkpoints={"every": 2},
        **extra,
    )
    check_revisions(result, ctx, ["step-2"])
    assert "adapter_model.safetensors" in {p.name for p in result.revisions[0].folder.iterdir()}
    assert load_model(result.revisions[0].folder, base=policy) is not None
