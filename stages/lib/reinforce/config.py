"""The fields ``grpo`` and ``rloo`` share (pydantic only: imported at validate time).

Training fields are the one training vocabulary (``stages.lib.training``); the method's fields carry the
names of TRL 1.16's ``GRPOConfig`` / ``RLOOConfig`` with TRL's defaults, except where a default is
re-declared here and documented (``disable_dropout`` is always on, alignment notes "PPO details" 1).
Each kind re-declares what its TRL config defaults differently (``num_generations``, ``beta``) with the
``Annotated`` types below.

Batch vocabulary, as in TRL: ``per_device_train_batch_size`` counts **completions**; one generation batch
holds ``per_device_train_batch_size × gradient_accumulation_steps × processes`` completions, i.e. that
divided by ``num_generations`` prompts, and one optimizer step consumes it.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from stages.lib.peft_spec import FullSpec, PeftSpec
from stages.lib.training import (
    BatchSize,
    EvalSteps,
    LearningRate,
    LoggingSteps,
    SchedulerType,
    TrainerConfig,
)

POLICY_INPUT = "policy"
BASE_INPUT = "base"
PROMPTS_INPUT = "prompts"
REWARD_INPUT = "reward"
OUTPUTS = {"policy": "model", "rollouts": "dataset"}

NumGenerations = Annotated[
    int,
    Field(
        ge=2,
        description="G: completions sampled per prompt (TRL `num_generations`); the generation batch "
        "(per_device_train_batch_size × gradient_accumulation_steps × processes completions) must be a "
        "multiple of it.",
    ),
]
Beta = Annotated[
    float,
    Field(
        ge=0.0,
        description="KL coefficient β (TRL `beta`). 0 loads no reference model in TRL (the monitor may load "
        "one for measuring, see monitor_kl).",
    ),
]


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GoldStop(_Spec):
    """Early stopping on the gold evaluation (seed §4.12 mitigation 3)."""

    patience: int = Field(
        3,
        ge=1,
        description="Stop after this many consecutive monitor windows whose mean gold reward is below the best "
        "window so far by more than min_delta.",
    )
    min_delta: float = Field(
        0.0, ge=0.0, description="How far below the best window's gold reward a window must fall to count."
    )


class ReinforceConfig(TrainerConfig):
    """The training vocabulary plus the fields TRL's GRPO and RLOO configs share, the reward and the monitor."""

    OUTPUT_TYPES: ClassVar[dict[str, str]] = dict(OUTPUTS)
    POLICY_OUTPUT: ClassVar[str | None] = "policy"

    learning_rate: LearningRate = 1e-6  # TRL's GRPOConfig / RLOOConfig default
    lr_scheduler_type: SchedulerType = "linear"  # transformers' default, which TRL keeps
    per_device_train_batch_size: BatchSize = 8
    logging_steps: LoggingSteps = 10
    optim: str | None = Field(
        None, description="transformers optimizer name (`optim`); default TRL's (adamw_torch_fused)."
    )
    eval_steps: EvalSteps = 20  # the monitor window: one KL measurement (two forwards) per window

    peft: PeftSpec = Field(
        default_factory=FullSpec,
        description="`{method: full}` (default: every weight trains) or `{method: lora, r, alpha, ...}`. With an "
        "adapter as `policy` (and its `base`), `lora` continues that adapter and `full` merges it first.",
    )
    reward: Literal["model", "synthetic"] = Field(
        "model",
        description="`model`: the `reward` input (a reward stage's model or ensemble) scores each completion; "
        "`synthetic`: the synthetic families' gold judge (1 correct, 0 wrong) is the reward, a verifiable "
        "reward (the prompts need a `family` column).",
    )
    aggregate: Literal["min", "mean"] = Field(
        "min",
        description="How an ensemble's member scores combine: `min` (conservative, seed §4.12 mitigation 2) or "
        "`mean`. Ignored for a single reward model.",
    )
    split: str = Field("train", pattern=r"^[A-Za-z0-9_.-]+$", description="Split of `prompts` trained on.")
    max_completion_length: int = Field(
        512, ge=1, description="Tokens sampled at most per completion (TRL `max_completion_length`)."
    )
    num_generations: NumGenerations = 8
    temperature: float = Field(
        1.0,
        gt=0.0,
        description="Sampling temperature; TRL divides the logits by it for every log-prob too (TRL `temperature`).",
    )
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass (TRL `top_p`).")
    top_k: int = Field(0, ge=0, description="Top-k filtering, 0 off (TRL `top_k`).")
    beta: Beta = 0.0
    epsilon: float = Field(
        0.2,
        gt=0.0,
        lt=1.0,
        description="Clip range ε: ρ is clipped to [1 − ε, 1 + epsilon_high] (TRL `epsilon`).",
    )
    epsilon_high: float | None = Field(
        None, gt=0.0, description="Upper clip ε_high (DAPO: 0.28); null means epsilon (TRL `epsilon_high`)."
    )
    num_iterations: int = Field(
        1,
        ge=1,
        description="μ: optimisation passes over each generation batch (TRL `num_iterations`); > 1 makes the "
        "ratio ρ differ from 1 and the clip bind.",
    )
    mask_truncated_completions: bool = Field(
        False,
        description="Leave completions cut at max_completion_length out of the loss (TRL `mask_truncated_completions`).",
    )
    monitor_kl: bool = Field(
        True,
        description="Measure KL(π‖π_ref) in nats per sequence on one generation batch per eval_steps window, "
        "even when beta is 0 (then a frozen copy of the starting policy is loaded for it, or the LoRA adapter "
        "is disabled).",
    )
    stop_when_gold_drops: GoldStop | None = Field(
        None,
        description="`{patience, min_delta}`: stop training when the gold reward of `patience` consecutive "
        "eval_steps windows stays below the best window by more than min_delta (needs a `family` column).",
    )
    kl_budget: float | None = Field(
        None,
        gt=0.0,
        description="Hard KL budget δ in nats per sequence (seed §4.12 mitigation 4): stop when a measured "
        "KL(π‖π_ref) exceeds it.",
    )

    @field_validator("peft")
    @classmethod
    def _full_or_lora(cls, value: Any) -> Any:
        if value.method not in ("full", "lora"):
            raise ValueError(
                f"peft method {value.method!r} is not supported by the RL kinds: use `full` or `lora` (TRL samples "
                "with model.generate, which prefix tuning and bottleneck adapters do not go through cleanly)"
            )
        return value

    @model_validator(mode="after")
    def _check_reinforce(self) -> ReinforceConfig:
        for name in (POLICY_INPUT, PROMPTS_INPUT):
            if name not in self.inputs:
                raise ValueError(f"this kind needs a `{name}` input; inputs are {sorted(self.inputs)}")
        if self.reward == "model" and REWARD_INPUT not in self.inputs:
            raise ValueError(
                "reward: model needs a `reward` input (a reward stage's output); or set `reward: synthetic` to "
                "use the gold judge of the synthetic families"
            )
        if self.reward == "synthetic" and REWARD_INPUT in self.inputs:
            raise ValueError(
                "reward: synthetic uses the gold judge: remove the `reward` input or set reward: model"
            )
        unknown = sorted(set(self.inputs) - {POLICY_INPUT, BASE_INPUT, PROMPTS_INPUT, REWARD_INPUT})
        if unknown:
            raise ValueError(f"unknown input(s) {unknown}: this kind reads policy, base, prompts and reward")
        message = generation_batch_problem(self, self.resources.num_processes)
        if message:
            raise ValueError(message)
        if (self.stop_when_gold_drops is not None or self.kl_budget is not None) and self.eval_steps is None:
            raise ValueError(
                "stop_when_gold_drops and kl_budget act on the eval_steps windows: set eval_steps"
            )
        if self.kl_budget is not None and not self.monitor_kl:
            raise ValueError("kl_budget needs the KL measurement: set monitor_kl: true")
        return self

    def generation_batch(self, processes: int) -> int:
        """Completions per generation batch (TRL: per_device × processes × steps_per_generation)."""
        return self.per_device_train_batch_size * self.gradient_accumulation_steps * processes


def generation_batch_problem(cfg: ReinforceConfig, processes: int) -> str | None:
    """TRL's constraint (``generation_batch_size % num_generations == 0``) in the manifest's terms, with the
    numbers and a fix; None when it holds."""
    batch = cfg.generation_batch(processes)
    g = cfg.num_generations
    if batch % g == 0:
        return None
    per = cfg.per_device_train_batch_size
    other = cfg.gradient_accumulation_steps * processes
    fit = next(b for b in range(per, per + g * other + 1) if (b * other) % g == 0)
    divisors = [d for d in range(2, batch + 1) if batch % d == 0]
    return (
        f"num_generations {g} does not divide the generation batch of {batch} completions "
        f"(per_device_train_batch_size {per} × gradient_accumulation_steps {cfg.gradient_accumulation_steps} "
        f"× {processes} process(es)): every prompt's {g} completions must be in one batch. Set "
        f"per_device_train_batch_size to {fit} (or another value making the batch a multiple of {g}), or "
        f"num_generations to one of {divisors}"
    )
