"""The ``evaluate`` stage's config (pydantic only)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from hubflow.stage import StageConfig

REFERENCE_INPUT, REFERENCE_BASE_INPUT, REWARD_INPUT = "reference", "reference_base", "reward"
RESERVED_INPUTS = ("model", "base", "tokenizer", REFERENCE_INPUT, REFERENCE_BASE_INPUT, REWARD_INPUT)


class SampledSpec(BaseModel):
    """Sampled completions scored by the gold judge (the expected reward RL optimises)."""

    model_config = ConfigDict(extra="forbid")

    samples: int = Field(4, ge=1, le=64, description="Completions sampled per prompt.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature T (softmax(logits / T)).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass.")
    seed: int = Field(0, description="Seed of the sampling generator.")


class Config(StageConfig):
    OUTPUT_TYPES: ClassVar[dict[str, str]] = {"output": "dataset"}

    kind: Literal["evaluate"] = Field(..., description="Score a model or adapter on held-out datasets.")
    split: str = Field("test", pattern=r"^[A-Za-z0-9_.-]+$", description="Split of every dataset to score.")
    max_examples: int | None = Field(
        None, ge=1, description="Score at most this many rows per dataset (the first)."
    )
    format: Literal["auto", "prompt_completion", "messages", "preference", "text"] = Field(
        "auto",
        description="How rows are read: prompt/completion columns (strings or chat lists), chat `messages` "
        "(the last assistant turn is the reference), `preference` pairs (prompt/chosen/rejected: the chosen "
        "completion is the reference) or `text` (loss only); auto takes the first one present.",
    )
    prompt_column: str = Field("prompt", description="Prompt column (a string or a list of chat messages).")
    completion_column: str = Field("completion", description="Reference completion column.")
    messages_column: str = Field("messages", description="Chat column for format `messages`.")
    chosen_column: str = Field("chosen", description="Preferred completion column for format `preference`.")
    rejected_column: str = Field(
        "rejected", description="Rejected completion column for format `preference`."
    )
    text_column: str = Field("text", description="Document column for format `text`.")
    family_column: str = Field("family", description="Task family column; scores are reported per family.")
    generate: bool = Field(True, description="Generate completions and score them (prompt formats only).")
    sampled: SampledSpec | None = Field(
        None,
        description="Also sample completions (`{samples: 4, temperature: 1.0}`) and report the gold judge's mean "
        "score over them, `sampled_judge_accuracy`: what PPO / GRPO / best-of-N improve, which greedy exact "
        "match may not show.",
    )
    max_new_tokens: int = Field(64, ge=1, le=8192, description="Greedy generation length limit.")
    stop_tokens: list[str] = Field(
        default_factory=list,
        description="Tokens that end a generation besides eos and the chat template's end-of-turn token "
        "(those missing from the vocabulary are ignored).",
    )
    judge: Literal["auto", "synthetic", "none"] = Field(
        "auto",
        description="Gold judge: `synthetic` (stages.synthetic.score, needs the family column); `auto` uses it "
        "for families it knows.",
    )
    batch_size: int = Field(16, ge=1, description="Sequences per forward pass / generate call.")
    max_length: int = Field(1024, ge=8, description="Longest sequence scored (longer ones are truncated).")
    check_base: bool = Field(
        True, description="Refuse an adapter whose recorded base (lineage.json) is not the `base` input."
    )
    examples_in_card: int = Field(3, ge=0, description="Sample generations shown in the card.")
    reward_aggregate: Literal["min", "mean"] = Field(
        "min",
        description="How the members of a `reward` ensemble combine: the conservative minimum (seed §4.12) or "
        "the mean (one reward model: either).",
    )
    calibration_bins: int = Field(
        10, ge=1, le=50, description="Confidence bins of the reward model's calibration error."
    )

    @model_validator(mode="after")
    def _check_kind_inputs(self) -> Config:
        if "model" not in self.inputs:
            raise ValueError(
                "an evaluate stage needs `inputs: {model: MODEL_OR_ADAPTER, DATASET_NAME: DATASET}`"
            )
        if not dataset_inputs(self.inputs):
            raise ValueError(
                f"an evaluate stage needs at least one dataset input besides {list(RESERVED_INPUTS)}, "
                "e.g. `inputs: {model: sft, tasks: synthetic.instructions}`"
            )
        if REFERENCE_BASE_INPUT in self.inputs and REFERENCE_INPUT not in self.inputs:
            raise ValueError(
                f"input `{REFERENCE_BASE_INPUT}` is the base of a `{REFERENCE_INPUT}` adapter; add `{REFERENCE_INPUT}`"
            )
        if self.resources.num_processes != 1:
            raise ValueError("evaluate runs in one process; set resources.num_processes to 1")
        return self


def dataset_inputs(inputs: dict[str, Any]) -> list[str]:
    return sorted(k for k in inputs if k not in RESERVED_INPUTS)
