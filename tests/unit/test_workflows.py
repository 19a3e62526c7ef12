"""The GitHub workflows pass actionlint, and the user-facing hubflow-run.yml does what README says."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

WORKFLOWS = Path(__file__).resolve().parents[2] / ".github" / "workflows"


@pytest.fixture(scope="module")
def actionlint() -> str:
    exe = shutil.which("actionlint")
    if exe is None:
        pytest.skip("actionlint is not installed (it comes with the dev extra: pip install -e '.[dev]')")
    return exe


def lint(exe: str, *files: Path) -> subprocess.CompletedProcess[str]:
    # -shellcheck= -pyflakes=: the same result on every machine, whatever else is installed
    cmd = [exe, "-no-color", "-shellcheck=", "-pyflakes=", *map(str, files)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_workflows_pass_actionlint(actionlint: str) -> None:
    files = sorted(WORKFLOWS.glob("*.yml"))
    assert {f.name for f in files} >= {"ci.yml", "hubflow-run.yml"}
    result = lint(actionlint, *files)
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_does_flag_a_broken_workflow(actionlint: str, tmp_path: Path) -> None:
    bad = tmp_path / ".github" / "workflows" / "bad.yml"
    bad.parent.mkdir(parents=True)
    bad.write_text(
        "on: push\njobs:\n  a:\n    runs-on: ubuntu-latest\n    concurrency: {group: 'x-${{ env.X }}'}\n"
        "    steps:\n      - run: echo '${{ github.event.head_commit.message }}'\n"
    )
    result = lint(actionlint, bad)
    assert result.returncode == 1
    assert '"env" is not allowed here' in result.stdout and "potentially untrusted" in result.stdout


def test_hubflow_run_workflow_shape() -> None:
    wf = yaml.safe_load((WORKFLOWS / "hubflow-run.yml").read_text())
    on = wf.get("on", wf.get(True))  # YAML 1.1 reads a bare `on` as true
    assert set(on) == {"pull_request", "push", "workflow_dispatch"}
    assert on["push"]["branches"] == ["main"] and "**/hubflow.lock" in on["push"]["paths-ignore"]
    assert {"manifest", "stages", "force", "lock_mode"} <= set(on["workflow_dispatch"]["inputs"])
    assert on["workflow_dispatch"]["inputs"]["lock_mode"]["options"] == ["commit", "artifact"]

    check, run = wf["jobs"]["check"], wf["jobs"]["run"]
    check_script = "\n".join(s.get("run", "") for s in check["steps"])
    assert "hubflow validate" in check_script and "plan" in check_script and "--markdown" in check_script
    assert "GITHUB_STEP_SUMMARY" in check_script and "pull_request" in check["if"]

    assert (
        "matrix.manifest" in run["concurrency"]["group"] and run["concurrency"]["cancel-in-progress"] is False
    )
    assert run["permissions"] == {"contents": "write"} and wf["permissions"] == {"contents": "read"}
    steps = {s.get("name"): s for s in run["steps"]}
    assert steps["Run"]["env"]["HF_TOKEN"] == "${{ secrets.HF_TOKEN }}"
    assert "hubflow run" in steps["Run"]["run"] and "inputs.stages" in steps["Run"]["env"]["STAGES"]
    assert "--force" in steps["Run"]["run"] and "inputs.force" in steps["Run"]["env"]["FORCE"]
    assert "git push" in steps["Commit the updated lock"]["run"]
    assert "LOCK_MODE == 'commit'" in steps["Commit the updated lock"]["if"]
    assert steps["Upload the lock and the stage logs"]["uses"].startswith("actions/upload-artifact@")
    assert (
        "LOCK" in steps["Commit the updated lock"]["run"]
        and "hubflow.lock" not in steps["Commit the updated lock"]["run"]
    )
    assert "${MANIFEST%.*}.lock" in steps["Locate the lock"]["run"]  # NAME.lock beside NAME.yaml
    for job in wf["jobs"].values():  # untrusted inputs reach scripts only through env
        for step in job.get("steps", []):
            assert "${{" not in step.get("run", ""), step


def test_the_pull_request_job_gets_no_secrets() -> None:
    """Issue 9 item 1: the job that validates and plans a pull request runs on its files."""
    wf = yaml.safe_load((WORKFLOWS / "hubflow-run.yml").read_text())
    on = wf.get("on", wf.get(True))
    assert "pull_request_target" not in on  # that event would hand a fork's PR the secrets
    check = wf["jobs"]["check"]
    assert "pull_request" in check["if"] and check["permissions"] == {"contents": "read"}
    assert "secrets." not in yaml.safe_dump(check) and "secrets." not in yaml.safe_dump(wf.get("env", {}))
    checkout = next(s for s in check["steps"] if s.get("uses", "").startswith("actions/checkout@"))
    assert checkout["with"]["persist-credentials"] is False
    run = wf["jobs"]["run"]
    assert "pull_request" not in run["if"] and "secrets.HF_TOKEN" in yaml.safe_dump(run)
