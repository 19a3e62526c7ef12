"""The ``ppo`` stage's config (pydantic only: ``hubflow validate`` and ``plan`` import this, never torch).

Names follow TRL's ``PPOConfig`` (v0.19) where it has the field (``num_ppo_epochs``, ``num_mini_batches``,
``cliprange``, ``vf_coef``, ``cliprange_value``, ``gamma``, ``lam``, ``whiten_rewards``,
``response_length``, ``temperature``, ``missing_eos_penalty``, ``local_rollout_forward_batch_size``) and
the training vocabulary of ``stages.lib.training`` otherwise. One PPO step (``max_steps`` counts them, as
TRL's ``global_step`` does) is one rollout batch of ``per_device_train_batch_size ×
gradient_accumulation_steps × num_mini_batches`` prompts followed by ``num_ppo_epochs`` passes over it in
``num_mini_batches`` shuffled minibatches (seed §4.5 steps 5.1–5.3).

UNITS: every KL number (``kl_control.target``, ``kl_budget.max_kl``, the logged ``objective/kl``) is in
nats PER SEQUENCE: the sum over a response's tokens of log π_old − log π_ref, averaged over the batch
(seed §4.4's D_KL(x); alignment notes, PPO detail 8).
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from stages.lib.peft_spec import FullSpec, LoraSpec
from stages.lib.training import CheckpointFields, LearningRate, SaveSteps, SchedulerType, TrainingConfig

POLICY_INPUT = "policy"
BASE_INPUT = "base"
REWARD_INPUT = "reward"
PROMPTS_INPUT = "prompts"
TOKENIZER_INPUT = "tokenizer"
KNOWN_INPUTS = (POLICY_INPUT, BASE_INPUT, REWARD_INPUT, PROMPTS_INPUT, TOKENIZER_INPUT)


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FixedKL(_Spec):
    """A constant KL coefficient β (seed §4.12 item 1)."""

    type: Literal["fixed"] = Field("fixed", description="β stays `kl_coef` for the whole run.")
    kl_coef: float = Field(0.05, ge=0.0, description="β: per-token reward −β·(log π_old − log π_ref).")


class AdaptiveKL(_Spec):
    """Ziegler et al.'s proportional controller (seed §4.5 step 5.4; alignment notes, PPO detail 8)."""

    type: Literal["adaptive"] = Field(
        ..., description="β follows the KL toward `target` (nats per sequence)."
    )
    init_kl_coef: float = Field(0.15, gt=0.0, description="β at the first step.")
    target: float = Field(
        6.0, gt=0.0, description="Target KL in nats PER SEQUENCE (not per token); Ziegler et al. use 6."
    )
    horizon: int = Field(
        10_000,
        ge=1,
        description="Sequences over which a KL error of 20% changes β by 20%: "
        "β ← β·(1 + clip(KL/target − 1, ±0.2)·n/horizon) after each batch of n sequences.",
    )


KLControl = Annotated[FixedKL | AdaptiveKL, Field(discriminator="type")]
PolicyPeft = Annotated[FullSpec | LoraSpec, Field(discriminator="method")]


class KLBudget(_Spec):
    """A hard KL budget D_KL ≤ δ (seed §4.12 item 4): training stops when a rollout batch exceeds it."""

    max_kl: float = Field(..., gt=0.0, description="δ in nats PER SEQUENCE (mean over the rollout batch).")
    patience: int = Field(
        1, ge=1, description="Consecutive rollout batches over δ before the budget counts as exceeded."
    )


class GoldStop(_Spec):
    """Early stopping on the gold evaluation (seed §4.12 item 3)."""

    patience: int = Field(
        3, ge=1, description="Consecutive gold evaluations below the best one (by more than min_delta)."
    )
    min_delta: float = Field(
        0.0, ge=0.0, description="A gold evaluation counts as a drop when below best − min_delta."
    )


