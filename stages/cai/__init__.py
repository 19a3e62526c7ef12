"""``cai``: Constitutional AI / RLAIF data generation (seed §4.8.4).

For each prompt: the policy drafts a response; a principle of the constitution is drawn; the policy
critiques its draft against it (a user turn from ``critique_request``) and revises it (``revision_request``);
a judge labels the pair (draft, revision): a model judge (the ``judge`` input, else the policy) scoring the
log-probability of answering "(A)" versus "(B)" under ``judge_template``, both orders averaged against
position bias, or the gold judge of the synthetic task families (``judge: synthetic``).

Inputs: ``model`` (a full model, or an adapter with ``base``; its tokenizer needs a chat template: the
critique and revision are turns of one conversation), ``prompts`` (a ``prompt`` column), optionally
``judge`` (a causal LM, with ``judge_base`` if it is an adapter) and ``tokenizer``.

Outputs (named): ``revisions`` — (prompt, completion = the revision) with the draft, critique and principle,
for an ``sft`` stage (the supervised CAI stage); ``preferences`` — (prompt, chosen, rejected) with the judge's
probability, for a ``reward`` or ``dpo`` stage (RLAIF).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hubflow.stage import StageContext, StageResult
from stages.cai.config import Config

__all__ = ["LIBRARIES", "VERSION", "Config", "describe", "fingerprint_extra", "run"]

VERSION = "1"
LIBRARIES = ("torch", "transformers", "peft", "pyarrow")


def fingerprint_extra(cfg: Config, base_dir: Path) -> dict[str, Any]:
    from stages.lib.reward_source import judge_fingerprint

    return judge_fingerprint()


def describe(cfg: Config) -> list[str]:
    judge = "the gold judge" if cfg.judge == "synthetic" else "an (A)/(B) log-prob judge, both orders"
    return [
        f"draft → critique → revise against {len(cfg.constitution)} principles; pairs labelled by {judge}"
    ]


def run(ctx: StageContext, cfg: Config) -> StageResult:
    from stages.cai.job import cai

    return cai(ctx, cfg)
