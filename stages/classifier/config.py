"""Manifest-side model of the ``classifier`` stage (pydantic only: imported whenever a manifest is validated)."""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from hubflow.stage import StageConfig

_LABEL = re.compile(r"^[A-Za-z0-9_.:-]+$")


def _check_label(value: str) -> str:
    if not _LABEL.match(value):
        raise ValueError(
            f"label {value!r} must be one word of letters, digits and _ . : - (fastText labels hold no spaces)"
        )
    return value


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ContrastData(_Spec):
    """Two datasets: every row of `positive` is one class, every row of `negative` the other (seed §1.5 step 3:
    curated / reference text against raw web text)."""

    type: Literal["contrast"] = Field("contrast", description="Labels come from which input a row is in.")
    positive: str = Field("positive", description="Input holding the positive (high-quality) text.")
    negative: str = Field("negative", description="Input holding the negative (raw, web-like) text.")
    positive_label: str = Field("hq", description="fastText label of the positive rows.")
    negative_label: str = Field("lq", description="fastText label of the negative rows.")

    @field_validator("positive_label", "negative_label")
    @classmethod
    def _labels(cls, value: str) -> str:
        return _check_label(value)

    @model_validator(mode="after")
    def _distinct(self) -> ContrastData:
        if self.positive == self.negative:
            raise ValueError("`positive` and `negative` must be two different inputs")
        if self.positive_label == self.negative_label:
            raise ValueError("`positive_label` and `negative_label` must differ")
        return self

    def input_names(self) -> list[str]:
        return [self.positive, self.negative]


class LabelledData(_Spec):
    """One dataset with a label column (toxicity: rows the user labelled `toxic` / `ok`, or any classes)."""

    type: Literal["labelled"] = Field(..., description="Labels come from a column of one input.")
    input: str = Field("data", description="Input holding the labelled rows.")
    label_column: str = Field("label", description="Column holding each row's label (string, int or bool).")
    positive_label: str | None = Field(
        None,
        description="The label whose rows must be present (the class the filter acts on, e.g. `toxic`); "
        "the stage fails before training if it has no rows. Unset: every label needs rows.",
    )

    def input_names(self) -> list[str]:
        return [self.input]


class FastTextParams(_Spec):
    """``fasttext.train_supervised`` hyper-parameters (fastText's names)."""

    epoch: int = Field(10, ge=1, description="Passes over the training rows.")
    lr: float = Field(0.5, gt=0, description="Learning rate.")
    dim: int = Field(32, ge=1, description="Embedding size.")
    wordNgrams: int = Field(2, ge=1, description="Word n-grams used as features.")
    minn: int = Field(0, ge=0, description="Shortest character n-gram (0: no subwords).")
    maxn: int = Field(0, ge=0, description="Longest character n-gram.")
    minCount: int = Field(1, ge=1, description="Words seen fewer times are dropped.")
    bucket: int = Field(200_000, ge=1, description="Hash buckets of the n-gram features.")
    loss: Literal["softmax", "ova", "hs", "ns"] = Field(
        "softmax", description="`softmax` (scores sum to 1), `ova` (one-vs-all: independent per label)."
    )


class Config(StageConfig):
    """Train a fastText text classifier (quality or toxicity) on labelled text -> a model repo."""

    OUTPUT_TYPES: ClassVar[dict[str, str]] = {"output": "model"}

    kind: Literal["classifier"] = Field(..., description="Train a fastText classifier.")
    data: Annotated[ContrastData | LabelledData, Field(discriminator="type")] = Field(
        default_factory=ContrastData,
        description="Where the labels come from: {type: contrast, positive, negative} (default) or "
        "{type: labelled, input, label_column}.",
    )
    text_column: str = Field("text", description="Column holding the text in every input.")
    split: str = Field("train", description="Split of each input to read.")
    heldout_fraction: float = Field(
        0.2,
        gt=0,
        lt=1,
        description="Share of each label's rows held out to measure accuracy (never trained on).",
    )
    max_rows_per_label: int | None = Field(
        None, ge=1, description="Use at most this many rows of each label (a seeded sample); default all."
    )
    balance: bool = Field(
        True, description="Sample every label down to the rarest label's row count before splitting."
    )
    seed: int = Field(
        0, description="Seed of the sampling, the split and fastText (trained with one thread)."
    )
    fasttext: FastTextParams = Field(default_factory=FastTextParams, description="fastText hyper-parameters.")

    @model_validator(mode="before")
    @classmethod
    def _default_data_type(cls, value: Any) -> Any:
        if isinstance(value, dict) and isinstance(value.get("data"), dict) and "type" not in value["data"]:
            kind = "labelled" if "label_column" in value["data"] or "input" in value["data"] else "contrast"
            value = {**value, "data": {"type": kind, **value["data"]}}
        return value

    @model_validator(mode="after")
    def _inputs(self) -> Config:
        missing = [n for n in self.data.input_names() if n not in self.inputs]
        if missing:
            raise ValueError(
                f"data names input(s) {missing} that are not in the stage's inputs "
                f"({', '.join(self.inputs) or 'none'}); e.g. `inputs: {{positive: curated, negative: raw}}`"
            )
        return self
