"""How many torch threads a stage should use on this machine, by model size, quiet and busy.

For each model size, a fresh process trains a Llama of that size for a few steps (batch 8 x 128 tokens,
AdamW, fp32) with 1 and with all cores' threads, once on a quiet machine and once while another
CPU-bound process spins on one core (what a CI runner or a second stage does). Prints tokens/s and the
ratio all-threads / one-thread: the rule in hubflow/launch/threads.py (`threads: auto`) is read off it.

    python benchmarks/bench_threads.py            # ~3 minutes on 2 cores
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

SIZES = {  # name: (hidden, layers)
    "0.2M": (64, 2),
    "1M": (128, 4),
    "6M": (256, 6),
    "28M": (512, 8),
    "85M": (768, 12),
}
STEPS = {"0.2M": 30, "1M": 20, "6M": 10, "28M": 5, "85M": 3}
CHILD = r"""
import json, sys, time, torch
torch.set_num_threads(int(sys.argv[1]))
from transformers import LlamaConfig, LlamaForCausalLM
hidden, layers, steps = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
cfg = LlamaConfig(vocab_size=2048, hidden_size=hidden, intermediate_size=int(hidden * 8 / 3) // 32 * 32 + 32,
                  num_hidden_layers=layers, num_attention_heads=max(2, hidden // 64), max_position_embeddings=128)
model = LlamaForCausalLM(cfg)
opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
ids = torch.randint(0, 2048, (8, 128))
times = []
for i in range(steps + 1):
    t = time.perf_counter()
    model(input_ids=ids, labels=ids).loss.backward(); opt.step(); opt.zero_grad()
    times.append(time.perf_counter() - t)
params = sum(p.numel() for p in model.parameters())
print(json.dumps({"params": params, "step_s": sorted(times[1:])[len(times[1:]) // 2]}))
"""


def measure(threads: int, size: str) -> dict:
    hidden, layers = SIZES[size]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(threads), str(hidden), str(layers), str(STEPS[size])],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def spinner() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def main() -> None:
    cores = len(os.sched_getaffinity(0))
    print(f"{cores} cores; load average now {os.getloadavg()[0]:.2f} (quiet needs ~0)")
    print("| model | params | quiet 1 thread tok/s | quiet all | all/1 | busy 1 thread | busy all | all/1 |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for size in SIZES:
        row = {}
        for condition in ("quiet", "busy"):
            spin = spinner() if condition == "busy" else None
            time.sleep(0.5 if spin else 0)
            try:
                for threads in (1, cores):
                    runs = [measure(threads, size) for _ in range(2)]
                    step = statistics.median(r["step_s"] for r in runs)
                    row[(condition, threads)] = 8 * 128 / step
                    row["params"] = runs[0]["params"]
            finally:
                if spin:
                    spin.kill()
                    spin.wait()
        q1, qn, b1, bn = (row[("quiet", 1)], row[("quiet", cores)], row[("busy", 1)], row[("busy", cores)])
        print(
            f"| {size} | {row['params'] / 1e6:.1f}M | {q1:.0f} | {qn:.0f} | {qn / q1:.2f} | {b1:.0f} | {bn:.0f} | "
            f"{bn / b1:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
