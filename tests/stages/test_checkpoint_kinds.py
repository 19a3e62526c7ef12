"""Each training kind with `checkpoints: {every: K}` writes complete checkpoints under its resume folder and
returns them as revisions `step-N`: the same files as its final output (an adapter stage: the adapter and the
tokenizer), loading the way the output loads. sft (TRL's SFTTrainer: the TrainerCallback) and ppo (our loop)
here; dpo (the shared preference loop) in tests/stages/preference/test_dpo_checkpoints.py; pretrain through
`hubflow run` in tests/e2e/test_checkpoint_revisions.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("trl")
pytest.importorskip("peft")

LORA = {"method": "lora", "r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}


def files_of(folder: Path) -> set[str]:
    """The model files (the run's curve and plots are the final output's only)."""
    return {p.name for p in folder.iterdir() if p.name != "metrics.jsonl" and p.suffix != ".png"}


def check_revisions(result, ctx, labels: list[str], output: str = "output") -> None:
    assert [r.label for r in result.revisions] == labels
    final = ctx.outputs[output]
    for rev in result.revisions:
        assert rev.output == output and rev.folder.is_relative_to(ctx.resume_dir)
        assert files_of(rev.folder) == files_of(final)  # the files the final output has
        assert rev.metrics["step"] == int(rev.label.split("-")[1])


def test_sft_lora_publishes_adapter_checkpoints(tmp_path):
    from stages import sft
    from stages.lib.models import load_model
    from stages.lib.testing import save_base, stage_context, write_dataset

    rows = [{"prompt": f"count {i} then", "completion": f" {i + 1}"} for i in range(16)]
    base = save_base(tmp_path / "base", corpus=[r["prompt"] + r["completion"] for r in rows])
    data = write_dataset(tmp_path / "data", rows[:12], rows[12:])
    ctx = stage_context(
        tmp_path / "stage", {"model": base, "data": data}, {"model": "model:demo/base@" + "b" * 40}
    )
    cfg = sft.Config(
        name="sft",
        kind="sft",
        inputs={"model": "model:demo/base", "data": "dataset:demo/data"},
        output="model:demo/out",
        peft=LORA,
        max_steps=4,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        logging_steps=1,
        eval_steps=2,
        save_steps=None,
        checkpoints={"every": 2},
    )
    result = sft.run(ctx, cfg)
    check_revisions(result, ctx, ["step-2", "step-4"])
    first = result.revisions[0]
    assert "adapter_model.safetensors" in files_of(first.folder) and "tokenizer.json" in files_of(
        first.folder
    )
    assert "loss" in first.metrics and "eval_loss" in first.metrics  # this step's evaluation
    ckpt = load_model(first.folder, base=base)  # loads like the output: the adapter on its base
    final = load_model(ctx.output, base=base)
    ids = torch.tensor([[1, 5, 9, 12]])
    with torch.no_grad():
        assert not torch.allclose(ckpt(input_ids=ids).logits, final(input_ids=ids).logits)
    with torch.no_grad():
        last = load_model(result.revisions[-1].folder, base=base)
        assert torch.allclose(last(input_ids=ids).logits, final(input_ids=ids).logits)


def test_ppo_publishes_policy_checkpoints(tmp_path, policy_factory, synthetic_tasks):
    from ppo_helpers import inputs_of, ppo_config, ppo_context

    from stages.lib.models import load_model
    from stages.ppo.loop import Run

    inputs = {"policy": policy_factory(), "prompts": synthetic_tasks["prompts"]}
    ctx = ppo_context(tmp_path, inputs)
    cfg = ppo_config(inputs=inputs_of(inputs), max_steps=2, checkpoints={"every": 1})
    result = Run(ctx, cfg, None).run()
    check_revisions(result, ctx, ["step-1", "step-2"], output="policy")
    assert "objective/scores" in result.revisions[0].metrics
    assert load_model(result.revisions[0].folder).config.use_cache is True
    assert json.loads((result.revisions[1].folder / "config.json").read_text())["model_type"] == "llama"
    assert "output 'policy' only" in cfg.revision_problem("rollouts", "step-1")
