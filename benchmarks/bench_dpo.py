#!/usr/bin/env python
"""The ``dpo`` stage against the same training written directly with TRL's ``DPOTrainer``, and what the
reference-log-prob artifact saves when only ``beta`` changes.

1. Step time (target: stage / TRL <= 1.05). The same tiny Llama (built from config), the same
   conversational preference pairs, the same hyperparameters (full and LoRA policies):

   - *stage*: ``stages.dpo.run(ctx, cfg)`` in-process (our tokens, the reference pass at the start,
     our accelerate loop), timed around the training loop (``train_seconds``);
   - *TRL*: what a user writes by hand: ``DPOTrainer(model, args=DPOConfig(...),
     train_dataset=Dataset.from_list(rows), peft_config=...)`` timed around ``trainer.train()``, with
     TRL's default ``precompute_ref_log_probs=False`` (a reference forward every step: a second model for
     full fine-tuning, the adapter disabled for LoRA) and with ``precompute_ref_log_probs=True`` (the
     reference pass before ``train()``: the same work per step as the stage).

   Per-step time = training seconds / steps, as wall time and as process CPU time (steadier on a shared
   machine); the runs alternate ``--repeats`` times and the medians are compared.

2. A ``beta`` change, through ``hubflow run`` on a local hub: a manifest with a ``reference_logprobs``
   stage and a ``dpo`` stage on its artifact is run, ``beta`` is changed, and it is run again (only dpo
   re-runs); the whole wall time of the second run over the first. Beside it, the same with a dpo stage
   that computes its reference itself (both runs do the reference pass).

Usage::

    python benchmarks/bench_dpo.py [--steps 30] [--repeats 3] [--threads 1] [--skip-steps] [--skip-rerun]

stdout: tables, then one JSON object. Exit status 0 when every step-time ratio against TRL with
precomputed reference log-probs (wall or CPU) is <= 1.05, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
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
BETA = 0.1


def rows(n: int) -> list[dict[str, Any]]:
    """Conversational pairs: pick the largest of a few numbers, the chosen reply reasons a little."""
    out = []
    for i in range(n):
        nums = [(i * k * 7 + 3 * k) % 50 for k in range(1, 6)]
        best, worst = max(nums), min(nums)
        question = f"Question {i}: what is the largest number in this list: {', '.join(map(str, nums))}?"
        out.append(
            {
                "prompt": [{"role": "user", "content": question}],
                "chosen": [{"role": "assistant", "content": f"Comparing them all, the largest is {best}."}],
                "rejected": [
                    {"role": "assistant", "content": f"Comparing them all, the largest is {worst}."}
                ],
            }
        )
    return out


def build(root: Path, hidden: int, layers: int, n_rows: int) -> tuple[Path, Path]:
    from stages.lib.testing import save_base, write_dataset

    data = rows(n_rows)
    texts = [" ".join(m["content"] for k in ("prompt", "chosen", "rejected") for m in r[k]) for r in data]
    base = save_base(
        root / "base", corpus=texts * 2, hidden=hidden, layers=layers, heads=max(4, hidden // 64)
    )
    return base, write_dataset(root / "data", data)


def hyper(steps: int) -> dict[str, Any]:
    return {
        "max_steps": steps,
        "per_device_train_batch_size": 8,
        "learning_rate": 1e-4,
        "lr_scheduler_type": "linear",
        "logging_steps": 10,
        "max_length": 256,
        "seed": 0,
    }


def run_stage(root: Path, base: Path, data: Path, peft: dict[str, Any], steps: int) -> dict[str, Any]:
    import shutil

    import stages.lib.preference_loop as loop
    from stages import dpo
    from stages.lib.testing import stage_context

    work = root / "stage"
    shutil.rmtree(work, ignore_errors=True)
    ctx = stage_context(work, {"model": base, "data": data}, {"model": "model:bench/base@" + "0" * 40})
    cfg = dpo.Config(
        name="bench",
        kind="dpo",
        inputs={"model": "model:bench/base", "data": "dataset:bench/data"},
        output="model:bench/out",
        peft=peft,
        beta=BETA,
        eval_split=None,
        save_steps=None,
        **hyper(steps),
    )
    cpu: dict[str, float] = {}
    original = loop.train

    def timed(*args: Any, **kwargs: Any) -> Any:
        c0 = time.process_time()
        out = original(*args, **kwargs)
        cpu["train"] = time.process_time() - c0
        return out

    loop.train = timed
    try:
        started = time.perf_counter()
        result = dpo.run(ctx, cfg)
        wall = time.perf_counter() - started
    finally:
        loop.train = original
    m = result.metrics
    return {
        "step_s": m["train_seconds"] / m["steps"],
        "cpu_step_s": cpu["train"] / m["steps"],
        "wall_s": wall,
        "reference_s": m["reference_seconds"],
        "loss_last": m["train_loss_last"],
    }


def run_trl(
    root: Path, base: Path, data: Path, peft: dict[str, Any], steps: int, precompute: bool
) -> dict[str, Any]:
    """The same training, written directly against TRL's DPOTrainer as its documentation shows."""
    import pyarrow.parquet as pq
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
    from trl import DPOConfig, DPOTrainer

    h = hyper(steps)
    started = time.perf_counter()
    set_seed(0)
    tok = AutoTokenizer.from_pretrained(str(base))
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    dataset = Dataset.from_list(pq.read_table(sorted((data / "data").glob("train-*.parquet"))).to_pylist())
    peft_config = None
    if peft["method"] == "lora":
        peft_config = LoraConfig(
            r=peft["r"], lora_alpha=peft["alpha"], lora_dropout=peft["dropout"],
            target_modules=peft["target_modules"], task_type="CAUSAL_LM",
        )  # fmt: skip
    args = DPOConfig(
        output_dir=str(root / "trl"),
        beta=BETA,
        max_steps=h["max_steps"],
        per_device_train_batch_size=h["per_device_train_batch_size"],
        learning_rate=h["learning_rate"],
        lr_scheduler_type=h["lr_scheduler_type"],
        warmup_steps=0,
        logging_steps=h["logging_steps"],
        max_length=h["max_length"],
        precompute_ref_log_probs=precompute,
        seed=0,
        data_seed=0,
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
    )
    trainer = DPOTrainer(
        model=model, args=args, train_dataset=dataset, processing_class=tok, peft_config=peft_config
    )
    t0, c0 = time.perf_counter(), time.process_time()
    trainer.train()
    train_s, cpu_s = time.perf_counter() - t0, time.process_time() - c0
    trainer.save_model(str(root / "trl" / "final"))
    wall = time.perf_counter() - started
    losses = [x["loss"] for x in trainer.state.log_history if "loss" in x]
    n = trainer.state.global_step
    return {
        "step_s": train_s / n,
        "cpu_step_s": cpu_s / n,
        "wall_s": wall,
        "loss_last": losses[-1] if losses else None,
    }


