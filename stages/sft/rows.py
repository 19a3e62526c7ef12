"""Rows of the ``sft`` stage's datasets as masked token sequences: the causal-LM formats and the
classification / extractive-QA heads (seed §2.2, §2.5 step 2)."""

from __future__ import annotations

from typing import Any

from hubflow.errors import StageInputError
from hubflow.stage import StageContext
from stages.sft.config import Config


def causal_rows(ctx: StageContext, cfg: Config, tok: Any) -> tuple[list, dict[str, list], dict[str, Any]]:
    from stages.lib.chat import require_chat_template
    from stages.lib.datasets import eval_split_of, input_folder, read_rows
    from stages.sft.formats import (
        FORMAT_COLUMNS,
        OPTIONAL_COLUMNS,
        encode_rows,
        is_chat,
        needed_columns,
    )

    needed = needed_columns(cfg.format, cfg.columns)
    optional = tuple(cfg.columns.get(c, c) for c in OPTIONAL_COLUMNS.get(cfg.format, ()))
    hint = (
        f"format {cfg.format} reads columns {list(FORMAT_COLUMNS[cfg.format])}: rename them with `columns:` "
        "(e.g. {prompt: question}) or choose the `format:` that matches the data"
    )
    if cfg.format == "messages":
        require_chat_template(tok, input_name="tokenizer" if "tokenizer" in ctx.inputs else "model")
    train: list[dict] = []
    evals: dict[str, list] = {}
    stats: dict[str, Any] = {}
    names = cfg.training_inputs()
    for name in names:
        folder = input_folder(ctx, name)
        rows = read_rows(folder, cfg.split, needed, input_name=name, hint=hint, optional=optional)
        if cfg.format == "prompt_completion" and is_chat(rows[0][needed[0]]):
            require_chat_template(tok, input_name="tokenizer" if "tokenizer" in ctx.inputs else "model")
        encoded, counts = encode_rows(
            tok,
            rows,
            cfg.format,
            cfg.columns,
            cfg.instruction_template,
            max_length=cfg.max_length,
            input_name=name,
        )
        train += encoded
        stats[name] = counts
        split = eval_split_of(folder, cfg.eval_split)
        if split:
            rows = read_rows(folder, split, needed, input_name=name, hint=hint, optional=optional)
            enc, _ = encode_rows(
                tok,
                rows[: cfg.eval_examples],
                cfg.format,
                cfg.columns,
                cfg.instruction_template,
                max_length=cfg.max_length,
                input_name=name,
            )
            if enc:
                evals["eval" if len(names) == 1 else f"eval_{name}"] = enc
    if not train:
        raise StageInputError(
            f"no training row keeps a token to learn within max_length={cfg.max_length}",
            hint="raise max_length, or shorten the prompts",
        )
    return train, evals, stats


def head_rows(ctx: StageContext, cfg: Config, tok: Any) -> tuple[list, dict[str, list], dict[str, Any], dict]:
    from stages.lib.datasets import eval_split_of, input_folder, read_rows
    from stages.sft.heads import answer_span, encode_classification, encode_qa, label_mapping

    task: Any = cfg.task
    names = cfg.training_inputs()
    splits: dict[str, dict[str, list[dict]]] = {}
    if task.type == "classification":
        needed = [task.text_column, task.label_column] + (
            [task.text_pair_column] if task.text_pair_column else []
        )
        hint = "set text_column / label_column (and text_pair_column) to the dataset's columns"
    else:
        needed = [task.question_column, task.context_column, task.answer_column]
        needed += [task.answer_start_column] if task.answer_start_column else []
        hint = "set question_column / context_column / answer_column to the dataset's columns"
    for name in names:
        folder = input_folder(ctx, name)
        splits[name] = {"train": read_rows(folder, cfg.split, needed, input_name=name, hint=hint)}
        split = eval_split_of(folder, cfg.eval_split)
        if split:
            splits[name]["eval"] = read_rows(folder, split, needed, input_name=name, hint=hint)[
                : cfg.eval_examples
            ]
    head_kwargs: dict[str, Any] = {}
    stats: dict[str, Any] = {}
    out: dict[str, list] = {"train": []}
    if task.type == "classification":
        values = [r[task.label_column] for s in splits.values() for r in s["train"]]
        classes, mapping = label_mapping(values, input_name=names[0], column=task.label_column)
        head_kwargs = {
            "num_labels": len(classes),
            "id2label": dict(enumerate(classes)),
            "label2id": {c: i for i, c in enumerate(classes)},
            "pad_token_id": tok.pad_token_id,
        }
        stats["num_labels"] = len(classes)
        for name, parts in splits.items():
            for part, rows in parts.items():
                unknown = sorted(
                    {str(r[task.label_column]) for r in rows if r[task.label_column] not in mapping}
                )
                if unknown:
                    raise StageInputError(
                        f"input {name!r} ({part}) has labels {unknown[:5]} that the training split lacks",
                        hint="give every class training rows, or drop those rows",
                    )
                texts = [r[task.text_column] for r in rows]
                pairs = [r[task.text_pair_column] for r in rows] if task.text_pair_column else None
                labels = [r[task.label_column] for r in rows]
                enc = encode_classification(tok, texts, pairs, labels, mapping, max_length=cfg.max_length)
                out.setdefault("train" if part == "train" else f"eval_{name}", []).extend(enc)
    else:
        for name, parts in splits.items():
            dropped = 0
            for part, rows in parts.items():
                for i, r in enumerate(rows):
                    where = f"input {name!r} {part} row {i}"
                    start = r.get(task.answer_start_column) if task.answer_start_column else None
                    span = answer_span(str(r[task.context_column]), r[task.answer_column], start, where=where)
                    enc = encode_qa(
                        tok, r[task.question_column], r[task.context_column], span, max_length=cfg.max_length
                    )
                    if enc is None:
                        dropped += 1
                        continue
                    out.setdefault("train" if part == "train" else f"eval_{name}", []).append(enc)
            stats[name] = {"answer_cut_by_max_length": dropped}
    train = out.pop("train")
    if not train:
        raise StageInputError(
            f"no training row fits max_length={cfg.max_length} with its answer", hint="raise max_length"
        )
    evals = {("eval" if len(names) == 1 else k): v for k, v in out.items() if v}
    return train, evals, stats, head_kwargs
