"""What a run publishes is exactly one complete attempt's output, and a stage can neither
outlive its run nor damage the store (issue 9 items 3, 4, 5, 6). Runs as it is as root (CI)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from hubflow.hub.fsck import fsck
from hubflow.hub.local import LocalHub
from hubflow.refs import RepoRef

SLOW = """
stages:
  - name: slow
    kind: python
    function: steps:slow
    params: {marks: MARKS}
    output: dataset:t/slow
"""

STEPS = """
import os
import time
from pathlib import Path


def slow(inputs, output, params):
    marks = Path(params["marks"])
    marks.mkdir(parents=True, exist_ok=True)
    (marks / f"started-{os.getpid()}").write_text(str(os.getpid()))
    for i in range(600):
        (output / f"part-{os.getpid()}-{i}.txt").write_text("x")
        time.sleep(0.1)


def data(inputs, output, params):
    (output / "data.bin").write_bytes(b"upstream bytes" * 1000)


def scribble(inputs, output, params):
    target = Path(inputs["up"]) / "data.bin"
    os.chmod(target, 0o644)  # root would not even need this: it writes to read-only files
    with open(target, "r+b") as f:
        f.write(b"SCRIBBLED")
    (output / "ok.txt").write_text("done")


def nothing(inputs, output, params):
    return {"wrote": 0}
"""


def project(tmp_path: Path, manifest: str) -> Path:
    (tmp_path / "steps.py").write_text(textwrap.dedent(STEPS))
    path = tmp_path / "hubflow.yaml"
    path.write_text(textwrap.dedent(manifest).replace("MARKS", str(tmp_path / "marks")))
    return path


def start_run(manifest: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "hubflow.cli", "run", str(manifest), "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def wait_started(marks: Path, n: int = 1, timeout: float = 60) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = sorted(marks.glob("started-*")) if marks.is_dir() else []
        if len(found) >= n:
            return [int(p.read_text()) for p in found]
        time.sleep(0.05)
    raise AssertionError("the stage did not start")


def gone(pid: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        if Path(f"/proc/{pid}/stat").exists() and Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z":
            return True
        time.sleep(0.05)
    return False


def hub_of(manifest: Path) -> LocalHub:
    return LocalHub(manifest.parent / ".hubflow" / "hub")


def test_kill_9_of_the_runner_stops_the_stage_process(tmp_path: Path) -> None:
    manifest = project(tmp_path, SLOW)
    run = start_run(manifest)
    (worker,) = wait_started(tmp_path / "marks")
    os.kill(run.pid, signal.SIGKILL)
    run.wait()
    assert gone(worker), "the stage process outlived its `hubflow run`"


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupted_run_stops_its_stage_and_publishes_nothing(
    tmp_path: Path, sig: int, code: int
) -> None:
    manifest = project(tmp_path, SLOW)
    run = start_run(manifest)
    (worker,) = wait_started(tmp_path / "marks")
    os.kill(run.pid, sig)
    _, err = run.communicate(timeout=60)
    assert run.returncode == code, err
    assert f"interrupted ({signal.Signals(sig).name})" in err and "nothing of it was published" in err
    assert gone(worker, timeout=2), "the stage process outlived its interrupted run"
    repo = RepoRef("dataset", "t/slow")
    assert not hub_of(manifest).repo_exists(repo) or not hub_of(manifest).list_refs(repo).branches


def test_an_orphan_of_a_dead_run_is_stopped_and_none_of_its_files_are_published(tmp_path: Path) -> None:
    """The orphan of an earlier run (whatever survived) must not add files to the next commit."""
    manifest = project(tmp_path, SLOW.replace("function: steps:slow", "function: steps:data"))
    plan = subprocess.run(
        [sys.executable, "-m", "hubflow.cli", "plan", str(manifest), "--json"], capture_output=True, text=True
    )
    fp = json.loads(plan.stdout)["stages"][0]["fingerprint"]
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a runner that is gone
    attempt = tmp_path / ".hubflow" / "work" / f"slow-{fp[:16]}" / f"a-{dead.pid}-0"
    (attempt / "outputs" / "output").mkdir(parents=True)
    orphan = subprocess.Popen(  # keeps writing into the outputs of the dead run's attempt
        [
            sys.executable,
            "-c",
            "import time, pathlib, sys\n"
            "out = pathlib.Path(sys.argv[1])\n"
            "for i in range(6000):\n"
            "    (out / f'orphan-{i}.txt').write_text('o'); time.sleep(0.01)\n",
            str(attempt / "outputs" / "output"),
        ],
        start_new_session=True,
    )
    start = Path(f"/proc/{orphan.pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    owner = {"runner_pid": dead.pid, "runner_start": "1", "manifest": str(manifest)}
    owner |= {"worker_pid": orphan.pid, "worker_start": start}
    (attempt / "owner.json").write_text(json.dumps(owner))
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "hubflow.cli", "run", str(manifest), "--quiet"],
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert f"stopping orphaned stage process {orphan.pid}" in proc.stdout
        assert orphan.wait(timeout=10) is not None
    finally:
        if orphan.poll() is None:
            orphan.kill()
    files = {f.path for f in hub_of(manifest).list_files(RepoRef("dataset", "t/slow"))}
    assert files == {"data.bin", "lineage.json", "metrics.json", "README.md"}
    assert not attempt.exists()


TWO = """
stages:
  - name: up
    kind: python
    function: steps:data
    output: dataset:t/up
  - name: down
    kind: python
    inputs: {up: up}
    function: steps:scribble
    output: dataset:t/down
