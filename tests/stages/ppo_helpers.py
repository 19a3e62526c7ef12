"""Shared by the ppo stage tests: contexts with the two named outputs, configs, and the sampled gold
evaluation the learning tests measure with (independent of the stage's own metrics)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

OUTPUTS = {"policy": "model:test/ppo-policy", "rollouts": "dataset:test/ppo-rollouts"}


def ppo_context(tmp: Path, inputs: dict[str, Path]) -> Any:
    """A StageContext whose outputs are ``policy`` and ``rollouts`` folders under ``tmp``."""
    from stages.lib.testing import stage_context

    ctx = stage_context(tmp, inputs)
    ctx.outputs = {name: tmp / name for name in OUTPUTS}
    for folder in ctx.outputs.values():
        folder.mkdir(parents=True, exist_ok=True)
    return ctx


def ppo_config(kind: str = "ppo", **overrides: Any) -> Any:
    """A small, fast configuration (reward: synthetic unless overridden) of ``ppo`` or ``reinforce_pp``."""
    from stages.ppo import config, reinforce_pp

    inputs = {"policy": "sft", "prompts": "tasks.prompts"}
    fields: dict[str, Any] = dict(
        name="rl",
        kind=kind,
        reward="synthetic",
        outputs=dict(OUTPUTS),
        max_steps=2,
        per_device_train_batch_size=8,
        num_mini_batches=2,
        learning_rate=5e-4,
        lr_scheduler_type="constant",
        response_length=8,
        temperature=1.0,
        save_steps=None,
        seed=0,
    )
    fields.update(overrides)
    fields.setdefault("inputs", inputs)
    cls = reinforce_pp.Config if kind == "reinforce_pp" else config.Config
    return cls(**fields)


def inputs_of(folders: dict[str, Path]) -> dict[str, str]:
    """The ``inputs:`` mapping of a config for these input folders (only the names matter in-process)."""
    return {name: f"{name}-stage" for name in folders}


def sampled_gold(
    folder: Path,
    prompts: Path,
    *,
    base: Path | None = None,
    tokenizer_from: Path | None = None,
    temperature: float = 1.0,
    samples: int = 4,
    max_new_tokens: int = 8,
    seed: int = 1234,
) -> float:
    """Mean gold reward of ``samples`` sampled answers per prompt of the test split (fixed generator)."""
    import torch

    from stages.lib.chat import end_of_turn_ids, generation_prompt_ids
    from stages.lib.datasets import read_rows
    from stages.lib.generation import decode, sample
    from stages.lib.models import load_model
    from stages.lib.rewards import gold_rewards
    from stages.lib.tokenizers import load_tokenizer

    model = load_model(folder, base=base)
    tok = load_tokenizer(tokenizer_from or folder)
    rows = read_rows(prompts, "test", ["prompt", "family"], input_name="prompts")
    rollout = sample(
        model,
        [generation_prompt_ids(tok, r["prompt"]) for r in rows],
        pad_id=tok.pad_token_id,
        stop_ids=end_of_turn_ids(tok),
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        num_samples=samples,
        generator=torch.Generator().manual_seed(seed),
    )
    scores = gold_rewards(
        [r["family"] for r in rows for _ in range(samples)],
        [r["prompt"] for r in rows for _ in range(samples)],
        decode(tok, rollout),
    )
    return sum(scores) / len(scores)
