"""Model- and list-based filters of the curate stage: a trained fastText classifier and a word list.

Module level so datatrove's executors can pickle them. The classifier reads the
model from the input's local folder (datatrove's own ``FastTextClassifierFilter``
would fetch ``model_url`` through its asset cache); the word list is read by the
main process and travels inside the step, so workers never open the file.
"""

from __future__ import annotations

import re
from pathlib import Path

from datatrove.data import Document
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.filters.fasttext_filter import FastTextClassifierFilter

from stages.lib.fasttext_models import LABEL_PREFIX, NEWLINE_REPLACEMENT

SCORES_KEY = "scores"
"""Document metadata key holding {output column: score} of the classifier filters."""


class LocalFastTextClassifierFilter(FastTextClassifierFilter):
    """datatrove's ``FastTextClassifierFilter`` on a local model file; scores go to ``metadata["scores"]``
    under ``<prefix><label>``, for every label of the model."""

    def __init__(
        self,
        model_path: str,
        keep: dict[str, float] | None = None,
        remove: dict[str, float] | None = None,
        score_prefix: str = "",
        batch_size: int = 256,
    ):
        super().__init__(
            model_url=model_path,
            keep_labels=list(keep.items()) if keep else None,
            remove_labels=list(remove.items()) if remove else None,
            save_labels_in_metadata=True,
            newline_replacement=NEWLINE_REPLACEMENT,
        )
        self.model_path = model_path
        self.score_prefix = score_prefix
        self.batch_size = batch_size

    @property
    def model(self):
        if self._model is None:
            from fasttext.FastText import _FastText

            self._model = _FastText(self.model_path)  # labels were checked before the pipeline started
        return self._model

    def filter_batch(self, batch: list[Document]) -> list[bool | tuple[bool, str]]:
        """The whole-document rule of ``filter``, with one ``predict`` call (fastText's own loop) per batch."""
        lines = [doc.text.strip().replace("\n", self.newline_replacement) for doc in batch]
        all_labels, all_scores = self.model.predict(lines, k=-1)
        rule = self.keep_labels or self.remove_labels or []
        results: list[bool | tuple[bool, str]] = []
        for doc, labels, scores in zip(batch, all_labels, all_scores, strict=True):
            named = dict(zip(labels, scores.tolist(), strict=True))
            doc.metadata.setdefault(SCORES_KEY, {}).update(
                {self.score_prefix + k.removeprefix(LABEL_PREFIX): v for k, v in named.items()}
            )
            hit = any(named.get(LABEL_PREFIX + label, -9e9) >= t for label, t in rule)
            if self.keep_labels:
                results.append(True if hit else (False, "below_keep_threshold"))
            else:
                results.append((False, "above_remove_threshold") if hit else True)
            if not doc.text.strip():
                results[-1] = (False, "empty")
        return results

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        before = set(doc.metadata)
        kept = super().filter(doc)
        scores = doc.metadata.setdefault(SCORES_KEY, {})
        for key in [k for k in doc.metadata if k not in before and k.startswith(LABEL_PREFIX)]:
            scores[self.score_prefix + key.removeprefix(LABEL_PREFIX)] = doc.metadata.pop(key)
        return (
            True
            if kept
            else (False, "below_keep_threshold" if self.keep_labels else "above_remove_threshold")
        )


def read_word_list(path: Path) -> list[str]:
    """Entries of a word list file: one word or phrase a line; blank lines and `#` comments skipped."""
    entries = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        entry = line.split("#", 1)[0].strip()
        if entry:
            entries.append(entry)
    return list(dict.fromkeys(entries))


def word_list_regex(entries: list[str]) -> re.Pattern[str]:
    """Case-insensitive, whole-word pattern of the entries (longest first, so phrases win over their words);
    inner whitespace of a phrase matches any whitespace."""
    alts = sorted({r"\s+".join(map(re.escape, e.split())) for e in entries}, key=len, reverse=True)
    return re.compile(r"(?<!\w)(?:" + "|".join(alts) + r")(?!\w)", re.IGNORECASE)


class WordListFilter(BaseFilter):
    """Drops documents with ``threshold`` or more matches of the word list (counting repeats)."""

    name = "🚫 Word list"

    def __init__(self, entries: list[str], threshold: int = 1, list_name: str = ""):
        super().__init__()
        self.entries = entries
        self.threshold = threshold
        self.list_name = list_name
        self._regex = word_list_regex(entries) if entries else None

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        if self._regex is None:
            return True
        matches = 0
        for _ in self._regex.finditer(doc.text):
            matches += 1
            if matches >= self.threshold:
                self.stat_update("word_list_matches", value=matches)
                return False, "word_list"
        if matches:
            self.stat_update("word_list_matches", value=matches)
        return True
