"""The ``instruct`` stage's config (pydantic only)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from stages.lib.finetune.config import FinetuneConfig, Template, check_template

DEFAULT_TEMPLATES = [
    Template(with_input="{instruction}\n{input}", without_input="{instruction}"),
    Template(with_input="Task: {instruction}\n{input}", without_input="Task: {instruction}"),
    Template(with_input="{instruction}\n\nInput:\n{input}", without_input="{instruction}\n\nRespond below."),
    Template(
        with_input="Read the input and follow the instruction.\nInstruction: {instruction}\nInput: {input}",
        without_input="Follow the instruction.\nInstruction: {instruction}",
    ),
]
"""Four phrasings; the first (instruction, newline, input) is also the evaluation phrasing."""


class Config(FinetuneConfig):
    OUTPUT_TYPES: ClassVar[dict[str, str]] = {"output": "model"}
    POLICY_OUTPUT: ClassVar[str | None] = "output"

    kind: Literal["instruct"] = Field(
        ..., description="Multi-task instruction tuning (mixing, templates, CoT)."
    )
    heldout_inputs: list[str] = Field(
        default_factory=list,
        description="Inputs used only for evaluation (their eval split, else train): zero-shot task families.",
    )
    instruction_column: str = Field("instruction", description="Column with the instruction.")
    input_column: str = Field("input", description="Column with the optional input (empty or absent: none).")
    output_column: str = Field("output", description="Column with the target response y.")
    family_column: str = Field(
        "family", description="Column naming each row's task family (absent: one per input)."
    )
    rationale_column: str = Field(
        "rationale", description="Column with a reasoning chain, where the data has one."
    )
    cot_column: str = Field(
        "cot", description="Boolean column marking rows whose output already reasons (synthetic)."
    )
    temperature: float = Field(
        2.0, gt=0, description="Mixing temperature τ: p_k ∝ min(N_k, M)^(1/τ); 1 = proportional."
    )
    cap: int | None = Field(
        None, ge=1, description="Cap M on each family's examples per epoch (examples-proportional)."
    )
    num_examples: int | None = Field(
        None, ge=1, description="Examples in one epoch of the mixture (default Σ_k min(N_k, M))."
    )
    templates: list[Template] = Field(
        default_factory=lambda: [t.model_copy() for t in DEFAULT_TEMPLATES],
        min_length=1,
        description="Phrasings drawn at random per example; the first is also used for evaluation.",
    )
    task_templates: dict[str, list[Template]] = Field(
        default_factory=dict, description="Per-family template sets replacing `templates` for that family."
    )
    system_prompt: str | None = Field(None, description="A system message opening every conversation.")
    cot_ratio: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="Fraction of examples carrying their reasoning chain (null: as the data comes).",
    )
    cot_format: str = Field(
        "{rationale}\nAnswer: {output}", description="How a rationale and the output form a CoT response."
    )
    cot_trigger: str | None = Field(
        "Let's think step by step.",
        description="Appended to the instruction of a rationale-augmented example.",
    )
    generate_examples: int = Field(
        8, ge=0, description="Greedy generations per held-out family at each evaluation (0: loss only)."
    )
    max_new_tokens: int = Field(48, ge=1, description="Longest generated reply in evaluation.")

    @field_validator("cot_format")
    @classmethod
    def _cot_format(cls, value: str) -> str:
        return check_template(value, ("rationale", "output"))

    @field_validator("task_templates")
    @classmethod
    def _nonempty(cls, value: dict[str, list[Template]]) -> dict[str, list[Template]]:
        empty = [k for k, v in value.items() if not v]
        if empty:
            raise ValueError(f"task_templates for {empty} are empty lists")
        return value

    @model_validator(mode="after")
    def _check_instruct(self) -> Config:
        missing = [n for n in self.heldout_inputs if n not in self.inputs]
        if missing:
            raise ValueError(f"heldout_inputs {missing} are not inputs; inputs are {sorted(self.inputs)}")
        both = sorted(set(self.heldout_inputs) & set(self.datasets or []))
        if both:
            raise ValueError(f"inputs {both} are both training datasets and heldout_inputs")
        return self

    def reserved_inputs(self) -> set[str]:
        return super().reserved_inputs() | set(self.heldout_inputs)

    def cols(self) -> dict[str, str]:
        return {
            "instruction": self.instruction_column,
            "input": self.input_column,
            "output": self.output_column,
            "family": self.family_column,
            "rationale": self.rationale_column,
            "cot": self.cot_column,
        }
