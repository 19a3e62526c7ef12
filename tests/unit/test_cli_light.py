"""`hubflow --help`, `validate` and `plan` never import the heavy stage libraries."""

import subprocess
import sys

HEAVY = ["torch", "transformers", "datatrove", "trl", "peft", "datasets", "accelerate"]

PROBE = """
import sys
from hubflow.cli import main
code = main(sys.argv[1:])
heavy = [m for m in {heavy!r} if m in sys.modules]
print("HEAVY", heavy)
sys.exit(code)
"""


def _probe(*args, cwd):
    proc = subprocess.run(
        [sys.executable, "-c", PROBE.format(heavy=HEAVY), *args], capture_output=True, text=True, cwd=cwd
    )
    return proc


def test_validate_plan_and_schema_stay_light(tmp_path):
    (tmp_path / "hubflow.yaml").write_text(
        "stages:\n  - {name: a, kind: python, function: 'm:f', output: 'dataset:t/a'}\n"
    )
    (tmp_path / "m.py").write_text("def f(inputs, output, params):\n    pass\n")
    for args in (["validate"], ["plan"], ["schema"]):
        proc = _probe(*args, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert "HEAVY []" in proc.stdout, (args, proc.stdout[-300:])
