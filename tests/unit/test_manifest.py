import pytest

from hubflow.errors import ManifestError, UnknownStageKind
from hubflow.manifest import json_schema, load_manifest


def test_valid_manifest(write_manifest):
    m = load_manifest(
        write_manifest(
            """
            stages:
              - name: raw
                kind: ingest
                source: {paths: ["*.jsonl"]}
                output: dataset:demo/raw
            """
        )
    )
    assert list(m.stages) == ["raw"] and m.hub.backend == "local"
    assert m.hub_root() == m.path.parent / ".hubflow" / "hub"


def test_hub_root_override_by_env(write_manifest, monkeypatch, tmp_path):
    path = write_manifest(
        "hub: {root: store}\nstages: [{name: a, kind: python, function: 'm:f', output: 'dataset:a/b'}]\n"
    )
    assert load_manifest(path).hub_root() == (tmp_path / "store").resolve()
    monkeypatch.setenv("HUBFLOW_HUB_ROOT", str(tmp_path / "elsewhere"))
    assert load_manifest(path).hub_root() == tmp_path / "elsewhere"


@pytest.mark.parametrize(
    "body, fragments",
    [
        (
            "stages:\n  - {name: a, kind: nope, output: 'dataset:a/b'}\n",
            ["stage 'a'", "unknown stage kind 'nope'", "ingest", "python"],
        ),
        (
            "stages:\n  - {name: a, kind: python, output: 'dataset:a/b'}\n",
            ["stage 'a'", "field `function` is required"],
        ),
        (
            "stages:\n  - {name: a, kind: python, function: 'm:f', output: 'dataset:a/b', lr: 1}\n",
            ["unknown field `lr`", "known fields"],
        ),
        (
            "stages:\n  - {name: a, kind: python, function: 'm:f', output: 'dataset:a b/c'}\n",
            ["field `output`", "may only hold"],
        ),
        (
            "stages:\n  - {name: a, kind: python, function: 'm:f', output: 'dataset:a/b@main'}\n",
            ["not a revision"],
        ),
        (
            "stages:\n  - {name: a, kind: python, function: 'm:f', inputs: {x: 'model:a/b--c'}, output: 'dataset:a/b'}\n",
            ["field `inputs`", "'--'"],
        ),
        ("stages:\n  - {name: a, kind: python, function: 'm:f'}\n", ["exactly one of `output:`"]),
        (
            "stages:\n  - {name: a, kind: ingest, source: {paths: [x]}, output: 'model:a/b'}\n",
            ["must be a dataset repo"],
        ),
        (
            "stages:\n  - {kind: python, function: 'm:f', output: 'dataset:a/b'}\n",
            ["stages[0]", "field `name` is required"],
        ),
        ("stages:\n  - {name: a, function: 'm:f'}\n", ["field `kind` is required"]),
        ("stages: []\n", ["`stages` is empty"]),
        ("stages: [1, 2\n", ["not valid YAML"]),
        ("hub: {backend: s3}\nstages: []\n", ["field `hub.backend`"]),
        (
            "stages:\n  - {name: a, kind: python, function: 'm:f', output: 'dataset:a/b'}\n  - {name: a, kind: python, function: 'm:f', output: 'dataset:a/c'}\n",
            ["two stages are named 'a'"],
        ),
    ],
)
def test_bad_manifests_name_the_stage_and_field(write_manifest, body, fragments):
    with pytest.raises(ManifestError) as exc:
        load_manifest(write_manifest(body))
    msg = str(exc.value)
    assert "hubflow.yaml" in msg
    for fragment in fragments:
        assert fragment in msg


def test_unknown_kind_is_its_own_error(write_manifest):
    with pytest.raises(UnknownStageKind):
        load_manifest(write_manifest("stages:\n  - {name: a, kind: nope, output: 'dataset:a/b'}\n"))


def test_yaml_is_loaded_safely(write_manifest):
    with pytest.raises(ManifestError):
        load_manifest(write_manifest("stages: !!python/object/apply:os.system ['echo hacked']\n"))


def test_schema_is_a_discriminated_union_with_descriptions():
    schema = json_schema()
    stages = schema["properties"]["stages"]["items"]
    assert stages["discriminator"]["propertyName"] == "kind"
    assert {"ingest", "python"} <= set(stages["discriminator"]["mapping"])
    for name, model in schema["$defs"].items():
        for field, prop in model.get("properties", {}).items():
            assert prop.get("description") or "$ref" in prop or "allOf" in prop, (
                f"{name}.{field} has no description"
            )