def step_time(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        base, data = build(root, hidden=128, layers=4, n_rows=256)
        from transformers import AutoModelForCausalLM

        out["params"] = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(str(base)).parameters())
        for name, peft in (("full", {"method": "full"}), ("lora", LORA)):
            run_stage(root, base, data, peft, 3)  # warm-up: imports, first-call costs
            run_trl(root, base, data, peft, 3, True)
            runs: dict[str, list[dict[str, Any]]] = {"stage": [], "trl_precomputed": [], "trl_default": []}
            for _ in range(args.repeats):
                runs["stage"].append(run_stage(root, base, data, peft, args.steps))
                runs["trl_precomputed"].append(run_trl(root, base, data, peft, args.steps, True))
                runs["trl_default"].append(run_trl(root, base, data, peft, args.steps, False))
            med = {k: statistics.median(r["step_s"] for r in v) for k, v in runs.items()}
            cpu = {k: statistics.median(r["cpu_step_s"] for r in v) for k, v in runs.items()}
            out[name] = {
                **{f"{k}_step_ms": round(1000 * v, 2) for k, v in med.items()},
                **{f"{k}_cpu_step_ms": round(1000 * v, 2) for k, v in cpu.items()},
                "ratio_vs_precomputed": round(med["stage"] / med["trl_precomputed"], 3),
                "cpu_ratio_vs_precomputed": round(cpu["stage"] / cpu["trl_precomputed"], 3),
                "ratio_vs_default": round(med["stage"] / med["trl_default"], 3),
                "cpu_ratio_vs_default": round(cpu["stage"] / cpu["trl_default"], 3),
                **{
                    f"{k}_wall_s": round(statistics.median(r["wall_s"] for r in v), 2)
                    for k, v in runs.items()
                },
                **{f"{k}_steps_ms_all": [round(1000 * r["step_s"], 1) for r in v] for k, v in runs.items()},
                "stage_loss_last": runs["stage"][-1]["loss_last"],
                "trl_loss_last": runs["trl_precomputed"][-1]["loss_last"],
            }
    out["torch_threads"] = torch.get_num_threads()
    return out


# --- a beta change through the engine ---------------------------------------------------------------

