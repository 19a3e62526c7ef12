"""reward and the grown evaluate validate, describe and fingerprint without importing torch & co. (what
`hubflow validate` and `plan` do with a kind)."""

import subprocess
import sys

PROBE = """
import sys
from stages import evaluate, reward
cfg = reward.Config(name="rm", kind="reward", inputs={"model": "sft", "prefs": "tasks.preferences"},
                    output="model:t/rm", ensemble=2, ensemble_data="disjoint", peft={"method": "lora"})
assert reward.describe(cfg) and cfg.settings()["ensemble"] == 2
ev = evaluate.Config(name="e", kind="evaluate", inputs={"model": "dpo", "reference": "sft", "reward": "rm",
                     "prefs": "tasks.preferences"}, output="dataset:t/e")
assert ev.settings()["reward_aggregate"] == "min"
heavy = [m for m in ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "pyarrow") if m in sys.modules]
print("HEAVY", heavy)
"""


def test_reward_and_evaluate_configs_stay_light():
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "HEAVY []" in proc.stdout, proc.stdout
