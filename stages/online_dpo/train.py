"""One round's DPO on its fresh pairs, our own loop on accelerate (seed §4.7, steps 2–3.5).

For each pair (x, y_w, y_l), tokenised by :func:`stages.lib.pairs.encode_pairs` (TRL's truncation):

1. reference log-probs log π_ref(y | x) = Σ_t log π_ref(y_t | y_<t, x) are computed once, before the
   round trains (step 2), by the reference the round uses (the initial policy or the round's start);
2. each optimizer step takes ``per_device_train_batch_size × gradient_accumulation_steps`` pairs in the
   order :func:`batch_order` gives (a seeded shuffle per epoch), scores chosen and rejected in one padded
   forward, and minimises :func:`stages.lib.preference.dpo_loss` (−log σ(βΔ), or IPO's (Δ − 1/(2β))²)
   plus ``sft_weight`` × the token-mean NLL of the chosen responses;
3. AdamW on the policy's trainable weights, gradient clipping at ``max_grad_norm``, the
   ``lr_scheduler_type`` schedule over the round's steps (a fresh optimizer and schedule per round: each
   round is one DPO run from the round's start);
4. monitoring (step 3.5), logged each ``logging_steps``: loss, margin βΔ, accuracy (share of Δ > 0), the
   implicit rewards of chosen and rejected, their log-probs and the KL proxy mean |log π_θ − log π_ref|.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from stages.lib.pairs import EncodedPair, completion_batch, completion_token_logps
from stages.lib.preference import dpo_loss, sequence_logps


def batch_order(
    n_pairs: int, *, batch_size: int, steps: int, accumulation: int, seed: str
) -> list[list[int]]:
    """The pair indices of every micro-batch of a round, in order: ``steps × accumulation`` micro-batches
    of ``batch_size`` (the last of an epoch may be smaller), epochs reshuffled with ``random.Random(seed)``."""
    rng = random.Random(seed)
    out: list[list[int]] = []
    while len(out) < steps * accumulation:
        order = list(range(n_pairs))
        rng.shuffle(order)
        out += [order[i : i + batch_size] for i in range(0, n_pairs, batch_size)]
    return out[: steps * accumulation]


def round_steps(n_pairs: int, cfg: Any) -> int:
    """Optimizer steps of a round: ``max_steps``, else ``num_train_epochs`` passes over its pairs."""
    if n_pairs == 0:
        return 0
    if cfg.max_steps is not None:
        return int(cfg.max_steps)
    per_step = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps
    return max(1, math.ceil(cfg.num_train_epochs * n_pairs / per_step))


def pair_logps(
    model: Any, pairs: Sequence[EncodedPair], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(log π(y_w|x) [B], log π(y_l|x) [B], chosen token counts [B]): chosen and rejected in one forward."""
    prompts = [p.prompt_ids for p in pairs] * 2
    completions = [p.chosen_ids for p in pairs] + [p.rejected_ids for p in pairs]
    ids, mask, comp = completion_batch(prompts, completions, pad_id)
    device = next(model.parameters()).device
    ids, mask, comp = ids.to(device), mask.to(device), comp.to(device)
    token = completion_token_logps(model, ids, mask, comp)
    logps = sequence_logps(token, comp[:, 1:])
    n = len(pairs)
    return logps[:n], logps[n:], comp[:n, 1:].sum(dim=1).to(logps.dtype)


