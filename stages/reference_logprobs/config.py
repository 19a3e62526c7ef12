"""The ``reference_logprobs`` stage's config (pydantic only)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from hubflow.stage import StageConfig, unhashed_field
from stages.lib.preference_config import (
    BASE_INPUT,
    DATA_INPUT,
    MODEL_INPUT,
    SPLIT_PATTERN,
    TOKENIZER_INPUT,
    max_length_field,
    max_prompt_length_field,
)

INPUTS = (MODEL_INPUT, BASE_INPUT, DATA_INPUT, TOKENIZER_INPUT)


class Config(StageConfig):
    OUTPUT_TYPES: ClassVar[dict[str, str]] = {"output": "dataset"}

    kind: Literal["reference_logprobs"] = Field(
        ...,
        description="The reference model's log-probabilities of a preference dataset, computed once and reused "
        "by dpo / kto stages (seed §4.7 step 2).",
    )
    format: Literal["pairs", "pointwise"] = Field(
        "pairs",
        description="`pairs`: prompt/chosen/rejected rows (dpo); `pointwise`: prompt/completion/label rows "
        "(kto), with the log-probs of the mismatched pairs of KTO's KL baseline.",
    )
    max_length: int = max_length_field()
    max_prompt_length: int | None = max_prompt_length_field()
    kl_batch_size: int | None = Field(
        None,
        ge=2,
        description="Pointwise only (required there): rows per KL group, the kto stage's "
        "per_device_train_batch_size; each row's mismatched completion is the previous row's in its group.",
    )
    split: str = Field("train", pattern=SPLIT_PATTERN, description="The training split.")
    eval_split: str | None = Field(
        "test",
        pattern=SPLIT_PATTERN,
        description="A held-out split also scored (skipped where the dataset has none; null: none).",
    )
    batch_size: int = unhashed_field(
        16, ge=1, description="Rows per forward (padding does not change a log-prob: not in the fingerprint)."
    )

    @model_validator(mode="after")
    def _check_reference_inputs(self) -> Config:
        for name in (MODEL_INPUT, DATA_INPUT):
            if name not in self.inputs:
                raise ValueError(
                    f"a reference_logprobs stage needs a `{name}` input "
                    + (
                        "(the reference model, or an adapter with `base`)"
                        if name == MODEL_INPUT
                        else "(the dataset)"
                    )
                    + f"; inputs are {sorted(self.inputs)}"
                )
        unknown = sorted(set(self.inputs) - set(INPUTS))
        if unknown:
            raise ValueError(f"unknown input(s) {unknown}: this kind reads {list(INPUTS)}")
        if self.format == "pointwise" and self.kl_batch_size is None:
            raise ValueError(
                "format pointwise needs `kl_batch_size` (the kto stage's per_device_train_batch_size)"
            )
        if self.format == "pairs" and self.kl_batch_size is not None:
            raise ValueError("kl_batch_size applies to format pointwise only; remove it")
        return self

    def settings_record(self) -> dict[str, object]:
        """The tokenisation settings a consumer must share (recorded in reference_logprobs.json)."""
        out: dict[str, object] = {"max_length": self.max_length, "max_prompt_length": self.max_prompt_length}
        if self.format == "pointwise":
            out["kl_batch_size"] = self.kl_batch_size
        return out
