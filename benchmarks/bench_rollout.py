#!/usr/bin/env python
"""Rollout throughput of ``stages.lib.generation.sample``: KV cache against re-encoding every step.

A tiny Llama built from config (about 5M parameters at the defaults: hidden 256, 6 layers, the
tiny tokenizer's 384-token vocabulary), ``--batch`` left-padded prompts of 8 to 32 tokens,
``--new-tokens`` sampled tokens per row at temperature 1. The stop token lies outside the
vocabulary, so every row runs the full length and each variant produces the same number of tokens.

Variants, interleaved over ``--rounds`` rounds (so that load from other processes hits them alike):

- ``sample, KV cache``: our loop with a ``DynamicCache`` (one token per step after the prompt);
- ``sample, re-encode``: our loop with ``use_cache=False`` (the whole sequence every step);
- ``model.generate``: transformers' own sampling loop with its cache, for reference.

Reports new tokens per second (batch × new tokens / wall seconds; median and best of the
rounds) and per CPU second, and the speed-up of the cache. Table on stdout, then one JSON line.

    python benchmarks/bench_rollout.py [--batch 16] [--new-tokens 64] [--rounds 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def build(args: argparse.Namespace) -> tuple[Any, list[list[int]], int]:
    import torch

    from stages.lib.testing import tiny_llama, tiny_tokenizer

    tok = tiny_tokenizer()
    model = tiny_llama(
        len(tok), hidden=args.hidden, layers=args.layers, heads=args.heads, intermediate=args.intermediate
    ).eval()
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(8, 33, (args.batch,), generator=g).tolist()
    prompts = [
        [tok.bos_token_id, *torch.randint(8, len(tok), (n - 1,), generator=g).tolist()] for n in lengths
    ]
    return model, prompts, tok.pad_token_id


def variants(model: Any, prompts: list[list[int]], pad_id: int, new: int) -> dict[str, Callable[[], int]]:
    import torch

    from stages.lib.generation import left_pad, sample

    never = model.config.vocab_size  # no row ever stops: every variant makes batch × new tokens

    def ours(use_cache: bool) -> Callable[[], int]:
        def go() -> int:
            g = torch.Generator().manual_seed(1)
            r = sample(
                model,
                prompts,
                pad_id=pad_id,
                stop_ids=[never],
                max_new_tokens=new,
                generator=g,
                use_cache=use_cache,
            )
            return int(r.response_mask.sum())

        return go

    def hf() -> int:
        ids, mask = left_pad(prompts, pad_id)
        torch.manual_seed(1)
        with torch.no_grad():
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                do_sample=True,
                top_k=0,
                top_p=1.0,
                temperature=1.0,
                max_new_tokens=new,
                min_new_tokens=new,
                pad_token_id=pad_id,
                eos_token_id=None,
            )
        return int(out[:, ids.shape[1] :].numel())

    return {"sample, KV cache": ours(True), "sample, re-encode": ours(False), "model.generate": hf}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--intermediate", type=int, default=704)
    args = p.parse_args(argv)

    import torch
    import transformers

    torch.set_num_threads(args.threads)
    model, prompts, pad_id = build(args)
    params = sum(t.numel() for t in model.parameters())
    runs = variants(model, prompts, pad_id, args.new_tokens)
    for go in runs.values():  # warm-up
        go()
    wall: dict[str, list[float]] = {k: [] for k in runs}
    cpu: dict[str, list[float]] = {k: [] for k in runs}
    made: dict[str, int] = {}
    for _ in range(args.rounds):
        for name, go in runs.items():
            t0, c0 = time.perf_counter(), time.process_time()
            made[name] = go()
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)

    rows = []
    for name in runs:
        tokens = made[name]
        rows.append(
            {
                "variant": name,
                "tokens": tokens,
                "tok_per_s_median": tokens / statistics.median(wall[name]),
                "tok_per_s_best": tokens / min(wall[name]),
                "tok_per_cpu_s": tokens / statistics.median(cpu[name]),
            }
        )
    base = rows[1]["tok_per_s_median"]
    print(
        f"tiny Llama {params / 1e6:.1f}M params, batch {args.batch}, {args.new_tokens} new tokens, "
        f"{args.threads} thread(s), {args.rounds} rounds, torch {torch.__version__}, "
        f"transformers {transformers.__version__}"
    )
    print(
        f"{'variant':<20} {'tokens':>7} {'tok/s median':>13} {'tok/s best':>11} {'tok/CPU s':>10} {'vs re-encode':>13}"
    )
    for r in rows:
        print(
            f"{r['variant']:<20} {r['tokens']:>7} {r['tok_per_s_median']:>13.0f} {r['tok_per_s_best']:>11.0f} "
            f"{r['tok_per_cpu_s']:>10.0f} {r['tok_per_s_median'] / base:>12.2f}x"
        )
    print(json.dumps({"params": params, "batch": args.batch, "new_tokens": args.new_tokens, "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
