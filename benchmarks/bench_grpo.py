#!/usr/bin/env python
"""The ``grpo`` stage against TRL's ``GRPOTrainer`` called directly on the same model, data and reward.

Target: stage step time / TRL step time <= 1.05.

Setup (built here, nothing downloaded): the synthetic stage's ``max``/``min`` prompts (numbers <= 9) and a
tiny chat policy SFT-trained for a few seconds (``stages.lib.testing.train_tiny_policy``, hidden 64 by
default); the reward is the gold judge (``reward: synthetic``).

- *stage*: ``stages.grpo.run(ctx, cfg)`` in-process, with its defaults (KL probe once per ``eval_steps``
  window, gold reward logged, every completion recorded for the ``rollouts`` output), timed around
  ``trainer.train()`` (its ``train_seconds`` and ``train_cpu_seconds`` metrics);
- *TRL*: what a user writes by hand: ``GRPOTrainer(model=AutoModelForCausalLM.from_pretrained(policy),
  reward_funcs=gold, args=GRPOConfig(...same hyperparameters...), train_dataset=Dataset.from_list(rows),
  processing_class=tokenizer)``, with the policy's generation config told to stop at the chat template's
  end-of-turn token as the stage does (else TRL samples to max_completion_length), timed around
  ``trainer.train()``.

Per-step time = train seconds / steps, as wall time and as process CPU time (steadier on a shared
machine); the two alternate (stage, TRL, stage, ...) ``--repeats`` times and medians are compared. The
stage is also run with ``monitor_kl: false`` to show what the KL probe costs. Both sides sample the same
completions (same seed, sampler and model), so their last logged loss and reward must be equal: the
script checks it.

Usage::

    python benchmarks/bench_grpo.py [--steps 40] [--repeats 3] [--batch 64] [--generations 8] [--hidden 64]

stdout: a table, then one JSON object. Exit status 0 when the default stage's ratio (wall or CPU) is <= 1.05.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def build(root: Path, hidden: int) -> tuple[Path, Path]:
    """(policy folder, prompts dataset folder)."""
    from stages import synthetic
    from stages.lib.datasets import read_rows
    from stages.lib.testing import stage_context, train_tiny_policy

    outs = {name: root / "synthetic" / name for name in synthetic.OUTPUT_KINDS}
    for folder in outs.values():
        folder.mkdir(parents=True)
    ctx = stage_context(root / "synthetic" / "stage", {})
    ctx.outputs = dict(outs)
    cfg = synthetic.Config(
        name="tasks",
        kind="synthetic",
        families=["max", "min"],
        num_examples=300,
        test_fraction=0.2,
        seed=7,
        max_number=9,
        max_items=4,
        outputs={name: f"dataset:bench/{name}" for name in outs},
    )
    synthetic.run(ctx, cfg)
    rows = read_rows(outs["instructions"], "train", ["prompt", "completion"], input_name="instructions")
    policy = train_tiny_policy(
        root / "policy", [(r["prompt"], r["completion"]) for r in rows], steps=120, hidden=hidden, seed=0
    )
    return policy, outs["prompts"]


def hyper(args: argparse.Namespace) -> dict[str, Any]:
    """The hyperparameters both sides use (training vocabulary names = TRL names)."""
    return {
        "max_steps": args.steps,
        "per_device_train_batch_size": args.batch,
        "num_generations": args.generations,
        "max_completion_length": 8,
        "learning_rate": 1e-3,
        "lr_scheduler_type": "linear",
        "logging_steps": 10,
        "seed": 0,
    }


def run_stage(
    root: Path, policy: Path, prompts: Path, args: argparse.Namespace, **extra: Any
) -> dict[str, float]:
    from stages import grpo
    from stages.lib.testing import stage_context

    tmp = root / "stage-run"
    shutil.rmtree(tmp, ignore_errors=True)
    ctx = stage_context(tmp, {"policy": policy, "prompts": prompts})
    ctx.outputs = {"policy": tmp / "policy", "rollouts": tmp / "rollouts"}
    ctx.resources.cpu = True
    cfg = grpo.Config(
        name="grpo",
        kind="grpo",
        inputs={"policy": "model:bench/policy", "prompts": "dataset:bench/prompts"},
        outputs={"policy": "model:bench/grpo", "rollouts": "dataset:bench/rollouts"},
        reward="synthetic",
        save_steps=None,
        **hyper(args),
        **extra,
    )
    m = grpo.run(ctx, cfg).metrics
    return {
        "wall": m["train_seconds"] / m["steps"],
        "cpu": m["train_cpu_seconds"] / m["steps"],
        "steps": m["steps"],
        "last_loss": m["last/loss"],
        "last_reward": m["last/reward"],
    }


def run_trl(root: Path, policy: Path, prompts: Path, args: argparse.Namespace) -> dict[str, float]:
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.trainer_callback import PrinterCallback
    from trl import GRPOConfig, GRPOTrainer

    from stages.lib.datasets import read_rows
    from stages.lib.rewards import gold_rewards

    tok = AutoTokenizer.from_pretrained(policy)
    model = AutoModelForCausalLM.from_pretrained(policy)
    model.generation_config.eos_token_id = [tok.eos_token_id, tok.convert_tokens_to_ids("<|end|>")]
    rows = read_rows(prompts, "train", ["prompt", "family"], input_name="prompts")

    def gold(prompts: list[Any], completions: list[Any], family: list[str], **_: Any) -> list[float]:
        return gold_rewards(family, prompts, completions)

    h = hyper(args)
    config = GRPOConfig(
        output_dir=str(root / "trl-run"),
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        save_strategy="no",
        disable_dropout=True,
        logging_first_step=True,
        **h,
    )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=gold,
        args=config,
        train_dataset=datasets.Dataset.from_list(rows),
        processing_class=tok,
    )
    trainer.remove_callback(PrinterCallback)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    trainer.train()
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    steps = trainer.state.global_step
    last = [h for h in trainer.state.log_history if "loss" in h and "reward" in h][-1]
    return {
        "wall": wall / steps,
        "cpu": cpu / steps,
        "steps": steps,
        "last_loss": round(last["loss"], 6),
        "last_reward": round(last["reward"], 6),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=64, help="per_device_train_batch_size (completions)")
    parser.add_argument("--generations", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if args.steps % 10:
        parser.error("--steps must be a multiple of 10 (logging_steps), so both sides log the last step")

    import torch

    torch.set_num_threads(args.threads)
    root = Path(tempfile.mkdtemp(prefix="bench-grpo-"))
    try:
        policy, prompts = build(root, args.hidden)
        runs: dict[str, list[dict[str, float]]] = {"stage": [], "stage_no_kl_probe": [], "trl": []}
        run_trl(root, policy, prompts, argparse.Namespace(**{**vars(args), "steps": 3}))  # warm-up (imports)
        for _ in range(args.repeats):
            runs["stage"].append(run_stage(root, policy, prompts, args))
            runs["trl"].append(run_trl(root, policy, prompts, args))
            runs["stage_no_kl_probe"].append(run_stage(root, policy, prompts, args, monitor_kl=False))
        med = {k: {m: statistics.median(r[m] for r in v) for m in ("wall", "cpu")} for k, v in runs.items()}
        ratios = {
            k: {m: med[k][m] / med["trl"][m] for m in ("wall", "cpu")} for k in ("stage", "stage_no_kl_probe")
        }
        print(
            f"GRPO step time, {args.steps} steps x {args.repeats} repeats, batch {args.batch} completions, "
            f"G={args.generations}, hidden {args.hidden}, {args.threads} thread(s)"
        )
        print(f"{'run':<22}{'wall s/step':>12}{'cpu s/step':>12}{'wall ratio':>12}{'cpu ratio':>12}")
        for k in ("trl", "stage", "stage_no_kl_probe"):
            r = ratios.get(k, {"wall": 1.0, "cpu": 1.0})
            print(f"{k:<22}{med[k]['wall']:>12.4f}{med[k]['cpu']:>12.4f}{r['wall']:>12.3f}{r['cpu']:>12.3f}")
        same = all(
            (a["last_loss"], a["last_reward"]) == (b["last_loss"], b["last_reward"])
            for a, b in zip(runs["stage"], runs["trl"], strict=True)
        )
        print(f"same trajectory (last logged loss and reward equal): {same}")
        ok = min(ratios["stage"].values()) <= 1.05
        print(
            json.dumps(
                {"median": med, "ratios": ratios, "runs": runs, "same_trajectory": same, "target_met": ok}
            )
        )
        return 0 if ok else 1
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
