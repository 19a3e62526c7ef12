"""Helpers shared by stage modules: reading dataset snapshots, loading models
safely, picking precision from the hardware.

Imports of heavy libraries stay inside the functions.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from hubflow.errors import StageInputError

# -- datasets -----------------------------------------------------------------


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


def read_table(
    folder: Path, split: str = "train", *, input_name: str = "data", columns: Sequence[str] | None = None
):
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


# -- models -------------------------------------------------------------------


def require_safetensors(folder: Path, *, input_name: str) -> None:
    """Refuse pickled weights: a model input must hold safetensors."""
    if not list(folder.glob("*.safetensors")):
        pickles = [p.name for p in folder.glob("*.bin")] + [p.name for p in folder.glob("*.pt")]
        raise StageInputError(
            f"input {input_name!r} holds no .safetensors weights"
            + (f" (found pickled weights {pickles}, which hubflow never loads)" if pickles else ""),
            hint="convert the model with save_pretrained(..., safe_serialization=True) and import it again",
        )


def load_tokenizer(folder: Path, *, input_name: str = "tokenizer") -> Any:
    from transformers import AutoTokenizer

    if not (folder / "tokenizer.json").exists() and not (folder / "tokenizer_config.json").exists():
        raise StageInputError(
            f"input {input_name!r} has no tokenizer files (tokenizer.json / tokenizer_config.json)",
            hint="feed it a `tokenizer` stage's output or a model repo that ships its tokenizer",
        )
    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)


def load_causal_lm(folder: Path, *, input_name: str = "model", dtype: Any = None) -> Any:
    from transformers import AutoModelForCausalLM

    require_safetensors(folder, input_name=input_name)
    return AutoModelForCausalLM.from_pretrained(
        str(folder), local_files_only=True, trust_remote_code=False, use_safetensors=True, dtype=dtype
    )


# -- hardware -----------------------------------------------------------------


def pick_mixed_precision(requested: str = "auto", *, cpu: bool = False) -> str:
    """``no`` | ``fp16`` | ``bf16``. ``auto`` uses bf16 only on a GPU that runs it
    natively: on CPUs here bf16 matmul is ~300x slower than fp32."""
    if requested != "auto":
        return requested
    import torch

    if cpu or not torch.cuda.is_available():
        return "no"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def trl_precision_kwargs(mixed_precision: str) -> dict[str, Any]:
    """TRL configs default to bf16=True and gradient checkpointing: set both explicitly."""
    return {
        "bf16": mixed_precision == "bf16",
        "fp16": mixed_precision == "fp16",
        "gradient_checkpointing": False,
    }
