"""The two runs of DoReMi: the reference model on α_ref, then the Group-DRO proxy (Algorithm 1).

Inputs are checked before any compute (domains non-empty with the text column, a tokenizer with
EOS, enough tokens for a chunk per domain). Both models are Llama decoders of the stage's
``architecture:`` built by :func:`stages.lib.lm.build_llama` from the same seed; both train with
AdamW, the warmup + cosine schedule and gradient clipping of the training vocabulary.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hubflow.errors import StageInputError
from hubflow.stage import StageContext, StageResult
from stages.domain_weights import data as D
from stages.domain_weights import doremi
from stages.domain_weights.config import TOKENIZER_INPUT, Config


@dataclass
class Trace:
    """Per proxy step t (1-based): α_t, λ_t and the per-domain mean losses of proxy and reference."""

    domains: list[str]
    weights: list[list[float]] = field(default_factory=list)
    excess: list[list[float]] = field(default_factory=list)
    proxy_loss: list[list[float]] = field(default_factory=list)
    reference_loss: list[list[float]] = field(default_factory=list)

    def average(self) -> dict[str, float]:
        """ᾱ = 1/T Σ_t α_t."""
        mean = np.asarray(self.weights, dtype=np.float64).mean(axis=0)
        return {d: float(w) for d, w in zip(self.domains, mean / mean.sum(), strict=True)}


def _optimizer(net: Any, cfg: Config, steps: int) -> tuple[Any, Any]:
    import torch

    from stages.lib.lm import lr_at, parameter_groups

    opt = torch.optim.AdamW(
        parameter_groups(net, cfg.weight_decay),
        lr=cfg.learning_rate,
        betas=(cfg.adam_beta1, cfg.adam_beta2),
        eps=cfg.adam_epsilon,
    )
    min_lr = cfg.min_lr if cfg.min_lr is not None else cfg.learning_rate / 10
    warmup = min(cfg.warmup_steps, steps)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            lr_at(s, lr=cfg.learning_rate, min_lr=min_lr, warmup_steps=warmup, total_steps=steps)
            / cfg.learning_rate
        ),
    )
    return opt, sched


def _step(net: Any, opt: Any, sched: Any, loss: Any, max_grad_norm: float) -> None:
    import torch

    loss.backward()
    if max_grad_norm:
        torch.nn.utils.clip_grad_norm_(net.parameters(), max_grad_norm)
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)


def reference_counts(cfg: Config) -> dict[str, int]:
    """Sequences of each domain in every reference batch: α_ref · (k × per_domain_batch_size), rounded by
    largest remainder (exactly per_domain_batch_size each for the uniform mix)."""
    from stages.lib.mixing import mix_counts

    domains = cfg.domains()
    total = cfg.per_domain_batch_size * len(domains)
    return mix_counts(dict.fromkeys(domains, total), cfg.reference_mix(), target=total, upsample=True)


def train_reference(
    ctx: StageContext, cfg: Config, net: Any, chunks: dict[str, D.DomainChunks], device: str, total: int
) -> float:
    """Standard next-token training on batches mixed by α_ref; returns the last logged loss."""
    import torch

    steps = cfg.total_reference_steps()
    counts = reference_counts(cfg)
    opt, sched = _optimizer(net, cfg, steps)
    window, last = [], float("nan")
    for step in range(steps):
        rows = [chunks[d].at(step * c + j) for d, c in counts.items() for j in range(c)]
        ids = torch.from_numpy(np.stack(rows)).to(device)
        loss = net(input_ids=ids, labels=ids).loss
        _step(net, opt, sched, loss, cfg.max_grad_norm)
        window.append(float(loss.detach()))
        if (step + 1) % cfg.logging_steps == 0 or step + 1 == steps:
            last = sum(window) / len(window)
            ctx.log_metrics(step + 1, total=total, phase="reference", loss=last)
            window = []
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return last


def train_proxy(
    ctx: StageContext,
    cfg: Config,
    net: Any,
    reference: Any,
    chunks: dict[str, D.DomainChunks],
    device: str,
    total: int,
) -> Trace:
    """Algorithm 1: per step, λ_t from the proxy's and the reference's per-token losses, α_t by the
    exponentiated-gradient update, then one optimizer step on L(θ, α_t)."""
    import torch

    domains = cfg.domains()
    k, b = len(domains), cfg.per_domain_batch_size
    steps, offset = cfg.max_steps, cfg.total_reference_steps()
    owner = torch.arange(k, device=device).repeat_interleave(b)
    alpha = torch.full((k,), 1.0 / k, dtype=torch.float64, device=device)  # α_0 = u
    opt, sched = _optimizer(net, cfg, steps)
    trace = Trace(domains)
    for step in range(steps):
        rows = [chunks[d].at(step * b + j) for d in domains for j in range(b)]
        ids = torch.from_numpy(np.stack(rows)).to(device)
        with torch.no_grad():
            ref_loss = doremi.per_token_loss(reference(input_ids=ids).logits, ids)
        proxy_loss = doremi.per_token_loss(net(input_ids=ids).logits, ids)
        lam = doremi.excess_loss(proxy_loss.double(), ref_loss.double(), owner, k)
        alpha = doremi.update_weights(alpha, lam, eta=cfg.eta, smoothing=cfg.smoothing)
        objective = doremi.proxy_objective(proxy_loss, ref_loss, owner, alpha.float())
        _step(net, opt, sched, objective, cfg.max_grad_norm)
        with torch.no_grad():
            trace.weights.append(alpha.tolist())
            trace.excess.append(lam.tolist())
            trace.proxy_loss.append(doremi.domain_means(proxy_loss.detach(), owner, k).tolist())
            trace.reference_loss.append(doremi.domain_means(ref_loss, owner, k).tolist())
        if (step + 1) % cfg.logging_steps == 0 or step + 1 == steps:
            values = {f"weight/{d}": w for d, w in zip(domains, trace.weights[-1], strict=True)}
            values.update({f"excess/{d}": x for d, x in zip(domains, trace.excess[-1], strict=True)})
            ctx.log_metrics(
                offset + step + 1, total=total, phase="proxy", loss=float(objective.detach()), **values
            )
    return trace


def run(ctx: StageContext, cfg: Config) -> StageResult:
    import torch

    from stages.domain_weights.report import publish
    from stages.lib.datasets import input_folder
    from stages.lib.hardware import device_for
    from stages.lib.lm import build_llama
    from stages.lib.tokenizers import load_tokenizer

    # -- inputs, checked before any compute --------------------------------------------
    domains = cfg.domains()
    sources = [(d, input_folder(ctx, d)) for d in domains]
    rows = D.check_domains(sources, cfg.text_column)
    tokenizer = load_tokenizer(input_folder(ctx, TOKENIZER_INPUT))
    if tokenizer.eos_token_id is None:
        raise StageInputError(
            "input 'tokenizer' has no eos token; documents are joined with it",
            hint="give the tokenizer an eos token (the tokenizer stage's special_tokens.eos)",
        )
    vocab = len(tokenizer)
    arch = cfg.architecture
    if arch.vocab_size is not None and arch.vocab_size != vocab:
        raise StageInputError(
            f"architecture.vocab_size is {arch.vocab_size} but the tokenizer input has {vocab} tokens",
            hint=f"set architecture.vocab_size: {vocab}, or remove it to take the tokenizer's",
        )
    length = arch.context_length
    counts = reference_counts(cfg)
    need = max(
        max(c * cfg.total_reference_steps(), cfg.per_domain_batch_size * cfg.max_steps)
        for c in counts.values()
    )
    t0 = time.perf_counter()
    tokens = D.load_domains(
        sources,
        tokenizer=tokenizer,
        text_column=cfg.text_column,
        eos_id=tokenizer.eos_token_id,
        length=length,
        max_tokens=(need + 1) * length,
    )
    ctx.logger.info(
        "domains: %s (%.1fs)",
        ", ".join(f"{d}: {rows[d]} rows, {len(t) // length} chunks" for d, t in tokens.items()),
        time.perf_counter() - t0,
    )

    # -- the reference model on α_ref, then the proxy with Group DRO ---------------------
    device = device_for(ctx.resources)
    total = cfg.total_reference_steps() + cfg.max_steps
    pad = tokenizer.pad_token_id
    make = {"seed": cfg.seed, "eos_id": tokenizer.eos_token_id, "pad_id": pad}
    reference = build_llama(arch, vocab, **make).to(device)
    ref_chunks = {d: D.DomainChunks(t, length, cfg.seed, stream=1) for d, t in tokens.items()}
    t0 = time.perf_counter()
    ref_loss = train_reference(ctx, cfg, reference, ref_chunks, device, total)
    ref_seconds = time.perf_counter() - t0
    proxy = build_llama(arch, vocab, **make).to(device)
    proxy_chunks = {d: D.DomainChunks(t, length, cfg.seed, stream=2) for d, t in tokens.items()}
    t0 = time.perf_counter()
    trace = train_proxy(ctx, cfg, proxy, reference, proxy_chunks, device, total)
    proxy_seconds = time.perf_counter() - t0
    n_params = sum(p.numel() for p in proxy.parameters())
    del reference, proxy
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    info = {
        "parameters": n_params,
        "reference_train_loss": ref_loss,
        "reference_seconds": ref_seconds,
        "proxy_seconds": proxy_seconds,
        "rows": rows,
        "chunks": {d: len(t) // length for d, t in tokens.items()},
        "uniform_loss_nats": math.log(vocab),
    }
    return publish(ctx, cfg, trace, info)
