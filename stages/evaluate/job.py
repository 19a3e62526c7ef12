"""Scoring a model on the ``evaluate`` stage's datasets: held-out loss, greedy generations, exact match
and the gold judge, per family; on preference splits the log-prob and implicit-reward preferences and a
reward model's accuracy and calibration (``comparisons``); the per-example parquet and the card."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hubflow.errors import StageInputError
from hubflow.stage import StageContext, StageResult
from stages.evaluate.comparisons import PAIR_COLUMNS
from stages.evaluate.config import Config, dataset_inputs
from stages.evaluate.data import message_text


def _score_dataset(
    ctx: StageContext,
    cfg: Config,
    name: str,
    loaded: tuple[str, list[Any]],
    model: Any,
    info: dict[str, Any],
    tok: Any,
    device: str,
    judge: Any,
    others: tuple[Any, Any] = (None, None),
) -> list[dict[str, Any]]:
    from stages.evaluate import comparisons, scoring
    from stages.lib.models import PROMPT_LEARNING

    fmt, examples = loaded
    use_judge = judge is not None and fmt != "text" and cfg.generate
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    ctx.logger.info("%s: %d examples (%s format), split %s", name, len(examples), fmt, cfg.split)
    losses = scoring.token_losses(
        model,
        [scoring.loss_sequence(tok, ex) for ex in examples],
        batch_size=cfg.batch_size,
        max_length=cfg.max_length,
        pad_id=pad_id,
        device=device,
    )
    generations: list[str | None] = [None] * len(examples)
    if cfg.generate and fmt != "text":
        # peft prompt-learning models generate differently from a left-padded batch: one prompt at a time
        gen_batch = 1 if info.get("adapter_kind") in PROMPT_LEARNING else cfg.batch_size
        generations = list(
            scoring.generate(
                model,
                tok,
                [scoring.prompt_ids(tok, ex) for ex in examples],
                max_new_tokens=cfg.max_new_tokens,
                batch_size=gen_batch,
                stop_ids=scoring.stop_ids(tok, cfg.stop_tokens),
                pad_id=pad_id,
                device=device,
                max_length=cfg.max_length,
            )
        )
    known = judge[1] if use_judge else set()
    sampled: list[float | None] = [None] * len(examples)
    if cfg.sampled is not None and use_judge and info.get("adapter_kind") not in PROMPT_LEARNING:
        from stages.evaluate.sampled import sampled_scores

        spec = cfg.sampled
        sampled = sampled_scores(
            model,
            tok,
            examples,
            [scoring.prompt_ids(tok, ex) for ex in examples],
            lambda ex, text: scoring.judge_one(judge[0], ex, text) if ex.family in known else None,
            samples=spec.samples,
            temperature=spec.temperature,
            top_p=spec.top_p,
            seed=spec.seed,
            max_new_tokens=cfg.max_new_tokens,
            stop_ids=scoring.stop_ids(tok, cfg.stop_tokens),
            pad_id=pad_id,
            batch_size=cfg.batch_size,
        )
    reference, rm = others
    pair_rows: list[dict[str, Any]] = [{} for _ in examples]
    if fmt == "preference":
        pair_rows = comparisons.pair_scores(
            examples, model=model, reference=reference, rm=rm, tok=tok, cfg=cfg, pad_id=pad_id
        )
    rewards = comparisons.generation_rewards(rm, examples, generations, cfg.batch_size)
    rows = []
    for ex, (loss_sum, tokens), gen, pair, gen_reward, sampled_score in zip(
        examples, losses, generations, pair_rows, rewards, sampled, strict=True
    ):
        ref = ex.reference
        judged = None
        if gen is not None and ex.family in known:
            judged = scoring.judge_one(judge[0], ex, gen)
        rows.append(
            {
                "dataset": name,
                "row": ex.row,
                "family": ex.family,
                "prompt": ex.text if ex.text is not None else _render(ex.prompt),
                "reference": ref,
                "generation": gen,
                "exact_match": scoring.exact_match(gen, ref) if gen is not None and ref is not None else None,
                "judge_score": judged,
                "sampled_judge_score": sampled_score,
                "loss": round(loss_sum / tokens, 6) if tokens else None,
                "loss_sum": loss_sum,
                "tokens": tokens,
                "format": fmt,
                "rejected": None if ex.rejected is None else message_text(ex.rejected),
                **pair,
                "reward_generation": gen_reward,
            }
        )
    return rows


def _check_judge(cfg: Config, judge: Any, loaded: dict[str, tuple[str, list[Any]]]) -> None:
    if cfg.judge != "synthetic":
        return
    for name, (fmt, examples) in loaded.items():
        if fmt == "text" or not any(ex.family is not None for ex in examples):
            raise StageInputError(
                f"judge: synthetic grades generations by task family; input {name!r} has "
                + ("text only" if fmt == "text" else f"no {cfg.family_column!r} column"),
                hint="set family_column to the dataset's family column, or judge: auto",
            )


def _render(prompt: Any) -> str:
    return prompt if isinstance(prompt, str) else json.dumps(prompt, ensure_ascii=False)


def _write(rows: list[dict[str, Any]], out: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema(
        [
            ("dataset", pa.string()),
            ("row", pa.int64()),
            ("family", pa.string()),
            ("prompt", pa.string()),
            ("reference", pa.string()),
            ("generation", pa.string()),
            ("exact_match", pa.bool_()),
            ("judge_score", pa.float64()),
            ("sampled_judge_score", pa.float64()),
            ("loss", pa.float64()),
            ("tokens", pa.int64()),
            ("rejected", pa.string()),
            *((name, pa.float64()) for name in PAIR_COLUMNS),
            ("reward_generation", pa.float64()),
        ]
    )
    (out / "data").mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist([{k: r.get(k) for k in schema.names} for r in rows], schema=schema)
    pq.write_table(table, out / "data" / "train-00000-of-00001.parquet")


def _check_vocab(tok: Any, tok_input: str, rows: int) -> None:
    if len(tok) > rows:
        raise StageInputError(
            f"the tokenizer (input {tok_input!r}) has {len(tok)} tokens but the model's embedding has "
            f"{rows} rows: they were not made together",
            hint="feed the tokenizer the model was trained with (the pretrain/sft stage's tokenizer input)",
        )


def evaluate(ctx: StageContext, cfg: Config) -> StageResult:
    import torch

    from stages.evaluate import comparisons, scoring
    from stages.evaluate.data import load_examples
    from stages.lib.hardware import device_for
    from stages.lib.models import inspect_model, load_model, vocab_size_of
    from stages.lib.tokenizers import stage_tokenizer

    model_dir, base_dir = ctx.inputs["model"], ctx.inputs.get("base")
    base_ref = ctx.input_refs.get("base")
    # every check that needs no weights comes first: bad input fails before any compute
    model_info = inspect_model(model_dir, base=base_dir, base_ref=base_ref, check_base=cfg.check_base)
    tok, tok_input = stage_tokenizer(ctx.inputs, need_pad=False)
    vocab = vocab_size_of(base_dir if model_info.is_adapter and base_dir else model_dir)
    if vocab is not None:
        _check_vocab(tok, tok_input, vocab)
    checked = comparisons.check_inputs(ctx, cfg, tok, tok_input, vocab)
    judge = scoring.synthetic_judge() if cfg.judge != "none" else None
    loaded = {name: load_examples(ctx.inputs[name], name, cfg) for name in dataset_inputs(ctx.inputs)}
    _check_judge(cfg, judge, loaded)
    comparisons.require_use(ctx, {name: fmt for name, (fmt, _) in loaded.items()}, cfg.generate)
    device = device_for(ctx.resources)
    model = load_model(
        model_dir,
        base=base_dir,
        base_ref=base_ref,
        check_base=cfg.check_base,
        device=device,
        logger=ctx.logger,
    )
    info = model_info.as_dict()
    _check_vocab(tok, tok_input, int(model.get_input_embeddings().weight.shape[0]))
    model.to(device)
    others = (
        comparisons.load_reference(ctx, cfg, checked, device),
        comparisons.load_reward(ctx, cfg, device),
    )
    torch.manual_seed(0)

    all_rows: list[dict[str, Any]] = []
    per_dataset: dict[str, dict[str, Any]] = {}
    formats: dict[str, str] = {}
    for name, (fmt, examples) in loaded.items():
        formats[name] = fmt
        rows = _score_dataset(ctx, cfg, name, (fmt, examples), model, info, tok, device, judge, others)
        all_rows += rows
        per_dataset[name] = {
            **scoring.summarize(rows),
            **comparisons.summarize(rows, n_bins=cfg.calibration_bins),
            "families": _families(rows, cfg.calibration_bins),
        }
        ctx.log_metrics(dataset=name, **{k: v for k, v in per_dataset[name].items() if k != "families"})
    _write(all_rows, ctx.output)

    metrics: dict[str, Any] = {"model_type": info["model_type"], "split": cfg.split}
    if checked.reference is not None:
        metrics["reference_type"] = checked.reference.kind
    if checked.reward_members:
        metrics.update(reward_members=checked.reward_members, reward_aggregate=cfg.reward_aggregate)
    if len(per_dataset) == 1:
        metrics.update(next(iter(per_dataset.values())))
    else:
        for name, m in per_dataset.items():
            metrics.update({f"{name}/{k}": v for k, v in m.items()})
    sections = {"Evaluation": _card(cfg, per_dataset, formats, all_rows, info)}
    return StageResult(metrics=metrics, card_sections=sections)


def _families(rows: list[dict[str, Any]], n_bins: int) -> dict[str, dict[str, Any]]:
    from stages.evaluate import comparisons, scoring

    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if r["family"] is not None:
            groups.setdefault(r["family"], []).append(r)
    return {
        fam: {**scoring.summarize(g), **comparisons.summarize(g, n_bins=n_bins, bins=False)}
        for fam, g in sorted(groups.items())
    }


PREFERENCE_COLUMNS = (
    "pairs",
    "logp_accuracy",
    "implicit_reward_accuracy",
    "implicit_margin_mean",
    "reward_accuracy",
    "reward_ece",
    "reward_mean",
)


def _preference_card(name: str, m: dict[str, Any]) -> list[str]:
    """The preference / reward table of one dataset (and the reward model's reliability table)."""
    cols = [c for c in PREFERENCE_COLUMNS if m.get(c) is not None]
    if cols == ["pairs"] or not cols:
        return []
    lines = [
        f"Preferences and rewards on `{name}`: logp_accuracy = share of pairs with log π(chosen) > log π(rejected) "
        "(sums over completion tokens); implicit_reward_accuracy = share with Δ = (log π − log π_ref)(chosen) − "
        "(log π − log π_ref)(rejected) > 0, implicit_margin_mean = mean Δ in nats (DPO's reward margin is β·Δ); "
        "reward_accuracy / reward_ece: the reward model's pair accuracy and calibration error; reward_mean: its "
        "mean score of this model's generations.",
        "",
        "| family | " + " | ".join(cols) + " |",
        "| --- |" + " --- |" * len(cols),
    ]
    for fam, fm in m["families"].items():
        lines.append(f"| {fam} | " + " | ".join(_fmt(fm.get(c)) for c in cols) + " |")
    lines += ["| **all** | " + " | ".join(_fmt(m.get(c)) for c in cols) + " |", ""]
    if m.get("reward_member_accuracy"):
        accs = ", ".join(_fmt(a) for a in m["reward_member_accuracy"])
        lines += [f"Reward ensemble members' pair accuracy: {accs}.", ""]
    if m.get("reward_calibration"):
        lines += ["Reward model reliability:", "", "| confidence bin | pairs | mean confidence | accuracy |"]
        lines.append("| --- | --- | --- | --- |")
        for b in m["reward_calibration"]:
            lines.append(
                f"| [{b['lower']:.2f}, {b['upper']:.2f}) | {b['count']} | {_fmt(b['confidence'])} | "
                f"{_fmt(b['accuracy'])} |"
            )
        lines.append("")
    return lines


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _card(
    cfg: Config,
    per_dataset: dict[str, dict[str, Any]],
    formats: dict[str, str],
    rows: list[dict[str, Any]],
    info: dict[str, Any],
) -> str:
    cols = ("examples", "exact_match", "judge_accuracy", "sampled_judge_accuracy", "loss", "perplexity")
    lines = [
        f"Split `{cfg.split}`, greedy generation up to {cfg.max_new_tokens} new tokens; model: {info['model_type']}"
        + (
            f" ({info.get('adapter_kind')} adapter on `base`; base check: {info.get('base_check')})"
            if info["model_type"] == "adapter"
            else ""
        )
        + ". Exact match compares the generation with the reference completion (whitespace collapsed); the "
        "judge is the synthetic stage's gold judge (1 correct, 0 wrong). Loss is the token-weighted NLL of the "
        "completion (the text, in text format); perplexity = exp(loss). Per-example results are in "
        "`data/train-00000-of-00001.parquet`.",
        "",
    ]
    for name, m in per_dataset.items():
        lines += [f"### `{name}` ({formats[name]})", "", "| family | " + " | ".join(cols) + " |"]
        lines.append("| --- |" + " --- |" * len(cols))
        for fam, fm in m["families"].items():
            lines.append(f"| {fam} | " + " | ".join(_fmt(fm.get(c)) for c in cols) + " |")
        lines.append("| **all** | " + " | ".join(_fmt(m.get(c)) for c in cols) + " |")
        lines.append("")
        lines += _preference_card(name, m)
    shown = [r for r in rows if r["generation"] is not None][: cfg.examples_in_card]
    for r in shown:
        lines += [
            f"- `{r['family']}`: prompt {r['prompt'][:200]!r} → generated {r['generation'][:200]!r} "
            f"(reference {str(r['reference'])[:200]!r})"
        ]
    return "\n".join(lines) + "\n"
