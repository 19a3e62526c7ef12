"""How many CPU threads a stage's process gives torch (``resources.threads``): hubflow's job, not the user's.

torch starts one intra-op thread per core. For the small models of a CPU run that is the wrong choice
twice over: a tiny model's matmuls are too small to split (a second thread buys nothing), and when
another CPU-bound job holds a core the second thread spins and waits, which made tiny models 6–15×
slower here (BENCHMARKS.md, "Threads"). ``threads: auto`` (the default) therefore picks

    threads = 1                                   for a model of at most SMALL_MODEL parameters
    threads = max(1, min(free cores, cores))      above it, free = cores − the other runnable work

where the other runnable work is the 1-minute load average (which does not count the stage itself: it
has not started). A number in ``resources.threads`` is taken as it is; an ``OMP_NUM_THREADS`` set in the
environment wins over ``auto`` (the user asked). The choice and its reason go to the stage's log.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

SMALL_MODEL = 30_000_000
"""Parameters up to which one thread is at least as fast as two (measured: BENCHMARKS.md, "Threads")."""
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def choose_threads(
    requested: int | str, *, cores: int, load: float, params: int | None, env: Mapping[str, str] | None = None
) -> tuple[int, str]:
    """(threads, the reason in words) for a stage; pure, see the module docstring for the rule."""
    env = env or {}
    if requested != "auto":
        return int(requested), f"{requested} (resources.threads)"
    if env.get("OMP_NUM_THREADS", "").isdigit() and int(env["OMP_NUM_THREADS"]) > 0:
        n = int(env["OMP_NUM_THREADS"])
        return n, f"{n} (OMP_NUM_THREADS in the environment)"
    cores = max(1, cores)
    free = max(1, min(cores, round(cores - load)))
    size = f"{params / 1e6:.1f}M parameters" if params else "model size unknown"
    if params is not None and params <= SMALL_MODEL:
        return 1, f"1 (auto: {size}, a second thread does not help a model this small)"
    return free, f"{free} (auto: {size}; {free} of {cores} cores free, load {load:.1f})"


def machine_state() -> tuple[int, float]:
    """(usable cores, 1-minute load average) of this machine."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = 0.0
    return cores, load


def parameters_of_config(config: Mapping[str, object]) -> int | None:
    """Parameters of a transformers decoder from its config.json (embeddings + 12·L·d² blocks, the
    Chinchilla count, close enough to choose threads), or None when the config does not say."""
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    assert isinstance(text, Mapping)
    d = text.get("hidden_size") or text.get("n_embd") or text.get("d_model")
    layers = text.get("num_hidden_layers") or text.get("n_layer") or text.get("num_layers")
    vocab = text.get("vocab_size") or 0
    if not isinstance(d, int) or not isinstance(layers, int):
        return None
    ffn = text.get("intermediate_size") if isinstance(text.get("intermediate_size"), int) else 4 * d
    per_layer = 4 * d * d + 3 * d * int(ffn)  # attention + a gated feed-forward
    return int(layers * per_layer + (vocab if isinstance(vocab, int) else 0) * d)


def largest_model(folders: Iterable[Path]) -> int | None:
    """The largest model among input folders that hold a ``config.json`` (an adapter: its base's)."""
    sizes = []
    for folder in folders:
        path = Path(folder) / "config.json"
        if path.is_file():
            try:
                config = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if isinstance(config, dict) and (n := parameters_of_config(config)) is not None:
                sizes.append(n)
    return max(sizes) if sizes else None


def thread_env(n: int) -> dict[str, str]:
    return dict.fromkeys(THREAD_ENV, str(n))
