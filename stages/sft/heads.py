"""Task heads of seed §2.2 on a pretrained base: their data preparation.

- ``classification``: a sequence-classification head (``AutoModelForSequenceClassification``;
  decoder models classify from the last non-pad token) trained with cross-entropy
  over ``C`` classes; ``C`` is the number of distinct labels found;
- ``extractive_qa``: a span head (``AutoModelForQuestionAnswering``) trained with
  −log p(a_start | x) − log p(a_end | x). Question and context are encoded as a
  tokenizer pair (as the transformers question-answering pipeline does); the
  answer's character span in the context maps to the first and last context
  tokens it overlaps.
"""

from __future__ import annotations

from typing import Any

from hubflow.errors import StageInputError


def label_mapping(values: list[Any], *, input_name: str, column: str) -> tuple[list[str], dict[Any, int]]:
    """(class names in id order, value -> id). Integers 0..C-1 keep their ids; other labels sort by name."""
    if any(v is None for v in values):
        raise StageInputError(
            f"input {input_name!r}: column {column!r} has null labels", hint="drop those rows"
        )
    distinct = sorted(set(values), key=lambda v: (str(type(v)), v))
    if len(distinct) < 2:
        raise StageInputError(
            f"input {input_name!r}: column {column!r} holds a single label {distinct}; classification needs two or more",
            hint="check the dataset or the label_column",
        )
    if all(isinstance(v, int) and not isinstance(v, bool) for v in distinct):
        if min(distinct) < 0:
            raise StageInputError(
                f"input {input_name!r}: negative label ids in {column!r}", hint="use ids 0..C-1"
            )
        n = max(distinct) + 1
        return [str(i) for i in range(n)], {i: i for i in range(n)}
    names = [str(v) for v in distinct]
    return names, {v: i for i, v in enumerate(distinct)}


def encode_classification(
    tok: Any,
    texts: list[str],
    pairs: list[str] | None,
    labels: list[Any],
    mapping: dict[Any, int],
    *,
    max_length: int,
) -> list[dict[str, Any]]:
    rows = []
    for i, text in enumerate(texts):
        args = (str(text), str(pairs[i])) if pairs is not None else (str(text),)
        enc = tok(*args, truncation=True, max_length=max_length)
        rows.append({"input_ids": list(enc["input_ids"]), "labels": mapping[labels[i]]})
    return rows


def answer_span(context: str, answer: Any, start: Any, *, where: str) -> tuple[int, int]:
    """Character span [start, end) of the answer in the context."""
    if isinstance(answer, dict):  # SQuAD style: {"text": [...], "answer_start": [...]}
        texts, starts = answer.get("text") or [], answer.get("answer_start") or []
        if not texts:
            raise StageInputError(f"{where}: the answers field is empty", hint="drop unanswerable rows")
        answer, start = texts[0], (starts[0] if starts else None)
    answer = "" if answer is None else str(answer)
    if not answer:
        raise StageInputError(f"{where}: empty answer", hint="drop unanswerable rows")
    if start is None or start < 0:
        start = context.find(answer)
        if start < 0:
            raise StageInputError(
                f"{where}: the answer {answer[:60]!r} does not occur in the context",
                hint="extractive QA needs the answer to be a span of the context (or give an answer_start column)",
            )
    elif context[start : start + len(answer)] != answer:
        raise StageInputError(
            f"{where}: answer_start {start} does not point at the answer {answer[:60]!r} in the context",
            hint="fix answer_start (a character offset into the context)",
        )
    return int(start), int(start) + len(answer)


def encode_qa(
    tok: Any, question: str, context: str, span: tuple[int, int], *, max_length: int
) -> dict[str, Any] | None:
    """input_ids with start/end token positions; None when truncation cut the answer off."""
    enc = tok(
        str(question),
        str(context),
        truncation="only_second",
        max_length=max_length,
        return_offsets_mapping=True,
    )
    seq = enc.sequence_ids()
    if seq is None or 1 not in seq:
        raise StageInputError(
            "the tokenizer does not mark which tokens of a (question, context) pair belong to the context",
            hint="use a fast tokenizer whose post-processor encodes pairs (the tokenizer stage's does)",
        )
    a, b = span
    start_tok = end_tok = None
    for t, ((s, e), part) in enumerate(zip(enc["offset_mapping"], seq, strict=True)):
        if part != 1 or e <= s:
            continue
        if start_tok is None and e > a:
            start_tok = t
        if s < b:
            end_tok = t
    if start_tok is None or end_tok is None or end_tok < start_tok:
        return None
    last = enc["offset_mapping"][max(t for t, p in enumerate(seq) if p == 1)][1]
    if last < b:
        return None  # the context was truncated before the answer's end
    return {"input_ids": list(enc["input_ids"]), "start_positions": start_tok, "end_positions": end_tok}
