"""Training and held-out evaluation of the ``classifier`` stage's fastText model."""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

from hubflow.errors import StageInputError
from hubflow.stage import StageContext, StageResult
from stages.classifier.config import Config, ContrastData, _check_label
from stages.lib.fasttext_models import (
    LABEL_PREFIX,
    MODEL_FILE,
    fasttext_line,
    train_in_fresh_process,
    write_info,
)


def _read_column(folder: Path, split: str, columns: list[str], input_name: str) -> dict[str, list[Any]]:
    import pyarrow.parquet as pq

    from stages.lib.datasets import parquet_files, require_columns

    files = parquet_files(folder, split, input_name=input_name)
    require_columns(pq.read_schema(files[0]).names, columns, input_name=input_name)
    table = pq.read_table(files, columns=columns)
    return {c: table[c].to_pylist() for c in columns}


def _label_name(value: Any, input_name: str, column: str) -> str:
    text = str(value).lower() if isinstance(value, bool) else str(value)
    try:
        return _check_label(text)
    except ValueError as exc:
        raise StageInputError(
            f"input {input_name!r}: column {column!r} holds {value!r}: {exc}",
            hint="map the labels to single words (e.g. toxic / ok) in the stage that makes the dataset",
        ) from None


def load_rows(ctx: StageContext, cfg: Config) -> dict[str, list[str]]:
    """label -> the fastText lines of its rows (empty texts dropped); raises before training on bad data."""
    from stages.lib.datasets import input_folder

    data = cfg.data
    rows: dict[str, list[str]] = {}
    if isinstance(data, ContrastData):
        for name, label in ((data.positive, data.positive_label), (data.negative, data.negative_label)):
            cols = _read_column(input_folder(ctx, name), cfg.split, [cfg.text_column], name)
            rows[label] = [line for t in cols[cfg.text_column] if t and (line := fasttext_line(t))]
        checks = [
            (data.positive_label, data.positive, "positive"),
            (data.negative_label, data.negative, "negative"),
        ]
    else:
        cols = _read_column(
            input_folder(ctx, data.input), cfg.split, [cfg.text_column, data.label_column], data.input
        )
        for text, value in zip(cols[cfg.text_column], cols[data.label_column], strict=True):
            if value is None or not text or not (line := fasttext_line(text)):
                continue
            rows.setdefault(_label_name(value, data.input, data.label_column), []).append(line)
        checks = [(data.positive_label, data.input, "positive")] if data.positive_label else []
        if len(rows) < 2:
            raise StageInputError(
                f"input {data.input!r}: column {data.label_column!r} holds {len(rows)} label(s) "
                f"({', '.join(rows) or 'none'}) on rows with text; a classifier needs at least two",
                hint="add rows of the other class (e.g. non-toxic text labelled `ok`)",
            )
    for label, name, role in checks:
        if not rows.get(label):
            raise StageInputError(
                f"classifier: no {role} rows: input {name!r} has no rows with text in column "
                f"{cfg.text_column!r} for label {label!r} (split {cfg.split!r}; labels found: "
                f"{', '.join(f'{k}={len(v)}' for k, v in rows.items()) or 'none'})",
                hint="check the upstream stage's output, `text_column`, `split` and the label names",
            )
    for label, lines in rows.items():
        if len(lines) < 2:
            raise StageInputError(
                f"classifier: label {label!r} has {len(lines)} row(s) with text; the held-out split needs at least 2",
                hint="give the classifier more rows of that label",
            )
    return rows


