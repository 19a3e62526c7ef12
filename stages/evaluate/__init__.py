"""``evaluate``: score a model (or an adapter on its base) on held-out datasets, without training.

Inputs: ``model`` (a full model, or an adapter repo plus ``base``), optionally
``tokenizer`` (else the model's, the adapter's or the base's own tokenizer files), and
one or more datasets under any other names. For each dataset split (default ``test``):

- held-out loss and perplexity, the training objective on unseen data: completion-only
  on prompt/completion (plain or chat) and chat ``messages``, all tokens on ``text``
  (seed §3.4, §3.7 step 3.2; sequences and masks are built as the sft stage builds them);
- greedy generation (``max_new_tokens``) scored by exact match against the reference
  completion and, where the dataset has a ``family`` column the synthetic stage's gold
  judge knows, by the judge (``stages.lib.judge.score``): overall and per task family
  (held-out families included: seed §3.7 step 3.4);
- on a preference split (prompt/chosen/rejected): the share of pairs the model ranks right by
  log π(y|x) (summed over the completion's tokens); with a ``reference`` input (a model, or an adapter
  with ``reference_base``/``base``) the DPO implicit-reward accuracy and mean margin (seed §4.6); with
  a ``reward`` input (a reward model or an ensemble) its pair accuracy and calibration (seed §4.4) and,
  on any prompt format, the mean reward of the generations (``stages.evaluate.comparisons``).

The output dataset holds ``data/train-00000-of-00001.parquet`` (one row per example: prompt,
reference, generation, exact match, judge score, loss, and the preference and reward columns) and
the metrics (metrics.json and a table per family in the card), so a manifest can put base, SFT,
DPO and PPO models side by side.
"""

from __future__ import annotations

import hashlib
import inspect
from pathlib import Path
from typing import Any

from hubflow.stage import StageContext, StageResult
from stages.evaluate.config import Config

__all__ = ["LIBRARIES", "VERSION", "Config", "fingerprint_extra", "run"]

VERSION = "2"  # 2: preference, implicit-reward and reward-model scores; new parquet columns
LIBRARIES = ("torch", "transformers", "peft", "pyarrow")


def fingerprint_extra(cfg: Config, base_dir: Path) -> dict[str, Any]:
    """The gold judge's code decides the judge scores: hash its source when it is used."""
    if cfg.judge == "none":
        return {}
    from stages.lib import judge, tasks

    src = "".join(inspect.getsource(m) for m in (judge, tasks))
    return {"judge_sha256": hashlib.sha256(src.encode()).hexdigest()}


def run(ctx: StageContext, cfg: Config) -> StageResult:
    from stages.evaluate.job import evaluate

    return evaluate(ctx, cfg)
