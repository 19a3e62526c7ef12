"""User code beside a manifest: never executed by validate/plan, never shadowing hubflow's
packages, stdlib functions refused (issue 9 items 1-2, issue 10 item 3)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

HUBFLOW = Path(sys.executable).with_name("hubflow")  # the console script a user runs


def hubflow(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    exe = [str(HUBFLOW)] if HUBFLOW.exists() else [sys.executable, "-P", "-m", "hubflow.cli"]
    return subprocess.run([*exe, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=300)


def write(folder: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


MARK = "import pathlib; pathlib.Path(__file__).with_name('EXECUTED-' + __name__.replace('.', '-')).touch()\n"


def executed(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("EXECUTED-*"))


def test_validate_and_plan_hash_a_package_module_without_running_its_init(tmp_path: Path) -> None:
    """The attack: a PR adds evil/__init__.py; CI's validate/plan imported it to hash evil/mod.py."""
    write(
        tmp_path,
        {
            "evil/__init__.py": MARK,
            "evil/mod.py": MARK + "def f(inputs, output, params):\n    (output / 'x.txt').write_text('x')\n",
            "hubflow.yaml": "stages:\n  - {name: s, kind: python, function: 'evil.mod:f', output: 'dataset:t/s'}\n",
        },
    )
    for verb in ("validate", "plan"):
        proc = hubflow(verb, "hubflow.yaml", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert executed(tmp_path) == [], f"`hubflow {verb}` executed code from the manifest's folder"
    before = hubflow("plan", "--json", cwd=tmp_path).stdout
    (tmp_path / "evil" / "mod.py").write_text((tmp_path / "evil" / "mod.py").read_text() + "# edited\n")
    assert hubflow("plan", "--json", cwd=tmp_path).stdout != before  # the source is still hashed
    proc = hubflow("run", "hubflow.yaml", "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert executed(tmp_path) == ["EXECUTED-hubflow_user-evil", "EXECUTED-hubflow_user-evil-mod"]


@pytest.mark.parametrize("function", ["os:system", "builtins:eval", "subprocess:run", "os.path:join"])
def test_a_standard_library_function_is_refused_as_not_a_stage_function(
    tmp_path: Path, function: str
) -> None:
    write(
        tmp_path,
        {
            "hubflow.yaml": f"stages:\n  - {{name: s, kind: python, function: '{function}', output: 'dataset:t/s'}}\n"
        },
    )
    proc = hubflow("validate", "hubflow.yaml", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    module = function.partition(":")[0]
    assert f"stage 's': function '{function}': '{module}' is a standard-library module" in proc.stderr
    assert "`def f(inputs, output, params)`" in proc.stderr and "beside the manifest" in proc.stderr
    assert "put os.py" not in proc.stderr


def test_a_missing_module_says_where_it_was_looked_for(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "hubflow.yaml": "stages:\n  - {name: s, kind: python, function: 'nowhere.mod:f', output: 'dataset:t/s'}\n"
        },
    )
    proc = hubflow("validate", "hubflow.yaml", cwd=tmp_path)
    assert proc.returncode == 2
    assert (
        "module 'nowhere.mod' not found: no nowhere/mod.py or nowhere/mod/__init__.py beside the manifest"
        in proc.stderr
    )
    assert "fix: put nowhere/mod.py beside the manifest, or install the package that holds it" in proc.stderr


COLLIDING = """
stages:
  - name: raw
    kind: ingest
    source: {paths: ["data.jsonl"]}
    output: dataset:t/raw
  - name: from-stages
    kind: python
    inputs: {docs: raw}
    function: stages:make
    output: dataset:t/a
  - name: from-hubflow
    kind: python
    function: hubflow:make
    output: dataset:t/b
  - name: from-json
    kind: python
    function: json:make
    output: dataset:t/c
"""

USER_MODULE = """
from . import helpers  # a sibling, through the private package


def make(inputs, output, params):
    (output / "made.txt").write_text(helpers.WHO + " " + __name__)
"""


@pytest.mark.parametrize("cwd", ["manifest folder", "elsewhere"])
def test_user_modules_named_like_hubflow_packages_work_everywhere(tmp_path: Path, cwd: str) -> None:
    """stages.py, hubflow.py and json.py beside the manifest shadowed hubflow's packages."""
    project = tmp_path / "project"
    write(
        project,
        {
            "hubflow.yaml": COLLIDING,
            "data.jsonl": '{"text": "a"}\n',
            "stages.py": MARK + USER_MODULE,
            "hubflow.py": MARK + USER_MODULE.replace("from . import helpers", "import helpers"),  # plain
            "json.py": MARK + USER_MODULE,
            "helpers.py": "WHO = 'user'\n",
        },
    )
    where = project if cwd == "manifest folder" else tmp_path
    for verb in ("validate", "plan"):
        proc = hubflow(verb, project / "hubflow.yaml", cwd=where)
        assert proc.returncode == 0, proc.stderr
    assert executed(project) == []
    proc = hubflow("run", project / "hubflow.yaml", "--quiet", cwd=where)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "4 ran" in proc.stdout
    from hubflow.hub.local import LocalHub
    from hubflow.refs import RepoRef

    hub = LocalHub(project / ".hubflow" / "hub")
    for repo, module in (("t/a", "stages"), ("t/b", "hubflow"), ("t/c", "json")):
        made = hub.read_file(RepoRef("dataset", repo), "made.txt").decode()
        assert made == f"user hubflow_user.{module}"
