"""The ``kto`` stage: pointwise data, KL groups, reference log-probs, the loss (seed §4.8.2)."""

from __future__ import annotations

from typing import Any

from hubflow.errors import StageInputError
from hubflow.stage import StageContext, StageResult
from stages.kto.config import Config

REF_COLUMNS = ("ref_logps", "ref_kl_logps")


def encoded_splits(ctx: StageContext, cfg: Config, tok: Any) -> tuple[dict[str, tuple], dict[str, int]]:
    """split -> (encoded rows, their mismatched completions); rows dropped per split."""
    from stages.lib.datasets import eval_split_of, input_folder
    from stages.lib.pairs import read_pointwise
    from stages.lib.preference_data import encode_pointwise, kl_completions

    folder = input_folder(ctx, "data")
    eval_split = eval_split_of(folder, cfg.eval_split)
    out, dropped = {}, {}
    for split in [cfg.split] + ([eval_split] if eval_split and eval_split != cfg.split else []):
        training = split == cfg.split
        points = read_pointwise(
            folder,
            split,
            input_name="data",
            both_labels=training,
            limit=None if training else cfg.eval_examples,
        )
        rows, dropped[split] = encode_pointwise(
            tok, points, max_length=cfg.max_length, max_prompt_length=cfg.max_prompt_length
        )
        if training and len(rows) < 2:
            raise StageInputError(
                f"only {len(rows)} training row(s) keep a completion token within max_length={cfg.max_length}",
                hint="raise max_length (or lower max_prompt_length)",
            )
        size = cfg.per_device_train_batch_size
        kl = (
            kl_completions(rows, size, max_length=cfg.max_length, max_prompt_length=cfg.max_prompt_length)
            if len(rows) > 1
            else [list(r.completion_ids) for r in rows]
        )
        out[split] = (rows, kl)
    return out, dropped


def point_pass(pad_id: int, batch_size: int) -> Any:
    from stages.lib.preference_data import point_reference

    def run_pass(model: Any, encoded: Any) -> dict[str, list[float]]:
        rows, kl = encoded
        own, kl_logps = point_reference(model, rows, kl, pad_id=pad_id, batch_size=batch_size)
        return {"ref_logps": own, "ref_kl_logps": kl_logps}

    return run_pass


def _logps(model: Any, prompts: list, completions: list, pad_id: int) -> Any:
    from stages.lib.pairs import completion_batch
    from stages.lib.preference_data import summed_logps, to_device

    sums, _ = summed_logps(model, *to_device(model, *completion_batch(prompts, completions, pad_id)))
    return sums


def _masked_mean(values: Any, mask: Any) -> Any:
    import torch

    return values[mask].mean() if bool(mask.any()) else torch.tensor(float("nan"), device=values.device)


def kto_terms(cfg: Config, logps: Any, ref: Any, labels: Any, kl_logps: Any, kl_ref: Any) -> tuple[Any, dict]:
    """The loss (stages.lib.preference.kto_loss) and statistics of one KL group."""
    from stages.lib.preference import kto_loss

    terms = kto_loss(
        logps,
        ref,
        labels,
        kl_policy_logps=kl_logps,
        kl_ref_logps=kl_ref,
        beta=cfg.beta,
        desirable_weight=cfg.desirable_weight,
        undesirable_weight=cfg.undesirable_weight,
    )
    good = labels.bool()
    chosen, rejected = _masked_mean(terms.rewards, good), _masked_mean(terms.rewards, ~good)
    stats = {
        "kl": terms.z_ref,
        "rewards/chosen": chosen,
        "rewards/rejected": rejected,
        "rewards/margins": chosen - rejected,
        "logps/chosen": _masked_mean(logps.detach(), good),
        "logps/rejected": _masked_mean(logps.detach(), ~good),
        "kl_proxy": (logps - ref).detach().abs().mean(),
    }
    return terms.loss, stats


def make_step(cfg: Config, encoded: tuple, refs: dict[str, list[float]], pad_id: int) -> Any:
    import torch

    rows, kl = encoded
    ref = torch.tensor(refs["ref_logps"], dtype=torch.float32)
    kl_ref = torch.tensor(refs["ref_kl_logps"], dtype=torch.float32)
    labels = torch.tensor([r.label for r in rows], dtype=torch.bool)

    def step(model: Any, idx: list[int]) -> tuple[Any, dict[str, Any]]:
        prompts = [rows[i].prompt_ids for i in idx]
        logps = _logps(model, prompts, [rows[i].completion_ids for i in idx], pad_id)
        with torch.no_grad():  # z_ref is detached: its forward needs no graph (as TRL)
            kl_logps = _logps(model, prompts, [kl[i] for i in idx], pad_id)
        device = logps.device
        return kto_terms(
            cfg, logps, ref[idx].to(device), labels[idx].to(device), kl_logps, kl_ref[idx].to(device)
        )

    return step


def reward_auc(rewards: Any, labels: Any) -> float | None:
    """Share of (desirable, undesirable) pairs whose implicit rewards are ordered right (ties count half);
    None when the split lacks a label."""
    good, bad = rewards[labels], rewards[~labels]
    if not len(good) or not len(bad):
        return None
    diff = good[:, None] - bad[None, :]
    return float(((diff > 0).double() + 0.5 * (diff == 0).double()).mean())


