"""The ``online_dpo`` stage's config (pydantic only)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from stages.lib.peft_spec import FullSpec, PeftSpec
from stages.lib.sampling_config import (
    REWARD_INPUT,
    RewardFields,
    SamplingFields,
    policy_input_problem,
    reward_input_problem,
)
from stages.lib.training import Epochs, LearningRate, MaxSteps, TrainingConfig


class Config(TrainingConfig, SamplingFields, RewardFields):
    OUTPUT_TYPES: ClassVar[dict[str, str]] = {"policy": "model", "pairs": "dataset"}
    POLICY_OUTPUT: ClassVar[str | None] = "policy"

    kind: Literal["online_dpo"] = Field(
        ...,
        description="Online (iterative) DPO (seed §4.10): rounds of sampling pairs from the current policy, "
        "ranking them, and DPO on them; `pairs: spin` for self-play fine-tuning.",
    )
    rounds: int = Field(3, ge=1, le=1000, description="R: rounds of sample → rank → DPO.")
    prompts_per_round: int | None = Field(
        64,
        ge=1,
        description="Prompts drawn each round (without replacement, a fresh seeded draw per round) from the "
        "split; null: every prompt, every round.",
    )
    samples_per_prompt: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="K: responses sampled per prompt and round. `pairs: reward` pairs the best with the worst "
        "(K ≥ 2; default 4); `pairs: spin` pairs the gold completion with each of them (default 1).",
    )
    pairs: Literal["reward", "spin"] = Field(
        "reward",
        description="`reward`: chosen = the best of the K samples by the reward, rejected = the worst, ties "
        "dropped; `spin` (self-play fine-tuning): chosen = the dataset's gold `completion`, rejected = the "
        "policy's own generation (the prompts then need a `completion` column; the reward only measures).",
    )
    reference: Literal["initial", "previous_round"] = Field(
        "initial",
        description="π_ref of each round's DPO: the policy the stage started from (`initial`), or the policy "
        "at the start of the round (`previous_round`: each round is a fresh DPO from its own start, as SPIN).",
    )
    beta: float = Field(0.1, gt=0, description="β of the DPO loss (seed §4.6.3), or of IPO's target 1/(2β).")
    loss_type: Literal["sigmoid", "ipo"] = Field(
        "sigmoid",
        description="`sigmoid`: DPO, −log σ(βΔ); `ipo`: (Δ − 1/(2β))² (seed §4.8.1), with Δ from summed "
        "(not length-normalised) sequence log-probs.",
    )
    sft_weight: float = Field(
        0.0,
        ge=0,
        description="α of an added NLL term on the chosen responses (TRL's loss_type [sigmoid, sft] with "
        "loss_weights [1, α]; iterative RPO): the token-mean −log π_θ(y_w | x) over the batch. Counters the "
        "DPO pitfall of chosen log-probs falling while the margin grows.",
    )
    peft: PeftSpec = Field(
        default_factory=FullSpec,
        description="`{method: full}` (every weight trains; each round publishes a full model) or "
        "`{method: lora, ...}` (each round publishes the adapter). An adapter `model` input is merged into "
        "its `base` with `full`, or continued with `lora` of the same settings.",
    )
    learning_rate: LearningRate = 1e-6
    num_train_epochs: Epochs = Field(
        1.0, description="Passes over each round's fresh pairs, when max_steps is null."
    )
    max_steps: MaxSteps = Field(
        None,
        description="Optimizer steps per round; when null, num_train_epochs passes over the round's pairs.",
    )
    max_length: int = Field(
        1024,
        ge=2,
        description="Prompt + completion tokens of a pair (longer completions are cut, as in TRL).",
    )
    max_prompt_length: int | None = Field(
        None, ge=1, description="Keep only the last this-many prompt tokens when training (null: all)."
    )
    eval_split: str | None = Field(
        "test",
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="Split of `prompts` on which the policy's reward (and gold score) is measured at the start "
        "and after every round; skipped when the dataset has no such split; null: never.",
    )
    eval_prompts: int = Field(64, ge=0, description="Prompts of eval_split used (the first); 0 turns it off.")
    eval_samples: int = Field(4, ge=1, description="Responses sampled per evaluation prompt.")

    @model_validator(mode="after")
    def _check_online_dpo(self) -> Config:
        problem = policy_input_problem(self.inputs)
        if problem:
            raise ValueError(problem)
        if self.pairs == "reward" or REWARD_INPUT in self.inputs or self.reward == "synthetic":
            problem = reward_input_problem(self.reward, self.inputs)
            if problem:
                raise ValueError(problem)
        if self.pairs == "reward" and self.samples_per_prompt == 1:
            raise ValueError(
                "pairs: reward pairs the best and the worst of K samples: set samples_per_prompt ≥ 2"
            )
        if self.peft.method not in ("full", "lora"):
            raise ValueError(f"online_dpo trains peft methods full and lora, not {self.peft.method}")
        if self.resources.num_processes != 1:
            raise ValueError("online_dpo samples and trains in one process; set resources.num_processes to 1")
        return self

    def revision_problem(self, output: str, label: str) -> str | None:
        """Each round's ``policy`` and ``pairs`` are revisions ``round-1`` .. ``round-R``."""
        head, _, number = label.partition("-")
        if head != "round" or not number.isdigit():
            return f"{label!r} is not a round: stage {self.name!r} publishes round-1 .. round-{self.rounds}"
        if not 1 <= int(number) <= self.rounds:
            return f"stage {self.name!r} runs {self.rounds} round(s): there is no {label}"
        return None

    @property
    def k(self) -> int:
        """Samples per prompt and round (the default of the pairing)."""
        if self.samples_per_prompt is not None:
            return self.samples_per_prompt
        return 1 if self.pairs == "spin" else 4