"""


def test_a_stage_writing_to_its_input_cannot_damage_the_store(tmp_path: Path, cli) -> None:
    manifest = project(tmp_path, TWO)
    code, out, err = cli("run", manifest, "--quiet")
    assert code == 0, out + err
    hub = hub_of(manifest)
    assert hub.read_file(RepoRef("dataset", "t/up"), "data.bin") == b"upstream bytes" * 1000
    report = fsck(hub.root)
    assert report.ok, report.summary()
    code, out, err = cli("pull", "dataset:t/up", "--to", tmp_path / "pulled", "--manifest", manifest)
    assert code == 0 and (tmp_path / "pulled" / "data.bin").read_bytes() == b"upstream bytes" * 1000


EMPTY = """
stages:
  - name: empty
    kind: python
    function: steps:nothing
    output: dataset:t/empty
"""


def test_a_stage_that_writes_nothing_fails_and_publishes_nothing(tmp_path: Path, cli) -> None:
    manifest = project(tmp_path, EMPTY)
    code, out, err = cli("run", manifest, "--quiet")
    assert code == 1
    assert "stage 'empty' finished but wrote no file to its output 'output' (dataset:t/empty)" in err
    assert "nothing was published" in err and "ALLOW_EMPTY_OUTPUT" in err
    repo = RepoRef("dataset", "t/empty")
    assert not hub_of(manifest).repo_exists(repo) or not hub_of(manifest).list_refs(repo).branches


def test_a_kind_that_declares_empty_output_valid_publishes_it(tmp_path: Path, cli, monkeypatch) -> None:
    import stages.python

    monkeypatch.setattr(stages.python.Config, "ALLOW_EMPTY_OUTPUT", True)
    manifest = project(tmp_path, EMPTY)
    code, out, err = cli("run", manifest, "--quiet")
    assert code == 0, out + err
    files = {f.path for f in hub_of(manifest).list_files(RepoRef("dataset", "t/empty"))}
    assert files == {"lineage.json", "metrics.json", "README.md"}


class RacingHub(LocalHub):
    """The real store, plus another writer (a second LocalHub on the same folder, as another run
    sharing the store would be) that commits to the output repo just before this run's first
    commit to it: the race a slow stage loses."""

    def __init__(self, root: Path, competitor: dict) -> None:
        super().__init__(root)
        self.competitor = competitor

    def commit_folder(self, repo, folder, **kw):  # type: ignore[no-untyped-def, override]
        if (
            self.competitor and repo.repo_id == "t/race" and kw.get("branch", "main") == "main"
        ):  # not the lease
            spec, self.competitor = self.competitor, {}
            other = LocalHub(self.root)
            src = folder.parent / "competitor"
            src.mkdir()
            (src / "other.txt").write_text(spec["content"])
            info = other.commit_folder(repo, src, message="the other run", metadata=spec["metadata"])
            if spec.get("tag"):
                other.create_tag(repo, spec["tag"], revision=info.commit_id)
        return super().commit_folder(repo, folder, **kw)


RACE = """
stages:
  - name: race
    kind: python
    function: steps:data
    output: dataset:t/race
"""


@pytest.mark.parametrize("same_result", [True, False], ids=["same-fingerprint", "other-commit"])
def test_losing_a_commit_race_keeps_the_finished_work(tmp_path: Path, same_result: bool) -> None:
    from hubflow.plan import fingerprint_tag
    from hubflow.project import Project
    from hubflow.runner import Runner

    manifest = project(tmp_path, RACE)
    proj = Project.load(manifest)
    plan = proj.plan()
    fp = plan[0].fingerprint
    meta = {"hubflow": {"stage": "race", "fingerprint": fp}} if same_result else {"hubflow": {"stage": "x"}}
    competitor = {"content": "theirs", "metadata": meta, "tag": fingerprint_tag(fp) if same_result else None}
    proj._hub = RacingHub(proj.manifest.hub_root(), competitor)
    seed = tmp_path / "seed"
    seed.mkdir()
    (seed / "seed.txt").write_text("an earlier result")
    repo = RepoRef("dataset", "t/race")
    proj.hub.create_repo(repo)
    LocalHub(proj.manifest.hub_root()).commit_folder(repo, seed, message="seed")
    said: list[str] = []
    summary = Runner(proj, echo=said.append, stream_logs=False).run(plan)
    assert summary.ok, summary.failed
    hub = LocalHub(proj.manifest.hub_root())
    history = hub.list_commits(repo)
    lock = yaml.safe_load(proj.manifest.lock_path.read_text())
    published = lock["stages"]["race"]["outputs"]["output"].rsplit("@", 1)[1]
    if same_result:  # the other run made this very result: reuse it, make nothing new
        assert [c.message for c in history] == ["the other run", "seed"] and published == history[0].commit_id
        assert any("another run published this very result first" in s for s in said)
    else:  # the output is complete, only the parent moved: commit on top of the new head
        assert [c.message for c in history] == ["hubflow: stage race (python)", "the other run", "seed"]
        assert published == history[0].commit_id and history[0].parents == (history[1].commit_id,)
        assert hub.resolve(repo, fingerprint_tag(fp)) == published
        assert {f.path for f in hub.list_files(repo)} >= {"data.bin"} and "other.txt" not in {
            f.path for f in hub.list_files(repo)
        }
        assert any("committing on top of it" in s for s in said)