def split_rows(
    cfg: Config, rows: dict[str, list[str]]
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Seeded, per-label (stratified) sample and train / held-out split: lists of (label, line)."""
    rng = random.Random(f"{cfg.seed}:split")
    cap = min(len(v) for v in rows.values()) if cfg.balance else None
    train, heldout = [], []
    for label in sorted(rows):
        lines = list(rows[label])
        rng.shuffle(lines)
        n = min(len(lines), *(x for x in (cap, cfg.max_rows_per_label) if x is not None))
        lines = lines[:n]
        k = min(n - 1, max(1, round(cfg.heldout_fraction * n)))
        heldout += [(label, line) for line in lines[:k]]
        train += [(label, line) for line in lines[k:]]
    rng.shuffle(train)
    return train, heldout


def evaluate(model: Any, heldout: list[tuple[str, str]], labels: list[str]) -> dict[str, Any]:
    """Accuracy and per-label precision / recall / F1 of the top prediction on the held-out rows."""
    predicted, _ = model.predict([line for _, line in heldout], k=1)
    pred = [p[0].removeprefix(LABEL_PREFIX) for p in predicted]
    gold = [label for label, _ in heldout]
    per_label = {}
    for label in labels:
        tp = sum(1 for g, p in zip(gold, pred, strict=True) if g == label and p == label)
        n_pred, n_gold = pred.count(label), gold.count(label)
        precision = tp / n_pred if n_pred else 0.0
        recall = tp / n_gold if n_gold else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_label[label] = {"precision": precision, "recall": recall, "f1": f1, "support": n_gold}
    correct = sum(1 for g, p in zip(gold, pred, strict=True) if g == p)
    return {"accuracy": correct / len(gold), "per_label": per_label}


def train(ctx: StageContext, cfg: Config) -> StageResult:
    rows = load_rows(ctx, cfg)  # every check on the data happens here, before training
    train_rows, heldout = split_rows(cfg, rows)
    labels = sorted(rows)
    work = Path(ctx.resume_dir)
    work.mkdir(parents=True, exist_ok=True)
    train_file = work / "train.txt"
    with open(train_file, "w", encoding="utf-8") as fh:
        for label, line in train_rows:
            fh.write(f"{LABEL_PREFIX}{label} {line}\n")
    started = time.perf_counter()
    model = train_in_fresh_process(
        train_file, work / MODEL_FILE, {"seed": cfg.seed, "thread": 1, **cfg.fasttext.model_dump()}
    )
    seconds = time.perf_counter() - started
    result = evaluate(model, heldout, labels)
    out = Path(ctx.output)
    model.save_model(str(out / MODEL_FILE))
    counts = {
        label: {
            "rows": len(rows[label]),
            "train": sum(1 for x, _ in train_rows if x == label),
            "heldout": sum(1 for x, _ in heldout if x == label),
        }
        for label in labels
    }
    write_info(
        out,
        {
            "labels": labels,
            "model_file": MODEL_FILE,
            "text": "document.strip() with newlines replaced by spaces (stages.lib.fasttext_models.fasttext_line)",
            "fasttext": cfg.fasttext.model_dump(),
            "seed": cfg.seed,
            "heldout": result,
            "rows": counts,
        },
    )
    metrics: dict[str, Any] = {
        "heldout_accuracy": result["accuracy"],
        "train_rows": len(train_rows),
        "heldout_rows": len(heldout),
        "labels": labels,
        "train_seconds": round(seconds, 3),
    }
    for label, m in result["per_label"].items():
        metrics.update({f"{k}/{label}": m[k] for k in ("precision", "recall", "f1")})
    ctx.logger.info(
        "classifier: held-out accuracy %.3f on %d rows (%s)",
        result["accuracy"],
        len(heldout),
        ", ".join(labels),
    )
    return StageResult(metrics=metrics, card_sections={"Classifier": _card(cfg, result, counts)})


def _card(cfg: Config, result: dict[str, Any], counts: dict[str, dict[str, int]]) -> str:
    source = (
        f"rows of input `{cfg.data.positive}` labelled `{cfg.data.positive_label}` against rows of "
        f"`{cfg.data.negative}` labelled `{cfg.data.negative_label}`"
        if isinstance(cfg.data, ContrastData)
        else f"input `{cfg.data.input}`, labels from column `{cfg.data.label_column}`"
    )
    lines = [
        f"fastText classifier (`{MODEL_FILE}`) trained on {source}, text from column `{cfg.text_column}` "
        f"(newlines read as spaces), seed {cfg.seed}, one thread.",
        "",
        f"Held-out accuracy: **{result['accuracy']:.3f}** on {sum(c['heldout'] for c in counts.values())} rows "
        f"({cfg.heldout_fraction:.0%} of each label, never trained on).",
        "",
        "| label | rows | train | held out | precision | recall | F1 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label, m in result["per_label"].items():
        c = counts[label]
        lines.append(
            f"| {label} | {c['rows']:,} | {c['train']:,} | {c['heldout']:,} | {m['precision']:.3f} | "
            f"{m['recall']:.3f} | {m['f1']:.3f} |"
        )
    lines += [
        "",
        "Use it in `curate`: `filters: [{classifier: {model_input: NAME, keep: {LABEL: 0.5}}}]` "
        "(or `remove:` for toxicity); the scores become columns of the output.",
    ]
    return "\n".join(lines)
