"""Pretrain throughput: the `pretrain` stage vs what users would write instead.

Three arms train the same Llama model (same initialisation code, same config) on the
same chunks of the same tokenized corpus (standard-library docstrings, a 512-token
BPE trained here), with the same optimizer settings (AdamW β=(0.9, 0.95), weight
decay 0.1, warmup + cosine, clipping at 1.0), fp32 on CPU:

- ``stage``: ``stages.pretrain.run`` (accelerate loop, batching, logging, MFU, checkpoints off);
- ``plain``: a hand-written PyTorch loop over pre-built tensors (the floor: no framework);
- ``trainer``: ``transformers.Trainer`` with a Dataset of the same chunks.

Each arm runs in its own process (peak RSS is per process, imports included), twice:
``--warmup`` steps and ``--steps`` steps; its throughput is the extra tokens of the long
run over its extra CPU seconds (setup, imports and saving cancel out; CPU time rather
than wall time because a shared machine's load swings wall time by 2x). The arms are
interleaved ``--repeat`` times; the table gives the median and the best run (the one
least disturbed by other load). Targets: stage/plain ≥ 0.9, stage/Trainer ≥ 1.0.

    python benchmarks/bench_pretrain.py --threads 1                 # both sizes, 3 repeats
    python benchmarks/bench_pretrain.py --sizes tiny --repeat 1 --steps 30

On a shared machine use ``--threads 1``: with two OpenMP threads per process, other
load swings a run's speed by up to 10x and the ratios mean nothing.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SIZES: dict[str, dict[str, Any]] = {
    "tiny": {"hidden_size": 128, "num_layers": 4, "num_heads": 4, "context_length": 64},  # 0.87M
    "small": {"hidden_size": 256, "num_layers": 6, "num_heads": 8, "context_length": 256},  # 4.9M
}
DOC_MODULES = (
    "json", "argparse", "collections", "textwrap", "pathlib", "functools", "string", "shutil", "logging",
    "csv", "difflib", "heapq", "fractions", "calendar", "random", "statistics", "zipfile", "tarfile",
    "enum", "dataclasses", "subprocess", "threading", "inspect", "email.message", "http.client",
)  # fmt: skip
BATCH, LR, WARMUP_LR = 8, 1e-3, 10


def docstrings() -> list[str]:
    docs: list[str] = []
    for name in DOC_MODULES:
        mod = importlib.import_module(name)
        for obj in [mod] + [getattr(mod, a) for a in sorted(dir(mod)) if not a.startswith("_")]:
            doc = inspect.getdoc(obj)
            if doc:
                docs.extend(p.strip() for p in doc.split("\n\n") if len(p.strip()) > 40)
    return list(dict.fromkeys(docs))


def prepare(work: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    docs = docstrings()
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        docs,
        trainers.BpeTrainer(
            vocab_size=512,
            special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        ),
    )
    PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    ).save_pretrained(str(work / "tokenizer"))
    (work / "data" / "data").mkdir(parents=True)
    pq.write_table(pa.table({"text": docs}), work / "data" / "data" / "train-00000-of-00001.parquet")


def stage_config(size: str, steps: int, log_every: int) -> Any:
    from stages import pretrain

    return pretrain.Config(
        name="bench",
        kind="pretrain",
        inputs={"tokenizer": "t", "data": "d"},
        output="model:bench/lm",
        architecture=SIZES[size],
        max_steps=steps,
        per_device_train_batch_size=BATCH,
        learning_rate=LR,
        warmup_steps=WARMUP_LR,
        logging_steps=log_every,
        save_steps=None,
    )


def shared_setup(work: Path, size: str, steps: int, warmup: int) -> tuple[Any, Any, Any, Any]:
    """The stage's own tokenizer handling, token file, chunk order and model: the plain
    and Trainer arms train exactly what the stage trains."""
    from dataclasses import replace

    from stages.lib.tokenizers import load_tokenizer
    from stages.pretrain import data as D
    from stages.pretrain import model as M
    from stages.pretrain import scaling as S

    cfg = stage_config(size, steps, warmup)
    tokenizer = load_tokenizer(work / "tokenizer")
    tok = M.prepare_tokenizer(tokenizer, cfg)
    dest = work / f"tokens-{size}.bin"
    tf = D.tokenize_corpus([("data", work / "data")], "train", tokenizer=tokenizer, text_column="text",
                           eos_id=tok.eos_id, dest=dest)  # fmt: skip
    chunks = D.Chunks(tf.array(), cfg.architecture.context_length, cfg.seed)
    shape = replace(S.configured_shape(cfg), vocab_size=len(tokenizer))
    model = M.build_model(cfg, M.build_config(cfg, shape, len(tokenizer), tok), "llama")
    model.config.use_cache = False  # as the stage and Trainer train
    return cfg, chunks, model, tok


def optimizer_and_schedule(cfg: Any, model: Any, steps: int) -> tuple[Any, Any]:
    import torch

    from stages.pretrain import model as M
    from stages.pretrain import scaling as S

    opt = torch.optim.AdamW(M.parameter_groups(model, 0.1), lr=LR, betas=(0.9, 0.95), eps=1e-8, foreach=True)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: S.lr_at(s, lr=LR, min_lr=LR / 10, warmup_steps=WARMUP_LR, total_steps=steps) / LR
    )
    return opt, sched


# -- the arms (each in its own process) ------------------------------------------------------


def arm_stage(work: Path, size: str, steps: int, warmup: int) -> float:
    from hubflow.stage import StageContext
    from stages import pretrain

    run = Path(tempfile.mkdtemp(dir=work))
    for d in ("out", "logs", "resume"):
        (run / d).mkdir()
    ctx = StageContext(
        stage_name="bench",
        fingerprint="b" * 64,
        inputs={"tokenizer": work / "tokenizer", "data": work / "data"},
        outputs={"output": run / "out"},
        resume_dir=run / "resume",
        base_dir=run,
        log_dir=run / "logs",
    )
    pretrain.run(ctx, stage_config(size, steps, warmup))
    # windows of `warmup` steps, each with its tokens/s; the first one is not timed
    logged = [json.loads(x) for x in (run / "logs" / "metrics.jsonl").read_text().splitlines()]
    w = [r for r in logged if r["split"] == "train"]
    tokens = [b["tokens"] - a["tokens"] for a, b in zip(w, w[1:], strict=False)]
    seconds = [t / b["tokens_per_s"] for t, b in zip(tokens, w[1:], strict=True)]
    return sum(tokens) / sum(seconds)


def arm_plain(work: Path, size: str, steps: int, warmup: int) -> float:
    import torch

    cfg, chunks, model, _ = shared_setup(work, size, steps, warmup)
    opt, sched = optimizer_and_schedule(cfg, model, steps)
    model.train()
    t0 = 0.0
    for step in range(steps):
        if step == warmup:
            t0 = time.perf_counter()
        batch = torch.from_numpy(
            __import__("numpy").stack([chunks.at(step * BATCH + i) for i in range(BATCH)])
        )
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step % 10 == 0:
            loss.item()  # what a user's print(loss) costs
    return (steps - warmup) * BATCH * cfg.architecture.context_length / (time.perf_counter() - t0)


def arm_trainer(work: Path, size: str, steps: int, warmup: int) -> float:
    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments

    cfg, chunks, model, _ = shared_setup(work, size, steps, warmup)

    class Chunked(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(chunks)

        def __getitem__(self, i: int) -> dict[str, Any]:
            ids = torch.from_numpy(chunks.chunk(i))
            return {"input_ids": ids, "labels": ids}

    class Clock(TrainerCallback):
        t0 = 0.0
        t1 = 0.0

        def on_step_end(self, args, state, control, **kw):  # type: ignore[no-untyped-def]
            if state.global_step == warmup:
                Clock.t0 = time.perf_counter()
            if state.global_step == steps:
                Clock.t1 = time.perf_counter()

    opt, sched = optimizer_and_schedule(cfg, model, steps)
    args = TrainingArguments(
        output_dir=str(work / "trainer-out"),
        per_device_train_batch_size=BATCH,
        max_steps=steps,
        max_grad_norm=1.0,
        logging_steps=10,
        save_strategy="no",
        report_to=[],
        bf16=False,
        fp16=False,
        use_cpu=True,
        dataloader_num_workers=0,
        disable_tqdm=True,
        seed=0,
    )
    Trainer(
        model=model, args=args, train_dataset=Chunked(), optimizers=(opt, sched), callbacks=[Clock()]
    ).train()
    return (steps - warmup) * BATCH * cfg.architecture.context_length / (Clock.t1 - Clock.t0)


ARMS = {"stage": arm_stage, "plain": arm_plain, "trainer": arm_trainer}


def child(arm: str, work: Path, size: str, steps: int, warmup: int) -> None:
    import torch

    if os.environ.get("BENCH_THREADS"):
        torch.set_num_threads(int(os.environ["BENCH_THREADS"]))
    t0 = time.perf_counter()
    rate = ARMS[arm](work, size, steps, warmup)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    out = {
        "loop_tokens_per_s": rate,
        "wall_s": time.perf_counter() - t0,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "threads": torch.get_num_threads(),
    }
    print("RESULT " + json.dumps(out))


def run_child(
    arm: str, work: Path, size: str, steps: int, warmup: int, env: dict[str, str]
) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", arm, "--work", str(work), "--size", size,
           "--steps", str(steps), "--warmup", str(warmup)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode or not line:
        sys.exit(f"{arm} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return json.loads(line[0][7:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", default=["tiny", "small"], choices=list(SIZES))
    ap.add_argument("--steps", type=int, default=60, help="steps of the long run of each arm")
    ap.add_argument("--warmup", type=int, default=10, help="steps of the short run (and untimed steps)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads in every arm")
    ap.add_argument("--child", choices=list(ARMS))
    ap.add_argument("--work")
    ap.add_argument("--size")
    args = ap.parse_args()
    if args.child:
        child(args.child, Path(args.work), args.size, args.steps, args.warmup)
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    env = {**os.environ, "HUBFLOW_CACHE_DIR": tempfile.mkdtemp()}
    if args.threads:
        env["BENCH_THREADS"] = str(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        prepare(work)
        for size in args.sizes:
            tps = BATCH * SIZES[size]["context_length"]
            extra = (args.steps - args.warmup) * tps
            rows: dict[str, dict[str, list[float]]] = {
                a: {"cpu": [], "wall": [], "loop": [], "rss": []} for a in ARMS
            }
            threads = 0
            for _ in range(args.repeat):
                for arm in ARMS:
                    short = run_child(arm, work, size, args.warmup, args.warmup // 2, env)
                    long = run_child(arm, work, size, args.steps, args.warmup, env)
                    rows[arm]["cpu"].append(extra / (long["cpu_s"] - short["cpu_s"]))
                    rows[arm]["wall"].append(extra / (long["wall_s"] - short["wall_s"]))
                    rows[arm]["loop"].append(long["loop_tokens_per_s"])
                    rows[arm]["rss"].append(long["peak_rss_mb"])
                    threads = long["threads"]
            med = {a: {k: statistics.median(v) for k, v in r.items()} for a, r in rows.items()}
            best = {a: max(r["cpu"]) for a, r in rows.items()}
            print(f"\n## {size}: {SIZES[size]}, batch {BATCH}, {args.warmup} vs {args.steps} steps, "
                  f"{args.repeat} repeat(s), {threads} thread(s), fp32 CPU")  # fmt: skip
            print(
                "tokens/s = extra tokens of the long run / its extra CPU (or wall) seconds over the short run;"
            )
            print("loop = the arm's own timer over the steps after the warmup (wall clock)")
            print("| arm | tokens/CPU-s median | best | tokens/wall-s | loop tokens/s | stage ratio (median) "
                  "| stage ratio (best) | peak RSS MB |")  # fmt: skip
            print("| --- | --- | --- | --- | --- | --- | --- | --- |")
            for a in ARMS:
                m = med[a]
                print(f"| {a} | {m['cpu']:.0f} | {best[a]:.0f} | {m['wall']:.0f} | {m['loop']:.0f} | "
                      f"{med['stage']['cpu'] / m['cpu']:.3f} | {best['stage'] / best[a]:.3f} | "
                      f"{max(rows[a]['rss']):.0f} |")  # fmt: skip
            for a in ARMS:
                print(f"  {a} runs (tokens/CPU-s): " + ", ".join(f"{x:.0f}" for x in rows[a]["cpu"]))
            for other, target in (("plain", 0.9), ("trainer", 1.0)):
                print(f"stage/{other}: median {med['stage']['cpu'] / med[other]['cpu']:.3f}, "
                      f"best {best['stage'] / best[other]:.3f} (target ≥ {target})")  # fmt: skip


if __name__ == "__main__":
    main()
