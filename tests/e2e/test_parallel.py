"""`hubflow run --jobs N` runs independent stages at once; leases keep two launchers from running one
stage twice (issue 14 items 1 and 7). `python` stages with tiny functions: no training."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import yaml

STEPS = """
import os, time
from pathlib import Path


def meet(inputs, output, params):
    # proves the two stages run at the same time: each waits for the other to have started
    where = Path(params["dir"])
    (where / ("started-" + params["me"])).touch()
    deadline = time.monotonic() + 60
    while not (where / ("started-" + params["other"])).exists():
        if time.monotonic() > deadline:
            raise RuntimeError("the other stage never started beside this one")
        time.sleep(0.02)
    print("met", params["other"], flush=True)
    (output / "met.txt").write_text(params["other"])


def boom(inputs, output, params):
    time.sleep(float(params.get("after", 0)))
    raise RuntimeError("the stage broke on purpose")


def slow_ok(inputs, output, params):
    time.sleep(float(params.get("seconds", 0)))
    (output / "ok.txt").write_text("ok")


def count(inputs, output, params):
    # one line per real run, in a file outside the hub: how many times the stage trained
    with open(params["tally"], "a") as fh:
        fh.write(f"{os.getpid()}\\n")
    time.sleep(float(params.get("seconds", 0)))
    (output / "result.txt").write_text("the result")


def hang(inputs, output, params):
    (Path(params["dir"]) / f"pid-{params['me']}").write_text(str(os.getpid()))
    time.sleep(600)
"""


def write(folder: Path, manifest: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "steps.py").write_text(textwrap.dedent(STEPS))
    path = folder / "hubflow.yaml"
    path.write_text(textwrap.dedent(manifest))
    return path


PAIR = """
stages:
  - {{name: left, kind: python, function: 'steps:meet', output: 'dataset:t/left',
     params: {{dir: '{d}', me: left, other: right}}}}
  - {{name: right, kind: python, function: 'steps:meet', output: 'dataset:t/right',
     params: {{dir: '{d}', me: right, other: left}}}}
"""


def test_two_independent_stages_run_at_once_and_both_publish(tmp_path: Path, cli) -> None:
    from hubflow.hub.local import LocalHub
    from hubflow.refs import RepoRef

    meet = tmp_path / "meet"
    meet.mkdir()
    manifest = write(tmp_path, PAIR.format(d=meet))
    code, out, err = cli("run", manifest, "--jobs", "2")
    assert code == 0, out + err
    assert "2 of 2 stage(s) to run (--jobs 2)" in out
    lines = out.splitlines()
    assert any(line.startswith("[1/2] left (python): running") for line in lines)
    assert any(line.startswith("[2/2] right (python): running") for line in lines)
    assert any(line.startswith("[1/2] left: done in") for line in lines)
    assert any(line.startswith("[2/2] right: done in") for line in lines)
    assert "    left | met right" in lines and "    right | met left" in lines  # streamed, prefixed
    lock = yaml.safe_load((tmp_path / "hubflow.lock").read_text())
    hub = LocalHub(tmp_path / ".hubflow" / "hub")
    for name, other in (("left", "right"), ("right", "left")):
        ref = lock["stages"][name]["outputs"]["output"]
        commit = ref.rsplit("@", 1)[1]
        repo = RepoRef("dataset", f"t/{name}")
        assert hub.resolve(repo, "main") == commit
        assert hub.read_file(repo, "met.txt", commit) == other.encode()
        assert not [b for b in hub.list_refs(repo).branches if b != "main"]  # leases released


FAILING = """
stages:
  - {name: boom, kind: python, function: 'steps:boom', output: 'dataset:t/boom', params: {after: 0.3}}
  - {name: after, kind: python, inputs: {x: boom}, function: 'steps:slow_ok', output: 'dataset:t/after'}
  - {name: beside, kind: python, function: 'steps:slow_ok', output: 'dataset:t/beside', params: {seconds: 1.5}}
  - {name: later, kind: python, inputs: {x: beside}, function: 'steps:slow_ok', output: 'dataset:t/later'}
