"""The training loop on accelerate (seed §1.6 step 3).

Every process runs :func:`train`; under ``accelerate launch`` the model is wrapped
in DDP (gloo on CPU) and each process trains on its own slice of every global batch.
Inputs are checked before any compute; the corpus is tokenized once (rank 0 first,
the others reuse the file); a checkpoint in the resume folder is picked up if one
exists. Rank 0 logs, checkpoints the shared state and publishes.
"""

from __future__ import annotations

import math
import shutil
import time
from contextlib import nullcontext
from dataclasses import replace
from typing import Any

from hubflow.stage import StageContext, StageResult
from stages.lib.checkpoints import CheckpointWriter
from stages.lib.datasets import has_split, input_folder
from stages.lib.hardware import pick_mixed_precision
from stages.lib.tokenizers import load_tokenizer
from stages.lib.weights_file import WEIGHTS_INPUT, read_weights
from stages.pretrain import data as D
from stages.pretrain import model as M
from stages.pretrain import scaling as S
from stages.pretrain.checkpoint import Checkpoints
from stages.pretrain.hardware import peak_flops
from stages.pretrain.objectives import DenoiserSpec
from stages.pretrain.report import History, card_section, plot_loss


def _batcher(cfg: Any, tok: M.ObjectiveTokens, vocab: int) -> D.Batcher:
    import numpy as np

    special = set(tok.special_ids)
    pool = np.asarray([i for i in range(vocab) if i not in special], dtype=np.int64)
    return D.Batcher(
        objective=cfg.objective,
        seed=cfg.seed,
        eos_id=tok.eos_id,
        pad_id=tok.pad_id,
        mask_id=tok.mask_id,
        special_ids=tuple(tok.special_ids),
        random_pool=pool,
        sentinel_ids=tuple(tok.sentinel_ids),
        mode_ids=tok.mode_ids,
        mlm_probability=cfg.mlm_probability,
        noise_density=cfg.noise_density,
        mean_span_length=cfg.mean_span_length,
        denoisers=tuple(
            DenoiserSpec(d.mode, d.weight, d.noise_density, d.mean_span_length) for d in cfg.denoisers
        ),
    )


