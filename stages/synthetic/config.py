"""The ``synthetic`` stage's config (pydantic only)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from hubflow.stage import StageConfig
from stages.lib.tasks import FAMILIES, Knobs, families

OUTPUT_KINDS = ("instructions", "preferences", "feedback", "prompts")


class Config(StageConfig):
    OUTPUT_TYPES: ClassVar[dict[str, str]] = dict.fromkeys(OUTPUT_KINDS, "dataset")
    REQUIRED_OUTPUTS: ClassVar[frozenset[str] | None] = frozenset()  # any non-empty subset
    """Every output this kind can publish; a manifest names any non-empty subset of them."""

    kind: Literal["synthetic"] = Field(..., description="Generate task data that a program can grade.")
    families: list[str] = Field(
        default_factory=families, min_length=1, description="Task families to generate (default: all)."
    )
    heldout_families: list[str] = Field(
        default_factory=list,
        description="Families that appear only in the test split (zero-shot evaluation); must be in `families`.",
    )
    num_examples: int = Field(200, ge=1, le=1_000_000, description="Examples per family (before the split).")
    family_examples: dict[str, int] = Field(
        default_factory=dict, description="Per-family overrides of num_examples, e.g. {sort: 500}."
    )
    test_fraction: float = Field(
        0.1, ge=0.0, lt=1.0, description="Share of each (non-held-out) family's examples that go to test."
    )
    cot_ratio: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="Share of examples in chain-of-thought form (prompt asks for reasoning; output ends "
        "with 'Answer: X'). The seed suggests about 0.5 for reasoning-heavy mixtures.",
    )
    seed: int = Field(1234, description="Seed: the same config and seed give byte-identical files.")
    format: Literal["conversational", "standard"] = Field(
        "conversational",
        description="`conversational`: prompt/completion/chosen/rejected are chat message lists (TRL applies "
        "the chat template); `standard`: plain strings (and instructions carry no prompt/completion columns).",
    )
    system_prompt: str | None = Field(
        None, description="If set, a system message starting every conversation (messages, chat prompts)."
    )
    max_number: int = Field(20, ge=2, le=1_000_000, description="Numbers are drawn from 0..max_number.")
    max_length: int = Field(
        6, ge=2, le=40, description="Random letter strings have at most this many letters."
    )
    max_items: int = Field(
        5, ge=2, le=30, description="Lists (numbers, words, JSON fields) have 2..max_items items."
    )
    desirable_ratio: float = Field(
        0.5, gt=0.0, lt=1.0, description="feedback output: share of rows whose completion is the gold one."
    )

    @model_validator(mode="after")
    def _check_families(self) -> Config:
        if self.inputs:
            raise ValueError(f"kind 'synthetic' reads no inputs; remove `inputs:` ({sorted(self.inputs)})")
        known = families()
        for field, names in (("families", self.families), ("heldout_families", self.heldout_families)):
            unknown = [f for f in names if f not in FAMILIES]
            if unknown:
                raise ValueError(
                    f"{field}: unknown task famil{'y' if len(unknown) == 1 else 'ies'} {unknown}; known: {known}"
                )
            if len(set(names)) != len(names):
                raise ValueError(f"{field} lists a family twice: {names}")
        stray = [f for f in self.heldout_families if f not in self.families]
        if stray:
            raise ValueError(
                f"heldout_families {stray} are not in families {self.families}; add them there too"
            )
        if set(self.heldout_families) >= set(self.families):
            raise ValueError("every family is held out, so the train split would be empty; keep at least one")
        stray = [f for f in self.family_examples if f not in self.families]
        if stray:
            raise ValueError(f"family_examples names {stray}, which are not in families {self.families}")
        if any(v < 1 for v in self.family_examples.values()):
            raise ValueError("family_examples counts must be at least 1")
        return self

    def knobs(self) -> Knobs:
        return Knobs(max_number=self.max_number, max_length=self.max_length, max_items=self.max_items)
