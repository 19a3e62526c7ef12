"""`hubflow accept` (issue 14 item 5): a result-neutral code change is accepted without re-running;
the plan says why, the log and the card show who accepted what and why, nothing downstream re-runs."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import yaml

MANIFEST = """
stages:
  - name: a
    kind: python
    function: steps:make
    params: {n: 3}
    output: dataset:t/a
  - name: b
    kind: python
    inputs: {x: a}
    function: other:double
    output: dataset:t/b
  - name: c
    kind: python
    function: other:make
    params: {n: 1}
    output: dataset:t/c
"""

STEPS = """
def make(inputs, output, params):
    (output / "n.txt").write_text(str(params["n"]))


def double(inputs, output, params):
    n = int((inputs["x"] / "n.txt").read_text())
    (output / "n.txt").write_text(str(2 * n))
"""


@pytest.fixture
def project_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "hubflow.yaml").write_text(textwrap.dedent(MANIFEST))
    (tmp_path / "steps.py").write_text(textwrap.dedent(STEPS))
    (tmp_path / "other.py").write_text(textwrap.dedent(STEPS))
    gitconfig = tmp_path / "gitconfig"
    gitconfig.write_text("[user]\n\tname = Ada Tester\n\temail = ada@example.org\n")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(gitconfig))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def plan(cli) -> dict[str, tuple[str, list[str]]]:
    code, out, err = cli("plan", "hubflow.yaml", "--json")
    assert code == 0, err
    return {s["name"]: (s["action"], s["reasons"]) for s in json.loads(out)["stages"]}


def test_accept_a_result_neutral_edit_then_plan_skips_and_log_shows_it(
    project_dir: Path, cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, err = cli("run", "hubflow.yaml", "--quiet")
    assert code == 0, out + err
    lock_before = yaml.safe_load((project_dir / "hubflow.lock").read_text())["stages"]

    code, out, err = cli("accept", "hubflow.yaml", "a", "--reason", "nothing to accept")
    assert code == 0 and "a: nothing to accept, up to date" in out

    # a refactor that computes the same thing: the module's source (part of the fingerprint) changes
    steps = project_dir / "steps.py"
    steps.write_text(steps.read_text().replace('str(params["n"])', "f\"{params['n']}\""))
    before = plan(cli)
    assert before["a"] == ("run", ["dependency changed: module_sha256"])
    assert before["b"] == ("run", ["input x will be re-made by stage a"]) and before["c"][0] == "skip"

    code, out, err = cli("accept", "b", "hubflow.yaml")  # `hubflow accept STAGE MANIFEST` is not a form
    assert code == 2 and "no stage named 'hubflow.yaml'" in err

    code, out, err = cli("accept", "hubflow.yaml", "a", "--reason", "f-string refactor, same output")
    assert code == 0, err
    after = plan(cli)
    assert after["b"] == ("skip", ["up to date"])  # its input is the same commit: nothing re-runs
    assert after["a"][1] == [
        "up to date: accepted by Ada Tester <ada@example.org> on "
        + after["a"][1][0].split(" on ")[1][:10]
        + " (dependency changed: module_sha256): f-string refactor, same output"
    ]
    lock = yaml.safe_load((project_dir / "hubflow.lock").read_text())["stages"]
    assert lock["b"] == lock_before["b"] and lock["c"] == lock_before["c"]
    for name in "a":
        assert lock[name]["outputs"] == lock_before[name]["outputs"]  # the same commits stand
        assert lock[name]["fingerprint"] != lock_before[name]["fingerprint"]
        record = lock[name]["accepted"][-1]
        assert (
            record["from"] == lock_before[name]["fingerprint"] and record["to"] == lock[name]["fingerprint"]
        )
        assert record["by"] == "Ada Tester <ada@example.org>"

    # the log shows the acceptance; the card on main says it; the tagged result is the old commit
    code, out, err = cli("log", "dataset:t/a", "--manifest", "hubflow.yaml")
    assert code == 0, err
    assert "accepted: result " + lock["a"]["outputs"]["output"].split("@")[1][:8] in out
    assert "by Ada Tester" in out and "reason: f-string refactor, same output" in out
    assert "what changed: dependency changed: module_sha256" in out
    from hubflow.project import Project

    project = Project.load(project_dir / "hubflow.yaml")
    hub, repo = project.hub, project.manifest.stages["a"].output_repos()["output"]
    result = lock["a"]["outputs"]["output"].split("@")[1]
    assert hub.resolve(repo, "fp-" + lock["a"]["fingerprint"]) == result
    card = hub.read_file(repo, "README.md", "main").decode()
    assert "## Accepted without re-running" in card and "f-string refactor" in card
    assert (
        json.loads(hub.read_file(repo, "lineage.json", "main"))["accepted"][0]["to"]
        == lock["a"]["fingerprint"]
    )
    assert hub.read_file(repo, "n.txt", "main") == b"3"
    head = hub.resolve(repo, "main")

    # a run re-makes nothing and leaves the card commit on main (it shows the result)
    code, out, err = cli("run", "hubflow.yaml", "--quiet")
    assert code == 0 and "0 of 3 stage(s) to run" in out, out + err
    assert hub.resolve(repo, "main") == head

    # the kind's VERSION is bumped (a refactor of hubflow's own code): every stage says so; accepting
    # it again adds a second record, to the lock and to the card
    import stages.python

    monkeypatch.setattr(stages.python, "VERSION", "2")
    bumped = plan(cli)
    assert bumped["c"] == ("run", ["code changed: python stage v1 -> v2"])
    code, out, err = cli("accept", "hubflow.yaml", "c", "b", "a", "--reason", "v2 renames internals")
    assert code == 0, err
    assert out.index("a: accepted") < out.index("b: accepted")  # b reads a: accepted once a's is known
    assert {n: a for n, (a, _) in plan(cli).items()} == dict.fromkeys("abc", "skip")
    assert plan(cli)["c"][1][0].endswith("(code changed: python stage v1 -> v2): v2 renames internals")
    lock = yaml.safe_load((project_dir / "hubflow.lock").read_text())["stages"]
    assert [r["reason"] for r in lock["a"]["accepted"]] == [
        "f-string refactor, same output",
        "v2 renames internals",
    ]
    card = hub.read_file(repo, "README.md", "main").decode()
    assert card.count("## Accepted without re-running") == 2
    assert hub.resolve(repo, "fp-" + lock["a"]["fingerprint"]) == result


def test_accept_refuses_what_is_not_a_code_change(project_dir: Path, cli) -> None:
    code, out, err = cli("accept", "hubflow.yaml", "a")
    assert code == 2 and "stage 'a' has no published result to accept" in err
    assert "fix: run it: `hubflow run hubflow.yaml a`" in err
    code, out, err = cli("accept", "hubflow.yaml")
    assert code == 2 and "name the stages to accept" in err
    code, out, err = cli("accept", "hubflow.yaml", "nope")
    assert code == 2 and "no stage named 'nope'" in err and "stages are: a, b, c" in err

    assert cli("run", "hubflow.yaml", "--quiet")[0] == 0
    manifest = project_dir / "hubflow.yaml"
    manifest.write_text(manifest.read_text().replace("{n: 3}", "{n: 4}"))
    (project_dir / "steps.py").write_text((project_dir / "steps.py").read_text() + "# edited\n")
    code, out, err = cli("accept", "hubflow.yaml", "a")
    assert code == 2
    assert "stage 'a' cannot be accepted: config changed: params.n." in err
    assert "fix: run it" in err
    code, out, err = cli("accept", "hubflow.yaml", "b")
    assert code == 2 and "input x will be re-made by stage a" in err and "accept a first" in err
    assert plan(cli)["a"][0] == "run"  # nothing was written
