"""``ppo``: RLHF policy optimisation with PPO on our own loop (accelerate + torch; seed §4.4, §4.5 phase 3,
§4.12). TRL 1.16 has no PPO trainer, so this is ours; ``reinforce_pp`` (``stages.ppo.reinforce_pp``) is the
same loop with the critic-free REINFORCE++ estimator.

Inputs: ``policy`` (an SFT policy: a full model, or an adapter plus ``base``), ``reward`` (a reward model
or a reward ensemble; none with ``reward: synthetic``, the gold judge), ``prompts`` (column ``prompt``,
and ``family`` for the gold judge: the ``synthetic`` stage's ``prompts``), optional ``tokenizer``.

Each PPO step: sample a batch of responses (temperature / top-p, left-padded prompts, KV cache); score
them with the old policy, the reference, the reward model and the critic; build per-token rewards
−β·KL_t plus the score on the last real token; GAE and returns; then ``num_ppo_epochs`` passes of
clipped-surrogate + value + entropy updates over shuffled minibatches; then the KL controller, the
hard KL budget and gold-reward early stopping. Everything is checkpointed into the resume folder every
``save_steps`` PPO steps, so a killed run resumes to the weights of an uninterrupted one.

Outputs: ``policy`` (a LoRA adapter or a full model with its tokenizer: ``stages.lib.models.load_model``,
transformers or peft load it) and ``rollouts`` (every sampled response with its proxy score, gold
reward, KL and β). See docs/stages/ppo.md.

The package also holds the tested PPO math, torch only: ``rewards``, ``advantages``, ``objectives``,
``kl_control``. This module imports pydantic only; the loop is imported inside ``run``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hubflow.stage import StageContext, StageResult
from stages.ppo.config import Config

__all__ = ["LIBRARIES", "VERSION", "Config", "describe", "fingerprint_extra", "run"]

VERSION = "1"
LIBRARIES = ("torch", "transformers", "peft", "accelerate", "pyarrow")


def fingerprint_extra(cfg: Config, base_dir: Path) -> dict[str, Any]:
    """The gold judge's code decides the gold rewards (and, with ``reward: synthetic``, the reward)."""
    import hashlib
    import inspect

    from stages.lib import judge, tasks

    src = "".join(inspect.getsource(m) for m in (judge, tasks))
    return {"judge_sha256": hashlib.sha256(src.encode()).hexdigest()}


def describe(cfg: Config) -> list[str]:
    """The plan line: estimator, critic, batch and KL control."""
    steps = f"{cfg.max_steps} PPO steps" if cfg.max_steps else "one pass over the prompts"
    critic = f", critic {cfg.critic_source()}" if cfg.uses_critic() else ", no critic"
    kl = cfg.kl_control
    beta = (
        f"β {kl.kl_coef:g} fixed"
        if kl.type == "fixed"
        else f"β from {kl.init_kl_coef:g} toward {kl.target:g} nats/seq"
    )
    budget = f", KL budget {cfg.kl_budget.max_kl:g} nats/seq" if cfg.kl_budget else ""
    reward = "the gold judge" if cfg.reward == "synthetic" else f"reward model ({cfg.reward_aggregate})"
    return [
        f"{cfg.advantage_estimator}{critic}: {steps} × {cfg.rollout_batch_size} prompts, "
        f"{cfg.num_ppo_epochs} epochs × {cfg.num_mini_batches} minibatches, {beta}{budget}, reward {reward}"
    ]


def run(ctx: StageContext, cfg: Config) -> StageResult:
    from stages.ppo.loop import train

    return train(ctx, cfg)
