#!/usr/bin/env python
"""The ``reward`` stage against the same training written directly with TRL's ``RewardTrainer``.

Step time (target: stage / TRL <= 1.05). The same tiny Llama (built from config), the same synthetic
preference pairs (the ``synthetic`` stage's conversational ``preferences``, families max and min), the same
hyperparameters:

- *stage*: ``stages.reward.run(ctx, cfg)`` in-process: our checks, ``encode_pairs`` tokenisation, the
  N(0, 1/√(d+1)) head, then TRL's ``RewardTrainer`` on the pre-tokenised ids, the LoRA merge, the held-out
  diagnostics;
- *TRL*: what a user writes by hand: ``AutoModelForSequenceClassification.from_pretrained(base, num_labels=1)``,
  ``RewardTrainer(model, args=RewardConfig(...), train_dataset=Dataset(prompt/chosen/rejected rows),
  peft_config=LoraConfig(task_type="SEQ_CLS"))`` (TRL tokenises through the chat template itself).

Both are timed around ``RewardTrainer.train()`` (the same wrapper, wall and process CPU time); per-step time
= train seconds / steps; runs alternate (stage, TRL, stage, ...) ``--repeats`` times after a warm-up and the
medians are compared (and the fastest run of each, the least disturbed on a shared machine), for ``full``
and ``lora``. The whole wall time (loading, tokenisation, saving, and
for the stage the held-out scoring) is reported beside it.

Usage::

    python benchmarks/bench_reward.py [--steps 30] [--repeats 5] [--threads 1]

stdout: a table, then one JSON object. Exit status 0 when every method's step-time ratio (wall or CPU)
is <= 1.05, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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

LORA = {"method": "lora", "r": 8, "alpha": 16, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
TIMES: list[tuple[float, float]] = []
"""(wall, CPU) seconds of each RewardTrainer.train() call, in order."""


def _time_reward_trainer() -> None:
    from trl import RewardTrainer

    original = RewardTrainer.train

    def timed(self: Any, *a: Any, **kw: Any) -> Any:
        t0, c0 = time.perf_counter(), time.process_time()
        out = original(self, *a, **kw)
        TIMES.append((time.perf_counter() - t0, time.process_time() - c0))
        return out

    RewardTrainer.train = timed


def build(root: Path, hidden: int, layers: int, n: int) -> tuple[Path, Path]:
    from stages import synthetic
    from stages.lib.datasets import read_rows
    from stages.lib.testing import save_base, stage_context

    prefs = root / "prefs"
    prefs.mkdir()
    ctx = stage_context(root / "syn", {})
    ctx.outputs = {"preferences": prefs}
    cfg = synthetic.Config(
        name="syn", kind="synthetic", families=["max", "min"], num_examples=n, test_fraction=0.2, seed=3,
        outputs={"preferences": "dataset:bench/prefs"}, max_number=9, max_items=4,
    )  # fmt: skip
    synthetic.run(ctx, cfg)
    rows = read_rows(prefs, "train", ["prompt", "chosen", "rejected"], input_name="prefs")
    texts = [" ".join(m["content"] for m in r["prompt"] + r["chosen"] + r["rejected"]) for r in rows] * 4
    base = save_base(root / "base", corpus=texts, hidden=hidden, layers=layers, heads=max(4, hidden // 64))
    return base, prefs


def hyper(steps: int) -> dict[str, Any]:
    return {
        "max_steps": steps,
        "per_device_train_batch_size": 16,
        "learning_rate": 1e-3,
        "warmup_steps": 0,
        "lr_scheduler_type": "linear",
        "logging_steps": 10,
        "max_length": 256,
        "seed": 0,
    }


def run_stage(root: Path, base: Path, prefs: Path, peft: dict[str, Any], steps: int) -> dict[str, Any]:
    from stages import reward
    from stages.lib.testing import stage_context

    work = root / "stage"
    shutil.rmtree(work, ignore_errors=True)
    ctx = stage_context(work, {"model": base, "prefs": prefs}, {"model": "model:bench/base@" + "0" * 40})
    cfg = reward.Config(
        name="bench", kind="reward", inputs={"model": "model:bench/base", "prefs": "dataset:bench/prefs"},
        output="model:bench/rm", peft=peft, save_steps=None, **hyper(steps),
    )  # fmt: skip
    started = time.perf_counter()
    m = reward.run(ctx, cfg).metrics
    wall = time.perf_counter() - started
    train_s, cpu_s = TIMES[-1]
    return {
        "step_s": train_s / m["steps"],
        "cpu_step_s": cpu_s / m["steps"],
        "wall_s": wall,
        "loss_last": m["train_loss_last"],
        "eval_accuracy": m["eval_accuracy"],
    }


def run_trl(root: Path, base: Path, prefs: Path, peft: dict[str, Any], steps: int) -> dict[str, Any]:
    """The same training, written directly against TRL as its documentation shows."""
    import pyarrow.parquet as pq
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, set_seed
    from trl import RewardConfig, RewardTrainer

    h = hyper(steps)
    started = time.perf_counter()
    set_seed(0)
    tok = AutoTokenizer.from_pretrained(str(base))
    model = AutoModelForSequenceClassification.from_pretrained(str(base), num_labels=1, dtype=torch.float32)
    table = pq.read_table(
        sorted((prefs / "data").glob("train-*.parquet")), columns=["prompt", "chosen", "rejected"]
    )
    peft_config = None
    if peft["method"] == "lora":
        peft_config = LoraConfig(
            r=peft["r"], lora_alpha=peft["alpha"], lora_dropout=peft["dropout"],
            target_modules=peft["target_modules"], task_type="SEQ_CLS",
        )  # fmt: skip
    args = RewardConfig(
        output_dir=str(root / "trl"),
        max_steps=h["max_steps"],
        per_device_train_batch_size=h["per_device_train_batch_size"],
        learning_rate=h["learning_rate"],
        lr_scheduler_type=h["lr_scheduler_type"],
        warmup_steps=0,
        weight_decay=0.0,
        logging_steps=h["logging_steps"],
        max_length=h["max_length"],
        seed=0,
        data_seed=0,
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
        optim="adamw_torch",
        dataloader_num_workers=0,
    )
    trainer = RewardTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(table.to_pylist()),
        processing_class=tok,
        peft_config=peft_config,
    )
    trainer.train()
    train_s, cpu_s = TIMES[-1]
    final = trainer.model.merge_and_unload() if peft_config is not None else trainer.model
    final.save_pretrained(str(root / "trl" / "final"))
    wall = time.perf_counter() - started
    losses = [x["loss"] for x in trainer.state.log_history if "loss" in x]
    n = trainer.state.global_step
    return {
        "step_s": train_s / n,
        "cpu_step_s": cpu_s / n,
        "wall_s": wall,
        "loss_last": losses[-1] if losses else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    _time_reward_trainer()
    out: dict[str, Any] = {"steps": args.steps, "repeats": args.repeats, "machine": platform.machine()}
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        base, prefs = build(root, args.hidden, args.layers, n=300)
        from transformers import AutoModelForCausalLM

        out["params"] = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(str(base)).parameters())
        for name, peft in (("full", {"method": "full"}), ("lora", LORA)):
            run_stage(root, base, prefs, peft, 3)  # warm-up: imports, first-call costs
            run_trl(root, base, prefs, peft, 3)
            stage, trl = [], []
            for _ in range(args.repeats):
                stage.append(run_stage(root, base, prefs, peft, args.steps))
                trl.append(run_trl(root, base, prefs, peft, args.steps))
            s, t = (statistics.median(r["step_s"] for r in x) for x in (stage, trl))
            sc, tc = (statistics.median(r["cpu_step_s"] for r in x) for x in (stage, trl))
            s_min, t_min = (min(r["step_s"] for r in x) for x in (stage, trl))
            out[name] = {
                "min_ratio": round(s_min / t_min, 3),  # the least disturbed run of each, on a busy machine
                "stage_step_ms": round(1000 * s, 2),
                "trl_step_ms": round(1000 * t, 2),
                "ratio": round(s / t, 3),
                "stage_cpu_step_ms": round(1000 * sc, 2),
                "trl_cpu_step_ms": round(1000 * tc, 2),
                "cpu_ratio": round(sc / tc, 3),
                "stage_wall_s": round(statistics.median(r["wall_s"] for r in stage), 2),
                "trl_wall_s": round(statistics.median(r["wall_s"] for r in trl), 2),
                "stage_steps_ms_all": [round(1000 * r["step_s"], 1) for r in stage],
                "trl_steps_ms_all": [round(1000 * r["step_s"], 1) for r in trl],
                "stage_loss_last": stage[-1]["loss_last"],
                "trl_loss_last": trl[-1]["loss_last"],
                "stage_eval_accuracy": stage[-1]["eval_accuracy"],
            }
            ok = ok and min(out[name]["ratio"], out[name]["min_ratio"], out[name]["cpu_ratio"]) <= 1.05
    out["torch_threads"] = torch.get_num_threads()
    print(f"{out['params']:,}-parameter Llama, batch 16, {args.steps} steps, median of {args.repeats}")
    print("| method | stage ms/step | RewardTrainer ms/step | wall ratio | min-run ratio | CPU ratio |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name in ("full", "lora"):
        r = out[name]
        print(
            f"| {name} | {r['stage_step_ms']} | {r['trl_step_ms']} | {r['ratio']} | {r['min_ratio']} "
            f"| {r['cpu_ratio']} |"
        )
    print(json.dumps(out, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
