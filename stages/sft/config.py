"""The ``sft`` stage's config (pydantic only): the fine-tuning fields plus the data format and the task.

``task`` is a discriminated union on ``type`` (as ``peft`` is on ``method``): ``causal_lm`` (the
default; ``task: causal_lm`` is short for ``task: {type: causal_lm}``), ``classification`` and
``extractive_qa`` carry the columns only they read.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from stages.lib.finetune.config import ALPACA, FinetuneConfig, Template

COLUMN_ROLES = ("prompt", "completion", "messages", "instruction", "input", "output")


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CausalLmTask(_Spec):
    """Generation: the loss is the completion's next-token NLL (seed §2.2, §2.5)."""

    type: Literal["causal_lm"] = Field("causal_lm", description="Train the language-model head (generation).")


class ClassificationTask(_Spec):
    """A sequence-classification head on the pooled last token (seed §2.2)."""

    type: Literal["classification"] = Field(..., description="Train a sequence-classification head.")
    text_column: str = Field("text", description="The text column.")
    text_pair_column: str | None = Field(None, description="An optional second text (pairs, NLI).")
    label_column: str = Field("label", description="The label column (ints 0..C-1 or names).")


class ExtractiveQaTask(_Spec):
    """A span head: the loss is −log p(start) − log p(end) (seed §2.2)."""

    type: Literal["extractive_qa"] = Field(..., description="Train an extractive question-answering head.")
    question_column: str = Field("question", description="The question column.")
    context_column: str = Field("context", description="The context (passage) column.")
    answer_column: str = Field(
        "answer", description="The answer text (a span of the context), or SQuAD-style `answers`."
    )
    answer_start_column: str | None = Field(
        None, description="Character offset of the answer in the context (found by search if unset)."
    )


TaskSpec = Annotated[CausalLmTask | ClassificationTask | ExtractiveQaTask, Field(discriminator="type")]
_TASK_FIELDS = {
    name: variant
    for variant in (ClassificationTask, ExtractiveQaTask)
    for name in variant.model_fields
    if name != "type"
}


class Config(FinetuneConfig):
    OUTPUT_TYPES: ClassVar[dict[str, str]] = {"output": "model"}
    POLICY_OUTPUT: ClassVar[str | None] = "output"

    kind: Literal["sft"] = Field(
        ..., description="Supervised fine-tuning (full, LoRA, QLoRA, adapters, prefix)."
    )
    task: TaskSpec = Field(
        default_factory=CausalLmTask,
        description="`causal_lm` (generation, the default), `{type: classification, text_column, label_column, "
        "text_pair_column}` or `{type: extractive_qa, question_column, context_column, answer_column, "
        "answer_start_column}` (seed §2.2).",
    )
    format: Literal["prompt_completion", "messages", "instruction"] = Field(
        "prompt_completion", description="How rows become text (causal_lm only); see the module docs."
    )
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="Renames for the format's columns, e.g. {prompt: question, completion: answer}; keys are "
        "prompt, completion, messages, instruction, input, output.",
    )
    instruction_template: Template = Field(
        default_factory=lambda: ALPACA.model_copy(),
        description="Format `instruction`: `with_input` / `without_input` templates over {instruction} and {input}.",
    )

    @model_validator(mode="before")
    @classmethod
    def _task_shorthand(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        flat = [k for k in data if k in _TASK_FIELDS]
        if flat:
            variant = _TASK_FIELDS[flat[0]].model_fields["type"].annotation.__args__[0]
            raise ValueError(
                f"`{flat[0]}` belongs to the task now: write `task: {{type: {variant}, {flat[0]}: ...}}`"
            )
        if isinstance(data.get("task"), str):
            data = {**data, "task": {"type": data["task"]}}
        return data

    @model_validator(mode="after")
    def _check_sft(self) -> Config:
        unknown = sorted(set(self.columns) - set(COLUMN_ROLES))
        if unknown:
            raise ValueError(f"columns: unknown key(s) {unknown}; use {list(COLUMN_ROLES)}")
        if self.task.type != "causal_lm":
            if self.peft.method not in ("full", "lora", "adapter"):
                raise ValueError(
                    f"task {self.task.type} supports peft methods full, lora and adapter, not {self.peft.method}"
                )
            if self.regularization.ewc is not None:
                raise ValueError(
                    "regularization.ewc measures the language-model likelihood of pretraining text; "
                    f"task {self.task.type} has no language-model head: remove it or use task causal_lm"
                )
        return self
