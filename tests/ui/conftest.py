"""A real store for the web view: a manifest of three python stages run by `hubflow run`, a fourth stage
added after (never run) and one edited (stale), a repo with a long history, and a hostile card."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

STEPS = """
import json


def source(inputs, output, params):
    (output / "data.txt").write_text("hello\\n" * params.get("n", 3))


def train(inputs, output, params):
    (output / "model.txt").write_text((inputs["data"] / "data.txt").read_text().upper())
    with open(output / "metrics.jsonl", "w") as fh:
        for step in range(1, 21):
            fh.write(json.dumps({"step": step, "loss": 2.0 / step, "accuracy": step / 20}) + "\\n")


def evaluate(inputs, output, params):
    (output / "score.txt").write_text(str(params.get("score", 0.9)))
"""

MANIFEST = """\
stages:
  - {name: source, kind: python, function: "steps:source", params: {n: 4}, output: "dataset:demo/source"}
  - {name: train, kind: python, function: "steps:train", inputs: {data: source}, output: "model:demo/train"}
  - {name: evaluate, kind: python, function: "steps:evaluate", inputs: {model: train}, params: {score: 1},
     output: "dataset:demo/eval"}
"""

HOSTILE_CARD = """---
tags: [x]
---
# Hostile card

<script>document.title = "pwned"</script>
<img src=x onerror="document.title='pwned'">
[click](javascript:alert(1)) and [relative](notes.txt) and ![chart](chart.png)

| a | b |
| - | - |
| 1 | 2 |
"""

LONG_HISTORY = 120


class Store:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.manifest = folder / "hubflow.yaml"
        self.root = folder / ".hubflow" / "hub"


@pytest.fixture(scope="session")
def ui_store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    folder = tmp_path_factory.mktemp("ui")
    (folder / "steps.py").write_text(STEPS)
    (folder / "hubflow.yaml").write_text(MANIFEST)
    exe = Path(sys.executable).with_name("hubflow")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "hubflow.cli"]
    proc = subprocess.run(
        [*cmd, "run", "hubflow.yaml", "--quiet"], cwd=folder, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # Afterwards: `evaluate` is stale (its params changed) and `report` never ran.
    (folder / "hubflow.yaml").write_text(
        MANIFEST.replace("params: {score: 1}", "params: {score: 2}")
        + '  - {name: report, kind: python, function: "steps:evaluate", inputs: {model: train},\n'
        + '     output: "dataset:demo/report"}\n'
    )
    store = Store(folder)
    from hubflow.hub.base import CommitAdd
    from hubflow.hub.local import LocalHub
    from hubflow.refs import RepoRef

    hub = LocalHub(store.root)
    files = folder / "files"
    files.mkdir()
    (files / "README.md").write_text(HOSTILE_CARD)
    (files / "notes.txt").write_text("notes")
    (files / "chart.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    hostile = RepoRef("model", "demo/hostile")
    hub.create_repo(hostile)
    hub.commit_folder(hostile, files, message="a card that tries to run script")
    long = RepoRef("dataset", "demo/long")
    hub.create_repo(long)
    for i in range(LONG_HISTORY):
        (files / "i.txt").write_text(str(i))
        hub.commit(long, [CommitAdd("i.txt", files / "i.txt")], message=f"commit number {i}")
    return store
