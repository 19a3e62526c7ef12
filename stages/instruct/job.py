"""Running the ``instruct`` stage: read and mix the task families, phrase and mask them, evaluate the
held-out families, train, save."""

from __future__ import annotations

from typing import Any

from hubflow.errors import StageInputError
from hubflow.stage import StageContext, StageResult
from stages.instruct.config import Config


def _judge() -> Any:
    from stages.lib.judge import score

    return score


def _read(ctx: StageContext, cfg: Config, names: list[str], split_of: Any) -> dict[str, list[dict[str, Any]]]:
    from stages.lib.datasets import input_folder, read_rows

    cols = cfg.cols()
    needed = [cols["instruction"], cols["output"]]
    optional = (cols["input"], cols["family"], cols["rationale"], cols["cot"])
    hint = (
        "instruct reads instruction/input/output (+ family, rationale, cot) columns, as the synthetic stage's "
        "`instructions` output has them; set instruction_column/output_column, or use kind sft with "
        "format: messages for chat data"
    )
    out = {}
    for name in names:
        split = split_of(input_folder(ctx, name))
        if split is None:
            continue
        out[name] = read_rows(
            input_folder(ctx, name), split, needed, input_name=name, hint=hint, optional=optional
        )
    return out


def _eval_sets(
    ctx: StageContext, cfg: Config, tok: Any, seen: set[str], judge: Any
) -> tuple[dict[str, list], dict[str, list], dict[str, list[str]], dict[str, Any]]:
    from stages.instruct.data import group_tasks, user_prompt
    from stages.lib.chat import encode_messages, generation_prompt_ids
    from stages.lib.datasets import eval_split_of
    from stages.lib.finetune.evaluation import GenerationItem

    cols = cfg.cols()
    train_names = cfg.training_inputs()
    rows = _read(ctx, cfg, train_names, lambda f: eval_split_of(f, cfg.eval_split))
    held = _read(ctx, cfg, cfg.heldout_inputs, lambda f: eval_split_of(f, cfg.eval_split) or "train")
    tasks = group_tasks({**rows, **held}, cols["family"])
    loss_sets: dict[str, list] = {}
    gen_sets: dict[str, list] = {}
    system = [{"role": "system", "content": cfg.system_prompt}] if cfg.system_prompt else []
    heldout, seen_rows = [], []
    judged: list[str] = []
    for name, task in sorted(tasks.items()):
        if name in seen:
            seen_rows += task.rows
            continue
        heldout.append(name)
        sample = task.rows[: cfg.eval_examples]
        loss_sets[f"heldout_{name}"] = _encode_eval(tok, sample, cols, cfg, system, encode_messages)
        if judge is not None and cfg.generate_examples:
            items = []
            for r in task.rows[: cfg.generate_examples]:
                prompt = user_prompt(r, cols, cfg.templates[0])
                ids = generation_prompt_ids(tok, [*system, {"role": "user", "content": prompt}])
                items.append(GenerationItem(family=name, prompt_ids=ids, prompt=prompt))
            try:
                judge(name, items[0].prompt, "")
            except (StageInputError, KeyError, ValueError):
                continue  # not a family the judge knows: loss only
            gen_sets[f"heldout_{name}"] = items
            judged.append(name)
    if seen_rows:
        step = max(1, len(seen_rows) // cfg.eval_examples)
        loss_sets["seen"] = _encode_eval(
            tok, seen_rows[::step][: cfg.eval_examples], cols, cfg, system, encode_messages
        )
    summaries = {"heldout": [f"heldout_{n}" for n in heldout]} if heldout else {}
    info = {"heldout_families": heldout, "judged_families": judged}
    return loss_sets, gen_sets, summaries, info


def _encode_eval(tok: Any, rows: list, cols: dict, cfg: Config, system: list, encode: Any) -> list[dict]:
    from stages.instruct.data import user_prompt

    out = []
    for r in rows:
        messages = [
            *system,
            {"role": "user", "content": user_prompt(r, cols, cfg.templates[0])},
            {"role": "assistant", "content": str(r[cols["output"]])},
        ]
        enc = encode(tok, messages).truncated(cfg.max_length)
        if enc.trained:
            out.append(enc.as_row())
    return out


def instruct(ctx: StageContext, cfg: Config) -> StageResult:
    from stages.instruct.data import check_cot_source, draw, group_tasks, plan_mix
    from stages.lib.chat import encode_messages, end_of_turn_ids, require_chat_template
    from stages.lib.finetune.evaluation import Evaluator
    from stages.lib.finetune.train import Job, check_model_input, prepare_model, save_output, train
    from stages.lib.tokenizers import stage_tokenizer

    check_model_input(ctx)
    tok, tok_input = stage_tokenizer(ctx.inputs, chat_template=cfg.chat_template)
    require_chat_template(tok, input_name=tok_input)
    cols = cfg.cols()
    names = cfg.training_inputs()
    tasks = group_tasks(_read(ctx, cfg, names, lambda f: cfg.split), cols["family"])
    check_cot_source(tasks, cols, cfg.cot_ratio, names)
    sizes = {name: len(t.rows) for name, t in tasks.items()}
    probs, counts = plan_mix(sizes, cfg.temperature, cfg.cap, cfg.num_examples)
    drawn = draw(
        tasks,
        counts,
        templates=cfg.task_templates,
        default_templates=cfg.templates,
        cols=cols,
        cot_ratio=cfg.cot_ratio,
        cot_format=cfg.cot_format,
        cot_trigger=cfg.cot_trigger,
        system_prompt=cfg.system_prompt,
        seed=cfg.seed,
    )
    rows, truncated = [], 0
    for d in drawn:
        enc = encode_messages(tok, d.messages)
        if len(enc.input_ids) > cfg.max_length:
            truncated += 1
            enc = enc.truncated(cfg.max_length)
        if enc.trained:
            rows.append(enc.as_row())
    if not rows:
        raise StageInputError(
            f"no example keeps a reply token within max_length={cfg.max_length}", hint="raise it"
        )
    total = len(drawn)
    realised = {n: sum(1 for d in drawn if d.family == n) / total for n in tasks}
    mix = {
        n: {
            "rows": sizes[n],
            "target": round(probs[n], 6),
            "examples": counts[n],
            "realised": round(realised[n], 6),
        }
        for n in sorted(tasks)
    }
    judge = _judge()
    loss_sets, gen_sets, summaries, info = (
        ([], {}, {}, {}) if cfg.eval_split is None else _eval_sets(ctx, cfg, tok, set(tasks), judge)
    )
    evaluator = Evaluator(
        task="causal_lm",
        loss_sets=dict(loss_sets),
        generation_sets=gen_sets,
        scorer=judge if gen_sets else None,
        stop_ids=end_of_turn_ids(tok),
        pad_id=tok.pad_token_id,
        max_new_tokens=cfg.max_new_tokens,
        batch_size=cfg.per_device_train_batch_size,
        decode=lambda ids: tok.decode(ids, skip_special_tokens=True),
        summaries=summaries,
    )
    model, ewc, ewc_metrics = prepare_model(ctx, cfg, tok, "causal_lm")
    job = Job(
        ctx=ctx,
        cfg=cfg,
        task="causal_lm",
        model=model,
        tok=tok,
        train_rows=rows,
        evaluator=evaluator,
        ewc=ewc,
    )
    job.metrics.update(
        {
            "method": cfg.peft.method,
            "tasks": len(tasks),
            "mixed_examples": total,
            "truncated_examples": truncated,
            "cot_share": round(sum(d.cot for d in drawn) / total, 6),
            "templates_used": len({(d.family, d.template) for d in drawn}),
            "seen_families": sorted(tasks),
            **info,
            **ewc_metrics,
        }
    )
    trainer = train(job)
    metadata: dict[str, Any] = {}
    if trainer.is_world_process_zero():
        metadata = save_output(job, ctx.output)
    metrics = {**job.metrics, "mix": mix}
    sections = {"Instruction tuning": _card(cfg, metrics, evaluator)}
    return StageResult(
        metrics=metrics, card_sections=sections, card_metadata=metadata, revisions=job.revisions
    )


def _card(cfg: Config, m: dict[str, Any], evaluator: Any) -> str:
    lines = [
        f"Method **{cfg.peft.method}**; {m['tasks']} task families mixed with τ={cfg.temperature:g}"
        + (f", cap M={cfg.cap}" if cfg.cap else "")
        + f" into {m['mixed_examples']} examples; chain-of-thought share {m['cot_share']}.",
        "",
        "| family | rows N_k | target p_k | examples | realised |",
        "| --- | --- | --- | --- | --- |",
    ]
    lines += [
        f"| {k} | {v['rows']} | {v['target']} | {v['examples']} | {v['realised']} |"
        for k, v in m["mix"].items()
    ]
    lines += [
        "",
        f"Steps: {m['steps']}; training loss {_num(m['train_loss_first'])} -> {_num(m['train_loss_last'])}.",
    ]
    if evaluator.history:
        first, last = evaluator.history[0], evaluator.history[-1]
        keys = [k for k in last if k != "step"]
        lines += ["", f"| evaluation | step {first['step']} | step {last['step']} |", "| --- | --- | --- |"]
        lines += [f"| {k} | {first.get(k, '')} | {last[k]} |" for k in keys]
    return "\n".join(lines)


def _num(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)
