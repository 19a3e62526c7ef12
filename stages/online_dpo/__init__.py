"""``online_dpo``: iterative / online DPO (seed §4.10) and self-play fine-tuning (SPIN, seed §4.2).

R rounds of: draw prompts → sample K responses from the current policy → rank them (a reward model, an
ensemble's min or mean, or the gold judge) → fresh pairs (best vs worst, ties dropped; or, ``pairs: spin``,
the dataset's gold completion vs the policy's own generation) → DPO on them with
:func:`stages.lib.preference.dpo_loss` in our own loop on accelerate (reference: the initial policy, or the
policy at the start of the round). The data stays on-policy: each round trains on what the policy it
starts from writes.

Inputs: ``model`` (a full model, or an adapter with ``base``), ``prompts`` (a ``prompt`` column; ``family``
for the gold judge; ``completion`` for SPIN: the synthetic stage's ``instructions`` output), ``reward`` (with
``reward: model``). Outputs (named): ``policy`` (a model or an adapter) and ``pairs`` (prompt, chosen,
rejected, scores), the last round's; every round's pair dataset and policy are returned as
``StageResult.revisions`` (``round-K``), saved complete in the resume folder, so a crash resumes at the first
unfinished round.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hubflow.stage import StageContext, StageResult
from stages.online_dpo.config import Config

__all__ = ["LIBRARIES", "VERSION", "Config", "describe", "fingerprint_extra", "run"]

VERSION = "1"
LIBRARIES = ("torch", "transformers", "peft", "accelerate", "pyarrow")


def fingerprint_extra(cfg: Config, base_dir: Path) -> dict[str, Any]:
    from stages.lib.reward_source import judge_fingerprint

    return judge_fingerprint()


def describe(cfg: Config) -> list[str]:
    pairs = "SPIN pairs (gold vs own generation)" if cfg.pairs == "spin" else f"best vs worst of {cfg.k}"
    reward = "the gold judge" if cfg.reward == "synthetic" else "input `reward`"
    return [
        f"{cfg.rounds} rounds of {cfg.prompts_per_round or 'all'} prompts, {pairs} ranked by {reward}, "
        f"{cfg.loss_type} β={cfg.beta:g} against the {cfg.reference.replace('_', ' ')} policy"
    ]


def run(ctx: StageContext, cfg: Config) -> StageResult:
    from stages.online_dpo.rounds import online_dpo

    return online_dpo(ctx, cfg)
