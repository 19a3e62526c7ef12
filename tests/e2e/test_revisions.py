"""A stage's intermediate results (online rounds, checkpoints) become commits on its output repo's
`checkpoints` branch, tagged per fingerprint; `main` still gets one commit per completed stage."""

from __future__ import annotations

from pathlib import Path

import pytest

from hubflow.errors import StageFailed
from hubflow.project import Project
from hubflow.refs import RepoRef
from hubflow.runner import CHECKPOINT_BRANCH, Runner

MANIFEST = """
stages:
  - name: gen
    kind: synthetic
    families: [copy]
    num_examples: 4
    outputs: {prompts: dataset:demo/prompts}
"""


def test_revisions_are_committed_in_order_once(tmp_path: Path, write_manifest):
    project = Project.load(write_manifest(MANIFEST))
    runner = Runner(project, echo=lambda *_: None)
    resume = tmp_path / "resume"
    revisions = []
    for k in (1, 2):
        folder = resume / f"round-{k}"
        folder.mkdir(parents=True)
        (folder / "round.txt").write_text(f"round {k}\n")
        revisions.append(
            {"output": "prompts", "label": f"round-{k}", "folder": str(folder), "metrics": {"k": k}}
        )
    fp = "f" * 64
    runner.publish_revisions("gen", fp, revisions, resume)
    runner.publish_revisions("gen", fp, revisions, resume)  # a resumed run reporting them again
    hub, repo = project.hub, RepoRef("dataset", "demo/prompts")
    history = hub.list_commits(repo, CHECKPOINT_BRANCH)
    assert [c.message for c in history] == [
        "hubflow: stage gen (synthetic) round-2",
        "hubflow: stage gen (synthetic) round-1",
    ]
    tags = hub.list_refs(repo).tags
    assert hub.read_file(repo, "round.txt", tags["round-1-" + "f" * 12]) == b"round 1\n"
    assert "main" not in hub.list_refs(repo).branches  # the final result is the stage's own commit

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    with pytest.raises(StageFailed, match="not a folder under the stage's resume folder"):
        runner.publish_revisions(
            "gen", fp, [{"output": "prompts", "label": "x", "folder": str(outside)}], resume
        )
    with pytest.raises(StageFailed, match="output 'policy', which it does not have"):
        runner.publish_revisions(
            "gen", fp, [{"output": "policy", "label": "x", "folder": str(resume)}], resume
        )
