"""Checks on the curate stage's inputs, run before any datatrove task starts."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from hubflow.errors import StageInputError


@dataclass
class Source:
    """One dataset input: its parquet files (relative to ``folder``) and their unified schema."""

    name: str
    folder: Path
    files: list[str]
    rows: int
    schema: pa.Schema
    rows_per_file: dict[str, int] = field(default_factory=dict)


def _is_text(typ: pa.DataType) -> bool:
    return pa.types.is_string(typ) or pa.types.is_large_string(typ) or pa.types.is_string_view(typ)


def _column_fix(schema: pa.Schema, wanted: str, field_name: str) -> str:
    text_cols = [f.name for f in schema if _is_text(f.type)]
    if len(text_cols) == 1:
        return f"set `{field_name}: {text_cols[0]}` in the stage"
    if text_cols:
        return f"set `{field_name}:` to one of the string columns ({', '.join(text_cols)})"
    return f"this dataset has no string column; point `{field_name}:` at the column holding the text"


def find_sources(inputs: dict[str, Path], names: list[str], data_files: str) -> list[Source]:
    """List each dataset input's parquet files and read their schemas (no data)."""
    sources = []
    for name in names:
        folder = Path(inputs[name])
        if not folder.is_dir():
            raise StageInputError(f"dataset input {name!r}: folder {folder} does not exist")
        files = sorted(str(p.relative_to(folder)) for p in folder.glob(data_files) if p.is_file())
        if not files:
            raise StageInputError(
                f"dataset input {name!r} has no parquet files matching {data_files!r}",
                hint="check that the input is a dataset repo with parquet shards, or set `data_files:` "
                "to the glob (relative to the repo) that matches them",
            )
        schemas, rows_per_file = [], {}
        for rel in files:
            try:
                meta = pq.read_metadata(folder / rel)
            except Exception as exc:  # pyarrow raises several types for unreadable files
                raise StageInputError(
                    f"dataset input {name!r}: {rel} is not a readable parquet file: {exc}"
                ) from exc
            schemas.append(meta.schema.to_arrow_schema())
            rows_per_file[rel] = meta.num_rows
        try:
            schema = pa.unify_schemas(schemas, promote_options="permissive")
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise StageInputError(
                f"dataset input {name!r}: its parquet files have incompatible schemas: {exc}"
            ) from exc
        sources.append(Source(name, folder, files, sum(rows_per_file.values()), schema, rows_per_file))
    return sources


def check_sources(
    sources: list[Source], text_column: str, url_column: str | None, source_column: str | None
) -> None:
    """The text column exists and holds strings, the datasets are not empty, the url column exists if needed."""
    for src in sources:
        names = src.schema.names
        if text_column not in names:
            raise StageInputError(
                f"dataset input {src.name!r} has no column {text_column!r} (columns found: {', '.join(names)})",
                hint=_column_fix(src.schema, text_column, "text_column"),
            )
        typ = src.schema.field(text_column).type
        if not _is_text(typ):
            raise StageInputError(
                f"dataset input {src.name!r}: column {text_column!r} holds {typ}, not text",
                hint=_column_fix(src.schema, text_column, "text_column"),
            )
        if src.rows == 0:
            raise StageInputError(
                f"dataset input {src.name!r} is empty: its {len(src.files)} parquet file(s) hold no rows",
                hint="check the upstream stage's output, or remove this input from the stage",
            )
        if url_column is not None and url_column not in names:
            raise StageInputError(
                f"the `url` filter reads URLs from column {url_column!r}, which dataset input "
                f"{src.name!r} lacks (columns found: {', '.join(names)})",
                hint="set `url_column:` to the column holding each document's URL, or drop the `url` filter",
            )
        if source_column is not None and source_column in names and source_column != text_column:
            raise StageInputError(
                f"`source_column: {source_column}` would overwrite a column of dataset input {src.name!r}",
                hint="set `source_column:` to a new column name (or null to omit it)",
            )


