"""The ``best_of_n`` stage's config (pydantic only)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from hubflow.stage import StageConfig
from stages.lib.sampling_config import (
    RewardFields,
    SamplingFields,
    policy_input_problem,
    reward_input_problem,
)
from stages.lib.training import Seed


class Config(StageConfig, SamplingFields, RewardFields):
    OUTPUT_TYPES: ClassVar[dict[str, str]] = {"candidates": "dataset", "best": "dataset"}

    kind: Literal["best_of_n"] = Field(
        ...,
        description="Rejection sampling (seed §4.9): N responses per prompt, scored; the best kept for SFT.",
    )
    n: int = Field(8, ge=1, le=4096, description="N: responses sampled per prompt.")
    seed: Seed = 0

    @model_validator(mode="after")
    def _check_best_of_n(self) -> Config:
        for problem in (policy_input_problem(self.inputs), reward_input_problem(self.reward, self.inputs)):
            if problem:
                raise ValueError(problem)
        if self.resources.num_processes != 1:
            raise ValueError("best_of_n samples in one process; set resources.num_processes to 1")
        return self
