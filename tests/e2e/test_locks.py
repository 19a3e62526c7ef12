"""One lock per manifest (issue 9 item 12): NAME.lock beside NAME.yaml, hubflow.lock kept for
hubflow.yaml, a shared hubflow.lock migrated, and the run lock naming the manifest holding it."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import yaml

STEPS = """
def make(inputs, output, params):
    (output / "out.txt").write_text(params["what"])
"""


def manifest(folder: Path, name: str, stage: str, repo: str) -> Path:
    path = folder / name
    path.write_text(
        textwrap.dedent(
            f"""
            stages:
              - name: {stage}
                kind: python
                function: steps:make
                params: {{what: {stage}}}
                output: dataset:{repo}
            """
        )
    )
    return path


def stages_in(lock: Path) -> set[str]:
    return set(yaml.safe_load(lock.read_text())["stages"])


def test_two_manifests_in_one_folder_keep_their_own_locks(tmp_path: Path, cli) -> None:
    (tmp_path / "steps.py").write_text(STEPS)
    a = manifest(tmp_path, "a.yaml", "first", "t/a")
    b = manifest(tmp_path, "b.yaml", "second", "t/b")
    default = manifest(tmp_path, "hubflow.yaml", "third", "t/c")
    for m in (a, b, default):
        code, out, err = cli("run", m, "--quiet")
        assert code == 0, out + err
    assert stages_in(tmp_path / "a.lock") == {"first"} and stages_in(tmp_path / "b.lock") == {"second"}
    assert stages_in(tmp_path / "hubflow.lock") == {"third"}
    assert (tmp_path / "a.lock").read_text().startswith("# a.lock: written by `hubflow run`")
    code, out, _ = cli("pull", "--lock", "--manifest", a, "--to", tmp_path / "pulled")
    assert code == 0 and "dataset:t/a@" in out and "t/b" not in out and "t/c" not in out
    assert (tmp_path / "pulled" / "datasets" / "t" / "a" / "out.txt").read_text() == "first"
    code, out, _ = cli("plan", b)
    assert code == 0 and "up to date" in out


def test_a_shared_hubflow_lock_is_migrated_entry_by_entry(tmp_path: Path, cli) -> None:
    """Before: a.yaml and b.yaml both wrote hubflow.lock, each run overwriting the other's."""
    (tmp_path / "steps.py").write_text(STEPS)
    a = manifest(tmp_path, "a.yaml", "first", "t/a")
    b = manifest(tmp_path, "b.yaml", "second", "t/b")
    for m in (a, b):
        assert cli("run", m, "--quiet")[0] == 0
    shared = {"version": 1, "stages": {}}
    for m in (a, b):  # what one shared lock held for both (as if each run had kept the other's entry)
        shared["stages"].update(yaml.safe_load(m.with_suffix(".lock").read_text())["stages"])
        m.with_suffix(".lock").unlink()
    shared["stages"]["ghost"] = {**shared["stages"]["first"], "kind": "python"}  # of neither manifest
    (tmp_path / "hubflow.lock").write_text(yaml.safe_dump(shared))
    code, out, _ = cli("pull", "--lock", "--manifest", b, "--to", tmp_path / "pulled")
    assert code == 0 and "dataset:t/b@" in out and "t/a" not in out  # only b's entries
    assert not (tmp_path / "b.lock").exists()  # reading migrates nothing on disk
    code, out, err = cli("run", a, "--quiet")
    assert code == 0, out + err
    assert "a.lock starts from this manifest's 1 entries in the shared hubflow.lock" in out
    assert stages_in(tmp_path / "a.lock") == {"first"}
    assert stages_in(tmp_path / "hubflow.lock") == {"first", "second", "ghost"}  # left as it was


def test_another_run_is_named_by_the_manifest_that_holds_the_lock(tmp_path: Path, cli) -> None:
    from hubflow.project import Project
    from hubflow.runner import Runner

    (tmp_path / "steps.py").write_text(STEPS)
    a = manifest(tmp_path, "a.yaml", "first", "t/a")
    b = manifest(tmp_path, "b.yaml", "second", "t/b")
    held = Runner(Project.load(a)).acquire(wait=False)
    try:
        code, _, err = cli("run", b, "--quiet")
    finally:
        held.release()
    assert code == 2
    assert f"another `hubflow run` is running {a.resolve()} (pid " in err
    assert "b.yaml shares its state folder" in err and "--wait" in err
    shutil.rmtree(tmp_path / ".hubflow")
