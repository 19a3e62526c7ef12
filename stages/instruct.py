"""``instruct``: multi-task instruction tuning (seed §3, pseudo-algorithm §3.7) -> a model or adapter.

Inputs: ``model`` (the base, with its tokenizer or a ``tokenizer`` input), one or
more instruction datasets (columns ``instruction``, ``output``, optionally
``input``, ``family``, ``rationale`` / ``cot``: the ``synthetic`` stage's
``instructions`` output as it is), and optionally ``heldout_inputs`` used only
for evaluation.

- Mixing (§3.5): the task families are sampled with p_k ∝ min(N_k, M)^(1/τ)
  (``temperature`` τ, ``cap`` M); the target and the realised mix are reported.
- Templates (§3.4, §3.7 step 1.1): each example is phrased by a template drawn at
  random from its family's set (``task_templates``, else ``templates``).
- Chain of thought (§3.6): ``cot_ratio`` of the examples carry their reasoning
  chain (a ``rationale`` column, or the rows flagged ``cot``).
- Formatting: the chat template; loss on the assistant's reply only.
- Evaluation (§3.7 step 3.4): before training, every ``eval_steps`` and at the end,
  the loss on each family of the evaluation split that training never saw
  (zero-shot), the loss on the seen families, and, when the ``synthetic`` stage's
  judge is installed, greedy-decoding accuracy per held-out family.

``peft`` and ``regularization`` work as in ``sft``; so does the output.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from hubflow.errors import StageInputError
from hubflow.stage import StageContext, StageResult
from stages._finetune.spec import FinetuneConfig, Template, check_template

VERSION = "1"
LIBRARIES = ("torch", "transformers", "trl", "peft", "accelerate", "tokenizers")

DEFAULT_TEMPLATES = [
    Template(with_input="{instruction}\n{input}", without_input="{instruction}"),
    Template(with_input="Task: {instruction}\n{input}", without_input="Task: {instruction}"),
    Template(with_input="{instruction}\n\nInput:\n{input}", without_input="{instruction}\n\nRespond below."),
    Template(
        with_input="Read the input and follow the instruction.\nInstruction: {instruction}\nInput: {input}",
        without_input="Follow the instruction.\nInstruction: {instruction}",
    ),
]
"""Four phrasings; the first (instruction, newline, input) is also the evaluation phrasing."""


class Config(FinetuneConfig):
    OUTPUT_TYPES: ClassVar[dict[str, str]] = {"output": "model"}

    kind: Literal["instruct"] = Field(
        ..., description="Multi-task instruction tuning (mixing, templates, CoT)."
    )
    heldout_inputs: list[str] = Field(
        default_factory=list,
        description="Inputs used only for evaluation (their eval split, else train): zero-shot task families.",
    )
    instruction_column: str = Field("instruction", description="Column with the instruction.")
    input_column: str = Field("input", description="Column with the optional input (empty or absent: none).")
    output_column: str = Field("output", description="Column with the target response y.")
    family_column: str = Field(
        "family", description="Column naming each row's task family (absent: one per input)."
    )
    rationale_column: str = Field(
        "rationale", description="Column with a reasoning chain, where the data has one."
    )
    cot_column: str = Field(
        "cot", description="Boolean column marking rows whose output already reasons (synthetic)."
    )
    temperature: float = Field(
        2.0, gt=0, description="Mixing temperature τ: p_k ∝ min(N_k, M)^(1/τ); 1 = proportional."
    )
    cap: int | None = Field(
        None, ge=1, description="Cap M on each family's examples per epoch (examples-proportional)."
    )
    num_examples: int | None = Field(
        None, ge=1, description="Examples in one epoch of the mixture (default Σ_k min(N_k, M))."
    )
    templates: list[Template] = Field(
        default_factory=lambda: [t.model_copy() for t in DEFAULT_TEMPLATES],
        min_length=1,
        description="Phrasings drawn at random per example; the first is also used for evaluation.",
    )
    task_templates: dict[str, list[Template]] = Field(
        default_factory=dict, description="Per-family template sets replacing `templates` for that family."
    )
    system_prompt: str | None = Field(None, description="A system message opening every conversation.")
    cot_ratio: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="Fraction of examples carrying their reasoning chain (null: as the data comes).",
    )
    cot_format: str = Field(
        "{rationale}\nAnswer: {output}", description="How a rationale and the output form a CoT response."
    )
    cot_trigger: str | None = Field(
        "Let's think step by step.",
        description="Appended to the instruction of a rationale-augmented example.",
    )
    generate_examples: int = Field(
        8, ge=0, description="Greedy generations per held-out family at each evaluation (0: loss only)."
    )
    max_new_tokens: int = Field(48, ge=1, description="Longest generated reply in evaluation.")

    @field_validator("cot_format")
    @classmethod
    def _cot_format(cls, value: str) -> str:
        return check_template(value, ("rationale", "output"))

    @field_validator("task_templates")
    @classmethod
    def _nonempty(cls, value: dict[str, list[Template]]) -> dict[str, list[Template]]:
        empty = [k for k, v in value.items() if not v]
        if empty:
            raise ValueError(f"task_templates for {empty} are empty lists")
        return value

    @model_validator(mode="after")
    def _check_instruct(self) -> Config:
        missing = [n for n in self.heldout_inputs if n not in self.inputs]
        if missing:
            raise ValueError(f"heldout_inputs {missing} are not inputs; inputs are {sorted(self.inputs)}")
        both = sorted(set(self.heldout_inputs) & set(self.datasets or []))
        if both:
            raise ValueError(f"inputs {both} are both training datasets and heldout_inputs")
        return self

    def reserved_inputs(self) -> set[str]:
        return super().reserved_inputs() | set(self.heldout_inputs)

    def cols(self) -> dict[str, str]:
        return {
            "instruction": self.instruction_column,
            "input": self.input_column,
            "output": self.output_column,
            "family": self.family_column,
            "rationale": self.rationale_column,
            "cot": self.cot_column,
        }


def describe(cfg: Config) -> list[str]:
    cap = f", cap M={cfg.cap}" if cfg.cap else ""
    return [f"{cfg.peft.method} instruction tuning on {cfg.training_inputs()}: τ={cfg.temperature:g}{cap}"]


def _judge() -> Any:
    try:
        from stages.synthetic import score
    except ImportError:
        return None
    return score


def _read(ctx: StageContext, cfg: Config, names: list[str], split_of: Any) -> dict[str, list[dict[str, Any]]]:
    from stages._finetune.data import input_folder, read_rows

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
    from stages._finetune.data import eval_split_of
    from stages._finetune.evaluation import GenerationItem
    from stages._finetune.instruct_data import group_tasks, user_prompt
    from stages._finetune.masking import encode_messages, generation_prompt_ids

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
    from stages._finetune.instruct_data import user_prompt

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


def run(ctx: StageContext, cfg: Config) -> StageResult:
    from stages._finetune.data import tokenizer_for
    from stages._finetune.evaluation import Evaluator
    from stages._finetune.instruct_data import check_cot_source, draw, group_tasks, plan_mix
    from stages._finetune.masking import encode_messages, end_of_turn_ids, require_chat_template
    from stages._finetune.train import Job, prepare_model, save_output, train

    tok, tok_input = tokenizer_for(ctx, cfg.chat_template)
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
        batch_size=cfg.batch_size,
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
    return StageResult(metrics=metrics, card_sections=sections, card_metadata=metadata)


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
