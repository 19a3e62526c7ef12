"""The training loop of the offline preference kinds (dpo, kto, orpo), on accelerate (seed §4.7 step 3).

One loop, three losses: a kind gives a ``step(model, rows) -> (loss, stats)`` over the row indices of
one micro-batch and a ``batches(epoch)`` schedule; the loop does the rest with the one training
vocabulary (``stages.lib.training``): AdamW (β₁, β₂, ε, weight decay) on the trainable parameters,
transformers' schedulers with warmup, ``gradient_accumulation_steps`` (the micro-batch losses are
averaged, as TRL), gradient clipping at ``max_grad_norm`` (step 3.4), ``max_steps`` or
``num_train_epochs``, and under ``accelerate launch`` DDP with a different micro-batch per process.

Monitoring (step 3.5): every ``logging_steps`` (and the first and the last step) the loss, learning
rate, gradient norm and the kind's statistics, averaged over the window and the processes, go to
``metrics.jsonl`` (``ctx.log_metrics``) with TRL's names. :func:`chosen_falls_while_margin_grows` finds
the classic pitfall in that history.

Checkpoints: every ``save_steps`` the model, optimizer, scheduler and the loop's position are saved in
the stage's resume folder (accelerate ``save_state``); a failed run of the same fingerprint resumes there
and goes on with the same batches.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hubflow.errors import StageInputError
from hubflow.stage import StageContext
from stages.lib.checkpoints import CheckpointWriter

Step = Callable[[Any, list[int]], tuple[Any, dict[str, Any]]]
Batches = Callable[[int], list[list[int]]]


def shuffled_batches(n: int, batch_size: int, seed: int) -> Batches:
    """``batches(epoch)``: the rows 0..n-1 shuffled per epoch (seeded), cut into micro-batches."""

    def batches(epoch: int) -> list[list[int]]:
        order = list(range(n))
        random.Random(f"{seed}-{epoch}").shuffle(order)
        return [order[i : i + batch_size] for i in range(0, n, batch_size)]

    return batches


def shuffled_groups(groups: list[list[int]], seed: int) -> Batches:
    """``batches(epoch)``: fixed groups (KTO's KL groups), their order shuffled per epoch."""

    def batches(epoch: int) -> list[list[int]]:
        order = list(groups)
        random.Random(f"{seed}-{epoch}").shuffle(order)
        return order

    return batches


@dataclass
class LoopResult:
    history: list[dict[str, Any]] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0
    step_seconds: list[float] = field(default_factory=list)
    """Wall time of every optimizer step run here (a resumed run: the steps after the checkpoint)."""
    resumed_from_step: int = 0
    steps_per_epoch: int = 0
    device: str = "cpu"
    model: Any = None
    """The trained model, unwrapped (no DDP wrapper)."""
    is_main: bool = True
    revisions: list[Any] = field(default_factory=list)
    """The checkpoints published as revisions (``checkpoints: {every: K}``; main process)."""

    @property
    def first(self) -> dict[str, Any] | None:
        return self.history[0] if self.history else None

    @property
    def last(self) -> dict[str, Any] | None:
        return self.history[-1] if self.history else None

    def mean_step_seconds(self) -> float | None:
        """Mean optimizer-step time, the first step (warm-up) left out when there are others."""
        times = self.step_seconds[1:] or self.step_seconds
        return sum(times) / len(times) if times else None


def _plan(batches: Batches, cfg: Any, world: int, rank: int) -> tuple[list[list[list[int]]], int]:
    """(per optimizer step: this process's micro-batches, steps per epoch)."""
    per_step = world * cfg.gradient_accumulation_steps
    first = batches(0)
    steps_per_epoch = len(first) // per_step
    if steps_per_epoch == 0:
        raise StageInputError(
            f"the training data makes {len(first)} micro-batch(es) of per_device_train_batch_size rows, fewer "
            f"than one optimizer step needs (gradient_accumulation_steps × processes = {per_step})",
            hint="lower per_device_train_batch_size or gradient_accumulation_steps, or add rows",
        )
    total = cfg.max_steps or max(1, math.ceil(cfg.num_train_epochs * steps_per_epoch))
    plan: list[list[list[int]]] = []
    epoch, epoch_batches = 0, first
    while len(plan) < total:
        for s in range(steps_per_epoch):
            if len(plan) == total:
                break
            chunk = epoch_batches[s * per_step : (s + 1) * per_step]
            plan.append(chunk[rank::world])
        epoch += 1
        epoch_batches = batches(epoch)
    return plan, steps_per_epoch


def _scalar(value: Any) -> float:
    return float(value.detach().float().mean()) if hasattr(value, "detach") else float(value)


def train(
    ctx: StageContext,
    cfg: Any,
    model: Any,
    *,
    batches: Batches,
    step: Step,
    evaluate: Callable[[Any], dict[str, float]] | None = None,
    save: Callable[[Any, Path], Any] | None = None,
) -> LoopResult:
    """Train ``model`` in place (see the module docstring); returns the logged history.

    ``save(model, folder)`` writes the files of the stage's output (the kind's own output writer); with
    ``checkpoints: {every: K}`` it writes a checkpoint revision every K steps
    (``stages.lib.checkpoints``)."""
    import torch
    from accelerate import Accelerator
    from transformers import get_scheduler

    from stages.lib.hardware import pick_mixed_precision

    use_cpu = ctx.resources.cpu or not torch.cuda.is_available()
    mp = pick_mixed_precision(ctx.resources.mixed_precision, cpu=use_cpu)
    accelerator = Accelerator(cpu=use_cpu, mixed_precision=mp)
    torch.manual_seed(cfg.seed + accelerator.process_index)
    plan, steps_per_epoch = _plan(batches, cfg, accelerator.num_processes, accelerator.process_index)
    total = len(plan)

    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise StageInputError("the policy has no trainable parameter", hint="check the `peft` block")
    optimizer = torch.optim.AdamW(
        params,
        lr=cfg.learning_rate,
        betas=(cfg.adam_beta1, cfg.adam_beta2),
        eps=cfg.adam_epsilon,
        weight_decay=cfg.weight_decay,
    )
    scheduler = get_scheduler(
        cfg.lr_scheduler_type,
        optimizer,
        num_warmup_steps=cfg.warmup_for(total),
        num_training_steps=total,
        **(
            {"scheduler_specific_kwargs": {"min_lr_rate": 0.1}}
            if cfg.lr_scheduler_type == "cosine_with_min_lr"
            else {}
        ),
    )
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)

    result = LoopResult(steps_per_epoch=steps_per_epoch, device=str(accelerator.device))
    ckpt = Path(ctx.resume_dir) / "preference-checkpoint"
    start = 0
    if (ckpt / "loop_state.json").is_file():
        state = json.loads((ckpt / "loop_state.json").read_text(encoding="utf-8"))
        accelerator.load_state(str(ckpt))
        start, result.history = int(state["step"]), list(state["history"])
        result.resumed_from_step = start
        ctx.logger.info("resuming from step %d (checkpoint in %s)", start, ckpt)

    writer = CheckpointWriter(ctx, cfg, main=accelerator.is_main_process)
    if writer.enabled and save is None:
        raise StageInputError(
            "this kind does not publish checkpoints", hint="remove `checkpoints` from the stage"
        )
    ga = cfg.gradient_accumulation_steps
    window: dict[str, list[float]] = {}
    begun = time.perf_counter()
    model.train()
    for index in range(start, total):
        t0 = time.perf_counter()
        sums: dict[str, Any] = {}
        for k, rows in enumerate(plan[index]):
            sync = k == len(plan[index]) - 1
            with accelerator.autocast(), nullcontext() if sync else accelerator.no_sync(model):
                loss, stats = step(model, rows)
                accelerator.backward(loss / ga)
            for key, value in {"loss": loss, **stats}.items():
                value = value.detach().float() if hasattr(value, "detach") else float(value)
                sums[key] = sums.get(key, 0.0) + value / ga
        if cfg.max_grad_norm > 0:
            norm = accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
        else:
            norm = torch.nn.utils.clip_grad_norm_(params, float("inf"))
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        result.step_seconds.append(time.perf_counter() - t0)
        number = index + 1
        sums["grad_norm"] = norm
        for key, value in sums.items():
            window.setdefault(key, []).append(value)
        if number == 1 or number % cfg.logging_steps == 0 or number == total:
            record = _reduce(accelerator, window)
            record.update(
                step=number,
                epoch=round(number / steps_per_epoch, 4),
                learning_rate=scheduler.get_last_lr()[0],
            )
            if evaluate is not None and cfg.eval_steps and number % cfg.eval_steps == 0 and number != total:
                if accelerator.is_main_process:
                    record.update(
                        {f"eval_{k}": v for k, v in evaluate(accelerator.unwrap_model(model)).items()}
                    )
                model.train()
            result.history.append(record)
            if accelerator.is_main_process:
                ctx.log_metrics(**record)
            window = {}
        if writer.due(number) and accelerator.is_main_process and save is not None:
            last = result.history[-1] if result.history and result.history[-1]["step"] == number else {}
            writer.save(number, lambda folder: save(accelerator.unwrap_model(model), folder), last)
            model.train()
        if cfg.save_steps and number % cfg.save_steps == 0 and number != total:
            accelerator.save_state(str(ckpt))
            if accelerator.is_main_process:
                state = {"step": number, "history": result.history}
                (ckpt / "loop_state.json").write_text(json.dumps(state), encoding="utf-8")
            accelerator.wait_for_everyone()
    model.eval()
    result.steps = total
    result.seconds = time.perf_counter() - begun
    accelerator.wait_for_everyone()
    result.model = accelerator.unwrap_model(model)
    result.is_main = accelerator.is_main_process
    result.revisions = writer.revisions()
    return result


