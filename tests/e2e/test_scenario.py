"""The user's scenario end to end, through the CLI, on a real local store."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import yaml

MANIFEST = """
stages:
  - name: raw
    kind: ingest
    source: {paths: ["data/*.jsonl"]}
    output: dataset:demo/raw
  - name: upper
    kind: python
    inputs: {docs: raw}
    function: steps:upper
    params: {suffix: "!"}
    output: dataset:demo/upper
  - name: count
    kind: python
    inputs: {docs: upper}
    function: steps:count
    output: dataset:demo/count
  - name: solo
    kind: python
    function: steps:solo
    output: model:demo/solo
"""

STEPS = """
import json
from pathlib import Path

import pyarrow.parquet as pq


def _rows(folder):
    return pq.read_table(sorted((Path(folder) / "data").glob("*.parquet"))).to_pylist()


def upper(inputs, output, params):
    rows = [{"text": r["text"].upper() + params["suffix"]} for r in _rows(inputs["docs"])]
    (output / "data").mkdir()
    import pyarrow as pa
    pq.write_table(pa.Table.from_pylist(rows), output / "data" / "train-00000-of-00001.parquet")
    return {"rows": len(rows)}


def count(inputs, output, params):
    n = len(_rows(inputs["docs"]))
    (output / "count.json").write_text(json.dumps({"n": n}))
    return {"n": n}


def solo(inputs, output, params):
    (output / "weights.txt").write_text("w")
"""


@pytest.fixture
def project(tmp_path: Path, write_manifest):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.jsonl").write_text(
        "\n".join(json.dumps({"text": f"doc {i}"}) for i in range(5)) + "\n"
    )
    (tmp_path / "steps.py").write_text(textwrap.dedent(STEPS))
    return write_manifest(MANIFEST)


def ran(out: str) -> list[str]:
    return [line.split("]", 1)[1].split()[0] for line in out.splitlines() if ": running;" in line]


def test_run_rerun_change_revert(project, cli):
    code, out, _ = cli("run", project, "--quiet")
    assert code == 0, out
    assert ran(out) == ["raw", "upper", "count", "solo"]

    code, out, _ = cli("run", project, "--quiet")
    assert code == 0 and ran(out) == [] and "0 of 4 stage(s) to run" in out

    project.write_text(project.read_text().replace('suffix: "!"', 'suffix: "?"'))
    code, out, _ = cli("plan", project)
    assert "run   upper" in out and "config changed: params.suffix" in out
    assert "run   count" in out and "input docs will be re-made by stage upper" in out
    code, out, _ = cli("run", project, "--quiet")
    assert code == 0 and ran(out) == ["upper", "count"]
    assert "config changed: params.suffix" in out

    project.write_text(project.read_text().replace('suffix: "?"', 'suffix: "!"'))
    code, out, _ = cli("run", project, "--quiet")
    assert code == 0 and ran(out) == [], out
    code, out, _ = cli("plan", project, "--json")
    assert {s["name"]: s["action"] for s in json.loads(out)["stages"]} == dict.fromkeys(
        ["raw", "upper", "count", "solo"], "skip"
    )

    # main of a reused output is pointed back at the earlier result
    lock = yaml.safe_load((project.parent / "hubflow.lock").read_text())
    code, out, _ = cli("pull", "dataset:demo/upper", "--to", project.parent / "pulled", "--manifest", project)
    assert code == 0
    lineage = json.loads((project.parent / "pulled" / "lineage.json").read_text())
    assert lineage["fingerprint"] == lock["stages"]["upper"]["fingerprint"]
    assert lineage["config"]["params"] == {"suffix": "!"}


def test_source_file_and_module_edits_make_stages_stale(project, cli):
    assert cli("run", project, "--quiet")[0] == 0
    with open(project.parent / "data" / "a.jsonl", "a") as fh:
        fh.write(json.dumps({"text": "one more"}) + "\n")
    code, out, _ = cli("plan", project)
    assert "run   raw" in out and "dependency changed: files.data/a.jsonl" in out
    assert "skip  solo" in out
    steps = project.parent / "steps.py"
    steps.write_text(steps.read_text() + "\n# edited\n")
    code, out, _ = cli("plan", project)
    assert "run   solo" in out and "dependency changed: module_sha256" in out


def test_outputs_are_commits_with_card_lineage_and_tags(project, cli):
    from hubflow.hub.local import LocalHub
    from hubflow.refs import RepoRef

    assert cli("run", project, "--quiet")[0] == 0
    hub = LocalHub(project.parent / ".hubflow" / "hub")
    lock = yaml.safe_load((project.parent / "hubflow.lock").read_text())
    entry = lock["stages"]["upper"]
    repo = RepoRef("dataset", "demo/upper")
    head = hub.resolve(repo, "main")
    assert entry["outputs"]["output"] == f"dataset:demo/upper@{head}"
    assert hub.resolve(repo, "fp-" + entry["fingerprint"]) == head
    assert entry["inputs"]["docs"] == lock["stages"]["raw"]["outputs"]["output"]
    files = {f.path for f in hub.list_files(repo, head)}
    assert {"README.md", "lineage.json", "metrics.json", "data/train-00000-of-00001.parquet"} <= files
    card = hub.read_file(repo, "README.md", head).decode()
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["datasets"] == ["demo/raw"] and meta["hubflow"]["stage"] == "upper"
    assert "## Lineage" in card and lock["stages"]["raw"]["outputs"]["output"].split("@")[1] in card
    assert json.loads(hub.read_file(repo, "metrics.json", head)) == {"rows": 5}
    [commit] = hub.list_commits(repo, head)
    assert commit.message == "hubflow: stage upper (python)"
    assert commit.metadata["hubflow"]["fingerprint"] == entry["fingerprint"]

    # the ingested dataset loads with `datasets` from a pulled snapshot
    import datasets

    code, _, _ = cli("pull", "--lock", "--manifest", project, "--to", project.parent / "all")
    assert code == 0
    ds = datasets.load_dataset(str(project.parent / "all" / "datasets" / "demo" / "raw"))
    assert ds["train"].num_rows == 5 and ds["train"][0]["text"] == "doc 0"


def test_targets_force_and_downstream(project, cli):
    assert cli("run", project, "--quiet")[0] == 0
    code, out, _ = cli("run", project, "upper", "--force", "--quiet")
    assert ran(out) == ["upper"]
    code, out, _ = cli("run", project, "count", "--quiet")
    assert ran(out) == ["count"]  # upper's new commit changed count's input
    code, out, _ = cli("run", project, "raw", "--force", "--downstream", "--quiet")
    assert ran(out) == ["raw", "upper", "count"]


def test_status_log_graph_schema_fsck(project, cli):
    assert cli("run", project, "--quiet")[0] == 0
    code, out, _ = cli("status", project)
    assert code == 0 and "upper (python): up to date" in out and "dataset:demo/upper@" in out
    code, out, _ = cli("log", "dataset:demo/upper", "--manifest", project)
    assert code == 0 and "stage: upper (python)" in out and "input docs: dataset:demo/raw@" in out
    code, out, _ = cli("graph", project)
    assert "flowchart LR" in out and "-->|docs|" in out
    code, out, _ = cli("graph", project, "--format", "dot")
    assert out.startswith("digraph hubflow")
    code, out, _ = cli("schema")
    assert json.loads(out)["properties"]["stages"]
    code, out, _ = cli("fsck", "--manifest", project)
    assert code == 0, out
