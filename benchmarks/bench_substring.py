"""Exact-substring dedup (curate's `dedup.substring`) against the suffix-array construction alone.

A generated corpus of word documents (a Zipf-ish vocabulary of 50k words; 10% of the
documents hold one of 200 repeated 80-word passages). Each measurement runs in a
fresh process so its peak RSS is its own:

- ``sa``: ``stages.curate.substring.suffix_array`` on the corpus' token array (tokens already made);
- ``dedup``: everything the stage does for it: tokenise every document, suffix array, LCP,
  blocks, byte ranges, and cutting them out of the documents (stages.curate.substring).

Throughput is MB of UTF-8 text per wall second; the ratio dedup / sa says how much of the work
is the suffix array itself. Peak RSS minus the process' RSS before the corpus is built gives
bytes per token.

    python benchmarks/bench_substring.py --mb 20 --tokens words
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def corpus(mb: float, seed: int = 0) -> list[str]:
    import numpy as np

    rng = np.random.default_rng(seed)
    vocab = np.asarray([f"w{i}" for i in range(50_000)])
    probs = 1 / np.arange(1, len(vocab) + 1)
    probs /= probs.sum()
    n_docs = int(mb * 1e6 / 1900) + 1  # ~300 words of ~6.3 bytes
    words = vocab[rng.choice(len(vocab), (n_docs, 300), p=probs)]
    passages = [" ".join(p) for p in vocab[rng.choice(len(vocab), (200, 80), p=probs)]]
    docs, size = [], 0
    for row in words:
        text = " ".join(row)
        if rng.random() < 0.1:
            text += " " + passages[rng.integers(len(passages))]
        docs.append(text)
        size += len(text)
        if size >= mb * 1e6:
            break
    return docs


def measure(mode: str, mb: float, tokens: str, min_tokens: int) -> dict:
    import numpy as np

    from stages.curate.substring import compact_dtype, find_removals, make_tokens, suffix_array

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    docs = corpus(mb)
    nbytes = sum(len(d.encode()) for d in docs)
    tok = make_tokens(tokens)
    if mode == "sa":
        encoded = [tok.encode(d.encode(), d)[0] for d in docs]
        arr = compact_dtype(np.concatenate([np.append(e, tok.separator) for e in encoded]), tok.separator)
        del encoded
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        start = time.perf_counter()
        suffix_array(arr)
        seconds = time.perf_counter() - start
        n = len(arr)
    else:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        start = time.perf_counter()
        enc = []
        for d in docs:
            raw = d.encode()
            ids, starts = tok.encode(raw, d)
            enc.append((ids, starts, len(raw)))
        rem, stats = find_removals(enc, tok.separator, min_tokens, True)
        cuts: dict[int, list] = {}
        for d, a, b in zip(rem.doc.tolist(), rem.start.tolist(), rem.end.tolist(), strict=True):
            cuts.setdefault(d, []).append((a, b))
        removed = 0
        for i, ranges in cuts.items():
            raw = docs[i].encode()
            pieces, pos = [], 0
            for a, b in sorted(ranges):
                pieces.append(raw[pos:a])
                removed += b - a
                pos = b
            pieces.append(raw[pos:])
            docs[i] = b"".join(pieces).decode()
        seconds = time.perf_counter() - start
        n = stats["tokens"] + stats["documents"]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = {
        "mode": mode,
        "mb": nbytes / 1e6,
        "tokens": n,
        "seconds": seconds,
        "mb_per_s": nbytes / 1e6 / seconds,
    }
    # ru_maxrss only grows: the peak above what the process had reached before the timed part
    out["peak_extra_bytes_per_token"] = (peak - before) * 1024 / n
    out["peak_rss_mb"], out["start_rss_mb"] = peak / 1024, base / 1024
    if mode == "dedup":
        out["spans_removed"], out["bytes_removed"] = len(rem.doc), removed
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--mb", type=float, default=20)
    p.add_argument("--tokens", default="words", choices=["words", "bytes"])
    p.add_argument("--min-tokens", type=int, default=50)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.mb, args.tokens, args.min_tokens)))
        return
    best: dict[str, dict] = {}
    for _ in range(args.repeat):  # interleaved, best of --repeat
        for mode in ("sa", "dedup"):
            cmd = [sys.executable, __file__, "--one", mode, "--mb", str(args.mb), "--tokens", args.tokens,
                   "--min-tokens", str(args.min_tokens)]  # fmt: skip
            r = json.loads(
                subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.splitlines()[-1]
            )
            if mode not in best or r["seconds"] < best[mode]["seconds"]:
                best[mode] = r
    for mode in ("sa", "dedup"):
        print(json.dumps(best[mode]))
    print(f"dedup / suffix array throughput: {best['dedup']['mb_per_s'] / best['sa']['mb_per_s']:.2f}")


if __name__ == "__main__":
    main()