"""


@pytest.mark.parametrize("keep_going", [False, True], ids=["stop", "keep-going"])
def test_a_failure_stops_its_dependents_and_never_kills_a_running_sibling(
    tmp_path: Path, cli, keep_going: bool
) -> None:
    manifest = write(tmp_path, FAILING)
    code, out, err = cli("run", manifest, "--jobs", "2", "--quiet", *(["--keep-going"] if keep_going else []))
    assert code == 1
    assert "boom: FAILED after" in out and "the stage broke on purpose" not in out
    assert "beside: done in" in out  # it was running when boom failed: it finishes and publishes
    assert "after: not run, it depends on failed stage 'boom'" in out
    lock = yaml.safe_load((tmp_path / "hubflow.lock").read_text())["stages"]
    if keep_going:  # independent stages keep starting
        assert set(lock) == {"beside", "later"} and "later: done in" in out
    else:  # nothing new starts after a failure, as with --jobs 1
        assert set(lock) == {"beside"} and "not run: later" in err
    assert "not run: after (after the failure of 'boom')" in err


RACE = """
hub: {{backend: local, root: '{store}'}}
stages:
  - {{name: shared, kind: python, function: 'steps:count', output: 'dataset:t/shared',
     params: {{tally: '{tally}', seconds: 1.0}}}}
"""


def test_two_launchers_racing_on_one_stage_run_it_once(tmp_path: Path) -> None:
    """Two `hubflow run`s (two Runners in threads, two folders, one store): one trains, the other
    waits on its lease and reuses the result."""
    from hubflow.project import Project
    from hubflow.runner import Runner

    store, tally = tmp_path / "store", tmp_path / "tally.txt"
    said: dict[str, list[str]] = {"a": [], "b": []}
    summaries = {}
    barrier = threading.Barrier(2)

    def launch(who: str) -> None:
        manifest = write(tmp_path / who, RACE.format(store=store, tally=tally))
        project = Project.load(manifest)
        plan = project.plan()
        barrier.wait()
        runner = Runner(project, echo=said[who].append, stream_logs=False, jobs=1, lease_timeout=30)
        summaries[who] = runner.run(plan)

    threads = [threading.Thread(target=launch, args=(w,)) for w in said]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(tally.read_text().splitlines()) == 1  # trained once
    assert sorted(len(s.ran) for s in summaries.values()) == [0, 1]
    waiter = next(w for w, s in summaries.items() if not s.ran)
    assert summaries[waiter].skipped == ["shared"] and summaries[waiter].ok
    assert any("shared: waiting: " in line for line in said[waiter])
    assert any("shared: reused the result another launcher published" in line for line in said[waiter])
    locks = [yaml.safe_load((tmp_path / w / "hubflow.lock").read_text()) for w in said]
    assert locks[0]["stages"]["shared"]["outputs"] == locks[1]["stages"]["shared"]["outputs"]


def test_a_stale_lease_left_by_a_crashed_launcher_is_taken_over(tmp_path: Path, cli) -> None:
    import json
    from dataclasses import asdict

    from hubflow import lease
    from hubflow.hub.local import LocalHub
    from hubflow.project import Project
    from hubflow.refs import RepoRef

    store, tally = tmp_path / "store", tmp_path / "tally.txt"
    manifest = write(
        tmp_path / "p", RACE.format(store=store, tally=tally).replace("seconds: 1.0", "seconds: 0")
    )
    fp = Project.load(manifest).plan()[0].fingerprint
    hub, repo = LocalHub(store), RepoRef("dataset", "t/shared")
    hub.create_repo(repo)
    ghost = tmp_path / "ghost"
    ghost.mkdir()
    crashed = lease.Owner("g" * 32, "another-machine", 4242, None, "shared", fp, time.time() - 3600)
    (ghost / lease.LEASE_FILE).write_text(json.dumps(asdict(crashed)))
    hub.commit_folder(repo, ghost, message="a lease left behind", branch=lease.lease_branch(fp))
    code, out, err = cli("run", manifest, "--quiet")
    assert code == 0, out + err
    assert (
        "shared: took over the stale lease of another-machine pid 4242: its last heartbeat is 3600s old"
        in out
    )
    assert len(tally.read_text().splitlines()) == 1
    assert set(hub.list_refs(repo).branches) == {"main"}  # released after publishing


HANGING = """
stages:
  - {{name: one, kind: python, function: 'steps:hang', output: 'dataset:t/one', params: {{dir: '{d}', me: one}}}}
  - {{name: two, kind: python, function: 'steps:hang', output: 'dataset:t/two', params: {{dir: '{d}', me: two}}}}
"""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is gone for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def test_sigterm_stops_every_running_stage(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    pids.mkdir()
    manifest = write(tmp_path, HANGING.format(d=pids))
    exe = Path(sys.executable).with_name("hubflow")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "hubflow.cli"]
    proc = subprocess.Popen(
        [*cmd, "run", str(manifest), "--jobs", "2", "--quiet"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 60
    while len(list(pids.iterdir())) < 2:
        assert time.monotonic() < deadline and proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        time.sleep(0.05)
    stages = [int(p.read_text()) for p in pids.iterdir()]
    assert all(alive(pid) for pid in stages)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert not [pid for pid in stages if alive(pid)], out
