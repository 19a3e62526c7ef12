"""Draw the mix from the curated work files and write the output dataset.

The work files hold each surviving document's (possibly rewritten) text and the
input file and row it came from; the output rows are the input rows (all their
columns, when ``keep_columns``) with the curated text, the input's name and the
values the pipeline computed (perplexity, language).
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from stages.curate.steps import META_FIELDS


def work_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.parquet")) if folder.is_dir() else []


def count_sources(files: list[Path], names: list[str]) -> dict[str, int]:
    """Documents left per dataset input."""
    counts = dict.fromkeys(names, 0)
    for path in files:
        col = pq.read_table(path, columns=["source"])["source"]
        for item in pc.value_counts(col).to_pylist():
            counts[item["values"]] += int(item["counts"])
    return counts


def draw(counts: dict[str, int], sizes: dict[str, int], seed: int) -> dict[str, np.ndarray]:
    """How many times each document of each input goes to the output (fixed seed, no repeats unless upsampling)."""
    mult = {}
    for name, n in sizes.items():
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        m = np.zeros(n, dtype=np.uint32)
        k = counts.get(name, 0)
        if n:
            full, rest = divmod(k, n)
            m += full
            if rest:
                m[rng.choice(n, rest, replace=False)] += 1
        mult[name] = m
    return mult


def output_schema(
    sources: list,
    text_column: str,
    source_column: str | None,
    meta: dict[str, pa.DataType],
    keep_columns: bool,
) -> pa.Schema:
    """The output's columns; ``meta``: computed column -> type (perplexity, language, classifier scores)."""
    unified = pa.unify_schemas([s.schema for s in sources], promote_options="permissive")
    reserved = set(meta) | ({source_column} if source_column else set())
    fields = []
    for f in unified:
        if f.name == text_column:
            fields.append(pa.field(text_column, f.type))
        elif keep_columns and f.name not in reserved:
            fields.append(f)
    if source_column:
        fields.append(pa.field(source_column, pa.string()))
    fields += [pa.field(name, typ) for name, typ in meta.items()]
    return pa.schema(fields)


@dataclass
class WriteResult:
    rows: int = 0
    bytes: int = 0
    per_source: dict[str, int] = field(default_factory=dict)
    shards: list[str] = field(default_factory=list)


class _Shards:
    """Buffers tables and writes ``data/train-0000K-of-0000N.parquet`` shards of about ``shard_bytes``."""

    def __init__(self, out_dir: Path, schema: pa.Schema, shard_bytes: int):
        self.data = out_dir / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        self.schema, self.shard_bytes = schema, shard_bytes
        self.buffer: list[pa.Table] = []
        self.size = 0
        self.parts: list[Path] = []

    def add(self, table: pa.Table) -> None:
        self.buffer.append(table)
        self.size += table.nbytes
        if self.size >= self.shard_bytes:
            self.flush()

    def flush(self) -> None:
        if not self.buffer:
            return
        part = self.data / f".part-{len(self.parts):05d}.parquet"
        pq.write_table(pa.concat_tables(self.buffer), part)
        self.parts.append(part)
        self.buffer, self.size = [], 0

    def finish(self) -> list[str]:
        self.flush()
        if not self.parts:
            part = self.data / ".part-00000.parquet"
            pq.write_table(self.schema.empty_table(), part)
            self.parts.append(part)
        names = []
        for k, part in enumerate(self.parts):
            name = f"train-{k:05d}-of-{len(self.parts):05d}.parquet"
            part.rename(self.data / name)
            names.append(f"data/{name}")
        return names


def _meta_value(values: dict, key: str):
    """A computed value of a work row: a top-level key, or a classifier score under ``scores``."""
    return values.get(key) if key in META_FIELDS else values.get("scores", {}).get(key)


def _column(values: pa.Array | pa.ChunkedArray, typ: pa.DataType) -> pa.ChunkedArray | pa.Array:
    return values if values.type == typ else values.cast(typ)


def write_output(
    files: list[Path],
    mult: dict[str, np.ndarray],
    sources: list,
    schema: pa.Schema,
    text_column: str,
    source_column: str | None,
    meta: dict[str, pa.DataType],
    out_dir: Path,
    shard_bytes: int,
    batch_rows: int = 20_000,
) -> WriteResult:
    """Stream the work files, keep the drawn rows, join them with their input rows, write shards.

    Memory: one batch of work rows plus the non-text columns of the input file it points
    into (work rows come grouped by input file, so each input file is read about once).
    """
    folders = {s.name: s.folder for s in sources}
    original_cols = [f.name for f in schema if f.name not in {text_column, source_column, *meta}]
    cursor = dict.fromkeys(mult, 0)
    shards = _Shards(out_dir, schema, shard_bytes)
    result = WriteResult(per_source=dict.fromkeys(mult, 0))
    cached: tuple[tuple[str, str], pa.Table] | None = None

    def original_rows(name: str, rel: str, rows: list[int]) -> pa.Table:
        nonlocal cached
        if cached is None or cached[0] != (name, rel):
            with pq.ParquetFile(folders[name] / rel) as original:
                present = [c for c in original_cols if c in original.schema_arrow.names]
                cached = ((name, rel), original.read(columns=present))
        return cached[1].take(pa.array(rows, type=pa.int64()))

    for path in files:
        with pq.ParquetFile(path) as work:
            for batch in work.iter_batches(batch_size=batch_rows):
                table = pa.Table.from_batches([batch])
                src = np.asarray(table["source"].to_pylist(), dtype=object)
                rep = np.zeros(len(table), dtype=np.int64)
                for name in set(src.tolist()):
                    idx = np.nonzero(src == name)[0]
                    c = cursor[name]
                    rep[idx] = mult[name][c : c + len(idx)]
                    cursor[name] = c + len(idx)
                take = np.repeat(np.arange(len(table)), rep)
                if not len(take):
                    continue
                sel = table.take(pa.array(take))
                names, rels, rows = sel["source"].to_pylist(), sel["file"].to_pylist(), sel["row"].to_pylist()
                groups: dict[tuple[str, str], list[int]] = {}
                for i, key in enumerate(zip(names, rels, strict=True)):
                    groups.setdefault(key, []).append(i)
                for (name, rel), positions in groups.items():
                    part = sel.take(pa.array(positions))
                    columns: dict[str, pa.Array | pa.ChunkedArray] = {}
                    if original_cols:
                        orig = original_rows(name, rel, [rows[i] for i in positions])
                        columns.update({col: orig[col] for col in orig.column_names})
                    columns[text_column] = part["text"]
                    if source_column:
                        columns[source_column] = part["source"]
                    if meta:
                        values = [json.loads(m) for m in part["meta"].to_pylist()]
                        for key in meta:
                            columns[key] = pa.array([_meta_value(v, key) for v in values], type=meta[key])
                    arrays = [
                        _column(columns[f.name], f.type)
                        if f.name in columns
                        else pa.nulls(len(positions), f.type)
                        for f in schema
                    ]
                    out = pa.Table.from_arrays(arrays, schema=schema)
                    result.rows += len(out)
                    result.bytes += int(pc.sum(pc.binary_length(out[text_column])).as_py() or 0)
                    result.per_source[name] += len(out)
                    shards.add(out)
    result.shards = shards.finish()
    return result
