"""Reading an evaluation dataset into examples (prompt/completion, chat messages, preference pairs or
plain text)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hubflow.errors import StageInputError

FORMATS = ("prompt_completion", "messages", "preference", "text")


@dataclass
class Example:
    dataset: str
    """The input name of the dataset it came from."""
    row: int
    """Row index in the split."""
    family: str | None
    prompt: Any = None
    """A string, or a list of chat messages (then it is rendered with the chat template)."""
    completion: Any = None
    """The reference completion: a string, or a list of chat messages (the last one is the answer)."""
    text: str | None = None
    """Text mode: the document (loss only)."""
    rejected: Any = None
    """Preference mode: the rejected completion (``completion`` holds the chosen one)."""

    @property
    def conversational(self) -> bool:
        return isinstance(self.prompt, list)

    @property
    def reference(self) -> str | None:
        return message_text(self.completion) if self.completion is not None else None


def message_text(value: Any) -> str:
    """The text of a completion: the string itself or the content of the last message."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and isinstance(value[-1], dict):
        return str(value[-1].get("content", ""))
    return "" if value is None else str(value)


def resolve_format(columns: list[str], cfg: Any, input_name: str) -> str:
    """The format the config names, or for ``auto`` the first one the columns allow."""
    needs = _needs(cfg)
    fields = {
        "prompt_completion": "prompt_column/completion_column",
        "messages": "messages_column",
        "preference": "prompt_column/chosen_column/rejected_column",
        "text": "text_column",
    }
    if cfg.format != "auto":
        from stages.lib.datasets import require_columns

        require_columns(
            columns,
            needs[cfg.format],
            input_name=input_name,
            hint=f"set {fields[cfg.format]} to column(s) the dataset has (format {cfg.format!r} reads "
            f"{needs[cfg.format]}), or choose another `format`",
        )
        return cfg.format
    for fmt in FORMATS:
        if all(c in columns for c in needs[fmt]):
            return fmt
    raise StageInputError(
        f"input {input_name!r} has none of the columns evaluate reads; it has {columns}",
        hint=f"evaluate needs {needs['prompt_completion']} (prompt/completion), {needs['messages']} (chat), "
        f"{needs['preference']} (preference pairs) or {needs['text']} (text, loss only); set "
        "prompt_column/completion_column/messages_column/chosen_column/rejected_column/text_column",
    )


def _needs(cfg: Any) -> dict[str, list[str]]:
    return {
        "prompt_completion": [cfg.prompt_column, cfg.completion_column],
        "messages": [cfg.messages_column],
        "preference": [cfg.prompt_column, cfg.chosen_column, cfg.rejected_column],
        "text": [cfg.text_column],
    }


def _check_messages(messages: Any, input_name: str, row: int) -> list[dict[str, Any]]:
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise StageInputError(
            f"input {input_name!r} row {row}: the messages column must hold a non-empty list of "
            f"{{role, content}} messages, got {type(messages).__name__}",
            hint="point messages_column at a chat column, or use format: prompt_completion",
        )
    if messages[-1].get("role") != "assistant":
        raise StageInputError(
            f"input {input_name!r} row {row}: the last message has role {messages[-1].get('role')!r}, not "
            "'assistant', so there is no reference answer",
            hint="evaluate reads conversations that end with the assistant's answer",
        )
    return messages


def load_examples(folder: Path, input_name: str, cfg: Any) -> tuple[str, list[Example]]:
    """(format, examples) of the configured split, at most ``cfg.max_examples`` (the first rows)."""
    import pyarrow.parquet as pq

    from stages.lib.datasets import parquet_files, read_table

    files = parquet_files(folder, cfg.split, input_name=input_name)
    columns = pq.read_schema(files[0]).names
    fmt = resolve_format(columns, cfg, input_name)
    wanted = list(_needs(cfg)[fmt])
    if cfg.family_column in columns:
        wanted.append(cfg.family_column)
    if fmt == "messages" and cfg.prompt_column in columns:
        wanted.append(cfg.prompt_column)
    table = read_table(folder, cfg.split, input_name=input_name, columns=wanted)
    if cfg.max_examples is not None:
        table = table.slice(0, cfg.max_examples)
    examples = []
    for row, rec in enumerate(table.to_pylist()):
        family = rec.get(cfg.family_column)
        ex = Example(dataset=input_name, row=row, family=str(family) if family is not None else None)
        if fmt == "text":
            ex.text = rec[cfg.text_column] or ""
        elif fmt == "messages":
            messages = _check_messages(rec[cfg.messages_column], input_name, row)
            ex.prompt, ex.completion = messages[:-1], [messages[-1]]
        elif fmt == "preference":
            ex.prompt, ex.completion = rec[cfg.prompt_column], rec[cfg.chosen_column]
            ex.rejected = rec[cfg.rejected_column]
            kinds = {isinstance(v, list) for v in (ex.prompt, ex.completion, ex.rejected)}
            if len(kinds) > 1 or ex.prompt is None or ex.completion is None or ex.rejected is None:
                raise StageInputError(
                    f"input {input_name!r} row {row}: prompt, chosen and rejected must all be strings or all "
                    f"chat message lists, got {type(ex.prompt).__name__}, {type(ex.completion).__name__} and "
                    f"{type(ex.rejected).__name__}",
                    hint="fix the dataset, or point prompt_column/chosen_column/rejected_column at matching columns",
                )
        else:
            ex.prompt, ex.completion = rec[cfg.prompt_column], rec[cfg.completion_column]
            if isinstance(ex.prompt, list) != isinstance(ex.completion, list) or ex.prompt is None:
                raise StageInputError(
                    f"input {input_name!r} row {row}: prompt and completion must both be strings or both chat "
                    f"message lists, got {type(ex.prompt).__name__} and {type(ex.completion).__name__}",
                    hint="fix the dataset, or point prompt_column/completion_column at matching columns",
                )
        examples.append(ex)
    return fmt, examples
