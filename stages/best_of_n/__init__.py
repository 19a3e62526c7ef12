"""``best_of_n``: rejection sampling (seed §4.9). For each prompt x sample N responses y_1..y_N ~ π(·|x),
score each with r(x, y_i) (a reward model, an ensemble's min or mean, or the gold judge), keep
y* = argmax_i r(x, y_i).

Inputs: ``model`` (the policy: a full model, or an adapter with ``base``), ``prompts`` (a dataset with a
``prompt`` column; ``family`` for the gold judge), ``reward`` (with ``reward: model``).

Outputs (named): ``candidates``, every sampled response with its score (and each ensemble member's, and the
gold judge's where the prompts are synthetic tasks) and whether it was kept; ``best``, the kept
(prompt, completion) pairs, which an ``sft`` stage trains on directly (rejection-sampling fine-tuning, step 4
of §4.9). Metrics: the reward of plain sampling (the mean over all candidates) and of best-of-N (the mean of
the kept ones), their gain, and the analytic KL of the best-of-N policy, log N − (N−1)/N.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hubflow.stage import StageContext, StageResult
from stages.best_of_n.config import Config

__all__ = ["LIBRARIES", "VERSION", "Config", "describe", "fingerprint_extra", "run"]

VERSION = "1"
LIBRARIES = ("torch", "transformers", "peft", "pyarrow")


def fingerprint_extra(cfg: Config, base_dir: Path) -> dict[str, Any]:
    from stages.lib.reward_source import judge_fingerprint

    return judge_fingerprint()


def describe(cfg: Config) -> list[str]:
    import math

    kl = math.log(cfg.n) - (cfg.n - 1) / cfg.n
    reward = (
        "the gold judge"
        if cfg.reward == "synthetic"
        else f"input `reward` ({cfg.aggregate} over an ensemble)"
    )
    return [
        f"best of {cfg.n} at temperature {cfg.temperature:g}, top_p {cfg.top_p:g}, scored by {reward}; "
        f"KL(best-of-N ‖ policy) ≈ {kl:.3f} nats"
    ]


def run(ctx: StageContext, cfg: Config) -> StageResult:
    from stages.best_of_n.job import best_of_n

    return best_of_n(ctx, cfg)