def train(ctx: StageContext, cfg: Any) -> StageResult:
    import torch
    from accelerate import Accelerator

    mixed = pick_mixed_precision(ctx.resources.mixed_precision, cpu=ctx.resources.cpu)
    acc = Accelerator(mixed_precision=mixed, cpu=ctx.resources.cpu)  # report_to: ctx.log_metrics's trackers
    world, rank, main = acc.num_processes, acc.process_index, acc.is_main_process
    log = ctx.logger

    # -- inputs, checked before any compute ---------------------------------------
    tokenizer = load_tokenizer(ctx.inputs["tokenizer"])
    tok = M.prepare_tokenizer(tokenizer, cfg)
    vocab = len(tokenizer)
    M.check_vocab(cfg, vocab, tok.added)
    sources = [(name, ctx.inputs[name]) for name in cfg.data_inputs()]
    D.check_sources(sources, cfg.text_column)
    weights = None
    if cfg.weighted():
        weights = read_weights(
            input_folder(ctx, WEIGHTS_INPUT), cfg.data_inputs(), stage=f"stage {ctx.stage_name!r}"
        )
    size = S.sizing(cfg, vocab_size=vocab, num_processes=world)
    shape = replace(size.shape, vocab_size=vocab)
    length, steps = cfg.architecture.context_length, size.steps

    # -- tokens: one file per split, keyed by the fingerprint ----------------------------
    token_dir = ctx.resume_dir / "tokens"
    key = ctx.fingerprint[:16]
    test_sources = [(n, f) for n, f in sources if has_split(f, "test")]
    t_tok = time.perf_counter()
    with acc.main_process_first():
        common = {"tokenizer": tokenizer, "text_column": cfg.text_column, "eos_id": tok.eos_id}
        if weights is not None:  # one token file per data input, sampled by the weights
            domain_files = {
                name: D.tokenize_corpus(
                    [(name, folder)], "train", dest=token_dir / f"train-{key}-{name}.bin", **common
                )
                for name, folder in sources
            }
            files = list(domain_files.values())
        else:
            files = [D.tokenize_corpus(sources, "train", dest=token_dir / f"train-{key}.bin", **common)]
        test_file = (
            D.tokenize_corpus(test_sources, "test", dest=token_dir / f"test-{key}.bin", **common)
            if test_sources
            else None
        )
    corpus_tokens, corpus_docs = sum(f.tokens for f in files), sum(f.documents for f in files)
    if weights is not None:
        per_domain = {n: D.Chunks(f.array(), length, cfg.seed) for n, f in domain_files.items()}
        for name, c in per_domain.items():
            if len(c) == 0 and weights[name] > 0:
                raise D.corpus_too_small(domain_files[name].tokens, length, f"train (data input {name!r})")
        chunks: Any = D.WeightedChunks(per_domain, weights, cfg.seed)
    else:
        chunks = D.Chunks(files[0].array(), length, cfg.seed)
    if len(chunks) == 0:
        raise D.corpus_too_small(corpus_tokens, length, "train")
    held_out = D.Chunks(test_file.array(), length, cfg.seed) if test_file else None
    if held_out is not None and len(held_out) == 0:
        log.warning("the test split has %d tokens, less than one chunk: no held-out loss", test_file.tokens)
        held_out = None
    if main:
        log.info(
            "corpus: %d documents, %d tokens -> %d chunks of %d (%.1fs); %s",
            corpus_docs,
            corpus_tokens,
            len(chunks),
            length,
            time.perf_counter() - t_tok,
            f"held-out: {len(held_out)} chunks" if held_out else "no test split",
        )
    batcher = _batcher(cfg, tok, vocab)

    # -- model, optimizer, schedule -------------------------------------------------------
    config = M.build_config(cfg, shape, vocab, tok)
    net = M.build_model(cfg, config, shape.family)
    net.config.use_cache = False  # no KV cache while training (it costs a copy per layer per step)
    if cfg.gradient_checkpointing:
        enable = getattr(net, "activation_checkpointing_enable", None) or net.gradient_checkpointing_enable
        enable()
    n_params = sum(p.numel() for p in net.parameters())
    body = S.count_parameters(shape)[1]
    optimizer = torch.optim.AdamW(
        M.parameter_groups(net, cfg.weight_decay),
        lr=cfg.learning_rate,
        betas=(cfg.adam_beta1, cfg.adam_beta2),
        eps=cfg.adam_epsilon,
        foreach=True,
    )
    min_lr = cfg.min_lr if cfg.min_lr is not None else cfg.learning_rate / 10
    warmup = cfg.warmup_for(steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: (
            S.lr_at(s, lr=cfg.learning_rate, min_lr=min_lr, warmup_steps=warmup, total_steps=steps)
            / cfg.learning_rate
        ),
    )
    net, optimizer = acc.prepare(net, optimizer)
    peak, peak_source = peak_flops(acc.device, mixed, ctx.resources.peak_flops)

    # -- resume ------------------------------------------------------------------------
    ckpts = Checkpoints(ctx.resume_dir / "checkpoints")
    start = 0
    latest = ckpts.latest()
    if latest is not None:
        state = ckpts.load(latest, acc, net, optimizer, scheduler)
        start = int(state["step"])
        if main:
            log.info("resumed from %s (step %d of %d)", latest.name, start, steps)
    history = History(ctx.resume_dir / "metrics.jsonl", keep_until=start, enabled=main)
    if main and start:
        ctx.replay_metrics(history.records())  # this attempt's metrics.jsonl and runs/ hold the whole run
    writer = CheckpointWriter(ctx, cfg, main=main)
    if main:
        log.info(
            "training %s: %d parameters, %d steps × %d tokens, %d process(es), precision %s, peak %.3g FLOP/s (%s)",
            config.model_type,
            n_params,
            steps,
            size.tokens_per_step,
            world,
            mixed,
            peak,
            peak_source,
        )

    per_step = size.tokens_per_step
    local_tokens = torch.zeros((), dtype=torch.float64)
    window_loss = torch.zeros((), dtype=torch.float64, device=acc.device)
    window_steps, window_time, train_time = 0, 0.0, 0.0
    last: dict[str, Any] = {"loss": float("nan"), "eval_loss": None, "eval_step": None}

    def publish_checkpoint(step: int) -> None:
        """A revision step-N: the files the final output has (seed-exact weights after N steps)."""
        if not (main and writer.due(step)):
            return
        values = {"loss": last["loss"], "tokens": step * per_step}
        if last["eval_step"] == step:
            values["eval_loss"] = last["eval_loss"]
        writer.save(
            step, lambda folder: write_model(cfg, acc.unwrap_model(net), tokenizer, size, folder), values
        )

    def log_record(record: dict[str, Any]) -> None:
        if main:
            ctx.log_metrics(total=steps, **record)  # the curve, and one progress line
            history.append(record)

    def evaluate(step: int) -> None:
        if held_out is None:
            return
        net.eval()
        total = torch.zeros(2, dtype=torch.float64, device=acc.device)
        batches = max(
            1, min(cfg.eval_batches, math.ceil(len(held_out) / (cfg.per_device_train_batch_size * world)))
        )
        with torch.no_grad():
            for b in range(batches):
                pos = D.example_positions(
                    b, 0, rank, batch_size=cfg.per_device_train_batch_size, grad_accum=1, world=world
                )
                batch = batcher.build([held_out.chunk(p % len(held_out)) for p in pos], list(pos), stream=2)
                out = net(**{k: torch.from_numpy(v).to(acc.device) for k, v in batch.items()})
                total += torch.stack(
                    [out.loss.detach().double(), torch.ones((), dtype=torch.float64, device=acc.device)]
                )
        total = acc.reduce(total, "sum")
        loss = float(total[0] / total[1])
        last["eval_loss"], last["eval_step"] = loss, step
        net.train()
        log_record(
            {
                "step": step,
                "split": "eval",
                "tokens": step * per_step,
                "eval_loss": loss,
                "eval_perplexity": math.exp(min(loss, 50.0)),
            }
        )
        if main:
            log.info("step %d/%d held-out loss %.4f ppl %.2f", step, steps, loss, math.exp(min(loss, 50.0)))

    net.train()
    for step in range(start, steps):
        t0 = time.perf_counter()
        step_loss = torch.zeros((), dtype=torch.float64, device=acc.device)
        for micro in range(cfg.gradient_accumulation_steps):
            pos = D.example_positions(
                step,
                micro,
                rank,
                batch_size=cfg.per_device_train_batch_size,
                grad_accum=cfg.gradient_accumulation_steps,
                world=world,
            )
            batch = batcher.build([chunks.at(p) for p in pos], list(pos))
            inputs = {k: torch.from_numpy(v).to(acc.device) for k, v in batch.items()}
            sync = acc.no_sync(net) if micro < cfg.gradient_accumulation_steps - 1 else nullcontext()
            with sync:
                loss = net(**inputs).loss / cfg.gradient_accumulation_steps
                acc.backward(loss)
            step_loss += loss.detach().double()
            local_tokens += len(pos) * length
        grad_norm = acc.clip_grad_norm_(net.parameters(), cfg.max_grad_norm or float("inf"))
        lr_used = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t0
        window_loss += step_loss
        window_steps += 1
        window_time += dt
        train_time += dt
        done = step + 1
        if done % cfg.logging_steps == 0 or done == steps:
            mean_loss = float(acc.reduce(window_loss.clone(), "mean")) / window_steps
            rate = window_steps * per_step / max(window_time, 1e-9)
            mfu = rate * S.FLOPS_PER_PARAM_TOKEN * n_params / (peak * world)
            last["loss"] = mean_loss
            record = {
                "step": done,
                "split": "train",
                "loss": mean_loss,
                "perplexity": math.exp(min(mean_loss, 50.0)),
                "grad_norm": float(grad_norm),
                "learning_rate": lr_used,
                "tokens": done * per_step,
                "tokens_per_s": rate,
                "mfu": mfu,
                "world_size": world,
            }
            log_record(record)
            window_loss.zero_()
            window_steps, window_time = 0, 0.0
        if cfg.eval_steps and done % cfg.eval_steps == 0 and done < steps:
            evaluate(done)
        if cfg.save_steps and done % cfg.save_steps == 0 and done < steps:
            ckpts.save(acc, done, net, optimizer, scheduler, {"world_size": world, "tokens": done * per_step})
            if main:
                log.info("checkpoint at step %d", done)
        if done < steps:
            publish_checkpoint(done)
    if start < steps or last["eval_loss"] is None:
        evaluate(steps)
    publish_checkpoint(steps)  # after the held-out loss of the last step

    # -- results ------------------------------------------------------------------------
    per_process = [int(x) for x in acc.gather(local_tokens.to(acc.device).reshape(1)).tolist()]
    trained = (steps - start) * per_step
    rate = trained / train_time if train_time > 0 else 0.0
    tokens = steps * per_step
    metrics: dict[str, Any] = {
        "objective": cfg.objective,
        "model_type": config.model_type,
        "parameters": n_params,
        "non_embedding_parameters": body,
        "vocab_size": vocab,
        "steps": steps,
        "tokens": tokens,
        "tokens_per_parameter": tokens / n_params,
        "compute_flops": S.FLOPS_PER_PARAM_TOKEN * n_params * tokens,
        "train_loss": last["loss"],
        "train_perplexity": math.exp(min(last["loss"], 50.0)) if last["loss"] == last["loss"] else None,
        "tokens_per_s": rate,
        "mfu": rate * S.FLOPS_PER_PARAM_TOKEN * n_params / (peak * world),
        "peak_flops": peak,
        "peak_flops_source": peak_source,
        "world_size": world,
        "tokens_per_process": per_process,
        "mixed_precision": mixed,
        "min_lr": min_lr,
        "train_seconds": train_time,
        "resumed_from_step": start,
    }
    if weights is not None:
        drawn = chunks.drawn(steps * per_step // length)
        metrics["domain_weights"] = weights
        metrics.update({f"domain_fraction/{n}": c / max(sum(drawn.values()), 1) for n, c in drawn.items()})
    if last["eval_loss"] is not None:
        metrics["eval_loss"] = last["eval_loss"]
        metrics["eval_perplexity"] = math.exp(min(last["eval_loss"], 50.0))
    result = StageResult(metrics=metrics)
    if main:
        result = _publish(ctx, cfg, acc.unwrap_model(net), tokenizer, history, metrics, size)
        result.revisions = writer.revisions()
        if start < steps and rate > 0:
            S.record_throughput(S.throughput_key(cfg), rate)
    acc.wait_for_everyone()
    return result


def write_model(cfg: Any, net: Any, tokenizer: Any, size: S.Sizing, folder: Any) -> None:
    """The model (safetensors, config, generation config) and the tokenizer, as the output holds them:
    the final output and every checkpoint."""
    arch = cfg.architecture
    tokenizer.model_max_length = arch.context_length if size.shape.family == "t5" else arch.position_limit()
    training_cache = net.config.use_cache
    net.config.use_cache = True  # for generation by whoever loads it
    net.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    net.config.use_cache = training_cache


def _publish(
    ctx: StageContext,
    cfg: Any,
    net: Any,
    tokenizer: Any,
    history: History,
    metrics: dict[str, Any],
    size: S.Sizing,
) -> StageResult:
    out = ctx.output
    write_model(cfg, net, tokenizer, size, out)
    net.config.use_cache = True  # for generation by whoever loads it
    if history.path.exists():
        shutil.copyfile(history.path, out / "metrics.jsonl")
    images = {}
    title = f"{cfg.objective} pretraining, {S.human(metrics['parameters'])} parameters"
    if plot_loss(history.records(), out / "loss_curve.png", title):
        images["Training loss"] = "loss_curve.png"
    section = card_section(cfg, metrics, net.config.to_dict())
    tags = {"llama": "text-generation", "bert": "fill-mask", "t5": "text2text-generation"}
    # trained from scratch: the tokenizer input is not a base model
    meta = {"pipeline_tag": tags[size.shape.family], "base_model": None}
    return StageResult(
        metrics=metrics, card_sections={"Pretraining": section}, card_metadata=meta, images=images
    )
