"""Matrix sweeps (issue 14 item 6): expansion and naming, pure; errors name the fix."""

from __future__ import annotations

import json
import textwrap

import pytest

from hubflow.errors import ManifestError
from hubflow.manifest import load_manifest
from hubflow.matrix import member_suffix, value_text

SHA = "a" * 40
PY = "kind: python, function: 'steps:make'"


def load(tmp_path, text: str):
    path = tmp_path / "hubflow.yaml"
    path.write_text(textwrap.dedent(text))
    return load_manifest(path)


def test_values_become_name_parts_that_are_valid_stage_and_repo_names():
    cases = {0.1: "0p1", 3e-4: "0p0003", 1e-5: "1e-5", -0.5: "m0p5", 8: "8", True: "true", None: "none"}
    cases |= {"cosine": "cosine", "1e-4": "1e-4", "a b/c": "a_b_c"}
    assert {v: value_text(v) for v in cases} == cases
    assert value_text([1, 2]) == value_text([1, 2]).lower() and value_text([1, 2]).startswith("h")
    assert value_text([1, 2]) != value_text([2, 1])
    # keys in sorted order (the whole dotted key), the key's last dotted part as label, `_` before a value that starts with a letter
    assert member_suffix({"training.lr": 0.1, "beta": 2, "sched": "cosine"}) == "-beta2-sched_cosine-lr0p1"


def test_a_2x2_matrix_expands_into_four_ordinary_stages_with_stable_names(tmp_path):
    m = load(
        tmp_path,
        f"""
        stages:
          - name: train
            kind: python
            function: steps:make
            params: {{n: 1}}
            matrix: {{params.lr: [0.001, 0.01], params.beta: [0.1, 0.3]}}
            output: model:demo/train
          - name: eval
            kind: python
            function: steps:make
            inputs: {{model: "train[*]", data: "dataset:demo/d@{SHA}"}}
            output: dataset:demo/eval
          - name: best
            kind: python
            function: steps:make
            inputs: {{model: train-beta0p3-lr0p01}}
            output: dataset:demo/best
        """,
    )
    members = [f"beta{b}-lr{lr}" for b in ("0p1", "0p3") for lr in ("0p001", "0p01")]
    assert list(m.stages) == [f"train-{s}" for s in members] + [f"eval-{s}" for s in members] + ["best"]
    first = m.stages["train-beta0p1-lr0p001"]
    assert first.params == {"n": 1, "lr": 0.001, "beta": 0.1}
    assert first.output == "model:demo/train-beta0p1-lr0p001"
    assert m.stages["eval-beta0p3-lr0p01"].inputs == {
        "model": "train-beta0p3-lr0p01",
        "data": f"dataset:demo/d@{SHA}",
    }
    assert m.stages["eval-beta0p3-lr0p01"].output == "dataset:demo/eval-beta0p3-lr0p01"
    assert m.sweeps["train"].keys == ("params.beta", "params.lr")
    assert m.sweeps["eval"].follows == "train"
    assert [mb.values for mb in m.sweeps["eval"].members] == [mb.values for mb in m.sweeps["train"].members]
    # reordering the keys or the values renames nothing
    again = load(
        tmp_path,
        """
        stages:
          - name: train
            kind: python
            function: steps:make
            params: {n: 1}
            matrix: {params.beta: [0.3, 0.1], params.lr: [0.01, 0.001]}
            output: model:demo/train
        """,
    )
    assert set(again.stages) == {f"train-{s}" for s in members}


