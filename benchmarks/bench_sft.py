#!/usr/bin/env python
"""The ``sft`` stage against the same training written directly with TRL, and the memory of its methods.

1. Step time (target: stage / TRL <= 1.05). The same tiny Llama (built from config,
   about 1.6M parameters), the same prompt/completion rows, the same hyperparameters:

   - *stage*: ``stages.sft.run(ctx, cfg)`` in-process (our tokenisation and masks,
     then TRL's ``SFTTrainer``), timed around ``trainer.train()`` (``train_seconds``);
   - *TRL*: what a user writes by hand: ``SFTTrainer(model, args=SFTConfig(...),
     train_dataset=Dataset.from_list(prompt/completion rows), peft_config=...)``,
     timed around ``trainer.train()``.

   Per-step time = train seconds / steps, as wall time and as process CPU time (all
   threads; steadier on a shared machine); runs alternate (stage, TRL, stage, ...)
   ``--repeats`` times and the medians are compared, for ``full`` and ``lora``. The
   whole wall time (loading, data preparation, saving) is reported beside it.

2. Peak memory of ``full``, ``lora`` and ``qlora`` on a Llama of about 70M parameters
   (``--mem-hidden``/``--mem-layers``), a few steps each, each in a fresh process: the
   model's weights in memory (``get_memory_footprint``); the process's private
   (anonymous) memory just before training (after ``malloc_trim``) and its peak during
   training (sampled every 5 ms); the resident-set peak during training (VmHWM reset
   just before ``trainer.train()``) and over the whole stage (ru_maxrss). On CPU the
   fp32 weights of full/LoRA are memory-mapped from the safetensors file (counted in
   RSS once read, not in private memory), while QLoRA reads that file once to quantise
   it (the file's pages stay in RSS as reclaimable page cache).

Usage::

    python benchmarks/bench_sft.py [--steps 30] [--repeats 3] [--threads 1] [--mem-steps 3]
                                   [--skip-steps] [--skip-memory]

stdout: tables, then one JSON object. Exit status 0 when every method's step-time
ratio (wall or CPU) is <= 1.05, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

NUMBERS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven"]
LORA = {"method": "lora", "r": 8, "alpha": 16, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}


def rows(n: int) -> list[dict[str, str]]:
    out = []
    for i in range(n):
        a, b = i % 12, (i * 7) % 12
        out.append(
            {
                "prompt": f"Question {i}: what is {NUMBERS[a]} plus {NUMBERS[b]}? Think about it and reply in words.",
                "completion": f" The sum of {NUMBERS[a]} and {NUMBERS[b]} is {a + b}, so the answer is {a + b}.",
            }
        )
    return out


def build(root: Path, hidden: int, layers: int, n_rows: int) -> tuple[Path, Path]:
    from stages.lib.testing import save_base, write_dataset

    data = rows(n_rows)
    texts = [r["prompt"] + r["completion"] for r in data] * 4
    heads = max(4, hidden // 64)
    base = save_base(root / "base", corpus=texts, hidden=hidden, layers=layers, heads=heads)
    return base, write_dataset(root / "data", data)


def hyper(steps: int) -> dict[str, Any]:
    return {
        "max_steps": steps,
        "per_device_train_batch_size": 8,
        "learning_rate": 1e-3,
        "warmup_ratio": 0.0,
        "lr_scheduler_type": "linear",
        "logging_steps": 10,
        "max_length": 128,
        "seed": 0,
    }


def run_stage(root: Path, base: Path, data: Path, peft: dict[str, Any], steps: int) -> dict[str, Any]:
    import shutil

    from stages import sft
    from stages.lib.testing import stage_context

    work = root / "stage"
    shutil.rmtree(work, ignore_errors=True)
    ctx = stage_context(work, {"model": base, "data": data}, {"model": "model:bench/base@" + "0" * 40})
    cfg = sft.Config(
        name="bench",
        kind="sft",
        inputs={"model": "model:bench/base", "data": "dataset:bench/data"},
        output="model:bench/out",
        peft=peft,
        eval_split=None,
        save_steps=None,
        **hyper(steps),
    )
    import stages.lib.finetune.train as core

    cpu: dict[str, float] = {}
    original = core.train

    def timed(job: Any) -> Any:
        c0 = time.process_time()
        trainer = original(job)
        cpu["train"] = time.process_time() - c0
        return trainer

    core.train = timed
    try:
        started = time.perf_counter()
        result = sft.run(ctx, cfg)
        wall = time.perf_counter() - started
    finally:
        core.train = original
    m = result.metrics
    return {
        "step_s": m["train_seconds"] / m["steps"],
        "cpu_step_s": cpu["train"] / m["steps"],
        "wall_s": wall,
        "loss_last": m["train_loss_last"],
    }


def run_trl(root: Path, base: Path, data: Path, peft: dict[str, Any], steps: int) -> dict[str, Any]:
    """The same training, written directly against TRL as its documentation shows."""
    import pyarrow.parquet as pq
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
    from trl import SFTConfig, SFTTrainer

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
    args = SFTConfig(
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
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=dataset, processing_class=tok, peft_config=peft_config
    )
    t0, c0 = time.perf_counter(), time.process_time()
    trainer.train()
    train_s, cpu_s = time.perf_counter() - t0, time.process_time() - c0
    trainer.save_model(str(root / "trl" / "final"))
    wall = time.perf_counter() - started
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    steps = trainer.state.global_step
    return {
        "step_s": train_s / steps,
        "cpu_step_s": cpu_s / steps,
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
            run_trl(root, base, data, peft, 3)
            stage, trl = [], []
            for _ in range(args.repeats):
                stage.append(run_stage(root, base, data, peft, args.steps))
                trl.append(run_trl(root, base, data, peft, args.steps))
            s = statistics.median(r["step_s"] for r in stage)
            t = statistics.median(r["step_s"] for r in trl)
            sc = statistics.median(r["cpu_step_s"] for r in stage)
            tc = statistics.median(r["cpu_step_s"] for r in trl)
            out[name] = {
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
            }
    out["torch_threads"] = torch.get_num_threads()
    return out


# --- memory -------------------------------------------------------------------------


def _vm(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def memory_child(method: str, root: Path, steps: int, threads: int) -> None:
    """In a fresh process: run the stage with ``method`` on the prepared base; print one JSON line."""
    import torch

    import stages.lib.finetune.train as core
    from stages import sft
    from stages.lib.testing import stage_context

    if threads:
        torch.set_num_threads(threads)
    peak: dict[str, int] = {}
    original = core.train

    def measured(job: Any) -> Any:
        import gc

        gc.collect()
        try:  # hand freed heap back to the OS, so the RSS counts live memory (loading leaves much behind)
            import ctypes

            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass
        peak["weights"] = job.model.get_memory_footprint()
        peak["before_train"] = _vm("VmRSS")
        peak["anon_before"] = _vm("RssAnon")
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        stop = threading.Event()

        def sample() -> None:  # private (anonymous) memory has no kernel peak counter: sample it
            peak["anon_peak"] = peak["anon_before"]
            while not stop.wait(0.005):
                peak["anon_peak"] = max(peak["anon_peak"], _vm("RssAnon"))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            trainer = original(job)
        finally:
            stop.set()
            sampler.join()
        peak["train_peak"] = _vm("VmHWM")
        return trainer

    core.train = measured
    peft = {"full": {"method": "full"}, "lora": LORA, "qlora": {**LORA, "method": "qlora"}}[method]
    work = root / f"mem-{method}"
    ctx = stage_context(
        work, {"model": root / "base", "data": root / "data"}, {"model": "model:bench/base@" + "0" * 40}
    )
    cfg = sft.Config(
        name="bench", kind="sft", inputs={"model": "model:bench/base", "data": "dataset:bench/data"},
        output="model:bench/out", peft=peft, eval_split=None, save_steps=None,
        **{**hyper(steps), "per_device_train_batch_size": 4, "logging_steps": 1},
    )  # fmt: skip
    result = sft.run(ctx, cfg)
    m = result.metrics
    print(
        json.dumps(
            {
                "method": method,
                "weights_mib": round(peak["weights"] / 2**20, 1),
                "rss_before_train_mib": round(peak["before_train"] / 2**20, 1),
                "anon_before_train_mib": round(peak["anon_before"] / 2**20, 1),
                "anon_train_peak_mib": round(peak["anon_peak"] / 2**20, 1),
                "train_peak_rss_mib": round(peak["train_peak"] / 2**20, 1),
                "stage_peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                "step_s": round(m["train_seconds"] / m["steps"], 2),
                "trainable_params": m["trainable_params"],
                "total_params": m["total_params"],
            }
        )
    )


def memory(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        build(root, hidden=args.mem_hidden, layers=args.mem_layers, n_rows=64)
        for method in ("full", "lora", "qlora"):
            proc = subprocess.run(
                [sys.executable, __file__, "--child-memory", method, "--child-root", str(root), "--mem-steps",
                 str(args.mem_steps), "--threads", str(args.threads)],
                capture_output=True, text=True, cwd=ROOT,
            )  # fmt: skip
            lines = [x for x in proc.stdout.splitlines() if x.startswith("{")]
            if proc.returncode != 0 or not lines:
                out[method] = {"error": proc.stderr[-2000:]}
                continue
            out[method] = json.loads(lines[-1])
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=30, help="optimizer steps per timed run")
    ap.add_argument("--repeats", type=int, default=3, help="alternating runs of each side")
    ap.add_argument("--mem-steps", type=int, default=3, help="steps of each memory run")
    ap.add_argument("--mem-hidden", type=int, default=768, help="hidden size of the memory model")
    ap.add_argument("--mem-layers", type=int, default=12, help="layers of the memory model")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (0: torch's default). On a shared machine, multi-threaded CPU timings swing 4x with "
        "the other processes' load (OpenMP threads spin); one thread keeps the comparison fair and steady",
    )
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--skip-steps", action="store_true")
    ap.add_argument("--child-memory", help=argparse.SUPPRESS)
    ap.add_argument("--child-root", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_memory:
        memory_child(args.child_memory, Path(args.child_root), args.mem_steps, args.threads)
        return 0
    report: dict[str, Any] = {
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs",
        "python": platform.python_version(),
        "threads": args.threads,
        "load_average": os.getloadavg(),
    }
    ok = True
    if not args.skip_steps:
        st = step_time(args)
        report["step_time"] = st
        print(
            f"step time, tiny Llama ({st['params']:,} parameters), batch 8, {args.steps} steps, median of {args.repeats}"
        )
        print(
            f"{'method':8} {'stage ms/step':>14} {'TRL ms/step':>12} {'ratio':>7} {'stage CPU ms':>13} {'TRL CPU ms':>11} "
            f"{'CPU ratio':>10} {'stage wall s':>13} {'TRL wall s':>11}"
        )
        for name in ("full", "lora"):
            r = st[name]
            ok &= min(r["ratio"], r["cpu_ratio"]) <= 1.05
            print(
                f"{name:8} {r['stage_step_ms']:>14} {r['trl_step_ms']:>12} {r['ratio']:>7} {r['stage_cpu_step_ms']:>13} "
                f"{r['trl_cpu_step_ms']:>11} {r['cpu_ratio']:>10} {r['stage_wall_s']:>13} {r['trl_wall_s']:>11}"
            )
    if not args.skip_memory:
        mem = memory(args)
        report["memory"] = mem
        print(
            f"\npeak memory, Llama hidden {args.mem_hidden} x {args.mem_layers} layers, batch 4 x 128 tokens, {args.mem_steps} steps"
        )
        print(
            f"{'method':8} {'params':>12} {'trainable':>10} {'weights':>9} {'private before':>15} {'private peak':>13} "
            f"{'RSS peak':>9} {'stage RSS peak':>15} {'s/step':>7}"
        )
        for method, r in mem.items():
            if "error" in r:
                print(f"{method:8} error: {r['error'][-300:]}")
                continue
            print(
                f"{method:8} {r['total_params']:>12,} {r['trainable_params']:>10,} {r['weights_mib']:>8}M "
                f"{r['anon_before_train_mib']:>14}M {r['anon_train_peak_mib']:>12}M {r['train_peak_rss_mib']:>8}M "
                f"{r['stage_peak_rss_mib']:>14}M {r['step_s']:>7}"
            )
    print(json.dumps(report, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
