"""Multi-node resources (hubflow/launch/machines.py): checked when the manifest loads, without torch;
the accelerate launch command of one machine rank; the local launcher's ranks fail together."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest

from hubflow.launch import launch_command
from hubflow.launch.machines import Machines, Rank, local_ranks
from hubflow.launch.process import group_alive, new_attempt, read_owner, run_ranks
from hubflow.stage import HASHED_UNLESS_DEFAULT, Resources

STAGE = """
stages:
  - name: lm
    kind: python
    function: work:run
    resources: {resources}
    output: model:demo/lm
"""


def _manifest(write_manifest, resources: str, accelerate: str | None = None) -> Path:
    path = write_manifest(STAGE.format(resources=resources))
    (path.parent / "work.py").write_text("def run(output):\n    (output / 'x').write_text('1')\n")
    if accelerate is not None:
        (path.parent / "acc.yaml").write_text(accelerate)
    return path


def _validate(cli, path: Path) -> tuple[int, str]:
    code, out, err = cli("validate", path)
    return code, out + err


def test_num_machines_below_one_is_refused(write_manifest, cli):
    code, text = _validate(cli, _manifest(write_manifest, "{num_machines: 0}"))
    assert code == 2
    assert "field `resources.num_machines`: Input should be greater than or equal to 1" in text


def test_the_accelerate_config_disagreeing_on_num_machines_is_refused(write_manifest, cli):
    path = _manifest(write_manifest, "{num_machines: 2, accelerate_config: acc.yaml}", "num_machines: 3\n")
    code, text = _validate(cli, path)
    assert code == 2
    assert "resources.num_machines is 2 but the accelerate config acc.yaml has num_machines: 3" in text
    assert "fix: set both to the same number, or drop resources.num_machines" in text


def test_the_accelerate_configs_machines_and_port_are_used(write_manifest):
    from hubflow.launch.machines import machines_of
    from hubflow.manifest import load_manifest

    path = _manifest(
        write_manifest, "{accelerate_config: acc.yaml}", "num_machines: 2\nmain_process_port: 29511\n"
    )
    res = load_manifest(path).stages["lm"].resources
    assert res.num_machines == 2  # the plan, the fingerprint and the launcher see the config's number
    assert machines_of(res, path.parent) == Machines(2, None, 29511)
    assert [
        (r.machine_rank, r.main_process_ip, r.main_process_port)
        for r in local_ranks(Machines(2, None, 29511))
    ] == [
        (0, "127.0.0.1", 29511),
        (1, "127.0.0.1", 29511),
    ]


@pytest.mark.parametrize(
    ("resources", "config", "message", "fix"),
    [
        (
            "{num_machines: 2, main_process_port: 29500, accelerate_config: acc.yaml}",
            "main_process_port: 29600\n",
            "resources.main_process_port is 29500 but the accelerate config acc.yaml has main_process_port: 29600",
            "set one of them, or both to the same port",
        ),
        (
            "{accelerate_config: acc.yaml}",
            "num_machines: 2\nmain_process_ip: 10.0.0.5\n",
            "sets main_process_ip: 10.0.0.5, but `launcher: local` runs every machine rank on this host",
            "run `accelerate launch` on each machine outside hubflow",
        ),
        (
            "{launcher: ray, accelerate_config: acc.yaml}",
            "num_machines: 2\nmain_process_ip: 10.0.0.5\n",
            "with `launcher: ray` rank 0's node is picked by Ray",
            "remove main_process_ip from the accelerate config",
        ),
        (
            "{accelerate_config: acc.yaml}",
            "num_machines: two\n",
            "the accelerate config acc.yaml has num_machines: 'two'",
            "set num_machines in the accelerate config to a whole number >= 1",
        ),
        (
            "{accelerate_config: missing.yaml}",
            None,
            "resources.accelerate_config: cannot read",
            "write the file (`accelerate config --config_file PATH`)",
        ),
    ],
)
def test_bad_machine_settings_fail_at_validate(write_manifest, cli, resources, config, message, fix):
    code, text = _validate(cli, _manifest(write_manifest, resources, config))
    assert code == 2
    assert message in text and f"fix: {fix}" in text


PLAN_PROBE = """
import sys
from hubflow.cli import main
code = main(["plan", sys.argv[1]])
print("HEAVY", [m for m in ("torch", "transformers", "accelerate") if m in sys.modules])
sys.exit(code)
"""


def test_plan_of_a_multi_node_stage_imports_no_torch(write_manifest, tmp_path):
    path = _manifest(write_manifest, "{accelerate_config: acc.yaml}", "num_machines: 2\n")
    proc = subprocess.run(
        [sys.executable, "-c", PLAN_PROBE, str(path)], capture_output=True, text=True, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout and "run   lm" in proc.stdout


def test_num_machines_enters_the_fingerprint_only_when_not_one():
    assert Resources.model_fields["num_machines"].json_schema_extra == HASHED_UNLESS_DEFAULT
    from hubflow.stage import _hashed

    assert "num_machines" not in _hashed(Resources(), Resources().model_dump(mode="json"))
    two = Resources(num_machines=2)
    assert _hashed(two, two.model_dump(mode="json"))["num_machines"] == 2


def test_one_machine_rank_is_one_accelerate_launch(tmp_path):
    res = Resources(num_processes=2, num_machines=2, cpu=True)
    cmd, env = launch_command(res, tmp_path / "spec.json", tmp_path, Rank(1, 2, "10.0.0.5", 29501))
    text = " ".join(cmd)
    # accelerate's --num_processes is the total over all machines; resources.num_processes is per machine
    assert "--num_processes 4 --num_machines 2 --machine_rank 1 --main_process_ip 10.0.0.5" in text
    assert "--main_process_port 29501 --multi_gpu" in text and text.endswith(
        f"-m hubflow.worker {tmp_path}/spec.json"
    )
    assert env["ACCELERATE_USE_CPU"] == "1"
    one = Resources(num_machines=2, cpu=True)  # one process per machine still needs the distributed launcher
    assert "--multi_gpu" in launch_command(one, tmp_path / "s", tmp_path, Rank(0, 2, "127.0.0.1", 1))[0]


def _py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_a_failing_rank_stops_the_others(tmp_path):
    attempt = new_attempt(tmp_path / "work", tmp_path / "hubflow.yaml")
    lines: list[bytes] = []
    log = open(tmp_path / "stage.log", "wb")
    with log:
        code = run_ranks(
            [
                (_py("import time; print('waiting', flush=True); time.sleep(600)"), {}),
                (_py("import sys; print('broken', flush=True); sys.exit(7)"), {}),
            ],
            attempt,
            log,
            timeout=300,
            on_line=lines.append,
        )
    assert code == 7
    assert b"[m1] broken\n" in lines
    owner = read_owner(attempt)
    assert owner is not None and len(owner.more_workers) == 1  # both ranks recorded for orphan clean-up
    assert not group_alive(owner.worker_pid) and not group_alive(owner.more_workers[0][0])
    assert b"[m1] broken" in (tmp_path / "stage.log").read_bytes()


def test_ranks_past_the_timeout_are_killed_and_a_stop_cancels(tmp_path):
    from hubflow.launch.process import Cancelled

    attempt = new_attempt(tmp_path / "work", tmp_path / "hubflow.yaml")
    sleeper = (_py("import time; time.sleep(600)"), {})
    with open(tmp_path / "log", "wb") as log:
        assert run_ranks([sleeper, sleeper], attempt, log, timeout=0.5, on_line=lambda _: None) is None
        stop = threading.Event()
        stop.set()
        with pytest.raises(Cancelled):
            run_ranks([sleeper, sleeper], attempt, log, timeout=None, on_line=lambda _: None, stop=stop)
    owner = read_owner(attempt)
    assert owner is not None and not group_alive(owner.worker_pid)


def test_one_machine_ddp_gets_its_own_port(tmp_path) -> None:
    """Two DDP stages side by side (`--jobs 2`) would both bind accelerate's default 29500."""
    from hubflow.launch.accelerate import accelerate_command
    from hubflow.stage import Resources

    cmd, _ = accelerate_command(Resources(num_processes=2, cpu=True), tmp_path)
    assert cmd[cmd.index("--main_process_port") + 1] == "0"  # accelerate picks a free one
    cmd, _ = accelerate_command(Resources(num_processes=2, cpu=True, main_process_port=29611), tmp_path)
    assert cmd[cmd.index("--main_process_port") + 1] == "29611"
    assert "--main_process_port" not in accelerate_command(Resources(num_processes=1), tmp_path)[0]


def test_ray_multi_node_is_refused_until_it_is_built(tmp_path) -> None:
    from hubflow.launch.machines import ResourcesError, check_machines
    from hubflow.stage import Resources

    with pytest.raises(ResourcesError, match="does not launch multi-node stages on Ray yet") as exc:
        check_machines(Resources(num_machines=2, launcher="ray"), tmp_path, "stage 'lm'")
    assert "launcher: local" in exc.value.hint