def make_eval(cfg: Config, encoded: tuple, refs: dict[str, list[float]], pad_id: int, batch_size: int) -> Any:
    import torch

    rows, _ = encoded
    ref = torch.tensor(refs["ref_logps"])
    labels = torch.tensor([r.label for r in rows], dtype=torch.bool)

    def evaluate(model: Any) -> dict[str, float | None]:
        was = model.training
        model.eval()
        with torch.no_grad():
            parts = [
                _logps(
                    model,
                    [r.prompt_ids for r in rows[s : s + batch_size]],
                    [r.completion_ids for r in rows[s : s + batch_size]],
                    pad_id,
                ).cpu()
                for s in range(0, len(rows), batch_size)
            ]
        model.train(was)
        rewards = cfg.beta * (torch.cat(parts) - ref)
        return {
            "reward_auc": reward_auc(rewards, labels),
            "rewards_desirable": float(rewards[labels].mean()) if labels.any() else None,
            "rewards_undesirable": float(rewards[~labels].mean()) if (~labels).any() else None,
            "kl_proxy": float((rewards / cfg.beta).abs().mean()),
        }

    return evaluate


def run(ctx: StageContext, cfg: Config) -> StageResult:

    from stages.lib.preference import kto_weight_warning
    from stages.lib.preference_data import kl_groups
    from stages.lib.preference_loop import chosen_falls_while_margin_grows, shuffled_groups, train
    from stages.lib.preference_policy import (
        check_models,
        is_main_process,
        peak_memory_mb,
        policy_saver,
        policy_tokenizer,
        save_policy,
    )
    from stages.lib.preference_reference import resolve_references
    from stages.lib.preference_report import loop_metrics

    check_models(ctx)
    tok = policy_tokenizer(ctx)
    pad = tok.pad_token_id
    splits, dropped = encoded_splits(ctx, cfg, tok)
    train_rows = splits[cfg.split][0]
    n_d = sum(r.label for r in train_rows)
    warnings: list[str] = []
    balance = kto_weight_warning(n_d, len(train_rows) - n_d, cfg.desirable_weight, cfg.undesirable_weight)
    if balance:
        if is_main_process():
            ctx.logger.warning("WARNING: %s", balance)
        warnings.append(balance)
    own = {
        s: [
            {
                "row": r.row,
                "prompt_ids": r.prompt_ids,
                "completion_ids": r.completion_ids,
                "kl_completion_ids": k,
            }
            for r, k in zip(rows, kl, strict=True)
        ]
        for s, (rows, kl) in splits.items()
    }
    batch = cfg.reference_batch_size or cfg.per_device_train_batch_size
    run_pass = point_pass(pad, batch)
    refs, policy, held = resolve_references(
        ctx,
        cfg,
        tok,
        splits,
        run_pass,
        format="pointwise",
        own=own,
        columns=REF_COLUMNS,
        settings={
            "max_length": cfg.max_length,
            "max_prompt_length": cfg.max_prompt_length,
            "kl_batch_size": cfg.per_device_train_batch_size,
        },
    )

    eval_split = next((s for s in splits if s != cfg.split), None)
    evaluate = make_eval(cfg, splits[eval_split], refs.values[eval_split], pad, batch) if eval_split else None
    before = evaluate(policy.model) if evaluate else {}
    loop = train(
        ctx,
        cfg,
        policy.model,
        batches=shuffled_groups(kl_groups(len(train_rows), cfg.per_device_train_batch_size), cfg.seed),
        step=make_step(cfg, splits[cfg.split], refs.values[cfg.split], pad),
        evaluate=evaluate,
        save=policy_saver(ctx, cfg, policy, tok),
    )
    policy.model = loop.model
    after = evaluate(policy.model) if evaluate else {}
    pitfall = chosen_falls_while_margin_grows(loop.history)
    if pitfall:
        warnings.append(pitfall)
        if loop.is_main:
            ctx.logger.warning("WARNING: %s", pitfall)
    metrics: dict[str, Any] = {
        "beta": cfg.beta,
        "desirable_weight": cfg.desirable_weight,
        "undesirable_weight": cfg.undesirable_weight,
        "train_desirable": n_d,
        "train_undesirable": len(train_rows) - n_d,
        "method": cfg.peft.method,
        "reference": refs.source,
        "reference_computed_here": refs.computed,
        "reference_seconds": refs.seconds,
        "dropped_rows": dropped,
        **loop_metrics(loop),
        **peak_memory_mb(loop.device),
        "models_held": held + policy.held,
        "warnings": warnings,
    }
    metrics.update({f"eval_{k}_before": v for k, v in before.items() if k == "reward_auc"})
    metrics.update({f"eval_{k}": v for k, v in after.items()})
    metadata: dict[str, Any] = {}
    if loop.is_main:
        metadata = save_policy(ctx, cfg, policy, tok)
    return StageResult(
        metrics=metrics,
        card_sections={"KTO": card(cfg, metrics)},
        card_metadata=metadata,
        revisions=loop.revisions,
    )


def card(cfg: Config, m: dict[str, Any]) -> str:
    from stages.lib.preference_report import card_lines

    head = [
        f"KTO (seed §4.8.2): w(b)·(1 − v(x, y, b)), β = {cfg.beta:g}, w_D = {cfg.desirable_weight:g}, "
        f"w_U = {cfg.undesirable_weight:g}; z_ref from each batch's mismatched pairs, clamped at 0, detached.",
        f"Training rows: {m['train_desirable']} desirable, {m['train_undesirable']} undesirable. Policy: "
        f"{cfg.peft.method}; reference log-probs: {m['reference']}.",
    ]
    return "\n".join(head + card_lines(m))
