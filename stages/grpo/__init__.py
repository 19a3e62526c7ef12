"""``grpo``: Group Relative Policy Optimization through TRL 1.16's ``GRPOTrainer`` (seed §4.2, REINFORCE
family; §4.4 objective; §4.12 reward hacking).

Inputs: ``policy`` (an SFT policy: a full model, or a LoRA adapter with its ``base``), ``prompts`` (the
``synthetic`` stage's ``prompts`` output or any dataset with a ``prompt`` column; a ``family`` column
turns on the gold judge), and ``reward`` (a reward stage's model or ensemble) unless ``reward: synthetic``
makes the gold judge the reward.

Each step samples G = ``num_generations`` completions per prompt, scores them, and gives every token of
completion i the group-relative advantage A_i = (r_i − mean_g r) / (std_g r + 1e-4); the loss is the
clipped surrogate −min(ρ_t A_i, clip(ρ_t, 1 − ε, 1 + ε_high) A_i) averaged as ``loss_type`` says, plus
β·k3 KL to the starting policy when β > 0. See docs/stages/grpo.md.

Outputs: ``policy`` (the trained model or adapter, with its tokenizer) and ``rollouts`` (every sampled
completion with its reward, gold reward and step); metrics, a card with proxy and gold reward against KL.
"""

from __future__ import annotations

import hashlib
import inspect
from pathlib import Path
from typing import Any

from hubflow.stage import StageContext, StageResult
from stages.grpo.config import Config

__all__ = ["LIBRARIES", "VERSION", "Config", "describe", "fingerprint_extra", "run"]

VERSION = "1"
LIBRARIES = ("torch", "transformers", "trl", "peft", "accelerate", "tokenizers", "pyarrow")


def fingerprint_extra(cfg: Config, base_dir: Path) -> dict[str, Any]:
    """The gold judge decides the gold rewards of the rollouts (and the reward with ``reward: synthetic``)."""
    from stages.lib import judge, tasks

    src = "".join(inspect.getsource(m) for m in (judge, tasks))
    return {"judge_sha256": hashlib.sha256(src.encode()).hexdigest()}


def describe(cfg: Config) -> list[str]:
    reward = "gold judge" if cfg.reward == "synthetic" else f"reward model ({cfg.aggregate} over an ensemble)"
    steps = f"{cfg.max_steps} steps" if cfg.max_steps else f"{cfg.num_train_epochs:g} epoch(s)"
    return [
        f"GRPO ({cfg.peft.method}), G={cfg.num_generations}, beta={cfg.beta:g}, loss_type={cfg.loss_type}, "
        f"reward: {reward}, {steps}"
    ]


def run(ctx: StageContext, cfg: Config) -> StageResult:
    from stages.lib.reinforce.stage import run_stage

    return run_stage(ctx, cfg, "grpo")