def check_model_dir(name: str, folder: Path) -> None:
    """A reference LM folder: a transformers config and safetensors weights (a full model: an adapter
    has no base here)."""
    from stages.lib.models import is_adapter

    if is_adapter(folder):
        raise StageInputError(
            f"perplexity model input {name!r} is an adapter (it holds adapter_config.json); perplexity gating "
            "needs a full model",
            hint="merge the adapter into its base with a `merge` stage and point `perplexity.model_input` at it",
        )
    if not (folder / "config.json").is_file():
        raise StageInputError(
            f"perplexity model input {name!r} ({folder}) has no config.json",
            hint="point `perplexity.model_input` at a model repo saved with `save_pretrained`",
        )
    if not any(folder.glob("*.safetensors")):
        raise StageInputError(
            f"perplexity model input {name!r} has no .safetensors weights (found: "
            f"{', '.join(sorted(p.name for p in folder.iterdir()))})",
            hint="save the model with `save_pretrained(..., safe_serialization=True)`; pickled weights are not loaded",
        )


def resolve_language_models(filters: list[dict[str, dict[str, Any]]], base_dir: Path) -> dict[int, Path]:
    """Filter index -> absolute fastText model path of each `language` filter; raises if a file is missing."""
    paths = {}
    for i, item in enumerate(filters):
        params = item.get("language")
        if params is None:
            continue
        path = Path(params["model_path"])
        path = path if path.is_absolute() else (Path(base_dir) / path)
        if not path.is_file():
            raise StageInputError(
                f"filter [{i}] 'language': model file {path} does not exist",
                hint="download a fastText language-ID model (e.g. lid.176.bin) to that path; "
                "`model_path` is relative to the manifest's folder",
            )
        paths[i] = path.resolve()
    return paths


def _local_path(value: str, base_dir: Path) -> Path:
    path = Path(value)
    return path if path.is_absolute() else Path(base_dir) / path


def resolve_word_lists(filters: list[dict[str, dict[str, Any]]], base_dir: Path) -> dict[int, list[str]]:
    """Filter index -> entries of each `wordlist` filter's file; raises if a file is missing or empty."""
    from stages.curate.classify import read_word_list

    lists = {}
    for i, item in enumerate(filters):
        params = item.get("wordlist")
        if params is None:
            continue
        path = _local_path(params["path"], base_dir)
        if not path.is_file():
            raise StageInputError(
                f"filter [{i}] 'wordlist': word list file {path} does not exist",
                hint="`path` is relative to the manifest's folder; commit the list (one word or phrase a line) "
                "next to the manifest. No list is downloaded.",
            )
        entries = read_word_list(path)
        if not entries:
            raise StageInputError(
                f"filter [{i}] 'wordlist': {path} holds no words (only blank lines and # comments)",
                hint="write one word or phrase a line",
            )
        lists[i] = entries
    return lists


def resolve_classifiers(
    filters: list[dict[str, dict[str, Any]]], inputs: dict[str, Path]
) -> tuple[dict[int, Path], dict[int, list[str]]]:
    """Filter index -> model file and labels of each `classifier` filter; raises if an input holds no model
    or a threshold names a label the model lacks."""
    from stages.lib.fasttext_models import find_model, model_labels

    paths, labels = {}, {}
    for i, item in enumerate(filters):
        params = item.get("classifier")
        if params is None:
            continue
        name = params["model_input"]
        path = find_model(Path(inputs[name]), name)
        found = model_labels(path)
        rule = params.get("keep") or params.get("remove") or {}
        unknown = [label for label in rule if label not in found]
        if unknown:
            raise StageInputError(
                f"filter [{i}] 'classifier': label(s) {unknown} are not labels of the model in input {name!r} "
                f"(its labels: {', '.join(found)})",
                hint="name the labels the classifier stage trained (its card and classifier.json list them)",
            )
        paths[i], labels[i] = path.resolve(), found
    return paths, labels


def check_tokenizer_dir(name: str, folder: Path) -> Path:
    """The `tokenizer.json` of the substring dedup's tokenizer input."""
    path = Path(folder) / "tokenizer.json"
    if not path.is_file():
        raise StageInputError(
            f"dedup.substring tokenizer input {name!r} has no tokenizer.json",
            hint="point `dedup.substring.tokens.input` at a `tokenizer` stage's output (or use `words` / `bytes`)",
        )
    return path
