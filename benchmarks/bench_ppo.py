#!/usr/bin/env python
"""The ``ppo`` stage's step time, split into rollout / scoring / optimisation, and against TRL's PPOTrainer.

TRL 1.16 has no PPO, so the tool a user would otherwise reach for is an older TRL: ``PPOTrainer`` of TRL
0.19, installed into its own virtual environment (``python -m venv /tmp/trl019 && /tmp/trl019/bin/pip
install torch==2.13.0 "trl==0.19.*"``) and run in a subprocess on the same files.

The same tiny Llama (built from config, random weights, so every response runs to ``response_length``
and both tools do the same amount of work), the same reward model (a one-label classifier from the
policy), the same critic initialisation (the reward model), the same prompt token ids (the synthetic
``max``/``min`` prompts through the chat template), and the same PPO shape: 32 prompts per step in 2
minibatches of 16, 4 PPO epochs, 16 new tokens at T = 1, fixed β 0.05, clipped value loss, one thread.

- *stage*: ``stages.ppo.loop.train(ctx, cfg)`` in-process; per step, from its metrics: ``time/rollout``
  (sampling), ``time/scoring`` (old / reference log-probs, reward model, critic, GAE) and
  ``time/optimization`` (the K epochs);
- *TRL 0.19*: ``PPOTrainer(args=PPOConfig(...), model, ref_model, reward_model, value_model,
  train_dataset)``, ``trainer.train()``, per step from a ``TrainerCallback.on_step_end`` clock (TRL does
  not split its step).

The first step of each is left out (warm-up); medians over the rest, wall and process CPU time.

Usage::

    python benchmarks/bench_ppo.py [--steps 12] [--trl-python /tmp/trl019/bin/python] [--threads 1]

stdout: tables, then one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

BATCH, MINI, EPOCHS, NEW_TOKENS = 32, 2, 4, 16

TRL_SCRIPT = r"""
import json, sys, time, torch
from pathlib import Path
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback
from trl import PPOConfig, PPOTrainer

work, steps, threads = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(threads)
tok = AutoTokenizer.from_pretrained(work / "policy")
tok.padding_side = "left"
ids = json.loads((work / "prompt_ids.json").read_text())
data = Dataset.from_dict({"input_ids": ids})
load = dict(local_files_only=True, dtype=torch.float32)
policy = AutoModelForCausalLM.from_pretrained(work / "policy", **load)
ref = AutoModelForCausalLM.from_pretrained(work / "policy", **load)
reward = AutoModelForSequenceClassification.from_pretrained(work / "reward", num_labels=1, **load)
value = AutoModelForSequenceClassification.from_pretrained(work / "reward", num_labels=1, **load)
args = PPOConfig(
    output_dir=str(work / "trl-out"), per_device_train_batch_size=BATCH // MINI, gradient_accumulation_steps=1,
    num_mini_batches=MINI, num_ppo_epochs=EPOCHS, total_episodes=steps * BATCH, response_length=NEW_TOKENS,
    temperature=1.0, learning_rate=3e-6, kl_coef=0.05, cliprange=0.2, vf_coef=0.1, cliprange_value=0.2,
    gamma=1.0, lam=0.95, missing_eos_penalty=1.0, stop_token="eos", local_rollout_forward_batch_size=64,
    num_sample_generations=0, report_to=[], save_strategy="no", logging_steps=1, use_cpu=True, bf16=False,
    fp16=False, gradient_checkpointing=False, seed=0, dataloader_num_workers=0, lr_scheduler_type="constant",
)
marks = []
class Clock(TrainerCallback):
    def on_train_begin(self, *a, **k):
        marks.append((time.perf_counter(), time.process_time()))
    def on_step_end(self, *a, **k):
        marks.append((time.perf_counter(), time.process_time()))
trainer = PPOTrainer(args=args, processing_class=tok, model=policy, ref_model=ref, reward_model=reward,
                     value_model=value, train_dataset=data, eval_dataset=data.select(range(8)), callbacks=[Clock()])