def reference_logps(
    model: Any, pairs: Sequence[EncodedPair], pad_id: int, *, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """log π_ref of every pair's chosen and rejected response (no gradients, eval mode), on the CPU."""
    chosen, rejected = [], []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for lo in range(0, len(pairs), batch_size):
                c, r, _ = pair_logps(model, pairs[lo : lo + batch_size], pad_id)
                chosen.append(c.float().cpu())
                rejected.append(r.float().cpu())
    finally:
        model.train(was_training)
    if not chosen:
        return torch.zeros(0), torch.zeros(0)
    return torch.cat(chosen), torch.cat(rejected)


@dataclass
class StepTerms:
    """The loss of one micro-batch and its monitoring values (seed §4.7 step 3.5)."""

    loss: torch.Tensor
    dpo: torch.Tensor
    sft: torch.Tensor
    stats: dict[str, float] = field(default_factory=dict)


def step_loss(
    model: Any,
    pairs: Sequence[EncodedPair],
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    *,
    pad_id: int,
    beta: float,
    loss_type: str,
    sft_weight: float,
) -> StepTerms:
    """DPO (or IPO) on a micro-batch, plus ``sft_weight`` × the token-mean NLL of its chosen responses."""
    chosen, rejected, chosen_tokens = pair_logps(model, pairs, pad_id)
    device = chosen.device
    ref_c, ref_r = ref_chosen.to(device), ref_rejected.to(device)
    terms = dpo_loss(chosen.float(), rejected.float(), ref_c, ref_r, beta=beta, loss_type=loss_type)
    sft = -chosen.float().sum() / chosen_tokens.sum().clamp(min=1)
    loss = terms.loss + sft_weight * sft if sft_weight else terms.loss
    kl = torch.cat([(chosen.detach() - ref_c).abs(), (rejected.detach() - ref_r).abs()]).mean()
    stats = {
        "rewards/chosen": float(terms.chosen_rewards.mean()),
        "rewards/rejected": float(terms.rejected_rewards.mean()),
        "rewards/margins": float(terms.margins.mean()),
        "rewards/accuracies": float((terms.margins > 0).float().mean()),
        "logps/chosen": float(chosen.detach().mean()),
        "logps/rejected": float(rejected.detach().mean()),
        "kl_proxy": float(kl),
    }
    return StepTerms(loss, terms.loss.detach(), sft.detach(), stats)


def make_scheduler(optimizer: Any, cfg: Any, steps: int) -> Any:
    from transformers import get_scheduler

    extra = {"min_lr_rate": 0.1} if cfg.lr_scheduler_type == "cosine_with_min_lr" else None
    return get_scheduler(
        cfg.lr_scheduler_type,
        optimizer,
        num_warmup_steps=cfg.warmup_for(steps),
        num_training_steps=steps,
        scheduler_specific_kwargs=extra,
    )


def train_round(
    accelerator: Any,
    model: Any,
    pairs: Sequence[EncodedPair],
    ref: tuple[torch.Tensor, torch.Tensor],
    cfg: Any,
    *,
    pad_id: int,
    round_index: int,
    step_offset: int,
    log: Any,
) -> dict[str, Any]:
    """Train ``model`` in place on one round's pairs; returns the round's training summary."""
    steps = round_steps(len(pairs), cfg)
    if steps == 0:
        return {"steps": 0}
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params,
        lr=cfg.learning_rate,
        betas=(cfg.adam_beta1, cfg.adam_beta2),
        eps=cfg.adam_epsilon,
        weight_decay=cfg.weight_decay,
    )
    scheduler = make_scheduler(optimizer, cfg, steps)
    optimizer, scheduler = accelerator.prepare(
        optimizer, scheduler
    )  # the model: prepared once, before round 1
    accum = cfg.gradient_accumulation_steps
    order = batch_order(
        len(pairs),
        batch_size=cfg.per_device_train_batch_size,
        steps=steps,
        accumulation=accum,
        seed=f"{cfg.seed}-train-{round_index}",
    )
    torch.manual_seed(cfg.seed * 1009 + round_index)  # dropout (a LoRA branch's), reproducible per round
    history: list[dict[str, float]] = []
    model.train()
    for step in range(steps):
        totals: dict[str, float] = {}
        for micro in order[step * accum : (step + 1) * accum]:
            batch = [pairs[i] for i in micro]
            index = torch.tensor(micro)
            terms = step_loss(
                model,
                batch,
                ref[0][index],
                ref[1][index],
                pad_id=pad_id,
                beta=cfg.beta,
                loss_type=cfg.loss_type,
                sft_weight=cfg.sft_weight,
            )
            accelerator.backward(terms.loss / accum)
            values = {
                "loss": float(terms.loss.detach()),
                "dpo_loss": float(terms.dpo),
                "sft_loss": float(terms.sft),
            }
            for key, value in {**values, **terms.stats}.items():
                totals[key] = totals.get(key, 0.0) + value / accum
        norm = accelerator.clip_grad_norm_(params, cfg.max_grad_norm) if cfg.max_grad_norm > 0 else None
        grad_norm = float(norm) if norm is not None else _grad_norm(params)
        totals.update(learning_rate=scheduler.get_last_lr()[0], grad_norm=grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        history.append(totals)
        if step == 0 or (step + 1) % cfg.logging_steps == 0 or step + 1 == steps:
            log(step_offset + step + 1, round=round_index, **{k: round(v, 6) for k, v in totals.items()})
    model.eval()
    accelerator.free_memory()  # drop this round's optimizer state (the model was prepared once, by the caller)
    first, last = history[0], history[-1]
    return {
        "steps": steps,
        "loss_first": round(first["loss"], 6),
        "loss_last": round(last["loss"], 6),
        "margin_first": round(first["rewards/margins"], 6),
        "margin_last": round(last["rewards/margins"], 6),
        "accuracy_last": round(last["rewards/accuracies"], 6),
        "logps_chosen_first": round(first["logps/chosen"], 6),
        "logps_chosen_last": round(last["logps/chosen"], 6),
        "kl_proxy_last": round(last["kl_proxy"], 6),
        "chosen_logps_fell_while_margin_grew": bool(
            last["logps/chosen"] < first["logps/chosen"]
            and last["rewards/margins"] > first["rewards/margins"]
        ),
    }


def _grad_norm(params: Sequence[Any]) -> float:
    norms = [p.grad.detach().float().norm() for p in params if p.grad is not None]
    return float(torch.stack(norms).norm()) if norms else 0.0
