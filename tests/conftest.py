"""Shared fixtures. Tests never reach a network or a model hub."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.pop("HUBFLOW_HUB_ROOT", None)
# Tiny models on 2 shared cores: one torch thread is several times faster than two
# spinning ones under load, and stage processes inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# One stage at a time unless a test passes --jobs (`hubflow run` defaults to one per core): the
# suite's own tests run side by side on 2 shared cores, and their output order stays fixed.
os.environ.setdefault("HUBFLOW_JOBS", "1")


@pytest.fixture
def local_hub(tmp_path: Path):
    """A real local store in a temp folder."""
    from hubflow.hub.local import LocalHub

    return LocalHub(tmp_path / "store")


@pytest.fixture
def write_manifest(tmp_path: Path):
    """Write a manifest (dedented YAML) into tmp_path and return its path."""

    def write(text: str, name: str = "hubflow.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        return path

    return write


@pytest.fixture
def cli(capsys):
    """Run `hubflow ARGS...` in-process; returns (exit code, stdout, stderr)."""
    from hubflow.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        code = main([str(a) for a in args])
        out = capsys.readouterr()
        return code, out.out, out.err

    return run