@pytest.mark.parametrize(
    ("matrix", "message", "fix"),
    [
        ("{params.lr: []}", "matrix key 'params.lr' needs a non-empty list of values", "e.g. `params.lr: ["),
        (
            "{lr: [1, 2]}",
            "matrix key 'lr': `lr` is not a field of this kind (fields there: ",
            "hubflow schema",
        ),
        ("{params.lr: [a b, a/b]}", "both give the stage name 's-lr_a_b'", "values that differ"),
        ("{description: [x, y]}", "field `description` is not in the fingerprint", "hubflow schema"),
        ("{resources.timeout_minutes: [1, 2]}", "field `resources.timeout_minutes` is not in the", "schema"),
        ("{inputs.data: [a, b]}", "inputs cannot be swept", "hubflow schema"),
        ("{params: [1, 2]}", "field `params` is set both in the stage and in its matrix", "remove one"),
        ("[1, 2]", "`matrix` must map fields to lists of values", "matrix: {beta: [0.1, 0.3]}"),
    ],
)
def test_bad_matrices_are_refused_with_the_fix(tmp_path, matrix, message, fix):
    with pytest.raises(ManifestError) as info:
        load(
            tmp_path,
            f"stages:\n  - {{name: s, {PY}, params: {{}}, matrix: {matrix}, output: 'dataset:t/s'}}\n",
        )
    assert message in info.value.message and "stage 's'" in info.value.message
    assert fix in (info.value.hint or "")


def test_naming_a_sweep_itself_says_how_to_name_its_members(tmp_path):
    base = """
        stages:
          - name: train
            kind: python
            function: steps:make
            matrix: {params.lr: [1, 2]}
            output: model:demo/train
          - name: eval
            kind: python
            function: steps:make
            inputs: {model: INPUT}
            output: dataset:demo/eval
        """
    with pytest.raises(ManifestError) as info:
        load(tmp_path, base.replace("INPUT", "train"))
    assert "input 'model': 'train' is a sweep of 2 stages" in info.value.message
    assert (
        info.value.hint
        == "name one member (train-lr1, train-lr2) or all of them: `train[*]` (one stage per member)"
    )
    with pytest.raises(ManifestError, match=r"`nope\[\*\]` names no sweep"):
        load(tmp_path, base.replace("INPUT", '"nope[*]"'))


def test_nested_fields_of_a_kind_and_a_shared_reference_for_a_dpo_sweep(tmp_path):
    m = load(
        tmp_path,
        f"""
        stages:
          - name: dpo
            kind: dpo
            inputs: {{model: "model:demo/sft@{SHA}", data: "dataset:demo/pairs@{SHA}"}}
            matrix: {{beta: [0.1, 0.3], learning_rate: [1.0e-4, 3.0e-4]}}
            output: model:demo/dpo
        """,
    )
    dpos = [n for n, c in m.stages.items() if c.kind == "dpo"]
    assert len(dpos) == 4 and {m.stages[n].beta for n in dpos} == {0.1, 0.3}
    # the reference log-probs do not depend on beta or the learning rate: one stage for the sweep
    refs = [n for n, c in m.stages.items() if c.kind == "reference_logprobs"]
    assert (
        refs == ["dpo-reference"]
        and m.stages["dpo-reference"].output == "dataset:demo/dpo-reference-logprobs"
    )
    assert {m.stages[n].inputs["reference_logprobs"] for n in dpos} == {"dpo-reference"}
    m = load(
        tmp_path,
        f"""
        stages:
          - name: sft
            kind: sft
            inputs: {{model: "model:demo/base@{SHA}", data: "dataset:demo/d@{SHA}"}}
            peft: {{method: lora}}
            matrix: {{peft.r: [4, 8]}}
            output: model:demo/sft
        """,
    )
    assert [c.peft.r for c in m.stages.values()] == [4, 8] and list(m.stages) == ["sft-r4", "sft-r8"]


def test_the_schema_describes_matrix_on_every_kind(cli):
    code, out, _ = cli("schema")
    defs = json.loads(out)["$defs"]
    kinds = [d for d in defs.values() if "kind" in d.get("properties", {}) and "inputs" in d["properties"]]
    assert kinds and all("matrix" in d["properties"] for d in kinds)
    assert "NAME[*]" in kinds[0]["properties"]["matrix"]["description"]
