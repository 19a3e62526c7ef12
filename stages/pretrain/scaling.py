"""Parameter counts, Chinchilla sizing and the plan lines of a pretrain stage (seed §1.4).

Pure Python: ``hubflow plan`` calls :func:`describe_lines` without importing torch,
so every count here is computed analytically from the ``architecture:`` block and
checked against the real transformers models in the stage tests.

Conventions:

- ``N`` counts every trainable parameter (embeddings included, tied ones once), as
  Chinchilla does. When ``architecture.vocab_size`` is not given, the plan cannot
  know the vocabulary (it comes from the tokenizer input) and counts the
  non-embedding parameters only, saying so.
- Compute ``C = 6·N·D`` FLOPs; compute-optimal ``D ≈ 20·N`` (Chinchilla), so a
  ``compute_budget`` gives ``N = sqrt(C / 120)`` and ``D = C / (6·N)``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

# re-exported: the schedule lives in stages/lib (domain_weights uses it too)
from stages.lib.lm import lr_at as lr_at

CHINCHILLA_TOKENS_PER_PARAM = 20.0
FLOPS_PER_PARAM_TOKEN = 6.0
T5_RELATIVE_BUCKETS = 32
BERT_TYPE_VOCAB = 1

FAMILIES = {"causal": "llama", "mlm": "bert", "span_corruption": "t5", "ul2": "t5"}
"""Objective -> the transformers model family it trains."""


@dataclass(frozen=True)
class Shape:
    """The size-determining part of an architecture."""

    family: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    context_length: int
    tie_embeddings: bool
    vocab_size: int | None = None
    max_position_embeddings: int | None = None

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


def default_intermediate(family: str, hidden_size: int) -> int:
    """SwiGLU / gated FFN: 8/3·d rounded up to a multiple of 32 (same FLOPs as a 4·d MLP); BERT: 4·d."""
    if family == "bert":
        return 4 * hidden_size
    return 32 * math.ceil(8 * hidden_size / 3 / 32)


def count_parameters(shape: Shape) -> tuple[int | None, int]:
    """(total, non-embedding) trainable parameters; total is None when the vocabulary is unknown.

    Non-embedding excludes the token embedding and an untied output head.
    """
    d, layers, ff = shape.hidden_size, shape.num_layers, shape.intermediate_size
    vocab = shape.vocab_size
    if shape.family == "llama":
        hd = shape.head_dim
        attn = d * shape.num_heads * hd * 2 + d * shape.num_kv_heads * hd * 2
        block = attn + 3 * d * ff + 2 * d
        body = layers * block + d  # final RMSNorm
        emb = None if vocab is None else vocab * d * (1 if shape.tie_embeddings else 2)
        return (None if emb is None else emb + body), body
    if shape.family == "bert":
        positions = shape.max_position_embeddings or shape.context_length
        block = 4 * (d * d + d) + 2 * d + (d * ff + ff) + (ff * d + d) + 2 * d
        body = positions * d + BERT_TYPE_VOCAB * d + 2 * d + layers * block + (d * d + d + 2 * d)
        if vocab is None:
            return None, body
        # the MLM output bias; untied, the decoder has its own weight and bias as well
        emb = vocab * d + vocab if shape.tie_embeddings else 2 * vocab * d + 2 * vocab
        return emb + body, body
    if shape.family == "t5":
        inner = shape.num_heads * shape.head_dim
        attn = 4 * d * inner
        ffn = 3 * d * ff  # gated FFN: wi_0, wi_1, wo
        rel = T5_RELATIVE_BUCKETS * shape.num_heads
        encoder = layers * (attn + d + ffn + d) + rel + d
        decoder = layers * (2 * attn + 2 * d + ffn + d) + rel + d
        body = encoder + decoder
        if vocab is None:
            return None, body
        return vocab * d + body, body  # transformers' T5 always ties its embeddings and head
    raise ValueError(f"unknown model family {shape.family!r}")


def counted_parameters(shape: Shape) -> int:
    """N for 6·N·D: the total when the vocabulary is known, else the non-embedding count."""
    total, body = count_parameters(shape)
    return total if total is not None else body


def chinchilla(compute: float) -> tuple[float, float]:
    """Compute-optimal (N, D) for ``C = 6·N·D`` with ``D = 20·N``."""
    n = math.sqrt(compute / (FLOPS_PER_PARAM_TOKEN * CHINCHILLA_TOKENS_PER_PARAM))
    return n, CHINCHILLA_TOKENS_PER_PARAM * n


def shape_for(target: float, base: Shape, *, aspect: float = 64.0) -> Shape:
    """A shape of about ``target`` parameters (as :func:`counted_parameters` counts them).

    Hidden sizes are multiples of 32 below 512 (heads of 32 dims), of 64 above (heads
    of 64 dims); among
    the shapes within 10% of the target the one whose width/depth ratio is closest
    to ``aspect`` (Kaplan et al.: loss is flat for d/L ≈ 40–100) wins, else the
    shape closest to the target.
    """
    best: tuple[float, float, Shape] | None = None
    widths = [*range(64, 512, 32), *range(512, 16385, 64)]
    for layers in range(1, 97):
        for d in widths:
            head_dim = 32 if d < 512 else 64
            heads = d // head_dim
            shape = replace(
                base,
                hidden_size=d,
                num_layers=layers,
                num_heads=heads,
                num_kv_heads=heads,
                intermediate_size=default_intermediate(base.family, d),
            )
            n = counted_parameters(shape)
            miss = abs(math.log(n / target))
            score = (0.0 if miss <= math.log(1.1) else miss, abs(math.log(d / layers / aspect)))
            if best is None or score < best[:2]:
                best = (*score, shape)
            if n > target * 1.1:
                break
    assert best is not None
    return best[2]


@dataclass(frozen=True)
class Sizing:
    """What a config trains: the model shape, N, tokens D and steps."""

    shape: Shape
    parameters: int
    embeddings_counted: bool
    tokens_per_step: int
    steps: int
    compute_budget: float | None

    @property
    def tokens(self) -> int:
        return self.steps * self.tokens_per_step

    @property
    def flops(self) -> float:
        return FLOPS_PER_PARAM_TOKEN * self.parameters * self.tokens


def configured_shape(cfg: Any) -> Shape:
    """The shape the ``architecture:`` block spells out (sizes filled with their defaults)."""
    arch = cfg.architecture
    family = FAMILIES[cfg.objective]
    return Shape(
        family=family,
        hidden_size=arch.hidden_size,
        num_layers=arch.num_layers,
        num_heads=arch.num_heads,
        num_kv_heads=arch.num_kv_heads or arch.num_heads,
        intermediate_size=arch.intermediate_size or default_intermediate(family, arch.hidden_size),
        context_length=arch.context_length,
        tie_embeddings=arch.tie_embeddings,
        vocab_size=arch.vocab_size,
        max_position_embeddings=arch.max_position_embeddings,
    )


def sizing(cfg: Any, *, vocab_size: int | None = None, num_processes: int | None = None) -> Sizing:
    """Resolve a pretrain config into (shape, N, steps). ``vocab_size`` overrides the
    architecture's (the run passes the tokenizer's) for counting only: a
    ``compute_budget`` shape is always picked with the config's own vocab_size, so
    the plan and the run train the same model."""
    world = num_processes or cfg.resources.num_processes * cfg.resources.num_machines
    per_step = (
        cfg.per_device_train_batch_size
        * cfg.gradient_accumulation_steps
        * world
        * cfg.architecture.context_length
    )
    shape = configured_shape(cfg)
    if cfg.compute_budget is not None:
        target, _ = chinchilla(cfg.compute_budget)
        shape = shape_for(target, shape)
    counted = replace(shape, vocab_size=vocab_size or shape.vocab_size)
    n = counted_parameters(counted)
    if cfg.compute_budget is not None:
        tokens = cfg.compute_budget / (FLOPS_PER_PARAM_TOKEN * counted_parameters(shape))
        steps = max(1, math.ceil(tokens / per_step))
    elif cfg.tokens is not None:
        steps = max(1, math.ceil(cfg.tokens / per_step))
    else:
        steps = int(cfg.max_steps)
    return Sizing(
        shape=shape,
        parameters=n,
        embeddings_counted=counted.vocab_size is not None,
        tokens_per_step=per_step,
        steps=steps,
        compute_budget=cfg.compute_budget,
    )


# -- plan lines ------------------------------------------------------------------


def human(x: float, unit: str = "") -> str:
    for div, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.3g}{suffix}{unit}"
    return f"{x:.3g}{unit}"


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def describe_lines(cfg: Any) -> list[str]:
    """The lines ``hubflow plan`` prints under a pretrain stage."""
    s = sizing(cfg)
    sh = s.shape
    kv = f", {sh.num_kv_heads} kv heads" if sh.family == "llama" and sh.num_kv_heads != sh.num_heads else ""
    lines = [
        f"model: {sh.family} d={sh.hidden_size} layers={sh.num_layers} heads={sh.num_heads}{kv} "
        f"ffn={sh.intermediate_size} ctx={sh.context_length}"
        + (" (picked for compute_budget)" if s.compute_budget is not None else ""),
    ]
    if s.embeddings_counted:
        lines.append(f"N = {human(s.parameters)} parameters (vocab {sh.vocab_size})")
    else:
        lines.append(
            f"N = {human(s.parameters)} non-embedding parameters "
            "(+ vocab×d embeddings; set architecture.vocab_size to count them)"
        )
    lines.append(f"D = {human(s.tokens)} tokens ({s.steps} steps × {human(s.tokens_per_step)} tokens/step)")
    ratio = s.tokens / s.parameters
    verdict = (
        "about compute-optimal"
        if 10 <= ratio <= 40
        else ("under-trained for its size" if ratio < 10 else "over-trained for its size (cheaper inference)")
    )
    budget = f" (budget {human(s.compute_budget)})" if s.compute_budget is not None else ""
    lines.append(f"C = 6·N·D = {s.flops:.3g} FLOPs{budget}")
    lines.append(
        f"tokens/parameter = {ratio:.3g} (Chinchilla compute-optimal ≈ {CHINCHILLA_TOKENS_PER_PARAM:.0f}: {verdict})"
    )
    rate, source = cfg.throughput_tokens_per_s, "throughput_tokens_per_s"
    if rate is None:
        rate = read_throughput(throughput_key(cfg))
        source = "measured by the last run of this shape here"
    if rate:
        lines.append(f"time ≈ {duration(s.tokens / rate)} at {human(rate)} tokens/s ({source})")
    else:
        lines.append("time: unknown until a run measures tokens/s (or set throughput_tokens_per_s)")
    return lines


# -- measured throughput, readable at plan time --------------------------------------


def cache_dir() -> Path:
    """Where measured throughputs are kept (see hubflow.constants.env_cache_dir)."""
    from hubflow.constants import env_cache_dir

    return env_cache_dir()


def throughput_key(cfg: Any) -> str:
    """Everything that sets tokens/s on one machine: objective, architecture, batch, processes, precision."""
    arch = cfg.architecture.model_dump(mode="json")
    arch.pop("dropout", None)
    if cfg.compute_budget is not None:
        arch["compute_budget"] = cfg.compute_budget
    key = {
        "objective": cfg.objective,
        "architecture": arch,
        "batch_size": cfg.per_device_train_batch_size,
        "gradient_checkpointing": cfg.gradient_checkpointing,
        "num_processes": cfg.resources.num_processes,
        "mixed_precision": cfg.resources.mixed_precision,
        "cpu": cfg.resources.cpu,
    }
    if cfg.resources.num_machines > 1:
        key["num_machines"] = cfg.resources.num_machines
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]


def _cache_file() -> Path:
    return cache_dir() / "pretrain-throughput.json"


def read_throughput(key: str) -> float | None:
    try:
        data = json.loads(_cache_file().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    value = data.get(key) if isinstance(data, dict) else None
    return float(value) if isinstance(value, (int, float)) and value > 0 else None


def record_throughput(key: str, tokens_per_s: float) -> None:
    """Remember a run's tokens/s for the plan (best effort: an unwritable cache is skipped)."""
    path = _cache_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            data = {}
        if not isinstance(data, dict):
            data = {}
        data[key] = round(float(tokens_per_s), 1)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, sort_keys=True, indent=1), encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        pass
