"""``sft``: supervised fine-tuning of a base model (seed §2) -> an adapter or a full model.

Inputs: ``model`` (a base model repo with safetensors weights and, unless a
``tokenizer`` input is given, its tokenizer) and one or more datasets (``data``,
or the inputs named in ``datasets:``). Formats (``format:``):

- ``prompt_completion``: columns ``prompt`` and ``completion``; loss on the
  completion and eos only (seed §2.5 step 2);
- ``messages``: a chat ``messages`` column rendered by the tokenizer's chat
  template; loss on the assistant turns only (seed §3.4);
- ``instruction``: ``instruction`` / ``input`` / ``output`` rendered through
  ``instruction_template`` (Alpaca-like by default) into a prompt and completion.

``peft.method``: ``full``, ``lora``, ``qlora`` (4-bit NF4 base with double
quantisation, bitsandbytes), ``adapter`` (bottleneck adapters, seed §2.4.3) or
``prefix``. ``regularization.ewc`` adds the diagonal-Fisher penalty of seed §2.3
against forgetting, with the Fisher estimated on the input it names. ``task:``
``classification`` or ``extractive_qa`` put a task head on the base (seed §2.2).

Output: peft methods publish ``adapter_model.safetensors`` + ``adapter_config.json``
(``peft.PeftModel.from_pretrained`` loads them), ``adapter`` the same two files
marked ``"hubflow_adapter": "bottleneck"``, ``full`` a whole model; the tokenizer
files always. ``stages._finetune.load.load_finetuned`` loads any of them.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from hubflow.errors import StageInputError
from hubflow.stage import StageContext, StageResult
from stages._finetune.spec import ALPACA, FinetuneConfig, Template

VERSION = "1"
LIBRARIES = ("torch", "transformers", "trl", "peft", "accelerate", "tokenizers")

_COLUMN_ROLES = ("prompt", "completion", "messages", "instruction", "input", "output")


class Config(FinetuneConfig):
    OUTPUT_TYPES: ClassVar[dict[str, str]] = {"output": "model"}

    kind: Literal["sft"] = Field(
        ..., description="Supervised fine-tuning (full, LoRA, QLoRA, adapters, prefix)."
    )
    task: Literal["causal_lm", "classification", "extractive_qa"] = Field(
        "causal_lm",
        description="`causal_lm` (generation, the default), `classification` (a sequence-classification head) "
        "or `extractive_qa` (a span head), seed §2.2.",
    )
    format: Literal["prompt_completion", "messages", "instruction"] = Field(
        "prompt_completion", description="How rows become text (causal_lm only); see the module docs."
    )
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="Renames for the format's columns, e.g. {prompt: question, completion: answer}; keys are "
        "prompt, completion, messages, instruction, input, output.",
    )
    instruction_template: Template = Field(
        default_factory=lambda: ALPACA.model_copy(),
        description="Format `instruction`: `with_input` / `without_input` templates over {instruction} and {input}.",
    )
    text_column: str = Field("text", description="classification: the text column.")
    text_pair_column: str | None = Field(
        None, description="classification: an optional second text (pairs, NLI)."
    )
    label_column: str = Field("label", description="classification: the label column (ints 0..C-1 or names).")
    question_column: str = Field("question", description="extractive_qa: the question column.")
    context_column: str = Field("context", description="extractive_qa: the context (passage) column.")
    answer_column: str = Field(
        "answer",
        description="extractive_qa: the answer text (a span of the context), or SQuAD-style `answers`.",
    )
    answer_start_column: str | None = Field(
        None,
        description="extractive_qa: character offset of the answer in the context (found by search if unset).",
    )

    @model_validator(mode="after")
    def _check_sft(self) -> Config:
        unknown = sorted(set(self.columns) - set(_COLUMN_ROLES))
        if unknown:
            raise ValueError(f"columns: unknown key(s) {unknown}; use {list(_COLUMN_ROLES)}")
        if self.task != "causal_lm":
            if self.peft.method not in ("full", "lora", "adapter"):
                raise ValueError(
                    f"task {self.task} supports peft methods full, lora and adapter, not {self.peft.method}"
                )
            if self.regularization.ewc is not None:
                raise ValueError(
                    "regularization.ewc measures the language-model likelihood of pretraining text; "
                    f"task {self.task} has no language-model head: remove it or use task causal_lm"
                )
        return self


def fingerprint_extra(cfg: Config, base_dir: Any) -> dict[str, Any]:
    if cfg.peft.method == "qlora":
        from hubflow.fingerprint import library_version

        return {"bitsandbytes": library_version("bitsandbytes")}
    return {}


def describe(cfg: Config) -> list[str]:
    what = cfg.format if cfg.task == "causal_lm" else cfg.task
    steps = f"{cfg.max_steps} steps" if cfg.max_steps else f"{cfg.epochs:g} epoch(s)"
    ewc = f", EWC lambda={cfg.regularization.ewc.lambda_:g}" if cfg.regularization.ewc else ""
    return [f"{cfg.peft.method} fine-tuning on {what} data from {cfg.training_inputs()}, {steps}{ewc}"]


# --- data -------------------------------------------------------------------------


def _causal_rows(ctx: StageContext, cfg: Config, tok: Any) -> tuple[list, dict[str, list], dict[str, Any]]:
    from stages._finetune.data import eval_split_of, input_folder, read_rows
    from stages._finetune.formats import (
        FORMAT_COLUMNS,
        OPTIONAL_COLUMNS,
        encode_rows,
        is_chat,
        needed_columns,
    )
    from stages._finetune.masking import require_chat_template

    needed = needed_columns(cfg.format, cfg.columns)
    optional = tuple(cfg.columns.get(c, c) for c in OPTIONAL_COLUMNS.get(cfg.format, ()))
    hint = (
        f"format {cfg.format} reads columns {list(FORMAT_COLUMNS[cfg.format])}: rename them with `columns:` "
        "(e.g. {prompt: question}) or choose the `format:` that matches the data"
    )
    if cfg.format == "messages":
        require_chat_template(tok, input_name="tokenizer" if "tokenizer" in ctx.inputs else "model")
    train: list[dict] = []
    evals: dict[str, list] = {}
    stats: dict[str, Any] = {}
    names = cfg.training_inputs()
    for name in names:
        folder = input_folder(ctx, name)
        rows = read_rows(folder, cfg.split, needed, input_name=name, hint=hint, optional=optional)
        if cfg.format == "prompt_completion" and is_chat(rows[0][needed[0]]):
            require_chat_template(tok, input_name="tokenizer" if "tokenizer" in ctx.inputs else "model")
        encoded, counts = encode_rows(
            tok,
            rows,
            cfg.format,
            cfg.columns,
            cfg.instruction_template,
            max_length=cfg.max_length,
            input_name=name,
        )
        train += encoded
        stats[name] = counts
        split = eval_split_of(folder, cfg.eval_split)
        if split:
            rows = read_rows(folder, split, needed, input_name=name, hint=hint, optional=optional)
            enc, _ = encode_rows(
                tok,
                rows[: cfg.eval_examples],
                cfg.format,
                cfg.columns,
                cfg.instruction_template,
                max_length=cfg.max_length,
                input_name=name,
            )
            if enc:
                evals["eval" if len(names) == 1 else f"eval_{name}"] = enc
    if not train:
        raise StageInputError(
            f"no training row keeps a token to learn within max_length={cfg.max_length}",
            hint="raise max_length, or shorten the prompts",
        )
    return train, evals, stats


def _head_rows(
    ctx: StageContext, cfg: Config, tok: Any
) -> tuple[list, dict[str, list], dict[str, Any], dict]:
    from stages._finetune.data import eval_split_of, input_folder, read_rows
    from stages._finetune.heads import answer_span, encode_classification, encode_qa, label_mapping

    names = cfg.training_inputs()
    splits: dict[str, dict[str, list[dict]]] = {}
    if cfg.task == "classification":
        needed = [cfg.text_column, cfg.label_column] + (
            [cfg.text_pair_column] if cfg.text_pair_column else []
        )
        hint = "set text_column / label_column (and text_pair_column) to the dataset's columns"
    else:
        needed = [cfg.question_column, cfg.context_column, cfg.answer_column]
        needed += [cfg.answer_start_column] if cfg.answer_start_column else []
        hint = "set question_column / context_column / answer_column to the dataset's columns"
    for name in names:
        folder = input_folder(ctx, name)
        splits[name] = {"train": read_rows(folder, cfg.split, needed, input_name=name, hint=hint)}
        split = eval_split_of(folder, cfg.eval_split)
        if split:
            splits[name]["eval"] = read_rows(folder, split, needed, input_name=name, hint=hint)[
                : cfg.eval_examples
            ]
    head_kwargs: dict[str, Any] = {}
    stats: dict[str, Any] = {}
    out: dict[str, list] = {"train": []}
    if cfg.task == "classification":
        values = [r[cfg.label_column] for s in splits.values() for r in s["train"]]
        classes, mapping = label_mapping(values, input_name=names[0], column=cfg.label_column)
        head_kwargs = {
            "num_labels": len(classes),
            "id2label": dict(enumerate(classes)),
            "label2id": {c: i for i, c in enumerate(classes)},
            "pad_token_id": tok.pad_token_id,
        }
        stats["num_labels"] = len(classes)
        for name, parts in splits.items():
            for part, rows in parts.items():
                unknown = sorted(
                    {str(r[cfg.label_column]) for r in rows if r[cfg.label_column] not in mapping}
                )
                if unknown:
                    raise StageInputError(
                        f"input {name!r} ({part}) has labels {unknown[:5]} that the training split lacks",
                        hint="give every class training rows, or drop those rows",
                    )
                texts = [r[cfg.text_column] for r in rows]
                pairs = [r[cfg.text_pair_column] for r in rows] if cfg.text_pair_column else None
                labels = [r[cfg.label_column] for r in rows]
                enc = encode_classification(tok, texts, pairs, labels, mapping, max_length=cfg.max_length)
                out.setdefault("train" if part == "train" else f"eval_{name}", []).extend(enc)
    else:
        for name, parts in splits.items():
            dropped = 0
            for part, rows in parts.items():
                for i, r in enumerate(rows):
                    where = f"input {name!r} {part} row {i}"
                    start = r.get(cfg.answer_start_column) if cfg.answer_start_column else None
                    span = answer_span(str(r[cfg.context_column]), r[cfg.answer_column], start, where=where)
                    enc = encode_qa(
                        tok, r[cfg.question_column], r[cfg.context_column], span, max_length=cfg.max_length
                    )
                    if enc is None:
                        dropped += 1
                        continue
                    out.setdefault("train" if part == "train" else f"eval_{name}", []).append(enc)
            stats[name] = {"answer_cut_by_max_length": dropped}
    train = out.pop("train")
    if not train:
        raise StageInputError(
            f"no training row fits max_length={cfg.max_length} with its answer", hint="raise max_length"
        )
    evals = {("eval" if len(names) == 1 else k): v for k, v in out.items() if v}
    return train, evals, stats, head_kwargs


# --- run ---------------------------------------------------------------------------


def run(ctx: StageContext, cfg: Config) -> StageResult:
    from stages._finetune.data import tokenizer_for
    from stages._finetune.evaluation import Evaluator
    from stages._finetune.train import Job, prepare_model, save_output, train

    tok, _ = tokenizer_for(ctx, cfg.chat_template)
    head_kwargs: dict[str, Any] = {}
    if cfg.task == "causal_lm":
        rows, evals, data_stats = _causal_rows(ctx, cfg, tok)
    else:
        rows, evals, data_stats, head_kwargs = _head_rows(ctx, cfg, tok)
    model, ewc, ewc_metrics = prepare_model(ctx, cfg, tok, cfg.task, head_kwargs)
    evaluator = Evaluator(task=cfg.task, loss_sets=evals, pad_id=tok.pad_token_id, batch_size=cfg.batch_size)
    job = Job(
        ctx=ctx, cfg=cfg, task=cfg.task, model=model, tok=tok, train_rows=rows, evaluator=evaluator, ewc=ewc
    )
    job.metrics.update({"method": cfg.peft.method, "task": cfg.task, **ewc_metrics})
    if cfg.task == "causal_lm":
        job.metrics["format"] = cfg.format
    trainer = train(job)
    metadata: dict[str, Any] = {}
    if trainer.is_world_process_zero():
        metadata = save_output(job, ctx.output)
    metrics = {**job.metrics, "data": data_stats}
    return StageResult(
        metrics=metrics, card_sections={"Fine-tuning": _card(cfg, metrics)}, card_metadata=metadata
    )


def _card(cfg: Config, m: dict[str, Any]) -> str:
    lines = [
        f"Method **{cfg.peft.method}** ({', '.join(f'{k}={v}' for k, v in cfg.peft_dict().items() if k != 'method') or 'all weights'}), "
        f"task `{cfg.task}`" + (f", format `{cfg.format}`" if cfg.task == "causal_lm" else "") + ".",
        "",
        f"Trainable parameters: {m['trainable_params']:,} of {m['total_params']:,} ({m['trainable_percent']}%).",
        f"Steps: {m['steps']}; training loss {_num(m['train_loss_first'])} -> {_num(m['train_loss_last'])}; "
        f"{m['tokens_per_s']} tokens/s over {m['processes']} process(es).",
    ]
    if cfg.regularization.ewc is not None:
        lines.append(
            f"EWC (lambda={cfg.regularization.ewc.lambda_:g}) with the diagonal Fisher of "
            f"{m.get('ewc_fisher_samples')} documents of input `{cfg.regularization.ewc.data_input}`."
        )
    evals = {k: v for k, v in m.items() if k.startswith("eval_") and not k.endswith("_before")}
    if evals:
        lines += ["", "| evaluation | before | after |", "| --- | --- | --- |"]
        lines += [f"| {k[5:]} | {m.get(k + '_before', '')} | {v} |" for k, v in evals.items()]
    if cfg.peft.method in ("lora", "qlora", "prefix"):
        lines += ["", "Load with `peft.PeftModel.from_pretrained(base_model, this_folder)`."]
    elif cfg.peft.method == "adapter":
        lines += ["", "Load with `stages._finetune.load.load_finetuned(this_folder, base_folder)`."]
    return "\n".join(lines)


def _num(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)
