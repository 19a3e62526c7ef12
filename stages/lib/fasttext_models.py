"""fastText text classifiers as hubflow publishes them (the ``classifier`` kind) and reads them (``curate``).

One line of fastText input per document: fastText reads a newline as the end of an
example, so training and prediction both use :func:`fasttext_line` (newlines ->
spaces, outer whitespace stripped) and score exactly the same string. The model
is ``model.bin`` at the top of the repo; ``classifier.json`` beside it names the
labels (without ``__label__``) so a consumer can check its thresholds without
loading the model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hubflow.errors import StageInputError

MODEL_FILE = "model.bin"
INFO_FILE = "classifier.json"
LABEL_PREFIX = "__label__"
NEWLINE_REPLACEMENT = " "


def fasttext_line(text: str) -> str:
    """The string fastText sees for a document (training and prediction alike)."""
    return text.strip().replace("\r", NEWLINE_REPLACEMENT).replace("\n", NEWLINE_REPLACEMENT)


def find_model(folder: Path, input_name: str) -> Path:
    """The fastText model file of a classifier input: ``model.bin``, else the one ``*.bin`` it holds."""
    folder = Path(folder)
    if (folder / MODEL_FILE).is_file():
        return folder / MODEL_FILE
    bins = sorted(folder.glob("*.bin")) if folder.is_dir() else []
    if len(bins) == 1:
        return bins[0]
    found = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    raise StageInputError(
        f"classifier input {input_name!r} holds no fastText model ({MODEL_FILE}); files found: "
        f"{', '.join(found[:10]) or 'none'}",
        hint="point the input at the output of a `classifier` stage (or a repo with one fastText .bin file)",
    )


def model_labels(path: Path) -> list[str]:
    """Labels of a fastText model (without ``__label__``): from ``classifier.json`` if present, else the model."""
    info = Path(path).parent / INFO_FILE
    if info.is_file():
        return list(json.loads(info.read_text(encoding="utf-8"))["labels"])
    from fasttext.FastText import _FastText

    return [label.removeprefix(LABEL_PREFIX) for label in _FastText(str(path)).labels]


def write_info(folder: Path, info: dict[str, Any]) -> None:
    (Path(folder) / INFO_FILE).write_text(json.dumps(info, indent=2), encoding="utf-8")


def train_supervised_file(train_file: str, model_file: str, params: dict[str, Any]) -> None:
    """Train a fastText supervised model on ``train_file`` and save it to ``model_file``."""
    import fasttext

    fasttext.train_supervised(input=train_file, verbose=0, **params).save_model(model_file)


def train_in_fresh_process(train_file: Path, model_file: Path, params: dict[str, Any]) -> Any:
    """fastText training in a freshly spawned interpreter, then the model loaded here.

    Measured in this project's suite: the same seeded, single-thread training that succeeds in a fresh
    process can stop with fastText's ``Encountered NaN`` inside a process where other native libraries
    ran first (order-dependent, not reproduced in isolation), so the stage trains where nothing else
    has run. It costs one interpreter start (about a second)."""
    import multiprocessing

    import fasttext

    ctx = multiprocessing.get_context("spawn")
    proc = ctx.Process(target=train_supervised_file, args=(str(train_file), str(model_file), params))
    proc.start()
    proc.join()
    if proc.exitcode != 0 or not model_file.is_file():
        raise StageInputError(
            f"fastText training failed (exit status {proc.exitcode}) on {train_file}",
            hint="see the stage log for fastText's message; a lower fasttext.lr often fixes 'Encountered NaN'",
        )
    return fasttext.load_model(str(model_file))
