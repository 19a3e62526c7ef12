"""Dataset formats of the ``sft`` stage and how a row becomes a masked token sequence.

- ``prompt_completion``: columns ``prompt`` and ``completion``; strings (the loss
  is on the completion), or chat message lists as the ``synthetic`` stage writes
  them (the prompt's turns are context, the completion's assistant turns are learned);
- ``messages``: a column of chat messages ``[{role, content}, ...]``, rendered with
  the tokenizer's chat template; the loss is on every assistant turn;
- ``instruction``: columns ``instruction``, ``output`` and optionally ``input``,
  rendered through an instruction template (Alpaca-like by default) into a prompt,
  with the output as the completion.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from hubflow.errors import StageInputError
from stages.lib.chat import Encoded, encode_messages, encode_prompt_completion
from stages.lib.finetune.config import Template

FORMAT_COLUMNS: dict[str, tuple[str, ...]] = {
    "prompt_completion": ("prompt", "completion"),
    "messages": ("messages",),
    "instruction": ("instruction", "output"),
}
OPTIONAL_COLUMNS: dict[str, tuple[str, ...]] = {"instruction": ("input",)}
ROLES = ("system", "user", "assistant", "tool")


def needed_columns(fmt: str, columns: dict[str, str]) -> list[str]:
    """The dataset column names a format reads (after the `columns:` renames)."""
    return [columns.get(c, c) for c in FORMAT_COLUMNS[fmt]]


def as_messages(value: Any, *, where: str) -> list[dict[str, str]]:
    """A list of ``{"role", "content"}`` dicts, or a StageInputError naming the row."""
    if not isinstance(value, (list, tuple)) or not value:
        raise StageInputError(
            f"{where}: expected a non-empty list of chat messages, got {type(value).__name__}",
            hint="each row's messages must be [{role: user|assistant|system, content: text}, ...]",
        )
    out = []
    for m in value:
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise StageInputError(
                f"{where}: a message is not a {{role, content}} mapping: {str(m)[:100]}",
                hint="each message needs `role` and `content`",
            )
        if m["role"] not in ROLES:
            raise StageInputError(
                f"{where}: unknown role {m['role']!r}", hint=f"use one of {', '.join(ROLES)}"
            )
        out.append({"role": str(m["role"]), "content": "" if m["content"] is None else str(m["content"])})
    return out


def is_chat(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and bool(value) and isinstance(value[0], dict)


def encode_row(
    tok: Any, row: dict[str, Any], fmt: str, columns: dict[str, str], template: Template, *, where: str
) -> Encoded:
    """One dataset row -> input_ids and labels, by format."""
    col = {
        c: columns.get(c, c) for c in ("prompt", "completion", "messages", "instruction", "input", "output")
    }
    if fmt == "messages":
        messages = as_messages(row[col["messages"]], where=where)
        if not any(m["role"] == "assistant" for m in messages):
            raise StageInputError(
                f"{where}: the conversation has no assistant turn to learn", hint="drop the row"
            )
        return encode_messages(tok, messages)
    if fmt == "prompt_completion":
        prompt, completion = row[col["prompt"]], row[col["completion"]]
        if is_chat(prompt) or is_chat(completion):
            p = as_messages(prompt, where=where + " (prompt)") if prompt else []
            c = as_messages(completion, where=where + " (completion)")
            return encode_messages(tok, p + c, train_from=len(p))
        if prompt is None or completion is None:
            raise StageInputError(f"{where}: prompt or completion is null", hint="drop or fill the row")
        return encode_prompt_completion(tok, str(prompt), str(completion))
    instruction, output = row[col["instruction"]], row[col["output"]]
    if instruction is None or output is None:
        raise StageInputError(f"{where}: instruction or output is null", hint="drop or fill the row")
    inp = row.get(col["input"])
    return encode_prompt_completion(tok, template.render(str(instruction), inp and str(inp)), str(output))


def encode_rows(
    tok: Any,
    rows: Iterable[dict[str, Any]],
    fmt: str,
    columns: dict[str, str],
    template: Template,
    *,
    max_length: int,
    input_name: str,
) -> tuple[list[dict[str, list[int]]], dict[str, int]]:
    """Encoded rows (truncated to max_length; rows left with nothing to learn are dropped) and counts."""
    out: list[dict[str, list[int]]] = []
    stats = {"rows": 0, "truncated": 0, "dropped": 0, "tokens": 0, "trained_tokens": 0}
    for i, row in enumerate(rows):
        stats["rows"] += 1
        enc = encode_row(tok, row, fmt, columns, template, where=f"input {input_name!r} row {i}")
        if len(enc.input_ids) > max_length:
            stats["truncated"] += 1
            enc = enc.truncated(max_length)
        if enc.trained == 0:
            stats["dropped"] += 1
            continue
        stats["tokens"] += len(enc.input_ids)
        stats["trained_tokens"] += enc.trained
        out.append(enc.as_row())
    return out, stats
