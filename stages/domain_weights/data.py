"""Each domain input as ``context_length`` chunks of tokens, in memory.

Documents are encoded without special tokens, each followed by EOS, and concatenated per domain
(as ``pretrain`` does for its corpus). A domain is read only as far as the two runs can consume
(``steps × sequences per step × context_length`` tokens, plus one chunk), so a large domain input
costs its first shards, not all of it. Chunk order: a seeded permutation per pass over the domain.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hubflow.errors import StageInputError
from stages.lib.datasets import parquet_files, require_columns

READ_BATCH_ROWS = 1024


def check_domains(sources: Sequence[tuple[str, Path]], text_column: str) -> dict[str, int]:
    """Every domain input has train shards, the text column and at least one row (metadata only)."""
    import pyarrow.parquet as pq

    rows = {}
    for name, folder in sources:
        files = parquet_files(folder, "train", input_name=name)
        require_columns(
            pq.read_schema(files[0]).names,
            [text_column],
            input_name=name,
            hint=f"set `text_column:` to the column holding the documents (now {text_column!r})",
        )
        rows[name] = sum(pq.read_metadata(f).num_rows for f in files)
        if rows[name] == 0:
            raise StageInputError(
                f"domain input {name!r} has no rows: a domain without documents cannot be weighted",
                hint="check the stage that made it, or remove the domain from the stage's inputs",
            )
    return rows


def read_domain(
    name: str, folder: Path, *, tokenizer: Any, text_column: str, eos_id: int, max_tokens: int
) -> np.ndarray:
    """The domain's token stream (int64), stopping once it holds ``max_tokens`` tokens."""
    import pyarrow.parquet as pq

    parts: list[np.ndarray] = []
    total = 0
    for path in parquet_files(folder, "train", input_name=name):
        for batch in pq.ParquetFile(path).iter_batches(batch_size=READ_BATCH_ROWS, columns=[text_column]):
            texts = [t for t in batch.column(0).to_pylist() if isinstance(t, str) and t]
            if not texts:
                continue
            ids = tokenizer(texts, add_special_tokens=False, return_attention_mask=False)["input_ids"]
            for doc in ids:
                arr = np.asarray([*doc, eos_id], dtype=np.int64)
                parts.append(arr)
                total += len(arr)
                if total >= max_tokens:
                    return np.concatenate(parts)[:max_tokens]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


class DomainChunks:
    """``length``-token chunks of one domain; ``at(k)`` is the k-th chunk drawn (pass after pass)."""

    def __init__(self, tokens: np.ndarray, length: int, seed: int, stream: int) -> None:
        self.tokens, self.length, self.seed, self.stream = tokens, length, seed, stream
        self.count = len(tokens) // length
        self._perms: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return self.count

    def at(self, k: int) -> np.ndarray:
        epoch, offset = divmod(k, self.count)
        if epoch not in self._perms:
            self._perms = {
                epoch: np.random.default_rng([self.seed, self.stream, epoch]).permutation(self.count)
            }
        start = int(self._perms[epoch][offset]) * self.length
        return self.tokens[start : start + self.length]


def load_domains(
    sources: Sequence[tuple[str, Path]],
    *,
    tokenizer: Any,
    text_column: str,
    eos_id: int,
    length: int,
    max_tokens: int,
) -> dict[str, np.ndarray]:
    """Domain name -> token stream, each holding at least one chunk (else an error naming the domain)."""
    out = {}
    for name, folder in sources:
        tokens = read_domain(
            name, folder, tokenizer=tokenizer, text_column=text_column, eos_id=eos_id, max_tokens=max_tokens
        )
        if len(tokens) < length:
            raise StageInputError(
                f"domain input {name!r} has {len(tokens)} tokens, fewer than one context_length chunk "
                f"({length} tokens)",
                hint="add documents to the domain or lower architecture.context_length",
            )
        out[name] = tokens
    return out
