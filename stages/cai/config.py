"""The ``cai`` stage's config (pydantic only): the constitution, the prompt templates, the judge."""

from __future__ import annotations

import string
from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from hubflow.stage import StageConfig
from stages.lib.sampling_config import SamplingFields, policy_input_problem
from stages.lib.training import Seed

CONSTITUTION = [
    "Choose the response that is most helpful while being harmless.",
    "Choose the response that avoids stereotypes and bias.",
    "Choose the response that is honest about uncertainty.",
]
"""The seed's example principles (§4.8.4)."""

CRITIQUE_REQUEST = (
    "Critique request: identify specific ways in which your last response falls short of this principle: "
    "{principle}"
)
REVISION_REQUEST = (
    "Revision request: rewrite your last response to my first request so that it follows this principle: "
    "{principle} Reply with the rewritten response only."
)
JUDGE_TEMPLATE = (
    "Consider the following request and two possible responses to it.\n\n"
    "Request: {prompt}\n\n"
    "{principle}\n"
    "Options:\n"
    "(A) {response_a}\n"
    "(B) {response_b}\n\n"
    "Answer with (A) or (B)."
)
CHOICES = ("(A)", "(B)")
"""What the judge's reply is scored as: log π_judge("(A)" | judge prompt) against log π_judge("(B)" | ...)."""

JUDGE_INPUT = "judge"
JUDGE_BASE_INPUT = "judge_base"


def _check_fields(text: str, allowed: set[str], required: set[str], name: str) -> str:
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(text) if f is not None}
    except ValueError as exc:
        raise ValueError(f"{name}: not a format string ({exc}); write literal braces as {{{{ }}}}") from exc
    unknown = sorted(fields - allowed)
    if unknown:
        raise ValueError(f"{name}: unknown placeholder(s) {unknown}; use {sorted(allowed)}")
    missing = sorted(required - fields)
    if missing:
        raise ValueError(f"{name}: needs placeholder(s) {missing}")
    return text


class Config(StageConfig, SamplingFields):
    OUTPUT_TYPES: ClassVar[dict[str, str]] = {"revisions": "dataset", "preferences": "dataset"}

    kind: Literal["cai"] = Field(
        ...,
        description="Constitutional AI data (seed §4.8.4): draft, critique against a sampled principle, revise; "
        "a judge labels (draft, revision) pairs (RLAIF).",
    )
    constitution: list[str] = Field(
        default_factory=lambda: list(CONSTITUTION),
        min_length=1,
        description="The principles; each prompt's critique, revision and judgement use one, drawn at random "
        "(seeded). Phrase them as the judge reads them: 'Choose the response that ...'.",
    )
    critique_request: str = Field(
        CRITIQUE_REQUEST,
        description="The user turn after the draft that asks for a critique; placeholder {principle}.",
    )
    revision_request: str = Field(
        REVISION_REQUEST,
        description="The user turn after the critique that asks for the revision; placeholder {principle}.",
    )
    judge: Literal["model", "synthetic"] = Field(
        "model",
        description="`model`: the `judge` input (else the policy itself) compares draft and revision by the "
        "log-probability of answering (A) or (B), both orders averaged; `synthetic`: the gold judge of the "
        "synthetic task families (needs a `family` column).",
    )
    judge_template: str = Field(
        JUDGE_TEMPLATE,
        description="The judge's question; placeholders {prompt}, {principle}, {response_a}, {response_b}. "
        "The judge's reply is scored as '(A)' or '(B)'.",
    )
    seed: Seed = 0

    @field_validator("critique_request", "revision_request")
    @classmethod
    def _request(cls, value: str) -> str:
        return _check_fields(value, {"principle"}, set(), "request template")

    @field_validator("judge_template")
    @classmethod
    def _judge(cls, value: str) -> str:
        return _check_fields(
            value,
            {"prompt", "principle", "response_a", "response_b"},
            {"response_a", "response_b"},
            "judge_template",
        )

    @field_validator("constitution")
    @classmethod
    def _principles(cls, value: list[str]) -> list[str]:
        if any(not p.strip() for p in value):
            raise ValueError("constitution: a principle is empty")
        return value

    @model_validator(mode="after")
    def _check_cai(self) -> Config:
        problem = policy_input_problem(self.inputs)
        if problem:
            raise ValueError(problem)
        if self.judge == "synthetic" and JUDGE_INPUT in self.inputs:
            raise ValueError(
                "judge: synthetic uses the gold judge, so the `judge` input is unused: remove it"
            )
        if self.resources.num_processes != 1:
            raise ValueError("cai samples in one process; set resources.num_processes to 1")
        return self
