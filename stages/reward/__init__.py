"""``reward``: a Bradley–Terry reward model (or an ensemble) from an SFT policy (seed §4.4 phase 2).

Inputs: ``model`` (the SFT policy: a full causal LM, or a LoRA-family adapter with ``base``), optionally
``tokenizer``, and one preference dataset under any other name (columns ``prompt``, ``chosen``,
``rejected``: the ``synthetic`` stage's ``preferences`` output). The model's LM head is replaced by a
scalar head on the last real token's hidden state, r(x, y) = W_rᵀ h_last (+ b_r), initialised
N(0, 1/√(d+1)); TRL's ``RewardTrainer`` minimises −log σ(r(x, y_w) − r(x, y_l)) (seed §4.3) on the
exact tokens a policy samples (:func:`stages.lib.pairs.encode_pairs`). ``peft``: ``full`` or ``lora``
(merged before publishing).

Reported (metrics.json and the card): held-out pair accuracy and expected calibration error with the
reliability table and a reliability diagram (seed §4.4 diagnostics). ``ensemble: K`` trains K members
with seeds seed … seed+K−1 (and, with ``ensemble_data``, disjoint shards or bootstrap draws of the
pairs) into one repo, ``member-K/`` + ``ensemble.json``; consumers take the minimum (§4.12) or the mean.

Output: a full sequence-classification model with one label and its tokenizer
(``AutoModelForSequenceClassification.from_pretrained(folder)``, per member folder for an ensemble;
``stages.lib.rewards.load_reward_model(folder)`` for either).
"""

from __future__ import annotations

from hubflow.stage import StageContext, StageResult
from stages.reward.config import Config

__all__ = ["LIBRARIES", "VERSION", "Config", "describe", "run"]

VERSION = "1"
LIBRARIES = ("torch", "transformers", "trl", "peft", "accelerate", "tokenizers")


def describe(cfg: Config) -> list[str]:
    steps = f"{cfg.max_steps} steps" if cfg.max_steps else f"{cfg.num_train_epochs:g} epoch(s)"
    what = (
        "a reward model" if cfg.ensemble == 1 else f"an ensemble of {cfg.ensemble} ({cfg.ensemble_data} data)"
    )
    return [f"{cfg.peft.method} Bradley–Terry training of {what} on {cfg.data_input}, {steps}"]


def run(ctx: StageContext, cfg: Config) -> StageResult:
    from stages.reward.job import run_reward

    return run_reward(ctx, cfg)
