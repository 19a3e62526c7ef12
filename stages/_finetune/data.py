"""Reading the inputs of a fine-tuning stage: tokenizer, dataset columns, rows, EWC documents."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from hubflow.errors import StageInputError
from hubflow.stage import StageContext
from stages._finetune.spec import MODEL_INPUT, TOKENIZER_INPUT
from stages.common import has_split, load_tokenizer, parquet_files, require_columns


def input_folder(ctx: StageContext, name: str) -> Path:
    if name not in ctx.inputs:
        raise StageInputError(
            f"input {name!r} was not materialised; the stage has inputs {sorted(ctx.inputs)}",
            hint=f"add `{name}: STAGE_OR_REF` to the stage's inputs",
        )
    return ctx.inputs[name]


def tokenizer_for(ctx: StageContext, chat_template: str | None) -> tuple[Any, str]:
    """The tokenizer (the `tokenizer` input's, else the model repo's) and the input it came from."""
    name = TOKENIZER_INPUT if TOKENIZER_INPUT in ctx.inputs else MODEL_INPUT
    folder = input_folder(ctx, name)
    if not (folder / "tokenizer.json").exists() and not (folder / "tokenizer_config.json").exists():
        raise StageInputError(
            f"input {name!r} ships no tokenizer (no tokenizer.json / tokenizer_config.json)",
            hint="add `tokenizer: STAGE_OR_REF` (a tokenizer stage's output) to the stage's inputs",
        )
    tok = load_tokenizer(folder, input_name=name)
    if chat_template:
        tok.chat_template = chat_template
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise StageInputError(
                f"the tokenizer of input {name!r} has neither a pad nor an eos token",
                hint="give the tokenizer a pad token (the tokenizer stage sets <pad>)",
            )
        tok.pad_token = tok.eos_token
    return tok, name


def columns_of(folder: Path, split: str, *, input_name: str) -> list[str]:
    import pyarrow.parquet as pq

    return list(pq.read_schema(parquet_files(folder, split, input_name=input_name)[0]).names)


def read_rows(
    folder: Path,
    split: str,
    needed: list[str],
    *,
    input_name: str,
    hint: str,
    optional: tuple[str, ...] = (),
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """Rows of a split as dicts, after checking the needed columns exist (naming those found)."""
    import pyarrow.parquet as pq

    found = columns_of(folder, split, input_name=input_name)
    require_columns(found, needed, input_name=input_name, hint=hint)
    wanted = list(dict.fromkeys([*needed, *(c for c in optional if c in found)]))
    table = pq.read_table(parquet_files(folder, split, input_name=input_name), columns=wanted)
    if table.num_rows == 0:
        raise StageInputError(
            f"input {input_name!r}: the {split} split is empty", hint="check the stage that made it"
        )
    if limit is not None:
        table = table.slice(0, limit)
    return table.to_pylist()


def eval_split_of(folder: Path, split: str | None) -> str | None:
    return split if split and has_split(folder, split) else None


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
