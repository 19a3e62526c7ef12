"""A 2x2 matrix runs as four cached stages; changing one value re-runs only its members; an
evaluate-like stage over the sweep follows each member; the report tabulates the sweep."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

MANIFEST = """
stages:
  - name: train
    kind: python
    function: steps:train
    params: {base: 1}
    matrix: {params.beta: [0.1, 0.3], params.lr: [1, 2]}
    output: model:demo/train
  - name: score
    kind: python
    inputs: {model: "train[*]"}
    function: steps:score
    output: dataset:demo/score
"""

STEPS = """
import json


def train(inputs, output, params):
    value = params["base"] + params["beta"] * params["lr"]
    (output / "w.json").write_text(json.dumps(value))
    return {"loss": 1.0 / value}


def score(inputs, output, params):
    value = json.loads((inputs["model"] / "w.json").read_text())
    (output / "s.json").write_text(json.dumps(value))
    return {"exact_match": value / 10}
"""


def plan(cli) -> dict[str, str]:
    code, out, err = cli("plan", "hubflow.yaml", "--json")
    assert code == 0, err
    return {s["name"]: s["action"] for s in json.loads(out)["stages"]}


def test_a_2x2_sweep_caches_per_member_and_the_report_tabulates_it(tmp_path: Path, cli, monkeypatch) -> None:
    (tmp_path / "hubflow.yaml").write_text(textwrap.dedent(MANIFEST))
    (tmp_path / "steps.py").write_text(textwrap.dedent(STEPS))
    monkeypatch.chdir(tmp_path)
    code, out, err = cli("run", "hubflow.yaml", "--quiet")
    assert code == 0, out + err
    assert "8 of 8 stage(s) to run" in out
    assert set(plan(cli).values()) == {"skip"}

    code, out, err = cli("plan", "hubflow.yaml")
    assert "sweep train: 4 stages over params.beta × params.lr" in out
    assert "sweep score: 4 stages over the members of sweep 'train'" in out

    # one value changes: the members with it (and what follows them) run; the others are cached
    manifest = tmp_path / "hubflow.yaml"
    manifest.write_text(manifest.read_text().replace("[0.1, 0.3]", "[0.5, 0.1]"))
    after = plan(cli)
    assert {n for n, a in after.items() if a == "run"} == {
        f"{s}-beta0p5-lr{lr}" for s in ("train", "score") for lr in (1, 2)
    }
    assert {n for n, a in after.items() if a == "skip"} == {
        f"{s}-beta0p1-lr{lr}" for s in ("train", "score") for lr in (1, 2)
    }
    code, out, err = cli("plan", "hubflow.yaml", "train", "--json")  # a sweep's name: all its members
    assert {s["name"] for s in json.loads(out)["stages"]} == {n for n in after if n.startswith("train-")}
    code, out, err = cli("run", "hubflow.yaml", "--quiet")
    assert code == 0 and "4 of 8 stage(s) to run" in out, out + err

    code, out, err = cli("report", "hubflow.yaml", "--out", "rep")
    assert code == 0, err
    report = (tmp_path / "rep" / "report.md").read_text()
    table = report.split("### sweep `train`")[1].split("\n\n")[1].splitlines()
    assert table[0] == "| member | params.beta | params.lr | train: loss | score: exact_match |"
    assert table[2] == "| train-beta0p5-lr1 | 0.5 | 1 | 0.6667 | 0.15 |"
    assert table[5] == "| train-beta0p1-lr2 | 0.1 | 2 | 0.8333 | 0.12 |"
