"""A kind may imply stages of its own (a dpo stage's reference log-probs): they join the manifest,
plan as stages of their own, and are reused when only the implying stage's settings change."""

from __future__ import annotations

import importlib.metadata
import sys
import textwrap

import pytest

from hubflow import registry
from hubflow.errors import ManifestError
from hubflow.graph import graph_from_manifest
from hubflow.manifest import load_manifest, stage_union

PLUGIN = """
from typing import Literal
from pydantic import Field
from hubflow.stage import StageConfig

VERSION = "1"

class Config(StageConfig):
    kind: Literal["tune"] = Field(..., description="trains with a cached helper artifact")
    beta: float = Field(0.1, description="a setting the helper does not depend on")
    length: int = Field(8, description="a setting the helper depends on")

def auxiliary_stages(cfg):
    if "helper" in cfg.inputs:
        return []
    return [("helper", {
        "name": f"{cfg.name}-helper", "kind": "prep", "length": cfg.length,
        "inputs": {"data": cfg.inputs["data"]},
        "output": cfg.output.replace(cfg.output.split("/")[-1], cfg.output.split("/")[-1] + "-helper"),
    })]

def run(ctx, cfg):
    pass
"""
PREP = """
from typing import Literal
from pydantic import Field
from hubflow.stage import StageConfig

VERSION = "1"

class Config(StageConfig):
    kind: Literal["prep"] = Field(..., description="the helper")
    length: int = Field(8, description="what it depends on")

def run(ctx, cfg):
    pass
"""


@pytest.fixture
def kinds(tmp_path, monkeypatch):
    (tmp_path / "aux_tune.py").write_text(textwrap.dedent(PLUGIN))
    (tmp_path / "aux_prep.py").write_text(textwrap.dedent(PREP))
    monkeypatch.syspath_prepend(str(tmp_path))
    real = importlib.metadata.entry_points
    eps = [
        importlib.metadata.EntryPoint("tune", "aux_tune", "hubflow.stages"),
        importlib.metadata.EntryPoint("prep", "aux_prep", "hubflow.stages"),
    ]
    monkeypatch.setattr(
        importlib.metadata,
        "entry_points",
        lambda **kw: [*real(**kw), *eps] if kw.get("group") == "hubflow.stages" else real(**kw),
    )
    for cached in (registry.kind_modules, registry._load, stage_union):
        cached.cache_clear()
    yield
    for cached in (registry.kind_modules, registry._load, stage_union):
        cached.cache_clear()
    for name in ("aux_tune", "aux_prep"):
        sys.modules.pop(name, None)


TEXT = """
stages:
  - {name: data, kind: synthetic, families: [copy], num_examples: 4, outputs: {prompts: dataset:a/p}}
  - {name: t, kind: tune, beta: BETA, inputs: {data: data.prompts}, output: model:a/t}
"""


def test_an_implied_stage_joins_the_graph_and_only_its_settings_reach_it(kinds, write_manifest):
    m = load_manifest(write_manifest(TEXT.replace("BETA", "0.1")))
    assert list(m.stages) == ["data", "t-helper", "t"]
    assert m.stages["t"].inputs == {"data": "data.prompts", "helper": "t-helper"}
    assert m.stages["t-helper"].output == "model:a/t-helper" and m.stages["t-helper"].length == 8
    graph = graph_from_manifest(m)
    assert graph.nodes["t"].upstream == {"data", "t-helper"}
    other = load_manifest(write_manifest(TEXT.replace("BETA", "0.5"), name="b.yaml"))
    assert other.stages["t-helper"].settings() == m.stages["t-helper"].settings()  # beta is not its business
    assert other.stages["t"].settings() != m.stages["t"].settings()


def test_a_declared_input_wins_and_a_name_clash_is_named(kinds, write_manifest):
    own = TEXT.replace("BETA", "0.1").replace(
        "inputs: {data: data.prompts}", "inputs: {data: data.prompts, helper: data.prompts}"
    )
    assert list(load_manifest(write_manifest(own)).stages) == ["data", "t"]
    clash = TEXT.replace("BETA", "0.1") + "  - {name: t-helper, kind: prep, output: model:a/x}\n"
    with pytest.raises(ManifestError, match="a stage named 't-helper' already exists"):
        load_manifest(write_manifest(clash, name="c.yaml"))