trainer.train()
walls = [b[0] - a[0] for a, b in zip(marks, marks[1:])]
cpus = [b[1] - a[1] for a, b in zip(marks, marks[1:])]
import trl, transformers
print("RESULT " + json.dumps({"wall": walls, "cpu": cpus, "trl": trl.__version__, "transformers": transformers.__version__}))
"""


def build(work: Path) -> dict[str, Path]:
    """The tiny policy, its reward model, the synthetic prompts and their token ids (for TRL)."""
    import torch

    from stages import synthetic
    from stages.lib.chat import generation_prompt_ids
    from stages.lib.datasets import read_rows
    from stages.lib.models import load_model
    from stages.lib.testing import stage_context, tiny_llama, tiny_tokenizer

    data = work / "prompts"
    data.mkdir(parents=True)
    ctx = stage_context(work / "synthetic", {})
    ctx.outputs = {"prompts": data}
    synthetic.run(
        ctx,
        synthetic.Config(
            name="tasks",
            kind="synthetic",
            families=["max", "min"],
            num_examples=300,
            seed=7,
            max_number=9,
            max_items=4,
            outputs={"prompts": "dataset:b/prompts"},
        ),
    )
    rows = read_rows(data, "train", ["prompt"], input_name="prompts")
    tok = tiny_tokenizer([" ".join(m["content"] for m in r["prompt"]) for r in rows], vocab_size=400)
    model = tiny_llama(len(tok), hidden=64, layers=2, heads=4, seed=0)
    model.config.bos_token_id, model.config.eos_token_id = tok.bos_token_id, tok.eos_token_id
    model.config.pad_token_id = tok.pad_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    policy = work / "policy"
    model.save_pretrained(policy)
    tok.save_pretrained(policy)
    torch.manual_seed(1)
    reward = work / "reward"
    rm = load_model(policy, task="classification", head_kwargs={"num_labels": 1})
    rm.config.pad_token_id = tok.pad_token_id
    rm.save_pretrained(reward)
    tok.save_pretrained(reward)
    ids = [generation_prompt_ids(tok, r["prompt"]) for r in rows]
    (work / "prompt_ids.json").write_text(json.dumps(ids))
    return {"policy": policy, "reward": reward, "prompts": data}


def run_stage(work: Path, inputs: dict[str, Path], steps: int) -> dict[str, Any]:
    import logging

    from stages.lib.testing import stage_context
    from stages.ppo import Config
    from stages.ppo.loop import train

    tmp = work / "stage"
    ctx = stage_context(tmp, inputs)
    ctx.outputs = {"policy": tmp / "policy", "rollouts": tmp / "rollouts"}
    for folder in ctx.outputs.values():
        folder.mkdir(parents=True)
    ctx.logger = logging.getLogger("bench_ppo")
    cfg = Config(
        name="rl",
        kind="ppo",
        inputs={name: name for name in inputs},
        outputs={"policy": "model:b/p", "rollouts": "dataset:b/r"},
        max_steps=steps,
        per_device_train_batch_size=BATCH // MINI,
        num_mini_batches=MINI,
        num_ppo_epochs=EPOCHS,
        response_length=NEW_TOKENS,
        temperature=1.0,
        learning_rate=3e-6,
        lr_scheduler_type="constant",
        save_steps=None,
        critic="reward_model",
    )
    train(ctx, cfg)
    records = [
        json.loads(line) for line in (ctx.outputs["policy"] / "metrics.jsonl").read_text().splitlines()
    ]
    train_records = [r for r in records if r.get("split") == "train"][1:]
    parts = {k: [r[f"time/{k}"] for r in train_records] for k in ("rollout", "scoring", "optimization")}
    return {
        "parts": {k: statistics.median(v) for k, v in parts.items()},
        "wall": statistics.median(r["time/step"] for r in train_records),
        "cpu": statistics.median(r["time/cpu"] for r in train_records),
        "length": statistics.mean(r["response_length"] for r in train_records),
    }


def run_trl(python: str, work: Path, steps: int, threads: int) -> dict[str, Any] | str:
    script = work / "trl_ppo.py"
    header = f"BATCH, MINI, EPOCHS, NEW_TOKENS = {BATCH}, {MINI}, {EPOCHS}, {NEW_TOKENS}\n"
    script.write_text(header + TRL_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [python, str(script), str(work), str(steps), str(threads)], capture_output=True, text=True, env=env
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        return f"TRL run failed (exit {proc.returncode}): {(proc.stderr or proc.stdout)[-1500:]}"
    out = json.loads(lines[-1][len("RESULT ") :])
    return {
        "wall": statistics.median(out["wall"][1:]),
        "cpu": statistics.median(out["cpu"][1:]),
        "versions": f"trl {out['trl']}, transformers {out['transformers']}",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--trl-python", default="/tmp/trl019/bin/python")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench_ppo_") as tmp:
        work = Path(tmp)
        inputs = build(work)
        ours = run_stage(work, inputs, args.steps)
        trl: dict[str, Any] | str = "not run: no TRL <= 0.19 interpreter at " + args.trl_python
        if Path(args.trl_python).exists():
            trl = run_trl(args.trl_python, work, args.steps, args.threads)
    parts = ours["parts"]
    print(
        f"PPO step of {BATCH} prompts × {NEW_TOKENS} tokens, {EPOCHS} epochs × {MINI} minibatches, "
        f"{args.threads} thread(s), median of steps 2..{args.steps}"
    )
    print("\n| phase | seconds per step | share |\n| --- | ---: | ---: |")
    for name, value in parts.items():
        print(f"| {name} | {value:.4f} | {100 * value / ours['wall']:.0f}% |")
    print(f"| whole step (with logging and the rollout rows) | {ours['wall']:.4f} | 100% |")
    print("\n| tool | wall s/step | CPU s/step |\n| --- | ---: | ---: |")
    print(f"| hubflow ppo stage | {ours['wall']:.4f} | {ours['cpu']:.4f} |")
    if isinstance(trl, dict):
        print(f"| TRL PPOTrainer ({trl['versions']}) | {trl['wall']:.4f} | {trl['cpu']:.4f} |")
        print(f"| ratio stage / TRL | {ours['wall'] / trl['wall']:.2f} | {ours['cpu'] / trl['cpu']:.2f} |")
    else:
        print(f"\n{trl}")
    print(json.dumps({"stage": ours, "trl": trl, "steps": args.steps, "threads": args.threads}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