class Config(CheckpointFields, TrainingConfig):
    """RLHF policy optimisation with PPO (seed §4.4, §4.5 phase 3, §4.12)."""

    OUTPUT_TYPES: ClassVar[dict[str, str]] = {"policy": "model", "rollouts": "dataset"}
    POLICY_OUTPUT: ClassVar[str | None] = "policy"
    CHECKPOINT_OUTPUT: ClassVar[str] = "policy"

    kind: Literal["ppo"] = Field(..., description="PPO on our own loop (accelerate + torch).")
    reward: Literal["model", "synthetic"] = Field(
        "model",
        description="`model`: the `reward` input (a reward model, or an ensemble); `synthetic`: the synthetic "
        "families' gold judge as a programmatic reward (1 right, 0 wrong; the prompts need `family`).",
    )
    reward_aggregate: Literal["min", "mean"] = Field(
        "min", description="How an ensemble's members combine: the conservative minimum (seed §4.12 item 2)."
    )
    peft: PolicyPeft | None = Field(
        None,
        description="null: train what the policy input is (every weight of a full model; an adapter policy "
        "continues its adapter). `{method: lora, ...}` on a full policy trains a new LoRA (the reference is "
        "the adapter disabled); `{method: full}` on an adapter merges it first. Dropout is always off.",
    )
    advantage_estimator: Literal["gae", "reinforce_pp"] = Field(
        "gae",
        description="`gae`: a critic and GAE(γ, λ); `reinforce_pp`: REINFORCE++, no critic, returns "
        "normalised over the whole batch.",
    )
    critic: Literal["auto", "reward_model", "policy", "shared"] = Field(
        "auto",
        description="The value model (gae only): `reward_model`: its own backbone copied from the reward model, "
        "value head from its score head (PPO detail 3); `policy`: its own copy of the SFT policy with a fresh "
        "head (seed §4.5 step 4); `shared`: a value head on the policy's own backbone (no second backbone); "
        "`auto`: reward_model, or policy with `reward: synthetic`.",
    )
    critic_learning_rate: float | None = Field(
        None, gt=0.0, description="AdamW learning rate of the critic (null: learning_rate)."
    )
    learning_rate: LearningRate = 3e-6
    lr_scheduler_type: SchedulerType = "linear"
    save_steps: SaveSteps = 20
    num_ppo_epochs: int = Field(
        4, ge=1, description="K: passes over each rollout batch (seed §4.5 step 5.3)."
    )
    num_mini_batches: int = Field(
        1,
        ge=1,
        description="Minibatches per pass; a minibatch is per_device_train_batch_size × "
        "gradient_accumulation_steps rollouts, one optimizer step.",
    )
    response_length: int = Field(64, ge=1, description="Most tokens sampled per response.")
    temperature: float = Field(
        0.7,
        gt=0.0,
        description="Sampling temperature; every log-prob divides the logits by it (PPO detail 2).",
    )
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass (1: off).")
    missing_eos_penalty: float | None = Field(
        1.0,
        ge=0.0,
        description="Subtracted from the (normalised) score of a response that never emits a stop token "
        "within response_length (PPO detail 12); null: no penalty.",
    )
    local_rollout_forward_batch_size: int = Field(
        64, ge=1, description="Rows per sampling and scoring forward (memory, not the PPO batch)."
    )
    kl_control: KLControl = Field(
        default_factory=FixedKL,
        description="`{type: fixed, kl_coef}` or `{type: adaptive, init_kl_coef, target, horizon}` "
        "(target in nats per sequence).",
    )
    kl_budget: KLBudget | None = Field(
        None,
        description="Hard budget `{max_kl, patience}` in nats per sequence: training stops, and the published "
        "policy is the last one whose rollout batch was within it.",
    )
    stop_when_gold_drops: GoldStop | None = Field(
        None,
        description="Early stopping on the gold evaluation (the held-out one every eval_steps if set, else "
        "each rollout batch's gold reward): stop after `patience` evaluations below the best one and publish "
        "the best-evaluated weights. Needs prompts with `family`.",
    )
    eval_steps: int | None = Field(
        None,
        ge=1,
        description="Every this many PPO steps (and before and after training), greedy answers to the prompts' "
        "test split graded by the gold judge (needs `family` and a test split); null: no held-out evaluation.",
    )
    reward_normalization: Literal["none", "running", "reference"] = Field(
        "running",
        description="Score normalisation to mean 0 / std 1 (PPO detail 5): `running`: moments of every score "
        "so far; `reference`: moments of the first rollout batch, sampled from the reference policy (the "
        "policy starts equal to it); `none`.",
    )
    reward_clip: float | None = Field(
        None, gt=0.0, description="Clip the normalised score to ±this (OpenRLHF uses 10); null: no clip."
    )
    whiten_rewards: bool = Field(
        False, description="Rescale the per-token rewards to unit variance over real tokens before GAE (TRL)."
    )
    whiten_advantages: bool = Field(
        True, description="gae: whiten advantages over the real tokens of the batch (PPO detail 10)."
    )
    cliprange: float = Field(0.2, gt=0.0, lt=1.0, description="ε of the clipped surrogate.")
    cliprange_value: float | None = Field(
        0.2, gt=0.0, description="Clip of the value update around the rollout's values; null: unclipped."
    )
    vf_coef: float = Field(0.1, ge=0.0, description="c₁: weight of the value loss in L.")
    entropy_coef: float = Field(0.0, ge=0.0, description="c₂: weight of the entropy bonus in L.")
    gamma: float = Field(1.0, ge=0.0, le=1.0, description="γ: discount.")
    lam: float = Field(0.95, ge=0.0, le=1.0, description="λ: GAE trace decay.")

    @property
    def mini_batch_size(self) -> int:
        """Rollouts per optimizer step."""
        return self.per_device_train_batch_size * self.gradient_accumulation_steps

    @property
    def rollout_batch_size(self) -> int:
        """Prompts sampled per PPO step."""
        return self.mini_batch_size * self.num_mini_batches

    def uses_critic(self) -> bool:
        return self.advantage_estimator == "gae"

    def critic_source(self) -> str | None:
        """``reward_model`` | ``policy`` | ``shared``, or None without a critic."""
        if not self.uses_critic():
            return None
        if self.critic == "auto":
            return "policy" if self.reward == "synthetic" else "reward_model"
        return self.critic

    @model_validator(mode="before")
    @classmethod
    def _kl_shorthand(cls, data: Any) -> Any:
        if isinstance(data, dict) and "kl_coef" in data:
            raise ValueError(
                "`kl_coef` goes in the KL controller: write `kl_control: {type: fixed, kl_coef: ...}`"
            )
        return data

    @model_validator(mode="after")
    def _check_ppo(self) -> Config:
        needed = [POLICY_INPUT, PROMPTS_INPUT] + ([REWARD_INPUT] if self.reward == "model" else [])
        missing = [n for n in needed if n not in self.inputs]
        if missing:
            raise ValueError(
                f"a {self.kind} stage needs inputs {needed}; missing {missing} "
                f"(e.g. `inputs: {{policy: sft, reward: rm, prompts: tasks.prompts}}`, or `reward: synthetic`)"
            )
        unknown = sorted(set(self.inputs) - set(KNOWN_INPUTS))
        if unknown:
            raise ValueError(f"unknown input(s) {unknown}; a {self.kind} stage reads {list(KNOWN_INPUTS)}")
        if self.reward == "synthetic" and REWARD_INPUT in self.inputs:
            raise ValueError("`reward: synthetic` uses the gold judge: remove the `reward` input")
        if self.reward == "synthetic" and self.critic == "reward_model":
            raise ValueError(
                "critic: reward_model needs a reward model; with `reward: synthetic` use critic policy or shared"
            )
        if not self.uses_critic() and self.critic != "auto":
            raise ValueError(f"{self.advantage_estimator} is critic-free: remove `critic: {self.critic}`")
        if isinstance(self.peft, LoraSpec) and self.peft.dropout > 0:
            if "dropout" in self.peft.model_fields_set:
                raise ValueError(
                    "peft.dropout: PPO turns dropout off in every model (else the first ratio is not 1 and "
                    "the KL is noise; alignment notes, PPO detail 1): remove it or set 0"
                )
            self.peft = self.peft.model_copy(update={"dropout": 0.0})
        if self.rollout_batch_size < 2:
            raise ValueError(
                "per_device_train_batch_size × gradient_accumulation_steps × num_mini_batches must be >= 2: "
                "scores and advantages are normalised over the rollout batch"
            )
        if self.resources.num_processes > 1:
            raise ValueError("resources.num_processes: the ppo loop runs in one process (one device) for now")
        return self
