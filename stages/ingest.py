"""``ingest``: local files -> a dataset repo of parquet shards.

Reads ``.jsonl``, ``.json``, ``.parquet``, ``.csv`` and ``.txt`` files matched by
globs (relative to the manifest) and writes ``data/{split}-0000K-of-0000N.parquet``
as the Hub names shards, so ``datasets.load_dataset(<snapshot>)`` loads it.
The content hash of every source file is part of the fingerprint.
"""

from __future__ import annotations

import glob
import hashlib
import json
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from hubflow.errors import HubflowError, StageInputError
from hubflow.stage import StageConfig, StageContext, StageResult

VERSION = "1"
LIBRARIES = ("pyarrow",)

FORMATS = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".parquet": "parquet",
    ".csv": "csv",
    ".txt": "txt",
}


class Source(BaseModel):
    model_config = ConfigDict(extra="forbid")

    paths: list[str] = Field(
        ..., min_length=1, description="Glob patterns, relative to the manifest's folder."
    )
    split: Literal["train", "test"] = Field("train", description="The split these files go to.")
    format: Literal["auto", "jsonl", "json", "parquet", "csv", "txt"] = Field(
        "auto", description="File format; `auto` goes by the extension."
    )
    text_mode: Literal["line", "file"] = Field(
        "line", description="For .txt: one document per non-empty line, or one per file."
    )

    @field_validator("paths")
    @classmethod
    def _relative(cls, value: list[str]) -> list[str]:
        for p in value:
            if ".." in Path(p).parts:
                raise ValueError(f"path {p!r} leaves the manifest's folder ('..')")
        return value


class Config(StageConfig):
    OUTPUT_TYPES: ClassVar[dict[str, str]] = {"output": "dataset"}

    kind: Literal["ingest"] = Field(..., description="Read local files into a dataset repo.")
    source: Source | list[Source] = Field(
        ..., description="One source, or a list (e.g. a train and a test split)."
    )
    text_column: str = Field("text", description="Column name for documents read from .txt files.")
    source_column: str | None = Field(
        None, description="If set, a column of this name records each row's source file (relative path)."
    )
    max_rows_per_shard: int = Field(100_000, ge=1, description="Rows per parquet shard.")

    def sources(self) -> list[Source]:
        return self.source if isinstance(self.source, list) else [self.source]


def _matched(src: Source, base_dir: Path) -> list[Path]:
    files: set[Path] = set()
    for pattern in src.paths:
        hits = [Path(p) for p in glob.glob(str(base_dir / pattern), recursive=True) if Path(p).is_file()]
        if not hits:
            raise HubflowError(
                f"source path {pattern!r} matches no file (relative to {base_dir})",
                hint="fix the glob in `source.paths`, or add the files",
            )
        files.update(hits)
    return sorted(files)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def fingerprint_extra(cfg: Config, base_dir: Path) -> dict[str, Any]:
    """Every matched file's relative path and content hash."""
    out: dict[str, str] = {}
    for src in cfg.sources():
        for f in _matched(src, base_dir):
            out[str(f.relative_to(base_dir)) if f.is_relative_to(base_dir) else str(f)] = _sha256(f)
    return {"files": out}


def _read(path: Path, fmt: str, src: Source, text_column: str) -> Any:
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.json as pajson
    import pyarrow.parquet as pq

    if fmt == "jsonl":
        return pajson.read_json(path)
    if fmt == "parquet":
        return pq.read_table(path)
    if fmt == "csv":
        return pacsv.read_csv(path)
    if fmt == "json":
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise StageInputError(
                f"{path}: a .json source must hold a list of objects (or {{'data': [...]}})",
                hint="convert it, or write one object per line as .jsonl",
            )
        return pa.Table.from_pylist(data)
    text = path.read_text(encoding="utf-8", errors="replace")
    docs = [text] if src.text_mode == "file" else [line for line in text.splitlines() if line.strip()]
    return pa.table({text_column: docs})


def run(ctx: StageContext, cfg: Config) -> StageResult:
    import pyarrow as pa
    import pyarrow.parquet as pq

    splits: dict[str, list[Any]] = {}
    files_read = 0
    for src in cfg.sources():
        for path in _matched(src, ctx.base_dir):
            fmt = src.format if src.format != "auto" else FORMATS.get(path.suffix.lower())
            if fmt is None:
                raise StageInputError(
                    f"{path}: unknown file type {path.suffix!r}",
                    hint=f"use one of {', '.join(FORMATS)} or set `format:` on the source",
                )
            try:
                table = _read(path, fmt, src, cfg.text_column)
            except (pa.ArrowInvalid, UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise StageInputError(
                    f"{path}: cannot read it as {fmt}: {exc}", hint="fix or remove the file"
                ) from exc
            if cfg.source_column:
                rel = str(path.relative_to(ctx.base_dir)) if path.is_relative_to(ctx.base_dir) else str(path)
                table = table.append_column(cfg.source_column, pa.array([rel] * table.num_rows, pa.string()))
            splits.setdefault(src.split, []).append(table)
            files_read += 1
            ctx.logger.info("read %s (%d rows)", path, table.num_rows)

    metrics: dict[str, Any] = {"files": files_read}
    data_dir = ctx.output / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    for split, tables in splits.items():
        try:
            table = pa.concat_tables(tables, promote_options="permissive")
        except pa.ArrowInvalid as exc:
            raise StageInputError(
                f"the {split} files have incompatible columns: {exc}",
                hint="give every file of a split the same columns and types",
            ) from exc
        if table.num_rows == 0:
            raise StageInputError(f"the {split} split is empty", hint="check the source files")
        n = max(1, -(-table.num_rows // cfg.max_rows_per_shard))
        for k in range(n):
            part = table.slice(k * cfg.max_rows_per_shard, cfg.max_rows_per_shard)
            pq.write_table(part, data_dir / f"{split}-{k:05d}-of-{n:05d}.parquet")
        metrics[f"{split}_rows"] = table.num_rows
        metrics[f"{split}_shards"] = n
        metrics["columns"] = table.column_names
    return StageResult(metrics=metrics)
