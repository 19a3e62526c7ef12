"""`backend: hf` end to end against `hubflow serve` on loopback, through the CLI: run, re-run,
status, log, pull; then transformers and datasets (in a fresh process with HF_ENDPOINT set)
load exactly what the run published; and `hubflow push` of a local history to the hub."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from hubflow.hub.local import LocalHub
from hubflow.refs import RepoRef

TOKEN = "e2e-serve-token-5f0c9d1e"

STEPS = """
import json
from pathlib import Path

import pyarrow.parquet as pq


def tiny_llama(inputs, output, params):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    rows = pq.read_table(sorted((Path(inputs["docs"]) / "data").glob("*.parquet"))).num_rows
    config = LlamaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(output, safe_serialization=True)
    return {"rows_seen": rows, "params": sum(p.numel() for p in model.parameters())}
"""

LOADER = """
import json, sys
import datasets
from transformers import AutoModelForCausalLM

model_rev, data_rev = sys.argv[1], sys.argv[2]
model = AutoModelForCausalLM.from_pretrained("team/tiny", revision=model_rev)
ds = datasets.load_dataset("team/raw", revision=data_rev)
print(json.dumps({
    "params": sum(p.numel() for p in model.parameters()),
    "vocab": model.config.vocab_size,
    "rows": ds["train"].num_rows,
    "first": ds["train"][0]["text"],
}))
"""


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from huggingface_hub import constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)  # this process only; stages stay offline
    monkeypatch.setattr(hf_constants, "HF_HUB_DISABLE_XET", hf_constants.HF_HUB_DISABLE_XET)
    monkeypatch.setattr(hf_constants, "HF_HUB_DISABLE_PROGRESS_BARS", True)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    from hubflow.serve import create_app
    from hubflow.serve.thread import ServerThread

    with ServerThread(create_app(tmp_path / "served-store", token=TOKEN)) as server:
        yield server


def ran(out: str) -> list[str]:
    return [line.split("]", 1)[1].split()[0] for line in out.splitlines() if ": running;" in line]


@pytest.mark.slow
def test_run_on_hf_backend_then_transformers_and_datasets_load_it(served, tmp_path: Path, cli) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "docs.jsonl").write_text(
        "\n".join(json.dumps({"text": f"doc {i}"}) for i in range(7)) + "\n"
    )
    (tmp_path / "steps.py").write_text(textwrap.dedent(STEPS))
    manifest = tmp_path / "hubflow.yaml"
    manifest.write_text(
        textwrap.dedent(
            f"""
            hub: {{backend: hf, endpoint: "{served.url}", namespace: team, private: false}}
            stages:
              - name: raw
                kind: ingest
                source: {{paths: ["data/*.jsonl"]}}
                output: dataset:team/raw
              - name: model
                kind: python
                inputs: {{docs: raw}}
                function: steps:tiny_llama
                output: model:team/tiny
            """
        )
    )
    code, out, err = cli("run", manifest, "--quiet")
    assert code == 0, out + err
    assert ran(out) == ["raw", "model"]
    code, out, _ = cli("run", manifest, "--quiet")
    assert code == 0 and ran(out) == [] and "0 of 2 stage(s) to run" in out
    code, out, _ = cli("status", manifest)
    assert code == 0 and f"hub {served.url}" in out and "model (python): up to date" in out

    lock_text = (tmp_path / "hubflow.lock").read_text()
    lock = yaml.safe_load(lock_text)
    model_ref = lock["stages"]["model"]["outputs"]["output"]
    data_ref = lock["stages"]["raw"]["outputs"]["output"]
    model_rev, data_rev = model_ref.split("@")[1], data_ref.split("@")[1]
    assert lock["stages"]["model"]["inputs"]["docs"] == data_ref

    # what the server stored: one commit per output, fingerprint tag, hubflow metadata
    store = LocalHub(tmp_path / "served-store")
    tiny = RepoRef("model", "team/tiny")
    [commit] = store.list_commits(tiny)
    assert commit.commit_id == model_rev and commit.message == "hubflow: stage model (python)"
    assert commit.metadata["hubflow"]["fingerprint"] == lock["stages"]["model"]["fingerprint"]
    assert store.list_refs(tiny).tags == {"fp-" + lock["stages"]["model"]["fingerprint"]: model_rev}
    assert {"config.json", "model.safetensors", "README.md", "lineage.json"} <= {
        f.path for f in store.list_files(tiny)
    }

    code, out, _ = cli("log", "model:team/tiny", "--manifest", manifest)
    assert code == 0 and "stage: model (python)" in out and f"input docs: {data_ref}" in out
    code, out, _ = cli("pull", "--lock", "--manifest", manifest, "--to", tmp_path / "pulled")
    assert code == 0, out
    pulled = tmp_path / "pulled" / "models" / "team" / "tiny"
    assert json.loads((pulled / "metrics.json").read_text())["rows_seen"] == 7

    for text in [lock_text, *(p.read_text() for p in (tmp_path / ".hubflow" / "logs").rglob("*.log"))]:
        assert TOKEN not in text

    env = {k: v for k, v in os.environ.items() if not k.endswith("_OFFLINE")}
    env.update(HF_ENDPOINT=served.url, HF_TOKEN=TOKEN, HF_HOME=str(tmp_path / "hf-home"))
    env.update(HF_HUB_DISABLE_PROGRESS_BARS="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(
        [sys.executable, "-c", LOADER, model_rev, data_rev],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    metrics = json.loads((pulled / "metrics.json").read_text())
    assert loaded == {"params": metrics["params"], "vocab": 64, "rows": 7, "first": "doc 0"}


def test_push_local_history_to_the_hub(served, tmp_path: Path, cli) -> None:
    from hubflow.hub.hf import HfHub

    data = tmp_path / "data" / "a.jsonl"
    data.parent.mkdir()
    data.write_text(json.dumps({"text": "one"}) + "\n")
    manifest = tmp_path / "hubflow.yaml"
    manifest.write_text(
        textwrap.dedent(
            """
            stages:
              - name: raw
                kind: ingest
                source: {paths: ["data/*.jsonl"]}
                output: dataset:demo/raw
            """
        )
    )
    assert cli("run", manifest, "--quiet")[0] == 0
    data.write_text(json.dumps({"text": "two"}) + "\n")
    assert cli("run", manifest, "--quiet")[0] == 0
    local = LocalHub(tmp_path / ".hubflow" / "hub")
    repo = RepoRef("dataset", "demo/raw")
    history = local.list_commits(repo)
    assert len(history) == 2

    args = ["push", "dataset:demo/raw", "--to-hub", "--endpoint", served.url, "--all", "--manifest", manifest]
    code, out, err = cli(*args, "--work", tmp_path / "work")
    assert code == 0, out + err
    assert "pushed 2 commit(s)" in out
    hub = HfHub(served.url, token=TOKEN)
    pushed = hub.list_commits(repo)
    assert [c.message for c in pushed] == [c.message for c in history]
    for mine, theirs in zip(history, pushed, strict=True):
        assert theirs.metadata["hubflow"] == mine.metadata["hubflow"]
        assert theirs.metadata["hubflow_push"]["source"] == f"{repo}@{mine.commit_id}"
        assert {(f.path, f.sha256) for f in hub.list_files(repo, theirs.commit_id)} == {
            (f.path, f.sha256) for f in local.list_files(repo, mine.commit_id)
        }
    local_tags = local.list_refs(repo).tags
    hub_tags = hub.list_refs(repo).tags
    assert set(hub_tags) == set(local_tags)
    by_source = {c.metadata["hubflow_push"]["source"].split("@")[1]: c.commit_id for c in pushed}
    assert all(hub_tags[t] == by_source[c] for t, c in local_tags.items())

    code, out, _ = cli(*args, "--work", tmp_path / "work")  # again: nothing new
    assert code == 0 and out.count("already pushed") == 2
    assert len(hub.list_commits(repo)) == 2

    code, out, _ = cli(
        "push", "dataset:demo/raw", "--to-hub", "--endpoint", served.url, "--namespace", "team2",
        "--manifest", manifest, "--work", tmp_path / "work",
    )  # fmt: skip
    assert code == 0 and "team2/raw" in out
    [copy] = hub.list_commits(RepoRef("dataset", "team2/raw"))  # only the revision (main), not --all
    assert copy.metadata["hubflow_push"]["source"] == f"{repo}@{history[0].commit_id}"
