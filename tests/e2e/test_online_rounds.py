"""Through `hubflow run`: every online-DPO round's policy and pairs become commits on the output repos'
`checkpoints` branch (tagged round-K-<fingerprint>), and `main` gets the final result once."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch")

MANIFEST = """
stages:
  - name: tasks
    kind: synthetic
    families: [max]
    max_number: 9
    max_items: 3
    num_examples: 40
    outputs: {prompts: dataset:demo/prompts}
  - name: odpo
    kind: online_dpo
    reward: synthetic
    inputs: {model: "model:demo/policy", prompts: tasks.prompts}
    rounds: 2
    prompts_per_round: 8
    samples_per_prompt: 2
    max_new_tokens: 4
    max_steps: 1
    per_device_train_batch_size: 4
    learning_rate: 0.001
    save_steps: null
    outputs: {policy: model:demo/odpo, pairs: dataset:demo/odpo-pairs}
"""


def test_each_round_is_a_revision_and_main_gets_the_last(tmp_path: Path, write_manifest, cli, monkeypatch):
    from hubflow.project import Project
    from hubflow.refs import RepoRef
    from stages.lib.testing import train_tiny_policy

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    pairs = [
        (
            [{"role": "user", "content": f"What is the largest number in this list: {a}, {b}?"}],
            [{"role": "assistant", "content": str(max(a, b))}],
        )
        for a in range(1, 9)
        for b in range(1, 4)
    ]
    policy = train_tiny_policy(tmp_path / "policy", pairs, steps=20)
    manifest = write_manifest(MANIFEST)
    assert cli("import", policy, "model:demo/policy", "--manifest", manifest)[0] == 0
    code, out, err = cli("run", manifest, "--quiet")
    assert code == 0, out + err
    assert "odpo: round-1 -> model:demo/odpo@" in out and "(branch checkpoints, tag round-2-" in out
    hub = Project.load(manifest).hub
    for repo in (RepoRef("model", "demo/odpo"), RepoRef("dataset", "demo/odpo-pairs")):
        refs = hub.list_refs(repo)
        rounds = sorted(t.split("-")[1] for t in refs.tags if t.startswith("round-"))
        assert rounds == ["1", "2"], refs.tags
        assert [c.message.rsplit(" ", 1)[-1] for c in hub.list_commits(repo, "checkpoints")][:2] == [
            "round-2",
            "round-1",
        ]
        assert len(hub.list_commits(repo, "main")) == 1  # one commit per completed stage
