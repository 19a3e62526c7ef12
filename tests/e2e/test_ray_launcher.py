"""`resources.launcher: ray` against a real Ray cluster started here (`ray start --head` on
127.0.0.1, stopped after): stages run as Ray tasks, publish as single commits with lineage,
stream their log back, and a failing remote stage is the usual StageFailed with its log."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

if importlib.util.find_spec("ray") is None:  # not imported here: Ray reads its auth settings once
    pytest.skip("ray is not installed", allow_module_level=True)
RAY = Path(sys.executable).with_name("ray")

STEPS = """
import os, pathlib, time

def parent():
    ppid = os.getppid()
    return pathlib.Path(f"/proc/{ppid}/cmdline").read_bytes().replace(b"\\0", b" ").decode()

def make(inputs, output, params):
    t0 = time.time()
    print("hello from", params["tag"], flush=True)
    time.sleep(params.get("sleep", 0))
    (output / "where.json").write_text(__import__("json").dumps(
        {"parent": parent(), "start": t0, "end": time.time(), "tag": params["tag"]}))
    return {"tag_len": len(params["tag"])}

def boom(inputs, output, params):
    print("about to fail", flush=True)
    raise RuntimeError("remote stage exploded")
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_head(port: int, head: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert head.poll() is None, "ray start --head exited"
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise AssertionError("the Ray head did not open its port in 60 s")


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    if not RAY.exists():
        pytest.skip("the `ray` command is not installed")
    port = _free_port()
    temp = tmp_path_factory.mktemp("ray")
    # this cluster's own token: ~/.ray/auth_token is shared with every other Ray on the machine
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32), "RAY_USAGE_STATS_ENABLED": "0"}
    env = {**os.environ, **auth}
    # `--block` in its own session: stopped by its process group (`ray stop` stops every cluster here)
    head = subprocess.Popen(
        [
            str(RAY),
            "start",
            "--head",
            "--block",
            "--node-ip-address",
            "127.0.0.1",
            "--port",
            str(port),
            "--num-cpus",
            "2",
            "--include-dashboard=false",
            "--disable-usage-stats",
            "--temp-dir",
            str(temp),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    try:
        _wait_for_head(port, head)
        with pytest.MonkeyPatch.context() as mp:  # the driver (this process) needs the token too
            for key, value in auth.items():
                mp.setenv(key, value)
            try:
                yield f"127.0.0.1:{port}"
            finally:
                import ray

                ray.shutdown()
    finally:
        with contextlib.suppress(ProcessLookupError):  # the head and every process it started
            os.killpg(head.pid, signal.SIGKILL)
        head.wait()
        shutil.rmtree(temp, ignore_errors=True)


def hubflow_cli(*args: object, cwd: Path) -> tuple[int, str, str]:
    """`hubflow ARGS` in its own process: the Ray driver is that process, never pytest's (a driver's
    Ray state outlives ray.shutdown() and would break later in-process Ray users such as curate's
    ray executor)."""
    exe = Path(sys.executable).with_name("hubflow")
    proc = subprocess.run([str(exe), *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


def test_two_stages_run_on_the_ray_cluster_and_publish_one_commit_each(ray_cluster, tmp_path):
    (tmp_path / "steps.py").write_text(STEPS)
    manifest = tmp_path / "hubflow.yaml"
    manifest.write_text(
        textwrap.dedent(f"""
        cluster: {{address: "{ray_cluster}"}}
        stages:
          - {{name: a, kind: python, function: "steps:make", params: {{tag: aa, sleep: 1}},
              output: "dataset:t/a", resources: {{launcher: ray, cpus: 1}}}}
          - {{name: b, kind: python, function: "steps:make", params: {{tag: bbb, sleep: 1}},
              output: "dataset:t/b", resources: {{launcher: ray, cpus: 1}}}}
    """)
    )
    code, out, err = hubflow_cli("run", manifest, "--jobs", "2", cwd=tmp_path)
    assert code == 0, out + err
    assert "hello from aa" in out and "hello from bbb" in out  # the remote log streamed back
    lock = yaml.safe_load((tmp_path / "hubflow.lock").read_text())
    from hubflow.hub.local import LocalHub

    hub = LocalHub(tmp_path / ".hubflow" / "hub")
    from hubflow.refs import parse_ref

    for name, tag in (("a", "aa"), ("b", "bbb")):
        ref = parse_ref(lock["stages"][name]["outputs"]["output"])
        assert len(hub.list_commits(ref.repo, "main")) == 1
        snap = tmp_path / f"snap-{name}"
        hub.snapshot(ref.repo, ref.revision, snap)
        where = json.loads((snap / "where.json").read_text())
        assert where["tag"] == tag and "ray::" in where["parent"], where  # a Ray worker started it
        assert json.loads((snap / "lineage.json").read_text())["stage"] == name
        assert json.loads((snap / "metrics.json").read_text()) == {"tag_len": len(tag)}
    code, out, _ = hubflow_cli("run", manifest, cwd=tmp_path)  # cached: nothing runs again
    assert code == 0 and "0 of 2 stage(s) to run" in out


def test_a_failing_remote_stage_is_a_stage_failure_with_its_log(ray_cluster, tmp_path):
    (tmp_path / "steps.py").write_text(STEPS)
    manifest = tmp_path / "hubflow.yaml"
    manifest.write_text(
        textwrap.dedent(f"""
        cluster: {{address: "{ray_cluster}"}}
        stages:
          - {{name: bad, kind: python, function: "steps:boom", output: "dataset:t/bad",
              resources: {{launcher: ray}}}}
    """)
    )
    code, out, err = hubflow_cli("run", manifest, cwd=tmp_path)
    assert code == 1
    assert "stage 'bad' failed (exit status 1); nothing was published" in err
    log = next((tmp_path / ".hubflow" / "logs" / "bad").glob("*/stage.log")).read_text()
    assert "about to fail" in log and "remote stage exploded" in log
    from hubflow.hub.local import LocalHub
    from hubflow.refs import parse_repo

    hub, repo = LocalHub(tmp_path / ".hubflow" / "hub"), parse_repo("dataset:t/bad")
    assert not hub.repo_exists(repo) or not hub.list_refs(repo).branches  # the lease's repo holds no result


SLEEPER = """
import os, pathlib, time
def sleep(inputs, output, params):
    pathlib.Path(params["pidfile"]).write_text(str(os.getpid()))
    print("sleeping", flush=True)
    time.sleep(300)
"""


def test_ctrl_c_in_hubflow_run_stops_the_remote_stage(ray_cluster, tmp_path):
    (tmp_path / "sleeper.py").write_text(SLEEPER)
    pidfile = tmp_path / "stage.pid"
    (tmp_path / "hubflow.yaml").write_text(
        f'cluster: {{address: "{ray_cluster}"}}\n'
        "stages:\n"
        f'  - {{name: z, kind: python, function: "sleeper:sleep", params: {{pidfile: "{pidfile}"}}, '
        'output: "dataset:t/z", resources: {launcher: ray}}\n'
    )
    exe = Path(sys.executable).with_name("hubflow")
    run = subprocess.Popen(
        [str(exe), "run", "hubflow.yaml"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + 120
    while not pidfile.exists():
        assert run.poll() is None and time.monotonic() < deadline, run.stdout.read().decode()
        time.sleep(0.1)
    pid = int(pidfile.read_text())
    os.kill(pid, 0)  # the stage runs (on the cluster's only node: this machine)
    run.send_signal(signal.SIGINT)
    assert run.wait(timeout=60) != 0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"the remote stage {pid} still runs after Ctrl-C")
