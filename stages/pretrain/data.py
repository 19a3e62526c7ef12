"""The corpus as one token file (seed §1.6 step 1).

Documents are streamed from parquet in record batches (``iter_batches``), encoded
without special tokens, each followed by EOS, and appended to a flat binary file
(``uint16`` when the vocabulary fits, else ``uint32``) that is then memory-mapped:
a corpus larger than memory never has to fit in it. The file lives in the resume
folder under a name holding the stage fingerprint, so a resumed run reuses it and a
changed config never does. The token stream is cut into ``context_length`` chunks;
the chunk order is a seeded permutation per epoch; example ``p`` of the run (a
global position) is chunk ``perm_{p // n}[p % n]``; each optimizer step takes the
next ``batch × grad_accum × processes`` positions and each process its own slice.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np

from hubflow.errors import StageInputError
from stages.lib.datasets import parquet_files, require_columns
from stages.pretrain import objectives as obj

READ_BATCH_ROWS = 1024


@dataclass(frozen=True)
class TokenFile:
    path: Path
    dtype: str
    tokens: int
    documents: int

    def array(self) -> np.ndarray:
        if self.tokens == 0:
            return np.zeros(0, dtype=self.dtype)
        return np.memmap(self.path, dtype=self.dtype, mode="r", shape=(self.tokens,))


def token_dtype(vocab_size: int) -> str:
    return "uint16" if vocab_size <= np.iinfo(np.uint16).max + 1 else "uint32"


def check_sources(sources: Sequence[tuple[str, Path]], text_column: str, split: str = "train") -> None:
    """Every data input has the split's parquet shards and the text column (before any compute)."""
    import pyarrow.parquet as pq

    for name, folder in sources:
        files = parquet_files(folder, split, input_name=name)
        require_columns(
            pq.read_schema(files[0]).names,
            [text_column],
            input_name=name,
            hint=f"set `text_column:` to the column holding the documents (now {text_column!r})",
        )


def iter_texts(sources: Sequence[tuple[str, Path]], split: str, text_column: str) -> Iterator[list[str]]:
    """Batches of non-empty documents, input by input, shard by shard, in order."""
    import pyarrow.parquet as pq

    for name, folder in sources:
        for path in parquet_files(folder, split, input_name=name):
            pf = pq.ParquetFile(path)
            for batch in pf.iter_batches(batch_size=READ_BATCH_ROWS, columns=[text_column]):
                texts = [t for t in batch.column(0).to_pylist() if isinstance(t, str) and t]
                if texts:
                    yield texts


def tokenize_corpus(
    sources: Sequence[tuple[str, Path]],
    split: str,
    *,
    tokenizer: Any,
    text_column: str,
    eos_id: int,
    dest: Path,
) -> TokenFile:
    """Write ``dest`` (tokens) and ``dest.json`` (its description) unless both exist already."""
    meta_path = dest.with_suffix(".json")
    if meta_path.exists() and dest.exists():
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        return TokenFile(dest, meta["dtype"], meta["tokens"], meta["documents"])
    dest.parent.mkdir(parents=True, exist_ok=True)
    dtype = token_dtype(len(tokenizer))
    tmp = dest.with_suffix(f".tmp{os.getpid()}")
    n_tokens = n_docs = 0
    with open(tmp, "wb") as fh:
        for texts in iter_texts(sources, split, text_column):
            ids = tokenizer(texts, add_special_tokens=False, return_attention_mask=False)["input_ids"]
            total = sum(len(x) for x in ids) + len(ids)
            flat = np.fromiter(chain.from_iterable((*x, eos_id) for x in ids), dtype=dtype, count=total)
            fh.write(flat.tobytes())
            n_tokens += total
            n_docs += len(ids)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, dest)
    meta = {"dtype": dtype, "tokens": n_tokens, "documents": n_docs, "split": split}
    meta_tmp = meta_path.with_suffix(f".tmp{os.getpid()}")
    meta_tmp.write_text(json.dumps(meta), encoding="utf-8")
    os.replace(meta_tmp, meta_path)
    return TokenFile(dest, dtype, n_tokens, n_docs)


