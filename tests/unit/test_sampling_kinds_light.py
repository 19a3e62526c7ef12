"""best_of_n, online_dpo and cai validate, describe and fingerprint without importing torch & co. (what
`hubflow validate` and `plan` do with a kind)."""

import subprocess
import sys

PROBE = """
import sys
from stages import best_of_n, cai, online_dpo
io = {"model": "sft", "prompts": "tasks.prompts"}
configs = [
    best_of_n.Config(name="b", kind="best_of_n", inputs=io, reward="synthetic",
                     outputs={"candidates": "dataset:t/c", "best": "dataset:t/b"}),
    online_dpo.Config(name="o", kind="online_dpo", inputs={**io, "reward": "rm"},
                      outputs={"policy": "model:t/p", "pairs": "dataset:t/q"}),
    cai.Config(name="c", kind="cai", inputs=io, outputs={"revisions": "dataset:t/r", "preferences": "dataset:t/s"}),
]
for module, cfg in zip((best_of_n, online_dpo, cai), configs):
    assert module.describe(cfg) and module.fingerprint_extra(cfg, None)["judge_sha256"]
    assert cfg.settings()["kind"] == cfg.kind
heavy = [m for m in ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "pyarrow") if m in sys.modules]
print("HEAVY", heavy)
"""


def test_the_sampling_kinds_stay_light():
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "HEAVY []" in proc.stdout, proc.stdout
