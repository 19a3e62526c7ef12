"""The example manifests users copy stay valid (running them whole is the README's first command)."""

from pathlib import Path

import pytest

MANIFESTS = sorted((Path(__file__).parents[2] / "manifests").glob("*.yaml"))


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_example_manifest_validates(path, cli):
    code, out, err = cli("validate", path)
    assert code == 0, err
    assert "ok" in out


def test_quickstart_covers_the_lifecycle_so_far(cli):
    from hubflow.manifest import load_manifest

    kinds = {cfg.kind for cfg in load_manifest(MANIFESTS[0].parent / "quickstart.yaml").stages.values()}
    assert {"ingest", "python", "curate", "tokenizer", "synthetic", "pretrain", "evaluate", "sft"} <= kinds
