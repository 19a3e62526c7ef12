"""``rloo``: REINFORCE Leave-One-Out through TRL 1.16's ``RLOOTrainer`` (seed §4.2, REINFORCE family;
§4.4 objective and per-sequence KL; §4.12 reward hacking).

Inputs and outputs as ``grpo`` (see docs/stages/grpo.md): ``policy`` (+ ``base``), ``prompts``, ``reward``
or ``reward: synthetic``; outputs ``policy`` and ``rollouts``.

Each step samples k = ``num_generations`` completions per prompt. The reward of completion i is its score
minus β times its sequence-summed k1 KL, R_i = r_i − β Σ_t (log π_old − log π_ref); its baseline is the
mean of the other k − 1 rewards of the prompt, A_i = R_i − (Σ_j R_j − R_i)/(k − 1); the loss is the
sequence-level clipped surrogate −min(ρ_i A_i, clip(ρ_i, 1 − ε, 1 + ε_high) A_i), ρ_i = π_θ(y_i)/π_old(y_i),
averaged over sequences.
"""

from __future__ import annotations

import hashlib
import inspect
from pathlib import Path
from typing import Any

from hubflow.stage import StageContext, StageResult
from stages.rloo.config import Config

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
        f"RLOO ({cfg.peft.method}), k={cfg.num_generations}, beta={cfg.beta:g}, reward: {reward}, {steps}"
    ]


def run(ctx: StageContext, cfg: Config) -> StageResult:
    from stages.lib.reinforce.stage import run_stage

    return run_stage(ctx, cfg, "rloo")
