"""Through the CLI, on a local hub: a reference_logprobs stage and a dpo stage that trains on its artifact.
Changing only `beta` re-runs dpo and leaves the reference stage up to date: the reference model does not
run again (the plan says so, and the second dpo run trains on the same published log-probs)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("peft")

MANIFEST = """
stages:
  - name: align-reference
    kind: reference_logprobs
    inputs: {model: "model:demo/sft", data: "dataset:demo/prefs"}
    max_length: 128
    output: dataset:demo/policy-dpo-reference-logprobs
  - name: align
    kind: dpo
    inputs: {model: "model:demo/sft", data: "dataset:demo/prefs", reference_logprobs: align-reference}
    beta: BETA
    max_length: 128
    max_steps: 2
    per_device_train_batch_size: 4
    learning_rate: 0.001
    logging_steps: 1
    save_steps: null
    output: model:demo/policy-dpo
"""


def rows(n: int, offset: int = 0) -> list[dict]:
    out = []
    for i in range(offset, offset + n):
        a, b = i % 9 + 1, (i * 7) % 9 + 1
        if a == b:
            b = a % 9 + 1
        out.append(
            {
                "prompt": [
                    {"role": "user", "content": f"What is the largest number in this list: {a}, {b}?"}
                ],
                "chosen": [{"role": "assistant", "content": str(max(a, b))}],
                "rejected": [{"role": "assistant", "content": str(min(a, b))}],
            }
        )
    return out


IMPLIED = """
stages:
  - name: align
    kind: dpo
    inputs: {model: "model:demo/sft", data: "dataset:demo/prefs"}
    beta: BETA
    max_length: 128
    max_steps: 2
    per_device_train_batch_size: 4
    learning_rate: 0.001
    logging_steps: 1
    save_steps: null
    output: model:demo/policy-dpo
"""


@pytest.mark.parametrize("manifest_text", [MANIFEST, IMPLIED], ids=["declared", "implied"])
def test_changing_beta_reruns_dpo_but_not_the_reference_pass(
    tmp_path: Path, write_manifest, cli, monkeypatch, manifest_text
):
    """Declared: the manifest writes the reference_logprobs stage. Implied: hubflow adds it (the same stage,
    `align-reference`) because a dpo stage implies it."""
    from stages.lib.testing import train_tiny_policy, write_dataset

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    train, test = rows(12), rows(4, offset=20)
    prefs = write_dataset(tmp_path / "prefs", train, test)
    sft = train_tiny_policy(tmp_path / "sft", [(r["prompt"], r["chosen"]) for r in train], steps=10)
    manifest = write_manifest(manifest_text.replace("BETA", "0.1"))
    for folder, ref in ((sft, "model:demo/sft"), (prefs, "dataset:demo/prefs")):
        code, _, err = cli("import", folder, ref, "--manifest", manifest)
        assert code == 0, err

    code, out, err = cli("run", manifest, "--quiet")
    assert code == 0, out + err
    assert "align-reference (reference_logprobs): running" in out and "align (dpo): running" in out

    manifest.write_text(manifest.read_text().replace("beta: 0.1", "beta: 0.3"))
    code, out, _ = cli("plan", manifest)
    assert code == 0 and "1 to run, 1 up to date" in out
    plan = {line.split()[1]: line for line in out.splitlines() if line.startswith("  ")}
    assert plan["align-reference"].split()[0] == "skip" and "up to date" in plan["align-reference"]
    assert "config changed: beta" in plan["align"]
    assert "reference log-probs from input reference_logprobs" in out

    code, out, err = cli("run", manifest, "--quiet")
    assert code == 0, out + err
    assert "1 of 2 stage(s) to run" in out and "align (dpo): running" in out
    assert "align-reference (reference_logprobs): running" not in out

    pulled = tmp_path / "pulled"
    assert cli("pull", "model:demo/policy-dpo", "--to", pulled, "--manifest", manifest)[0] == 0
    metrics = json.loads((pulled / "metrics.json").read_text())
    assert metrics["beta"] == 0.3 and metrics["reference_computed_here"] is False
    assert metrics["reference"].startswith("input 'reference_logprobs' (computed by model:demo/sft@")
    lineage = json.loads((pulled / "lineage.json").read_text())
    assert lineage["inputs"]["reference_logprobs"]["repo_id"] == "demo/policy-dpo-reference-logprobs"
