"""The EWC documents of a fine-tuning stage (seed §2.3): a seeded sample of the `data_input` texts."""

from __future__ import annotations

import random
from typing import Any

from hubflow.errors import StageInputError
from hubflow.stage import StageContext
from stages.lib.datasets import input_folder, read_rows


def ewc_sequences(ctx: StageContext, spec: Any, tok: Any, seed: int) -> list[list[int]]:
    """Token ids of ``fisher_samples`` documents drawn (seeded) from the EWC data input."""
    folder = input_folder(ctx, spec.data_input)
    rows = read_rows(
        folder,
        "train",
        [spec.text_column],
        input_name=spec.data_input,
        hint="set regularization.ewc.text_column to the column holding the pretraining documents",
    )
    texts = [r[spec.text_column] for r in rows if r[spec.text_column]]
    if not texts:
        raise StageInputError(
            f"input {spec.data_input!r}: column {spec.text_column!r} holds no text for the EWC Fisher",
            hint="point regularization.ewc.data_input at a dataset of pretraining documents",
        )
    rng = random.Random(f"{seed}:ewc")
    chosen = rng.sample(texts, min(spec.fisher_samples, len(texts)))
    return [list(tok(t, truncation=True, max_length=spec.max_length)["input_ids"]) for t in chosen]
