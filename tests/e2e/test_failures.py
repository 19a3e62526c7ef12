"""Failing stages and bad input: exit codes, messages, nothing half-published."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

FAILING = """
stages:
  - name: boom
    kind: python
    function: steps:boom
    output: dataset:demo/boom
  - name: after
    kind: python
    inputs: {x: boom}
    function: steps:ok
    output: dataset:demo/after
  - name: independent
    kind: python
    function: steps:ok
    output: dataset:demo/independent
"""

STEPS = """
def boom(inputs, output, params):
    (output / "partial.bin").write_bytes(b"half")
    raise RuntimeError("the stage broke on purpose")


def ok(inputs, output, params):
    (output / "ok.txt").write_text("ok")
    return {"ok": 1}
"""


@pytest.fixture
def failing(tmp_path: Path, write_manifest):
    (tmp_path / "steps.py").write_text(textwrap.dedent(STEPS))
    return write_manifest(FAILING)


def test_failed_stage_publishes_nothing_and_stops_dependents(failing, cli):
    from hubflow.hub.local import LocalHub
    from hubflow.refs import RepoRef

    code, out, err = cli("run", failing, "--quiet")
    assert code == 1
    assert "stage 'boom' failed (exit status 1)" in err and "log: " in err
    log = Path(err.split("log: ")[1].split()[0])
    assert "the stage broke on purpose" in log.read_text()
    assert "not run: after" in err and "not run: independent" in err
    hub = LocalHub(failing.parent / ".hubflow" / "hub")
    assert (
        not hub.repo_exists(RepoRef("dataset", "demo/boom"))
        or not hub.list_refs(RepoRef("dataset", "demo/boom")).branches
    )
    assert not (failing.parent / "hubflow.lock").exists()


def test_keep_going_runs_independent_stages(failing, cli):
    code, out, err = cli("run", failing, "--quiet", "--keep-going")
    assert code == 1
    assert "independent: done" in out
    assert "after: not run, it depends on failed stage 'boom'" in out


def test_a_stage_input_error_is_reported_with_its_fix(tmp_path, write_manifest, cli):
    (tmp_path / "steps.py").write_text("x = 1\n")
    path = write_manifest(
        "stages:\n  - {name: s, kind: python, function: 'steps:missing', output: 'dataset:a/b'}\n"
    )
    code, out, err = cli("run", path)  # streaming the stage's output too
    assert code == 2  # a user error, wherever it is found (issue 9 item 10)
    assert (
        "'steps' has no function 'missing'" in err
        and "fix: define `def missing(inputs, output, params)`" in err
    )
    assert (out + err).count("has no function 'missing'") == 1  # said once
    assert "s: stopped on a user error" in out and "Traceback" not in out + err


def test_a_second_run_fails_clearly_while_one_holds_the_manifest(failing, cli):
    from filelock import FileLock

    state = failing.parent / ".hubflow"
    state.mkdir()
    with FileLock(str(state / "run.lock")):
        code, _, err = cli("run", failing, "--quiet")
    assert code == 2 and "another `hubflow run` is running" in err and "--wait" in err


BAD = {
    "cycle": (
        "stages:\n"
        "  - {name: a, kind: python, function: 'm:f', inputs: {x: b}, output: 'dataset:t/a'}\n"
        "  - {name: b, kind: python, function: 'm:f', inputs: {x: a}, output: 'dataset:t/b'}\n",
        "the stages form a cycle: a -> b -> a",
    ),
    "dangling": (
        "stages:\n  - {name: a, kind: python, function: 'm:f', inputs: {x: ghost}, output: 'dataset:t/a'}\n",
        "'ghost' names no stage and is not a ref",
    ),
    "shared-output": (
        "stages:\n"
        "  - {name: a, kind: python, function: 'm:f', output: 'dataset:t/a'}\n"
        "  - {name: b, kind: python, function: 'm:f', output: 'dataset:t/a'}\n",
        "stages 'a' and 'b' both write dataset:t/a",
    ),
    "unknown-kind": (
        "stages:\n  - {name: a, kind: sft2, output: 'model:t/a'}\n",
        "unknown stage kind 'sft2'",
    ),
    "missing-field": (
        "stages:\n  - {name: a, kind: ingest, output: 'dataset:t/a'}\n",
        "field `source` is required",
    ),
    "bad-ref": (
        "stages:\n  - {name: a, kind: python, function: 'm:f', inputs: {m: 'model:org/../x'}, output: 'dataset:t/a'}\n",
        "stage 'a'",
    ),
    "missing-source": (
        "stages:\n  - {name: a, kind: ingest, source: {paths: ['nothing/*.csv']}, output: 'dataset:t/a'}\n",
        "'nothing/*.csv' matches no file",
    ),
    "stage-name-300-chars": (
        f"stages:\n  - {{name: {'n' * 300}, kind: python, function: 'm:f', output: 'dataset:t/a'}}\n",
        "field `name`: String should have at most 100 characters",
    ),
    "params-500-deep": (
        "stages:\n  - {name: a, kind: python, function: 'm:f', output: 'dataset:t/a', params: "
        + "{a: " * 500
        + "1"
        + "}" * 500
        + "}\n",
        "nested more than 64 levels deep",
    ),
    "duplicate-output": (
        "stages:\n  - name: a\n    kind: python\n    function: m:f\n    output: dataset:t/a\n"
        "    output: dataset:t/b\n",
        "line 6: key 'output' appears twice in one mapping (first on line 5)",
    ),
    "not-text": (
        "stages:\n\udcff\udcfe",  # lone surrogates: written as the raw bytes 0xff 0xfe
        "is not UTF-8 text (byte 0xff at offset 8)",
    ),
    "missing-external": (
        "stages:\n  - {name: a, kind: python, function: 'm:f', inputs: {m: 'model:org/base'}, output: 'dataset:t/a'}\n",
        "model:org/base does not exist in the hub",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_manifests_exit_2_with_a_clear_message_and_no_traceback(case, tmp_path):
    body, expected = BAD[case]
    (tmp_path / "m.py").write_text("def f(inputs, output, params):\n    pass\n")
    path = tmp_path / "hubflow.yaml"
    path.write_bytes(body.encode("utf-8", "surrogateescape"))
    verb = "plan" if case == "missing-external" else "validate"
    proc = subprocess.run(
        [sys.executable, "-m", "hubflow.cli", verb, str(path)], capture_output=True, text=True, cwd=tmp_path
    )
    assert proc.returncode == 2, proc.stderr
    assert expected in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.startswith("error: ")


def _as_readonly(folder: Path, argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` with ``folder`` read-only: a private read-only bind mount (root, which file
    modes do not stop: CI runs as root), or file modes for anyone else."""
    if os.geteuid() != 0:
        for path in [folder, *folder.rglob("*")]:
            if path.is_dir():
                path.chmod(0o555)
        try:
            return subprocess.run(argv, capture_output=True, text=True, cwd=cwd)
        finally:
            for path in [folder, *folder.rglob("*")]:
                if path.is_dir():
                    path.chmod(0o755)
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1) to mount a read-only folder")
    script = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" "$1" && shift && exec "$@"'
    proc = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", str(folder), *argv],
        capture_output=True,
        text=True,
        cwd=cwd,
    )
    if proc.returncode != 0 and ("unshare:" in proc.stderr or "mount:" in proc.stderr):
        pytest.skip(f"cannot make a read-only mount here: {proc.stderr.strip()[:200]}")
    return proc


def test_a_read_only_store_is_one_message_before_any_stage_runs(tmp_path: Path) -> None:
    (tmp_path / "steps.py").write_text(textwrap.dedent(STEPS))
    (tmp_path / "store").mkdir()
    path = tmp_path / "hubflow.yaml"
    path.write_text(
        "hub: {root: store}\n" + FAILING.split("  - name: after")[0].replace("steps:boom", "steps:ok")
    )
    from hubflow.hub.local import LocalHub

    LocalHub(tmp_path / "store")  # an existing store, made read-only below
    cli = [sys.executable, "-m", "hubflow.cli"]
    plan = _as_readonly(tmp_path / "store", [*cli, "plan", str(path)], tmp_path)
    assert plan.returncode == 0, plan.stderr  # planning only reads the store
    proc = _as_readonly(tmp_path / "store", [*cli, "run", str(path), "--quiet"], tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.startswith(f"error: cannot write the local store at {tmp_path / 'store'}: ")
    assert "fix: make the store writable" in proc.stderr and "Traceback" not in proc.stderr
    assert "boom (python): running" not in proc.stdout  # refused before running anything
