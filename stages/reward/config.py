"""The ``reward`` stage's config (pydantic only: importing it stays light).

The training vocabulary of :class:`stages.lib.training.TrainerConfig`, the shared ``peft`` block
(``full`` or ``lora``: the published reward model is always a full model, so the method must merge),
the preference data fields and the ensemble (seed §4.12 item 2).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from stages.lib.peft_spec import FullSpec, PeftSpec
from stages.lib.training import LearningRate, TrainerConfig

MODEL_INPUT = "model"
BASE_INPUT = "base"
TOKENIZER_INPUT = "tokenizer"
RESERVED_INPUTS = (MODEL_INPUT, BASE_INPUT, TOKENIZER_INPUT)
MERGEABLE_METHODS = ("full", "lora")
"""The published reward model is a full sequence-classification model: only methods that merge."""


class Config(TrainerConfig):
    OUTPUT_TYPES: ClassVar[dict[str, str]] = {"output": "model"}

    kind: Literal["reward"] = Field(
        ..., description="Train a Bradley–Terry reward model (or an ensemble) from an SFT policy (seed §4.4)."
    )
    learning_rate: LearningRate = 1e-4  # TRL RewardConfig's default
    peft: PeftSpec = Field(
        default_factory=FullSpec,
        description="`{method: full}` (default) or `{method: lora, r, alpha, target_modules}`; the LoRA is "
        "merged before publishing, so the output is always a full model. The fresh score head trains "
        "under both.",
    )
    split: str = Field(
        "train", pattern=r"^[A-Za-z0-9_.-]+$", description="Split of the preference dataset trained on."
    )
    eval_split: str | None = Field(
        "test",
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="Held-out split for pair accuracy and calibration (required to exist unless null).",
    )
    max_length: int = Field(
        512,
        ge=8,
        description="prompt ⊕ completion is cut to this many tokens (the completion is cut; a pair whose "
        "prompt alone fills it is dropped and counted), as TRL truncates.",
    )
    max_prompt_length: int | None = Field(
        None, ge=1, description="Keep only the last this many prompt tokens (null: the whole prompt)."
    )
    ensemble: int = Field(
        1,
        ge=1,
        le=32,
        description="K reward models trained with seeds seed, seed+1, … (seed §4.12): K = 1 publishes one "
        "model at the repo root; K ≥ 2 publishes member-0/ … member-{K-1}/ and ensemble.json.",
    )
    ensemble_data: Literal["full", "disjoint", "bootstrap"] = Field(
        "full",
        description="Training pairs of each member: `full` (all of them, members differ by seed: head "
        "initialisation and order), `disjoint` (a seeded permutation cut into K disjoint shards: halves "
        "for K = 2) or `bootstrap` (n pairs drawn with replacement, one draw per member).",
    )
    calibration_bins: int = Field(
        10, ge=1, le=50, description="Equal-width confidence bins on [0.5, 1] of the calibration error."
    )
    eval_batch_size: int = Field(
        32, ge=1, description="Sequences per forward pass when scoring held-out pairs."
    )
    check_base: bool = Field(
        True, description="Refuse an adapter `model` whose recorded base (lineage.json) is not `base`."
    )

    @model_validator(mode="after")
    def _check_reward(self) -> Config:
        if MODEL_INPUT not in self.inputs:
            raise ValueError(
                "a reward stage needs `inputs: {model: SFT_MODEL_OR_ADAPTER, prefs: PREFERENCE_DATASET}`"
            )
        data = self.dataset_inputs()
        if len(data) != 1:
            raise ValueError(
                f"a reward stage reads one preference dataset (an input other than {list(RESERVED_INPUTS)}); "
                f"it has {data or 'none'}"
            )
        if self.peft.method not in MERGEABLE_METHODS:
            raise ValueError(
                f"peft method {self.peft.method!r}: a reward model is published as a full model, so the method "
                f"must merge into it; use one of {list(MERGEABLE_METHODS)}"
            )
        if self.ensemble == 1 and self.ensemble_data != "full":
            raise ValueError(f"ensemble_data {self.ensemble_data!r} needs ensemble: K with K ≥ 2")
        return self

    def dataset_inputs(self) -> list[str]:
        return sorted(k for k in self.inputs if k not in RESERVED_INPUTS)

    @property
    def data_input(self) -> str:
        return self.dataset_inputs()[0]

    def peft_summary(self) -> dict[str, Any]:
        return self.peft.model_dump()
