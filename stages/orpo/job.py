"""The ``orpo`` stage: the loss on one forward of chosen and rejected, its monitoring (seed §4.8.3)."""

from __future__ import annotations

from typing import Any

from hubflow.stage import StageContext, StageResult
from stages.orpo.config import Config


def orpo_terms(cfg: Config, rows: list, model: Any, pad_id: int) -> tuple[Any, dict[str, Any], Any, Any]:
    """(loss, statistics, chosen sums, rejected sums) of one batch of pairs.

    Length-normalised log-probs over the completion's tokens give the odds; the SFT term is the token
    mean of −log p over the chosen sequences' completion tokens (or prompt ⊕ completion tokens)."""
    from stages.lib.preference import orpo_loss
    from stages.lib.preference_data import pair_logps

    pc, pr, lc, lr, (every, real, completion) = pair_logps(model, rows, pad_id)
    b = len(rows)
    nll_mask = completion[:b] if cfg.nll_tokens == "completion" else real[:b]
    nll = -(every[:b] * nll_mask).sum() / nll_mask.sum().clamp(min=1)
    # a probability that rounds to 1 would give log-odds of ±inf: keep p below 1 by a hair
    avg_c = (pc / lc.clamp(min=1)).clamp(max=-1e-6)
    avg_r = (pr / lr.clamp(min=1)).clamp(max=-1e-6)
    terms = orpo_loss(avg_c, avg_r, nll, lam=cfg.lambda_)
    stats = {
        "nll_loss": nll.detach(),
        "or_loss": terms.or_loss.detach(),
        "log_odds_ratio": terms.log_sigmoid.detach().mean(),
        "log_odds_chosen": terms.log_odds.detach().mean(),
        "rewards/accuracies": (terms.log_odds.detach() > 0).float().mean(),
        "rewards/margins": cfg.lambda_ * (avg_c - avg_r).detach().mean(),
        "logps/chosen": avg_c.detach().mean(),
        "logps/rejected": avg_r.detach().mean(),
    }
    return terms.loss, stats, pc.detach(), pr.detach()


def make_step(cfg: Config, rows: list, pad_id: int) -> Any:
    def step(model: Any, idx: list[int]) -> tuple[Any, dict[str, Any]]:
        loss, stats, _, _ = orpo_terms(cfg, [rows[i] for i in idx], model, pad_id)
        return loss, stats

    return step


def make_eval(cfg: Config, rows: list, pad_id: int, batch_size: int) -> Any:
    """Held-out: preference accuracy (sums: log π(y_w) > log π(y_l)), its length-normalised version (the
    odds ratio > 1), the SFT and OR terms."""
    import torch

    def evaluate(model: Any) -> dict[str, float]:
        was = model.training
        model.eval()
        pcs, prs, accs, nlls, ors = [], [], [], [], []
        with torch.no_grad():
            for s in range(0, len(rows), batch_size):
                part = rows[s : s + batch_size]
                _, stats, pc, pr = orpo_terms(cfg, part, model, pad_id)
                pcs.append(pc.cpu())
                prs.append(pr.cpu())
                accs.append(float(stats["rewards/accuracies"]) * len(part))
                nlls.append(float(stats["nll_loss"]) * len(part))
                ors.append(float(stats["or_loss"]) * len(part))
        model.train(was)
        pc, pr, n = torch.cat(pcs), torch.cat(prs), len(rows)
        return {
            "preference_accuracy": float((pc > pr).float().mean()),
            "odds_accuracy": sum(accs) / n,
            "nll_loss": sum(nlls) / n,
            "or_loss": sum(ors) / n,
        }

    return evaluate


def run(ctx: StageContext, cfg: Config) -> StageResult:
    from stages.lib.preference_data import encode_pair_splits
    from stages.lib.preference_loop import chosen_falls_while_margin_grows, shuffled_batches, train
    from stages.lib.preference_policy import (
        check_models,
        load_policy,
        peak_memory_mb,
        policy_saver,
        policy_tokenizer,
        save_policy,
    )
    from stages.lib.preference_report import card_lines, loop_metrics

    check_models(ctx, reference=False)
    tok = policy_tokenizer(ctx)
    pad = tok.pad_token_id
    splits, dropped = encode_pair_splits(ctx, cfg, tok)
    policy = load_policy(ctx, cfg, tok)
    train_rows = splits[cfg.split]
    eval_split = next((s for s in splits if s != cfg.split), None)
    batch = cfg.reference_batch_size or cfg.per_device_train_batch_size
    evaluate = make_eval(cfg, splits[eval_split], pad, batch) if eval_split else None
    before = evaluate(policy.model) if evaluate else {}
    loop = train(
        ctx,
        cfg,
        policy.model,
        batches=shuffled_batches(len(train_rows), cfg.per_device_train_batch_size, cfg.seed),
        step=make_step(cfg, train_rows, pad),
        evaluate=evaluate,
        save=policy_saver(ctx, cfg, policy, tok),
    )
    policy.model = loop.model
    after = evaluate(policy.model) if evaluate else {}
    warning = chosen_falls_while_margin_grows(loop.history)
    if warning and loop.is_main:
        ctx.logger.warning("WARNING: %s", warning)
    metrics: dict[str, Any] = {
        "lambda": cfg.lambda_,
        "nll_tokens": cfg.nll_tokens,
        "method": cfg.peft.method,
        "reference": "none (ORPO has no reference model)",
        "dropped_rows": dropped,
        **loop_metrics(loop),
        **peak_memory_mb(loop.device),
        "models_held": policy.held,
        "warnings": [warning] if warning else [],
    }
    metrics.update({f"eval_{k}_before": v for k, v in before.items()})
    metrics.update({f"eval_{k}": v for k, v in after.items()})
    metadata: dict[str, Any] = {}
    if loop.is_main:
        metadata = save_policy(ctx, cfg, policy, tok)
    head = [
        f"ORPO (seed §4.8.3): L = L_SFT(y_w) + λ·L_OR, λ = {cfg.lambda_:g}; odds from length-normalised "
        f"log-probs of the completions; L_SFT over the chosen {cfg.nll_tokens.replace('_', ' ')} tokens. "
        "No reference model.",
        f"Policy: {cfg.peft.method}.",
    ]
    return StageResult(
        metrics=metrics,
        card_sections={"ORPO": "\n".join(head + card_lines(metrics))},
        card_metadata=metadata,
        revisions=loop.revisions,
    )
