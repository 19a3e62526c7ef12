"""The ``dpo`` stage: data, reference log-probs, the loss and its monitoring (seed §4.6–4.7, §4.8.1)."""

from __future__ import annotations

from typing import Any

from hubflow.stage import StageContext, StageResult
from stages.dpo.config import Config

REF_COLUMNS = ("ref_chosen_logps", "ref_rejected_logps")


def pair_pass(pad_id: int, batch_size: int) -> Any:
    from stages.lib.preference_data import pair_reference

    def run_pass(model: Any, rows: Any) -> dict[str, list[float]]:
        chosen, rejected = pair_reference(model, rows, pad_id=pad_id, batch_size=batch_size)
        return {"ref_chosen_logps": chosen, "ref_rejected_logps": rejected}

    return run_pass


def dpo_terms(
    cfg: Config, pc: Any, pr: Any, rc: Any, rr: Any, lc: Any, lr: Any
) -> tuple[Any, dict[str, Any]]:
    """The loss (stages.lib.preference.dpo_loss) and the §4.7 step 3.5 statistics of one batch: policy and
    reference log-probs are sums over the completion tokens; ``lc``/``lr`` their token counts."""
    from stages.lib.preference import dpo_loss

    if cfg.ratio() == "mean":
        terms = dpo_loss(pc / lc, pr / lr, rc / lc, rr / lr, beta=cfg.beta, loss_type=cfg.loss)
    else:
        terms = dpo_loss(pc, pr, rc, rr, beta=cfg.beta, loss_type=cfg.loss)
    chosen_rewards = cfg.beta * (pc - rc).detach()
    rejected_rewards = cfg.beta * (pr - rr).detach()
    margins = chosen_rewards - rejected_rewards
    stats = {
        "rewards/chosen": chosen_rewards.mean(),
        "rewards/rejected": rejected_rewards.mean(),
        "rewards/margins": margins.mean(),
        "rewards/accuracies": (margins > 0).float().mean(),
        "logps/chosen": pc.detach().mean(),
        "logps/rejected": pr.detach().mean(),
        "kl_proxy": 0.5 * ((pc - rc).detach().abs().mean() + (pr - rr).detach().abs().mean()),
    }
    stats["delta"] = (terms.margins / cfg.beta).mean()  # Δ as the loss sees it (sum or per-token mean)
    loss = terms.loss
    if cfg.sft_weight:
        sft = -pc.sum() / lc.sum().clamp(min=1)  # TRL's "sft" loss: the token mean over all chosen tokens
        stats["sft_loss"] = sft.detach()
        loss = loss + cfg.sft_weight * sft
    return loss, stats


def batch_logps(model: Any, rows: list, pad_id: int) -> tuple[Any, Any, Any, Any]:
    """(chosen sums, rejected sums, chosen lengths, rejected lengths) of one forward over 2B sequences."""
    from stages.lib.preference_data import pair_logps

    return pair_logps(model, rows, pad_id)[:4]


def make_step(cfg: Config, rows: list, refs: dict[str, list[float]], pad_id: int) -> Any:
    import torch

    ref_c = torch.tensor(refs["ref_chosen_logps"], dtype=torch.float32)
    ref_r = torch.tensor(refs["ref_rejected_logps"], dtype=torch.float32)

    def step(model: Any, idx: list[int]) -> tuple[Any, dict[str, Any]]:
        pc, pr, lc, lr = batch_logps(model, [rows[i] for i in idx], pad_id)
        return dpo_terms(cfg, pc, pr, ref_c[idx].to(pc.device), ref_r[idx].to(pc.device), lc, lr)

    return step


def make_eval(cfg: Config, rows: list, refs: dict[str, list[float]], pad_id: int, batch_size: int) -> Any:
    """Held-out scores: preference accuracy (share of pairs with log π(y_w) > log π(y_l)), the implicit
    reward accuracy (Δ > 0), mean margin, KL proxy and loss."""
    import torch

    def evaluate(model: Any) -> dict[str, float]:
        was = model.training
        model.eval()
        parts: list[tuple] = []
        with torch.no_grad():
            for s in range(0, len(rows), batch_size):
                parts.append(batch_logps(model, rows[s : s + batch_size], pad_id))
        model.train(was)
        pc, pr, lc, lr = (torch.cat([p[k] for p in parts]).cpu() for k in range(4))
        rc = torch.tensor(refs["ref_chosen_logps"])
        rr = torch.tensor(refs["ref_rejected_logps"])
        loss, stats = dpo_terms(cfg, pc, pr, rc, rr, lc, lr)
        return {
            "preference_accuracy": float((pc > pr).float().mean()),
            "reward_accuracy": float(stats["rewards/accuracies"]),
            "margin": float(stats["rewards/margins"]),
            "kl_proxy": float(stats["kl_proxy"]),
            "loss": float(loss),
        }

    return evaluate


