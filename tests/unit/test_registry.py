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
        if kw.get("group") == "hubflow.stages":
            return [*real(**kw), *eps]  # the built-in kinds register through the same group
        return real(**kw)

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


def test_the_builtin_kinds_register_through_the_entry_point_group():
    builtins = {
        ep.name: ep.value
        for ep in importlib.metadata.entry_points(group="hubflow.stages")
        if ep.dist is not None and ep.dist.name == "hubflow"
    }
    assert {"ingest", "python", "curate", "sft", "pretrain", "evaluate"} <= set(builtins)
    assert registry.kind_modules()["sft"] == builtins["sft"] == "stages.sft"


def _module(tmp_path, name, body):
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(body))
    return name


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            """
            from typing import Literal
            from pydantic import Field
            from hubflow.stage import StageConfig
            class Config(StageConfig):
                kind: Literal["noversion"] = Field(..., description="x")
            def run(ctx, cfg):
                pass
            """,
            "stage kind 'noversion': module 'contract_mod_0' has no `VERSION`",
        ),
        (
            """
            from typing import Literal
            from pydantic import Field
            from hubflow.stage import StageConfig
            VERSION = 2
            class Config(StageConfig):
                kind: Literal["noversion"] = Field(..., description="x")
            def run(ctx, cfg):
                pass
            """,
            "has VERSION 2, not a non-empty string",
        ),
        (
            """
            from typing import Literal
            from pydantic import Field
            from hubflow.stage import StageConfig
            VERSION = "1"
            class Config(StageConfig):
                kind: Literal["other"] = Field(..., description="x")
            def run(ctx, cfg):
                pass
            """,
            "declares `kind: Literal['other']` but is registered as 'noversion'",
        ),
        (
            """
            VERSION = "1"
            class Config:
                pass
            def run(ctx, cfg):
                pass
            """,
            "has a `Config` that does not subclass hubflow.stage.StageConfig",
        ),
    ],
)
def test_a_module_breaking_the_contract_is_named(tmp_path, monkeypatch, body, message):
    name = f"contract_mod_{_CONTRACT_CASES.index(message)}"
    _module(tmp_path, name, body)
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module(name)
    try:
        with pytest.raises(registry.StageContractError) as err:
            registry.check_contract("noversion", name, module)
        assert message.replace("contract_mod_0", name) in err.value.message and err.value.hint
    finally:
        sys.modules.pop(name, None)


_CONTRACT_CASES = [
    "stage kind 'noversion': module 'contract_mod_0' has no `VERSION`",
    "has VERSION 2, not a non-empty string",
    "declares `kind: Literal['other']` but is registered as 'noversion'",
    "has a `Config` that does not subclass hubflow.stage.StageConfig",
]


def test_a_builtin_missing_from_the_installed_metadata_says_reinstall(monkeypatch):
    real = importlib.metadata.entry_points

    def without_sft(**kw):
        found = real(**kw)
        return [ep for ep in found if ep.name != "sft"] if kw.get("group") == "hubflow.stages" else found

    monkeypatch.setattr(importlib.metadata, "entry_points", without_sft)
    registry.kind_modules.cache_clear()
    try:
        with pytest.raises(HubflowError) as err:
            registry.get_kind("sft")
        assert "not in the installed package's entry points" in err.value.message
        assert "pip install -e ." in err.value.hint
    finally:
        registry.kind_modules.cache_clear()