class Chunks:
    """``context_length`` chunks of a token file, in a seeded order per epoch."""

    def __init__(self, tokens: np.ndarray, length: int, seed: int) -> None:
        self.tokens = tokens
        self.length = length
        self.seed = seed
        self.count = len(tokens) // length
        self._perms: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return self.count

    def order(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            if len(self._perms) > 1:
                self._perms.pop(min(self._perms))
            self._perms[epoch] = np.random.default_rng([self.seed, epoch]).permutation(self.count)
        return self._perms[epoch]

    def chunk(self, index: int) -> np.ndarray:
        start = index * self.length
        return np.asarray(self.tokens[start : start + self.length], dtype=np.int64)

    def at(self, position: int) -> np.ndarray:
        """The chunk at a global example position (shuffled, epoch after epoch)."""
        epoch, offset = divmod(position, self.count)
        return self.chunk(int(self.order(epoch)[offset]))


class WeightedChunks:
    """Chunks of several domains (one token file each), example ``p`` drawn from domain ``d`` with
    probability ``w_d``: a pure function of ``p`` and the seed, so a resumed run draws the same examples.

    Positions are taken in blocks of :attr:`BLOCK`; block ``b``'s domains are a seeded categorical draw
    (``rng([seed, 3, b])``); the ``k``-th example of domain ``d`` (counted over all positions before it)
    is that domain's chunk ``k`` in its own shuffled order, pass after pass (:class:`Chunks`). A domain
    with weight 0 is never drawn.
    """

    BLOCK = 4096

    def __init__(self, domains: dict[str, Chunks], weights: dict[str, float], seed: int) -> None:
        self.names = list(domains)
        self.domains = [domains[n] for n in self.names]
        p = np.asarray([weights[n] for n in self.names], dtype=np.float64)
        self.p = p / p.sum()
        self.seed = seed
        self.count = sum(len(c) for c, w in zip(self.domains, self.p, strict=True) if w > 0)
        self._before = [np.zeros(len(self.names), dtype=np.int64)]  # examples per domain before block b
        self._block: tuple[int, np.ndarray, np.ndarray] | None = None

    def __len__(self) -> int:
        return self.count

    def _draw(self, block: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, 3, block])
        return rng.choice(len(self.names), size=self.BLOCK, p=self.p)

    def domain_at(self, position: int) -> tuple[int, int]:
        """(domain index, rank of this example within its domain) of a global example position."""
        block, offset = divmod(position, self.BLOCK)
        while len(self._before) <= block:
            b = len(self._before) - 1
            self._before.append(self._before[b] + np.bincount(self._draw(b), minlength=len(self.names)))
        if self._block is None or self._block[0] != block:
            drawn = self._draw(block)
            rank = np.zeros(self.BLOCK, dtype=np.int64)
            for d in range(len(self.names)):
                mask = drawn == d
                rank[mask] = np.arange(int(mask.sum()))
            self._block = (block, drawn, rank)
        _, drawn, rank = self._block
        d = int(drawn[offset])
        return d, int(self._before[block][d] + rank[offset])

    def at(self, position: int) -> np.ndarray:
        d, k = self.domain_at(position)
        return self.domains[d].at(k)

    def drawn(self, positions: int) -> dict[str, int]:
        """Examples of each domain among global positions ``0 .. positions - 1``."""
        full, rest = divmod(positions, self.BLOCK)
        self.domain_at(full * self.BLOCK)  # fills the counts before block `full`
        counts = self._before[full] + np.bincount(self._draw(full)[:rest], minlength=len(self.names))
        return {n: int(c) for n, c in zip(self.names, counts, strict=True)}


def example_positions(
    step: int, micro: int, rank: int, *, batch_size: int, grad_accum: int, world: int
) -> range:
    """Global example positions of one micro-batch of one process at one optimizer step."""
    start = (step * grad_accum + micro) * batch_size * world + rank * batch_size
    return range(start, start + batch_size)


@dataclass
class Batcher:
    """Turns chunks into model inputs for one objective (numpy; the loop makes tensors)."""

    objective: str
    seed: int
    eos_id: int
    pad_id: int
    mask_id: int | None = None
    special_ids: tuple[int, ...] = ()
    random_pool: np.ndarray | None = None
    sentinel_ids: tuple[int, ...] = ()
    mode_ids: dict[str, int] | None = None
    mlm_probability: float = 0.15
    noise_density: float = 0.15
    mean_span_length: float = 3.0
    denoisers: tuple[obj.DenoiserSpec, ...] = ()

    def rng(self, stream: int, position: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, stream, position])

    def build(
        self, chunks: Sequence[np.ndarray], positions: Sequence[int], stream: int = 1
    ) -> dict[str, Any]:
        """``stream`` 1 for training, 2 for evaluation (fixed corruption of held-out chunks)."""
        if self.objective == "causal":
            ids = np.stack(chunks)
            return {"input_ids": ids, "labels": ids}  # the model shifts (and never writes to) labels
        if self.objective == "mlm":
            assert self.mask_id is not None and self.random_pool is not None
            pairs = [
                obj.mlm_example(
                    c,
                    self.rng(stream, p),
                    mask_id=self.mask_id,
                    special_ids=self.special_ids,
                    random_pool=self.random_pool,
                    probability=self.mlm_probability,
                )
                for c, p in zip(chunks, positions, strict=True)
            ]
            ids = np.stack([a for a, _ in pairs])
            return {
                "input_ids": ids,
                "attention_mask": np.ones_like(ids),
                "labels": np.stack([b for _, b in pairs]),
            }
        rows_in, rows_out = [], []
        for c, p in zip(chunks, positions, strict=True):
            rng = self.rng(stream, p)
            if self.objective == "span_corruption":
                a, b = obj.span_corruption_example(
                    c,
                    rng,
                    sentinel_ids=self.sentinel_ids,
                    eos_id=self.eos_id,
                    noise_density=self.noise_density,
                    mean_span_length=self.mean_span_length,
                )
            else:
                assert self.mode_ids is not None
                a, b, _ = obj.ul2_example(
                    c,
                    rng,
                    denoisers=self.denoisers,
                    mode_ids=self.mode_ids,
                    sentinel_ids=self.sentinel_ids,
                    eos_id=self.eos_id,
                )
            rows_in.append(a)
            rows_out.append(b)
        ids, mask = obj.pad_batch(rows_in, self.pad_id)
        labels, label_mask = obj.pad_batch(rows_out, self.pad_id)
        labels[label_mask == 0] = obj.IGNORE_INDEX
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def corpus_too_small(tokens: int, length: int, split: str) -> StageInputError:
    return StageInputError(
        f"the {split} corpus has {tokens} tokens, fewer than one context_length chunk ({length} tokens)",
        hint="add documents to the data input(s) or lower architecture.context_length",
    )
