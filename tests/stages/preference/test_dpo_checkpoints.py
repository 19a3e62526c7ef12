"""dpo with `checkpoints: {every: 1}`: the shared preference loop (dpo, kto, orpo) writes a full-model
checkpoint per step, returned as revisions step-1, step-2 with the files of the final output."""

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
