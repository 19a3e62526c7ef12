"""Exact-substring dedup (seed §1.5 step 2; Lee et al. 2022, "Deduplicating Training Data Makes Language
Models Better") with a suffix array built by ``pydivsufsort`` (libdivsufsort).

The corpus is tokenised (bytes, whitespace words, or a trained tokenizer), each
document's tokens are concatenated with one separator token after each document,
and the suffix array + LCP array (Kasai) give, for every position, whether its
next ``min_tokens`` tokens also occur elsewhere. An LCP is clipped at the next
separator, so a match never crosses a document boundary. Suffixes that share
their first ``k`` tokens form one contiguous block of the suffix array; with
``keep: first`` every suffix of a block but the one at the smallest position
(corpus order) marks ``[i, i + k)`` for removal, with ``keep: none`` all of them
do. Marked token runs map back to byte ranges of the documents: a removed range
runs from the first byte of its first token to the first byte of the token after
it (or to the end of the document), so the whitespace after a cut span goes with
it and every other byte of the document is kept as it was.

Memory (one machine; measured in benchmarks/bench_substring.py): the suffix array
is built over the big-endian bytes of the token array, 4 bytes of int32 per byte
of it (8 past 2 GiB), then compacted in place to token positions; see
docs/stages/curate.md for bytes per token and how it shards.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

_WORD = re.compile(rb"\S+")

# --------------------------------------------------------------------------- tokenisation


class Tokens:
    """Turns documents into token ids and the byte offset where each token starts."""

    separator: int

    def encode(self, data: bytes, text: str) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError


class ByteTokens(Tokens):
    separator = 0xFF  # never a byte of UTF-8 text: the corpus stays one byte per token

    def encode(self, data: bytes, text: str) -> tuple[np.ndarray, np.ndarray]:
        ids = np.frombuffer(data, dtype=np.uint8)
        return ids, np.arange(len(data), dtype=np.int64)


class WordTokens(Tokens):
    """Runs of non-(ASCII-)whitespace bytes; ids from one vocabulary over the whole corpus."""

    def __init__(self) -> None:
        self.vocab: dict[bytes, int] = {}

    @property
    def separator(self) -> int:  # after the last word id: known once every document is encoded
        return len(self.vocab)

    def encode(self, data: bytes, text: str) -> tuple[np.ndarray, np.ndarray]:
        vocab = self.vocab
        spans = [(m.start(), m.group()) for m in _WORD.finditer(data)]
        ids = np.fromiter(
            (vocab.setdefault(w, len(vocab)) for _, w in spans), dtype=np.int64, count=len(spans)
        )
        return ids, np.fromiter((s for s, _ in spans), dtype=np.int64, count=len(spans))


class HFTokens(Tokens):
    """A `tokenizers` tokenizer (``tokenizer.json``): token char offsets -> byte offsets."""

    def __init__(self, path: str) -> None:
        from tokenizers import Tokenizer

        self.tok = Tokenizer.from_file(path)
        self.separator = self.tok.get_vocab_size(with_added_tokens=True)

    def encode(self, data: bytes, text: str) -> tuple[np.ndarray, np.ndarray]:
        enc = self.tok.encode(text, add_special_tokens=False)
        ids = np.asarray(enc.ids, dtype=np.int64)
        chars = np.asarray([s for s, _ in enc.offsets], dtype=np.int64)
        if len(data) == len(text):  # ASCII: char offsets are byte offsets
            return ids, chars
        cp = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        width = 1 + (cp >= 0x80) + (cp >= 0x800) + (cp >= 0x10000)
        byte_of_char = np.concatenate([[0], np.cumsum(width)])
        return ids, byte_of_char[chars]


def make_tokens(kind: str, tokenizer_path: str | None = None) -> Tokens:
    if kind == "bytes":
        return ByteTokens()
    if kind == "words":
        return WordTokens()
    return HFTokens(str(tokenizer_path))


# --------------------------------------------------------------------------- suffix array


def suffix_array(tokens: np.ndarray) -> np.ndarray:
    """Suffix array of an unsigned token array (int32 positions; int64 past 2**31 bytes).

    libdivsufsort sorts bytes: tokens wider than a byte are sorted as their big-endian bytes
    (the same order as the tokens) and the byte positions that start a token are kept, compacted
    in place (pydivsufsort's own wrapper allocates two more arrays of that size).
    """
    import pydivsufsort

    if tokens.dtype == np.uint8:
        return pydivsufsort.divsufsort(tokens)
    width = tokens.dtype.itemsize
    raw = tokens.astype(f">u{width}").view(np.uint8)
    sa = pydivsufsort.divsufsort(raw)
    del raw
    write = 0
    chunk = 1 << 22
    for lo in range(0, len(sa), chunk):
        part = sa[lo : lo + chunk]
        keep = part[part % width == 0] // width
        sa[write : write + len(keep)] = keep
        write += len(keep)
    return sa[:write]


def compact_dtype(ids: np.ndarray, separator: int) -> np.ndarray:
    top = max(int(ids.max()) if len(ids) else 0, separator)
    dtype = np.uint8 if top < 2**8 else np.uint16 if top < 2**16 else np.uint32
    return ids.astype(dtype, copy=False)


def repeated_mask(
    tokens: np.ndarray, doc_end: np.ndarray, k: int, keep_first: bool
) -> tuple[np.ndarray, Any]:
    """Boolean mask of the token positions to remove: inside a window of ``k`` tokens that also occurs at
    another position (with ``keep_first``, at an earlier one). ``doc_end[i]``: the separator position after
    document i. Returns (mask, suffix-array seconds)."""
    import time

    import pydivsufsort

    n = len(tokens)
    started = time.perf_counter()
    sa = suffix_array(tokens)
    sa_seconds = time.perf_counter() - started
    lcp = pydivsufsort.kasai(tokens, sa)  # lcp[r] = LCP(sa[r], sa[r + 1])
    # clip at the next separator: a match never crosses a document
    doc = np.searchsorted(doc_end, sa, side="left")
    dist = doc_end[doc] - sa
    del doc
    join = np.minimum(lcp[:-1], dist[:-1]) >= k  # ranks r and r+1 share their first k tokens
    del lcp, dist
    block = np.empty(n, dtype=np.int64)
    block[0] = 0
    np.cumsum(~join, out=block[1:])
    starts = np.flatnonzero(np.concatenate([[True], ~join]))
    size = np.diff(np.append(starts, n))
    in_dup = size[block] >= 2
    if keep_first:
        first = np.minimum.reduceat(sa, starts)
        marked = sa[in_dup & (sa != first[block])]
    else:
        marked = sa[in_dup]
    del block, in_dup, sa
    cover = np.bincount(marked, minlength=n + 1).astype(np.int32)
    cover -= np.bincount(marked + k, minlength=n + 1)[: n + 1].astype(np.int32)
    return np.cumsum(cover[:n]) > 0, sa_seconds


@dataclass
class Removals:
    """Per document (index in its task's stream): the byte ranges to cut."""

    doc: np.ndarray
    start: np.ndarray
    end: np.ndarray


def find_removals(
    docs: list[tuple[np.ndarray, np.ndarray, int]], separator: int, k: int, keep_first: bool
) -> tuple[Removals, dict[str, Any]]:
    """docs: (token ids, token byte starts, byte length) per document, in corpus order."""
    lengths = np.asarray([len(ids) for ids, _, _ in docs], dtype=np.int64)
    doc_end = np.cumsum(lengths + 1) - 1  # separator positions
    n = int(doc_end[-1]) + 1 if len(docs) else 0
    stats: dict[str, Any] = {"tokens": int(lengths.sum()), "documents": len(docs), "suffix_array_s": 0.0}
    if n == 0 or k > int(lengths.max(initial=0)):
        return Removals(*(np.zeros(0, np.int64) for _ in range(3))), stats
    tokens = np.full(n, separator, dtype=np.int64)
    for (ids, _, _), end, length in zip(docs, doc_end, lengths, strict=True):
        tokens[end - length : end] = ids
    tokens = compact_dtype(tokens, separator)
    stats["token_bytes"] = tokens.dtype.itemsize
    mask, stats["suffix_array_s"] = repeated_mask(tokens, doc_end, k, keep_first)
    del tokens
    edges = np.diff(np.concatenate([[0], mask.view(np.int8), [0]]))
    run_start, run_end = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)  # [start, end) in tokens
    doc_start = doc_end - lengths
    which = np.searchsorted(doc_end, run_start, side="left")
    out_doc, out_start, out_end = [], [], []
    for d, a, b in zip(which.tolist(), run_start.tolist(), run_end.tolist(), strict=True):
        ids, starts, nbytes = docs[d]
        i, j = a - int(doc_start[d]), b - int(doc_start[d])
        out_doc.append(d)
        out_start.append(int(starts[i]))
        out_end.append(int(starts[j]) if j < len(starts) else nbytes)
    rem = Removals(
        np.asarray(out_doc, np.int64), np.asarray(out_start, np.int64), np.asarray(out_end, np.int64)
    )
    return rem, stats


def _char_start(data: bytes, pos: int, forward: bool) -> int:
    """Nearest UTF-8 character start at or after (forward) / at or before ``pos`` (byte tokens may split one)."""
    while 0 < pos < len(data) and (data[pos] & 0xC0) == 0x80:
        pos += 1 if forward else -1
    return pos


# --------------------------------------------------------------------------- datatrove steps


class SubstringFinder(PipelineStep):
    """One task: replays the finalize pipeline's document stream of every rank (work reader + dedup filters),
    builds the suffix array over all of it and writes ``<rank>.npz`` (doc index, byte start, byte end)."""

    type = "🫂 - DEDUP"
    name = "🪞 exact substrings (suffix array)"

    def __init__(
        self,
        upstream: list[PipelineStep],
        ranks: int,
        output_folder: str,
        min_tokens: int,
        tokens: str,
        tokenizer_path: str | None = None,
        keep_first: bool = True,
    ):
        super().__init__()
        self.upstream, self.ranks, self.output_folder = upstream, ranks, output_folder
        self.min_tokens, self.tokens, self.tokenizer_path = min_tokens, tokens, tokenizer_path
        self.keep_first = keep_first

    def _stream(self, rank: int) -> DocumentsPipeline:
        pipe: Any = None
        for step in self.upstream:
            pipe = step.run(pipe, rank, self.ranks)
        return pipe

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        tok = make_tokens(self.tokens, self.tokenizer_path)
        docs: list[tuple[np.ndarray, np.ndarray, int]] = []
        owner: list[tuple[int, int]] = []  # (rank, index in that rank's stream)
        with self.track_time():
            for r in range(self.ranks):
                for i, doc in enumerate(self._stream(r) or ()):
                    raw = doc.text.encode("utf-8")
                    ids, starts = tok.encode(raw, doc.text)
                    docs.append((ids, starts, len(raw)))
                    owner.append((r, i))
                    self.stat_update("bytes", value=len(raw))
            rem, stats = find_removals(docs, tok.separator, self.min_tokens, self.keep_first)
            for key in ("tokens", "documents"):
                self.stat_update(key, value=stats[key])
            self.stat_update("suffix_array_ms", value=int(stats["suffix_array_s"] * 1000))
            own = np.asarray(owner, dtype=np.int64).reshape(-1, 2)
            os.makedirs(self.output_folder, exist_ok=True)
            for r in range(self.ranks):
                sel = own[rem.doc, 0] == r if len(rem.doc) else np.zeros(0, bool)
                np.savez(
                    os.path.join(self.output_folder, f"{r:05d}.npz"),
                    doc=own[rem.doc[sel], 1] if len(rem.doc) else rem.doc,
                    start=rem.start[sel],
                    end=rem.end[sel],
                )
        return
        yield  # a generator, as datatrove steps are


class SubstringRemover(PipelineStep):
    """Cuts the byte ranges the finder wrote for this rank; drops a document left with no text."""

    type = "🫂 - DEDUP"
    name = "🪞 exact substrings (remove)"

    def __init__(self, ranges_folder: str, byte_tokens: bool = False):
        super().__init__()
        self.ranges_folder = ranges_folder
        self.byte_tokens = byte_tokens

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        with np.load(os.path.join(self.ranges_folder, f"{rank:05d}.npz")) as f:
            doc, start, end = f["doc"], f["start"], f["end"]
        ranges: dict[int, list[tuple[int, int]]] = {}
        for d, a, b in zip(doc.tolist(), start.tolist(), end.tolist(), strict=True):
            ranges.setdefault(d, []).append((a, b))
        for i, document in enumerate(data or ()):
            self.stat_update("total")
            cuts = ranges.get(i)
            if cuts:
                with self.track_time():
                    raw = document.text.encode("utf-8")
                    pieces, pos, removed = [], 0, 0
                    for a, b in sorted(cuts):
                        if self.byte_tokens:
                            a, b = _char_start(raw, a, True), _char_start(raw, b, False)
                        if b <= a:
                            continue
                        pieces.append(raw[pos:a])
                        removed += b - a
                        pos = b
                        self.stat_update("spans_removed")
                    pieces.append(raw[pos:])
                    document.text = b"".join(pieces).decode("utf-8")
                    self.stat_update("bytes_removed", value=removed)
                    self.stat_update("documents_changed")
                if not document.text.strip():
                    self.stat_update("dropped")
                    self.stat_update("dropped_emptied")
                    continue
            self.stat_update("forwarded")
            self.update_doc_stats(document)
            yield document