WITH_ARTIFACT = """
hub: {{backend: local, root: store}}
stages:
  - name: align-reference
    kind: reference_logprobs
    inputs: {{model: "model:bench/sft", data: "dataset:bench/prefs"}}
    max_length: 256
    batch_size: 16
    output: dataset:bench/policy-dpo-reference-logprobs
  - name: align
    kind: dpo
    inputs: {{model: "model:bench/sft", data: "dataset:bench/prefs", reference_logprobs: align-reference}}
    beta: {beta}
{train}
    output: model:bench/policy-dpo
"""
SELF_REFERENCE = """
hub: {{backend: local, root: store}}
stages:
  - name: align
    kind: dpo
    inputs: {{model: "model:bench/sft", data: "dataset:bench/prefs"}}
    beta: {beta}
{train}
    reference_batch_size: 16
    output: model:bench/policy-dpo
"""


def _hubflow(*argv: str, cwd: Path) -> tuple[float, str]:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "hubflow.cli", *argv], cwd=cwd, capture_output=True, text=True, env=env
    )
    if proc.returncode != 0:
        raise RuntimeError(f"hubflow {' '.join(argv)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return time.perf_counter() - started, proc.stdout


def rerun(args: argparse.Namespace) -> dict[str, Any]:
    train = "\n".join(
        f"    {k}: {v}"
        for k, v in {
            "num_train_epochs": 1,
            "per_device_train_batch_size": 8,
            "learning_rate": 1e-4,
            "max_length": 256,
            "logging_steps": 10,
            "save_steps": "null",
            "eval_split": "null",
        }.items()
    )
    out: dict[str, Any] = {}
    for name, template in (("artifact", WITH_ARTIFACT), ("self_reference", SELF_REFERENCE)):
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            base, data = build(root, hidden=128, layers=4, n_rows=args.rerun_rows)
            manifest = root / "hubflow.yaml"
            manifest.write_text(template.format(beta=BETA, train=train))
            _hubflow("import", str(base), "model:bench/sft", "--manifest", str(manifest), cwd=root)
            _hubflow("import", str(data), "dataset:bench/prefs", "--manifest", str(manifest), cwd=root)
            first, log1 = _hubflow("run", str(manifest), "--quiet", cwd=root)
            manifest.write_text(template.format(beta=0.3, train=train))
            _, plan = _hubflow("plan", str(manifest), cwd=root)
            second, log2 = _hubflow("run", str(manifest), "--quiet", cwd=root)
            out[name] = {
                "first_run_s": round(first, 2),
                "second_run_s": round(second, 2),
                "ratio": round(second / first, 3),
                "plan_after_beta_change": [
                    line.strip() for line in plan.splitlines() if line.startswith("  ")
                ],
                "second_run_stages": [line.strip() for line in log2.splitlines() if ": running" in line],
            }
    out["rows"] = args.rerun_rows
    out["second_run_artifact_vs_self_reference"] = round(
        out["artifact"]["second_run_s"] / out["self_reference"]["second_run_s"], 3
    )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rerun-rows", type=int, default=1024)
    parser.add_argument("--skip-steps", action="store_true")
    parser.add_argument("--skip-rerun", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    result: dict[str, Any] = {"load_average_start": os.getloadavg()}
    ok = True
    if not args.skip_steps:
        steps = step_time(args)
        result["step_time"] = steps
        print(
            "| policy | stage ms/step | TRL precomputed | TRL default | ratio (wall, CPU) vs precomputed | vs default |"
        )
        print("| --- | ---: | ---: | ---: | ---: | ---: |")
        for name in ("full", "lora"):
            s = steps[name]
            print(
                f"| {name} | {s['stage_step_ms']} | {s['trl_precomputed_step_ms']} | {s['trl_default_step_ms']} | "
                f"{s['ratio_vs_precomputed']}, {s['cpu_ratio_vs_precomputed']} | "
                f"{s['ratio_vs_default']}, {s['cpu_ratio_vs_default']} |"
            )
            ok &= min(s["ratio_vs_precomputed"], s["cpu_ratio_vs_precomputed"]) <= 1.05
    if not args.skip_rerun:
        again = rerun(args)
        result["beta_change"] = again
        print("| setup | first run s | second run (beta changed) s | second / first |")
        print("| --- | ---: | ---: | ---: |")
        for name in ("artifact", "self_reference"):
            a = again[name]
            print(f"| {name} | {a['first_run_s']} | {a['second_run_s']} | {a['ratio']} |")
    result["load_average_end"] = os.getloadavg()
    print(json.dumps(result, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
