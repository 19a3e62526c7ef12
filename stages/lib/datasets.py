"""Dataset snapshots as hubflow stages publish them: ``data/{split}-NNNNN-of-NNNNN.parquet``.

Reading a split (checking the columns a stage needs first, naming the ones found), and
writing one. Heavy imports (pyarrow) stay inside the functions.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from hubflow.errors import StageInputError


def input_folder(ctx: Any, name: str) -> Path:
    """The materialised folder of input ``name`` of a :class:`~hubflow.stage.StageContext`."""
    if name not in ctx.inputs:
        raise StageInputError(
            f"input {name!r} was not materialised; the stage has inputs {sorted(ctx.inputs)}",
            hint=f"add `{name}: STAGE_OR_REF` to the stage's inputs",
        )
    return Path(ctx.inputs[name])


def parquet_files(folder: Path, split: str = "train", *, input_name: str = "data") -> list[Path]:
    """The parquet shards of ``split`` in a dataset snapshot (``data/{split}-*.parquet``)."""
    files = sorted((folder / "data").glob(f"{split}-*.parquet")) or sorted(
        (folder / "data" / split).glob("*.parquet")
    )
    if not files and split == "train":
        files = sorted(p for p in (folder / "data").glob("*.parquet") if not p.name.startswith("test-"))
    if not files:
        found = sorted(str(p.relative_to(folder)) for p in folder.rglob("*.parquet"))
        raise StageInputError(
            f"input {input_name!r} has no {split!r} split (no data/{split}-*.parquet)",
            hint=f"parquet files found: {found[:10] or 'none'}; point the input at a dataset with a {split} split",
        )
    return files


def has_split(folder: Path, split: str) -> bool:
    return bool(sorted((folder / "data").glob(f"{split}-*.parquet")))


def eval_split_of(folder: Path, split: str | None) -> str | None:
    """``split`` if the dataset has it, else None (evaluation is skipped for that dataset)."""
    return split if split and has_split(folder, split) else None


def require_columns(
    found: Iterable[str], needed: Iterable[str], *, input_name: str, hint: str | None = None
) -> None:
    found = list(found)
    missing = [c for c in needed if c not in found]
    if missing:
        raise StageInputError(
            f"input {input_name!r} lacks column(s) {missing}; it has {found}",
            hint=hint
            or "rename the column in the stage that makes the dataset, or set the column field of this stage",
        )


def columns_of(folder: Path, split: str = "train", *, input_name: str) -> list[str]:
    """Column names of a split, read from the first shard's schema (no rows are read)."""
    import pyarrow.parquet as pq

    return list(pq.read_schema(parquet_files(folder, split, input_name=input_name)[0]).names)


def read_table(
    folder: Path, split: str = "train", *, input_name: str = "data", columns: Sequence[str] | None = None
) -> Any:
    """A pyarrow Table of one split; with ``columns``, checks they exist first."""
    import pyarrow.parquet as pq

    files = parquet_files(folder, split, input_name=input_name)
    if columns:
        require_columns(pq.read_schema(files[0]).names, columns, input_name=input_name)
    table = pq.read_table(files, columns=list(columns) if columns else None)
    if table.num_rows == 0:
        raise StageInputError(
            f"input {input_name!r}: the {split} split is empty", hint="check the stage that made it"
        )
    return table


def read_rows(
    folder: Path,
    split: str,
    needed: Sequence[str],
    *,
    input_name: str,
    hint: str | None = None,
    optional: Sequence[str] = (),
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """Rows of a split as dicts, after checking the needed columns exist (naming those found);
    ``optional`` columns are read when present."""
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


def write_split(folder: Path, split: str, rows: list[dict[str, Any]], schema: Any = None) -> Path:
    """Write ``rows`` as ``data/{split}-00000-of-00001.parquet`` under ``folder`` (an empty split
    needs a ``schema``); returns the file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = folder / "data" / f"{split}-00000-of-00001.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(rows, schema=schema) if rows or schema is not None else pa.table({})
    pq.write_table(table, path)
    return path