def run(ctx: StageContext, cfg: Config) -> StageResult:

    from stages.lib.preference_data import encode_pair_splits
    from stages.lib.preference_loop import chosen_falls_while_margin_grows, shuffled_batches, train
    from stages.lib.preference_policy import (
        check_models,
        peak_memory_mb,
        policy_saver,
        policy_tokenizer,
        save_policy,
    )
    from stages.lib.preference_reference import resolve_references

    check_models(ctx)  # an adapter without its base, a wrong base: before any data or weight
    tok = policy_tokenizer(ctx)
    pad = tok.pad_token_id
    splits, dropped = encode_pair_splits(ctx, cfg, tok)
    own = {
        s: [
            {
                "row": r.row,
                "prompt_ids": r.prompt_ids,
                "chosen_ids": r.chosen_ids,
                "rejected_ids": r.rejected_ids,
            }
            for r in rows
        ]
        for s, rows in splits.items()
    }
    batch = cfg.reference_batch_size or cfg.per_device_train_batch_size
    run_pass = pair_pass(pad, batch)
    refs, policy, held = resolve_references(
        ctx, cfg, tok, splits, run_pass, format="pairs", own=own, columns=REF_COLUMNS
    )

    train_rows = splits[cfg.split]
    eval_split = next((s for s in splits if s != cfg.split), None)
    evaluate = make_eval(cfg, splits[eval_split], refs.values[eval_split], pad, batch) if eval_split else None
    before = evaluate(policy.model) if evaluate else {}
    loop = train(
        ctx,
        cfg,
        policy.model,
        batches=shuffled_batches(len(train_rows), cfg.per_device_train_batch_size, cfg.seed),
        step=make_step(cfg, train_rows, refs.values[cfg.split], pad),
        evaluate=evaluate,
        save=policy_saver(ctx, cfg, policy, tok),
    )
    policy.model = loop.model
    after = evaluate(policy.model) if evaluate else {}
    warning = chosen_falls_while_margin_grows(loop.history)
    if warning and loop.is_main:
        ctx.logger.warning("WARNING: %s", warning)
    metrics = summary(cfg, loop, refs, before, after, dropped, {**peak_memory_mb(loop.device)})
    metrics["models_held"] = held + policy.held
    metrics["warnings"] = [warning] if warning else []
    metadata: dict[str, Any] = {}
    if loop.is_main:
        metadata = save_policy(ctx, cfg, policy, tok)
    return StageResult(
        metrics=metrics,
        card_sections={"DPO": card(cfg, metrics)},
        card_metadata=metadata,
        revisions=loop.revisions,
    )


def summary(
    cfg: Config, loop: Any, refs: Any, before: dict, after: dict, dropped: dict, memory: dict
) -> dict:
    from stages.lib.preference_report import loop_metrics

    out: dict[str, Any] = {
        "loss_type": cfg.loss,
        "beta": cfg.beta,
        "log_ratio": cfg.ratio(),
        "method": cfg.peft.method,
        "reference": refs.source,
        "reference_computed_here": refs.computed,
        "reference_seconds": refs.seconds,
        "dropped_rows": dropped,
        **loop_metrics(loop),
        **memory,
    }
    if cfg.loss == "ipo":
        out["ipo_target_margin"] = 1 / (2 * cfg.beta)
    out.update({f"eval_{k}_before": v for k, v in before.items() if k in ("preference_accuracy", "loss")})
    out.update({f"eval_{k}": v for k, v in after.items()})
    return out


def card(cfg: Config, m: dict[str, Any]) -> str:
    from stages.lib.preference_report import card_lines

    if cfg.loss == "sigmoid":
        formula = "ℓ = −log σ(β·Δ) (seed §4.6.3)"
    else:
        formula = f"ℓ = (Δ − 1/(2β))², target margin {1 / (2 * cfg.beta):g} (seed §4.8.1)"
    head = [
        f"**{cfg.loss}** loss, {formula}, β = {cfg.beta:g}; Δ from log-ratios formed as the **{cfg.ratio()}** "
        "over each completion's tokens.",
        f"Policy: {cfg.peft.method}; reference log-probs: {m['reference']}.",
    ]
    return "\n".join(head + card_lines(m))
