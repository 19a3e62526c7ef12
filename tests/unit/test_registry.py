"""Third-party stage kinds arrive through the `hubflow.stages` entry-point group."""

import importlib.metadata
import sys
import textwrap

import pytest

from hubflow import registry
from hubflow.errors import HubflowError
from hubflow.manifest import load_manifest, stage_union


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    (tmp_path / "my_plugin_stage.py").write_text(
        textwrap.dedent(
            """
            from typing import Literal
            from pydantic import Field
            from hubflow.stage import StageConfig

            VERSION = "7"

            class Config(StageConfig):
                kind: Literal["shout"] = Field(..., description="A plugin kind.")
                volume: int = Field(3, description="How loud.")

            def run(ctx, cfg):
                (ctx.output / "out.txt").write_text("!" * cfg.volume)
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    eps = [
        importlib.metadata.EntryPoint("shout", "my_plugin_stage", "hubflow.stages"),
        importlib.metadata.EntryPoint("broken", "no_such_module_xyz", "hubflow.stages"),
    ]
    real = importlib.metadata.entry_points

    def fake(**kw):
        return eps if kw.get("group") == "hubflow.stages" else real(**kw)

    monkeypatch.setattr(importlib.metadata, "entry_points", fake)
    for cached in (registry.kind_modules, registry._load, stage_union):
        cached.cache_clear()
    yield
    for cached in (registry.kind_modules, registry._load, stage_union):
        cached.cache_clear()
    sys.modules.pop("my_plugin_stage", None)


def test_an_entry_point_kind_validates_like_a_builtin(plugin, write_manifest):
    m = load_manifest(
        write_manifest("stages:\n  - {name: s, kind: shout, volume: 5, output: 'dataset:a/b'}\n")
    )
    assert m.stages["s"].volume == 5
    assert registry.get_kind("shout").version == "7"
    # a broken plugin only fails the manifests that use it, naming the fix
    with pytest.raises(HubflowError, match="no_such_module_xyz.*cannot be imported"):
        registry.get_kind("broken")
