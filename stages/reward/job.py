"""The ``reward`` stage end to end: checks, K members, the published repo, held-out diagnostics, the card.

One model (``ensemble: 1``) is published at the repo root; an ensemble as ``member-0/`` …
``member-{K-1}/`` (each a full model with its tokenizer) plus ``ensemble.json`` and the tokenizer at the
root, the layout :func:`stages.lib.rewards.load_reward_model` reads. The diagnostics load the published
folder through that same function, so what is measured is what consumers load.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from hubflow.stage import StageContext, StageResult
from stages.reward.config import BASE_INPUT, MODEL_INPUT, Config

PLOT = "reliability.png"


def _place(src: Path, dest: Path) -> None:
    """Hard-link (else copy) the files of a finished member into the output folder."""
    from stages.reward.train import MEMBER_FILE

    dest.mkdir(parents=True, exist_ok=True)
    for path in sorted(src.iterdir()):
        if path.is_file() and path.name != MEMBER_FILE:
            try:
                os.link(path, dest / path.name)
            except OSError:
                shutil.copy2(path, dest / path.name)


def _repo_of(ctx: StageContext, name: str) -> str | None:
    text = ctx.input_refs.get(name)
    if not text:
        return None
    return (text.split(":", 1)[1] if ":" in text else text).partition("@")[0] or None


def run_reward(ctx: StageContext, cfg: Config) -> StageResult:
    import torch

    from stages.lib.hardware import device_for
    from stages.lib.rewards import ENSEMBLE_FILE, load_reward_model
    from stages.lib.tokenizers import copy_tokenizer_files
    from stages.reward.diagnostics import ensemble_summaries, plot_reliability, score_pairs, summarize
    from stages.reward.inputs import member_pairs, prepare
    from stages.reward.train import train_member

    prep = prepare(ctx, cfg)  # every check that needs no weights, then tokenisation
    shards = member_pairs(prep.train, cfg)
    names = ["."] if cfg.ensemble == 1 else [f"member-{k}" for k in range(cfg.ensemble)]
    trained = []
    for k in range(cfg.ensemble):
        folder = ctx.resume_dir / "members" / f"member-{k}"
        trained.append(train_member(ctx, cfg, prep, k, shards[k], folder))
    if not _is_main():
        return StageResult()

    out = ctx.output
    for k, name in enumerate(names):
        _place(ctx.resume_dir / "members" / f"member-{k}", out / name)
    if cfg.ensemble > 1:
        copy_tokenizer_files(out / names[0], out)
        info = {
            "members": names,
            "seeds": [m["seed"] for m in trained],
            "ensemble_data": cfg.ensemble_data,
            "aggregates": ["min", "mean"],
            "note": "consumers take the conservative minimum over members (seed §4.12) or the mean",
        }
        (out / ENSEMBLE_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")

    metrics: dict[str, Any] = {
        "method": cfg.peft.method,
        "ensemble": cfg.ensemble,
        "data": prep.data_stats,
        "model_type": prep.model_info.kind,
    }
    images: dict[str, str] = {}
    members_eval: list[dict[str, Any]] = []
    aggregates: dict[str, dict[str, Any]] = {}
    if prep.test:
        rm = load_reward_model(out, aggregate="min", device=device_for(ctx.resources), input_name="output")
        torch.manual_seed(0)
        chosen, rejected = [], []
        for model in rm.members:
            c, r = score_pairs(model, prep.test, pad_id=prep.tok.pad_token_id, batch_size=cfg.eval_batch_size)
            chosen.append(c)
            rejected.append(r)
        if cfg.ensemble == 1:
            members_eval = [summarize(chosen[0], rejected[0], n_bins=cfg.calibration_bins)]
        else:
            members_eval, aggregates = ensemble_summaries(chosen, rejected, n_bins=cfg.calibration_bins)
        curves = (
            {"reward model": members_eval[0]["calibration_bins"]}
            if cfg.ensemble == 1
            else {f"ensemble {k}": v["calibration_bins"] for k, v in aggregates.items()}
        )
        if plot_reliability(curves, out / PLOT):
            images["Held-out reliability diagram"] = PLOT
    metrics.update(_flat_metrics(cfg, trained, members_eval, aggregates))
    card = {"Reward model": _card(cfg, prep, metrics, trained, members_eval, aggregates)}
    meta: dict[str, Any] = {
        "base_model_relation": "finetune",
        "library_name": "transformers",
        "pipeline_tag": "text-classification",
    }
    repo = _repo_of(ctx, MODEL_INPUT)
    if repo:
        meta["base_model"] = repo
    return StageResult(metrics=metrics, card_sections=card, card_metadata=meta, images=images)


def _is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _flat_metrics(
    cfg: Config,
    trained: list[dict[str, Any]],
    members_eval: list[dict[str, Any]],
    aggregates: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    """metrics.json: one model's numbers at the top level; an ensemble's per member and per aggregate."""

    def evals(
        summary: dict[str, Any], before: dict[str, Any] | None, prefix: str = "eval_"
    ) -> dict[str, Any]:
        out = {f"{prefix}{k}": v for k, v in summary.items() if k != "calibration_bins"}
        out[f"{prefix}calibration"] = summary["calibration_bins"]
        if before:
            out[f"{prefix}accuracy_before"] = before["accuracy"]
            out[f"{prefix}ece_before"] = before["ece"]
        return out

    if cfg.ensemble == 1:
        train = {k: v for k, v in trained[0].items() if k not in ("member", "eval_before")}
        return {**train, **(evals(members_eval[0], trained[0]["eval_before"]) if members_eval else {})}
    members = []
    for k, m in enumerate(trained):
        row = {k2: v for k2, v in m.items() if k2 != "eval_before"}
        if members_eval:
            row.update(evals(members_eval[k], m["eval_before"]))
        members.append(row)
    out: dict[str, Any] = {
        "ensemble_data": cfg.ensemble_data,
        "members": members,
        "steps": sum(m["steps"] for m in trained),
        "train_seconds": round(sum(m["train_seconds"] for m in trained), 3),
    }
    for name, summary in aggregates.items():
        out.update(evals(summary, None, f"ensemble_{name}_"))
    return out


def _num(value: Any) -> str:
    if value is None:
        return ""
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _card(
    cfg: Config,
    prep: Any,
    metrics: dict[str, Any],
    trained: list[dict[str, Any]],
    members_eval: list[dict[str, Any]],
    aggregates: dict[str, dict[str, Any]],
) -> str:
    from stages.reward.diagnostics import reliability_table

    info = prep.model_info
    start = (
        f"the {info.adapter_kind} adapter `{MODEL_INPUT}` merged into `{BASE_INPUT}`"
        if info.is_adapter
        else f"the full model `{MODEL_INPUT}`"
    )
    peft = {k: v for k, v in cfg.peft_summary().items() if k not in ("method", "dropout")}
    stats = prep.data_stats
    lines = [
        f"Initialised from {start} with its LM head replaced by a scalar head r(x, y) = W_rᵀ h_last "
        "(W_r ~ N(0, 1/√(d+1)), read at the last real token of prompt ⊕ response; seed §4.4), trained with "
        "TRL's `RewardTrainer` on the Bradley–Terry loss −log σ(r(x, y_w) − r(x, y_l)) (seed §4.3), dropout off.",
        "",
        f"Method **{cfg.peft.method}**"
        + (f" ({', '.join(f'{k}={v}' for k, v in peft.items())}, merged before publishing)" if peft else "")
        + f"; {stats['train_pairs']} training pairs from `{stats['input']}` ({stats['split']}), "
        f"{stats['train_dropped']} dropped by max_length {cfg.max_length}; learning rate {cfg.learning_rate:g}.",
    ]
    rows = ["| member | seed | pairs | steps | loss first → last |", "| --- | --- | --- | --- | --- |"]
    for k, m in enumerate(trained):
        rows.append(
            f"| {k} | {m['seed']} | {m['train_pairs']} | {m['steps']} | "
            f"{_num(m['train_loss_first'])} → {_num(m['train_loss_last'])} |"
        )
    lines += ["", *rows]
    if members_eval:
        lines += [
            "",
            f"Held-out split `{stats['eval_split']}` ({members_eval[0]['pairs']} pairs): accuracy is the share of "
            "pairs with r(y_w) > r(y_l); ECE compares σ(|r_w − r_l|) with how often the ranking is right "
            f"({cfg.calibration_bins} bins).",
            "",
            "| model | accuracy at init | accuracy | ECE | mean margin |",
            "| --- | --- | --- | --- | --- |",
        ]
        for k, (m, e) in enumerate(zip(trained, members_eval, strict=True)):
            label = "reward model" if cfg.ensemble == 1 else f"member {k}"
            lines.append(
                f"| {label} | {_num(m['eval_before'].get('accuracy'))} | {_num(e['accuracy'])} | "
                f"{_num(e['ece'])} | {_num(e['margin_mean'])} |"
            )
        for name, a in aggregates.items():
            lines.append(
                f"| ensemble {name} | | {_num(a['accuracy'])} | {_num(a['ece'])} | {_num(a['margin_mean'])} |"
            )
        tables = (
            {"": members_eval[0]["calibration_bins"]}
            if cfg.ensemble == 1
            else {f" (ensemble {k})": v["calibration_bins"] for k, v in aggregates.items()}
        )
        for suffix, bins in tables.items():
            lines += ["", f"Reliability{suffix}:", "", *reliability_table(bins)]
    load = (
        "`AutoModelForSequenceClassification.from_pretrained(folder)`"
        if cfg.ensemble == 1
        else "`AutoModelForSequenceClassification.from_pretrained(folder / 'member-K')` per member"
    )
    lines += [
        "",
        f"Load with {load}, or `stages.lib.rewards.load_reward_model(folder"
        + (", aggregate='min')` (or 'mean')." if cfg.ensemble > 1 else ")`."),
    ]
    return "\n".join(lines) + "\n"
