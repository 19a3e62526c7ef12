"""datatrove pipeline steps of the curate stage, and the builder of the manifest's filters.

Everything here is module level so datatrove's executors can pickle it (the
local executor starts its workers with forkserver; Slurm and Ray unpickle the
pipeline on other machines).
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.filters.language_filter import LanguageFilter
from datatrove.pipeline.filters.url_filter import URLFilter
from datatrove.pipeline.readers import ParquetReader
from datatrove.utils.lid import FastTextLID
from datatrove.utils.logging import logger
from datatrove.utils.text import TextNormConfig, simplify_text

META_FIELDS: dict[str, pa.DataType] = {
    "perplexity": pa.float64(),
    "language": pa.string(),
    "language_score": pa.float64(),
    "language_script": pa.string(),
}
"""Per-document values computed by the pipeline that become output columns."""

INTERMEDIATE_SCHEMA = pa.schema(
    [
        ("text", pa.large_string()),
        ("id", pa.string()),
        ("source", pa.string()),
        ("file", pa.string()),
        ("row", pa.int64()),
        ("meta", pa.string()),
    ]
)
"""Schema of the work files between datatrove pipelines: the text plus where it came from."""


# --------------------------------------------------------------------------- reading / writing


class SourceParquetReader(PipelineStep):
    """Reads the text (and URL) column of every dataset input's parquet files, sharded by file.

    Each document remembers its input, file and row, so the output can carry the
    input's other columns without pushing them through datatrove.
    """

    type = "📖 - READER"
    name = "📒 hubflow inputs"

    def __init__(
        self,
        sources: list[tuple[str, str, list[str]]],
        text_key: str,
        url_key: str | None = None,
        batch_size: int = 1000,
    ):
        super().__init__()
        self.sources = sources
        self.text_key = text_key
        self.url_key = url_key
        self.batch_size = batch_size

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        files = [(name, folder, rel) for name, folder, rels in self.sources for rel in rels]
        columns = [self.text_key] + ([self.url_key] if self.url_key else [])
        for name, folder, rel in files[rank::world_size]:
            self.stat_update("input_files")
            row = 0
            with pq.ParquetFile(os.path.join(folder, rel)) as pf:
                for batch in pf.iter_batches(batch_size=self.batch_size, columns=columns):
                    texts = batch.column(0).to_pylist()
                    urls = batch.column(1).to_pylist() if self.url_key else None
                    for i, text in enumerate(texts):
                        if not text:
                            self.stat_update("empty_text")
                            continue
                        metadata: dict[str, Any] = {"source": name, "file": rel, "row": row + i}
                        if urls is not None and urls[i]:
                            metadata["url"] = urls[i]
                        doc = Document(text=text, id=f"{name}/{rel}#{row + i}", metadata=metadata)
                        self.stat_update("documents")
                        self.stat_update("bytes", value=len(text.encode("utf-8")))
                        self.update_doc_stats(doc)
                        yield doc
                    row += len(texts)


def intermediate_writer_adapter(self, document: Document) -> dict:
    """datatrove writer adapter: a Document -> a row of ``INTERMEDIATE_SCHEMA``."""
    md = document.metadata
    meta = {k: md[k] for k in (*META_FIELDS, "scores") if k in md}
    return {
        "text": document.text,
        "id": document.id,
        "source": md["source"],
        "file": md["file"],
        "row": md["row"],
        "meta": json.dumps(meta),
    }


def intermediate_reader_adapter(self, data: dict, path: str, id_in_file: int | str) -> dict:
    """datatrove reader adapter: a row of ``INTERMEDIATE_SCHEMA`` -> Document fields."""
    metadata = json.loads(data.get("meta") or "{}")
    metadata.update(source=data["source"], file=data["file"], row=data["row"])
    return {"text": data["text"], "id": data["id"], "metadata": metadata}


class WorkParquetReader(ParquetReader):
    """ParquetReader of the work files that yields nothing (instead of failing) when there are none."""

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        if not os.path.isdir(self.data_folder.path) or not self.data_folder.list_files(
            glob_pattern=self.glob_pattern
        ):
            logger.warning(f"no work files in {self.data_folder.path}: every document was removed upstream")
            return
        yield from super().run(data, rank, world_size)


def work_reader(folder: str) -> WorkParquetReader:
    reader = WorkParquetReader(folder, adapter=intermediate_reader_adapter, glob_pattern="*.parquet")
    reader.add_file_path = False
    return reader


def intermediate_writer(folder: str):
    from datatrove.pipeline.writers import ParquetWriter

    return ParquetWriter(
        folder,
        output_filename="${rank}.parquet",
        adapter=intermediate_writer_adapter,
        schema=INTERMEDIATE_SCHEMA,
    )


# --------------------------------------------------------------------------- exact dedup key

EXACT_NORM = TextNormConfig(
    lowercase=True,
    norm_whitespace=True,
    remove_punctuation=True,
    norm_unicode_diacritics=False,
    norm_numbers=False,
    norm_weekdays=False,
    norm_monthnames=False,
)


def normalized_text(doc: Document) -> str:
    """Exact-dedup key: lowercased, punctuation stripped, whitespace collapsed (datatrove's simplify_text)."""
    return simplify_text(doc.text, EXACT_NORM)


# --------------------------------------------------------------------------- filters of our own


class LengthFilter(BaseFilter):
    """Keeps documents whose character and whitespace-word counts lie within the bounds."""

    name = "📏 Length"

    def __init__(self, min_chars=None, max_chars=None, min_words=None, max_words=None):
        super().__init__()
        self.min_chars, self.max_chars = min_chars, max_chars
        self.min_words, self.max_words = min_words, max_words

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        n = len(doc.text)
        if self.min_chars is not None and n < self.min_chars:
            return False, "too_few_chars"
        if self.max_chars is not None and n > self.max_chars:
            return False, "too_many_chars"
        if self.min_words is not None or self.max_words is not None:
            words = len(doc.text.split())
            if self.min_words is not None and words < self.min_words:
                return False, "too_few_words"
            if self.max_words is not None and words > self.max_words:
                return False, "too_many_words"
        return True


class PatternFilter(BaseFilter):
    """``mode=drop``: drop documents the pattern matches; ``mode=keep``: keep only those."""

    name = "🕵 Regex"

    def __init__(self, pattern: str, mode: str = "drop"):
        super().__init__()
        self.pattern = pattern
        self.mode = mode
        self._regex = re.compile(pattern)

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        found = self._regex.search(doc.text) is not None
        if self.mode == "drop":
            return (False, "matched") if found else True
        return True if found else (False, "not_matched")


class LocalFastTextLID(FastTextLID):
    """datatrove's fastText language identifier, reading its model from a local file (no download)."""

    def __init__(self, model_path: str, languages: list[str] | None = None):
        super().__init__(languages)
        self.model_path = model_path

    @property
    def model(self):
        if self._model is None:
            from fasttext.FastText import _FastText

            self._model = _FastText(self.model_path)
        return self._model


class LocalLanguageFilter(LanguageFilter):
    """datatrove's LanguageFilter with a local fastText model."""

    def __init__(self, model_path: str, languages=None, backend: str = "ft176", **kwargs):
        super().__init__(languages=languages, backend=backend, **kwargs)
        self.model = LocalFastTextLID(model_path, self.languages)


class OfflineURLFilter(URLFilter):
    """datatrove's URLFilter using tldextract's bundled public-suffix snapshot (no fetch).

    Documents without a URL are kept (counted as ``no_url``).
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        from tldextract import TLDExtract

        self.tldextractor = TLDExtract(suffix_list_urls=(), cache_dir=None)

    def filter(self, document: Document) -> bool | tuple[bool, str]:
        if not document.metadata.get("url"):
            self.stat_update("no_url")
            return True
        return super().filter(document)


# --------------------------------------------------------------------------- the manifest's filters


def _tuples(value):
    return tuple(tuple(x) if isinstance(x, list) else x for x in value)


def build_filter(name: str, params: dict[str, Any], resource: Any = None) -> PipelineStep:
    """One manifest filter entry -> its datatrove step (params already validated by the spec).

    ``resource``: what the job resolved for it before any work: the local model path of a `language` or
    `classifier` filter, the entries of a `wordlist` filter."""
    from datatrove.pipeline.filters import (
        C4QualityFilter,
        FineWebQualityFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
    )

    from stages.curate.pii import PhonePIIFormatter

    p = dict(params)
    if name == "gopher_repetition":
        for key in ("top_n_grams", "dup_n_grams"):
            if key in p:
                p[key] = _tuples(p[key])
        return GopherRepetitionFilter(**p)
    if name == "gopher_quality":
        return GopherQualityFilter(**p)
    if name == "c4_quality":
        return C4QualityFilter(**p)
    if name == "fineweb_quality":
        if "stop_chars" in p:
            p["stop_chars"] = tuple(p["stop_chars"])
        return FineWebQualityFilter(**p)
    if name == "url":
        return OfflineURLFilter(**p)
    if name == "regex":
        return PatternFilter(**p)
    if name == "length":
        return LengthFilter(**p)
    if name == "pii":
        for key in ("email_replacement", "ip_replacement", "phone_replacement"):
            if isinstance(p.get(key), list):
                p[key] = tuple(p[key])
        return PhonePIIFormatter(**p)
    if name == "language":
        p.pop("model_path")
        return LocalLanguageFilter(str(resource), **p)
    if name == "classifier":
        from stages.curate.classify import LocalFastTextClassifierFilter
        from stages.curate.config import ClassifierParams

        spec = ClassifierParams.model_validate(p)
        return LocalFastTextClassifierFilter(str(resource), spec.keep, spec.remove, spec.prefix())
    if name == "wordlist":
        from stages.curate.classify import WordListFilter

        return WordListFilter(list(resource or []), p.get("threshold", 1), p["path"])
    raise ValueError(f"unknown filter {name!r}")  # the spec rejects these first