def _reduce(accelerator: Any, window: dict[str, list[Any]]) -> dict[str, Any]:
    """Each statistic's mean over the window's steps and over the processes."""
    import torch

    keys = sorted(window)
    means = []
    for k in keys:  # a statistic a batch could not compute (no desirable row in a KTO group) is NaN
        values = [x for x in (_scalar(v) for v in window[k]) if not math.isnan(x)]
        means.append(sum(values) / len(values) if values else float("nan"))
    local = torch.tensor(means, device=accelerator.device)
    if accelerator.num_processes > 1:
        local = accelerator.reduce(local, reduction="mean")
    return {
        k: None if math.isnan(v) else round(float(v), 8) for k, v in zip(keys, local.tolist(), strict=True)
    }


def chosen_falls_while_margin_grows(
    history: list[dict[str, Any]], *, chosen: str = "logps/chosen", margin: str = "rewards/margins"
) -> str | None:
    """The pitfall of the notes: the chosen completions' log-probs fall while the margin grows (the policy
    widens the gap by pushing both down). Compares the mean of the first and last quarter of the logged
    steps; returns a warning sentence, or None."""
    rows = [h for h in history if h.get(chosen) is not None and h.get(margin) is not None]
    if len(rows) < 2:
        return None
    k = max(1, len(rows) // 4)
    c0 = sum(r[chosen] for r in rows[:k]) / k
    c1 = sum(r[chosen] for r in rows[-k:]) / k
    m0 = sum(r[margin] for r in rows[:k]) / k
    m1 = sum(r[margin] for r in rows[-k:]) / k
    if c1 < c0 and m1 > m0:
        return (
            f"the chosen completions' log-probs fell ({c0:.4f} -> {c1:.4f}) while the margin grew "
            f"({m0:.4f} -> {m1:.4f}): the policy separates the pair by lowering both; consider a smaller "
            "learning rate or beta, fewer epochs, or an SFT term on the chosen completions"
        )
    return None
