"""``evaluate``: score a model (or an adapter on its base) on held-out datasets, without training.

Inputs: ``model`` (a full model, or an adapter repo plus ``base``), optionally
``tokenizer`` (else the model's, the adapter's or the base's own tokenizer files), and
one or more datasets under any other names. For each dataset split (default ``test``):

- held-out loss and perplexity, the training objective on unseen data: completion-only
  on prompt/completion (plain or chat) and chat ``messages``, all tokens on ``text``
  (seed §3.4, §3.7 step 3.2; sequences and masks are built as the sft stage builds them);
- greedy generation (``max_new_tokens``) scored by exact match against the reference
  completion and, where the dataset has a ``family`` column the synthetic stage's gold
  judge knows, by the judge (``stages.synthetic.score``): overall and per task family
  (held-out families included: seed §3.7 step 3.4).

The output dataset holds ``data/train-00000-of-00001.parquet`` (one row per example:
prompt, reference, generation, exact match, judge score, loss) and the metrics
(metrics.json and a table per family in the card), so a manifest can put base, SFT and
aligned models side by side.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from hubflow.errors import StageInputError
from hubflow.stage import StageConfig, StageContext, StageResult

VERSION = "1"
LIBRARIES = ("torch", "transformers", "peft", "pyarrow")
RESERVED_INPUTS = ("model", "base", "tokenizer")


class Config(StageConfig):
    OUTPUT_TYPES: ClassVar[dict[str, str]] = {"output": "dataset"}

    kind: Literal["evaluate"] = Field(..., description="Score a model or adapter on held-out datasets.")
    split: str = Field("test", pattern=r"^[A-Za-z0-9_.-]+$", description="Split of every dataset to score.")
    max_examples: int | None = Field(
        None, ge=1, description="Score at most this many rows per dataset (the first)."
    )
    format: Literal["auto", "prompt_completion", "messages", "text"] = Field(
        "auto",
        description="How rows are read: prompt/completion columns (strings or chat lists), chat `messages` "
        "(the last assistant turn is the reference) or `text` (loss only); auto takes the first one present.",
    )
    prompt_column: str = Field("prompt", description="Prompt column (a string or a list of chat messages).")
    completion_column: str = Field("completion", description="Reference completion column.")
    messages_column: str = Field("messages", description="Chat column for format `messages`.")
    text_column: str = Field("text", description="Document column for format `text`.")
    family_column: str = Field("family", description="Task family column; scores are reported per family.")
    generate: bool = Field(True, description="Generate completions and score them (prompt formats only).")
    max_new_tokens: int = Field(64, ge=1, le=8192, description="Greedy generation length limit.")
    stop_tokens: list[str] = Field(
        default_factory=list,
        description="Tokens that end a generation besides eos and the chat template's end-of-turn token "
        "(those missing from the vocabulary are ignored).",
    )
    judge: Literal["auto", "synthetic", "none"] = Field(
        "auto",
        description="Gold judge: `synthetic` (stages.synthetic.score, needs the family column); `auto` uses it "
        "for families it knows.",
    )
    batch_size: int = Field(16, ge=1, description="Sequences per forward pass / generate call.")
    max_length: int = Field(1024, ge=8, description="Longest sequence scored (longer ones are truncated).")
    check_base: bool = Field(
        True, description="Refuse an adapter whose recorded base (lineage.json) is not the `base` input."
    )
    examples_in_card: int = Field(3, ge=0, description="Sample generations shown in the card.")

    @model_validator(mode="after")
    def _check_kind_inputs(self) -> Config:
        if "model" not in self.inputs:
            raise ValueError(
                "an evaluate stage needs `inputs: {model: MODEL_OR_ADAPTER, DATASET_NAME: DATASET}`"
            )
        if not dataset_inputs(self.inputs):
            raise ValueError(
                f"an evaluate stage needs at least one dataset input besides {list(RESERVED_INPUTS)}, "
                "e.g. `inputs: {model: sft, tasks: synthetic.instructions}`"
            )
        if self.resources.num_processes != 1:
            raise ValueError("evaluate runs in one process; set resources.num_processes to 1")
        return self


def dataset_inputs(inputs: dict[str, Any]) -> list[str]:
    return sorted(k for k in inputs if k not in RESERVED_INPUTS)


def fingerprint_extra(cfg: Config, base_dir: Path) -> dict[str, Any]:
    """The gold judge's code decides the judge scores: hash its source when it is used."""
    if cfg.judge == "none":
        return {}
    try:
        from stages._synthetic import judge, tasks
    except ImportError:
        return {"judge": None}
    src = "".join(inspect.getsource(m) for m in (judge, tasks))
    return {"judge_sha256": hashlib.sha256(src.encode()).hexdigest()}


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
) -> list[dict[str, Any]]:
    from stages._evaluate import scoring
    from stages._evaluate.models import PROMPT_LEARNING

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
    rows = []
    for ex, (loss_sum, tokens), gen in zip(examples, losses, generations, strict=True):
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
                "loss": round(loss_sum / tokens, 6) if tokens else None,
                "loss_sum": loss_sum,
                "tokens": tokens,
            }
        )
    return rows


def _check_judge(cfg: Config, judge: Any, loaded: dict[str, tuple[str, list[Any]]]) -> None:
    if cfg.judge != "synthetic":
        return
    if judge is None:
        raise StageInputError(
            "judge: synthetic, but stages.synthetic is not installed", hint="set judge: auto"
        )
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
            ("loss", pa.float64()),
            ("tokens", pa.int64()),
        ]
    )
    (out / "data").mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist([{k: r[k] for k in schema.names} for r in rows], schema=schema)
    pq.write_table(table, out / "data" / "train-00000-of-00001.parquet")


def _check_vocab(tok: Any, tok_input: str, rows: int) -> None:
    if len(tok) > rows:
        raise StageInputError(
            f"the tokenizer (input {tok_input!r}) has {len(tok)} tokens but the model's embedding has "
            f"{rows} rows: they were not made together",
            hint="feed the tokenizer the model was trained with (the pretrain/sft stage's tokenizer input)",
        )


def run(ctx: StageContext, cfg: Config) -> StageResult:
    import torch

    from stages._evaluate import scoring
    from stages._evaluate.data import load_examples
    from stages._evaluate.models import (
        adapter_config,
        check_model_inputs,
        device_for,
        load_model,
        read_json,
        tokenizer_folder,
    )
    from stages.common import load_tokenizer

    model_dir, base_dir = ctx.inputs["model"], ctx.inputs.get("base")
    # every check that needs no weights comes first: bad input fails before any compute
    check_model_inputs(model_dir, base_dir, base_ref=ctx.input_refs.get("base"), check_base=cfg.check_base)
    found = tokenizer_folder(
        ("tokenizer", ctx.inputs.get("tokenizer")), ("model", model_dir), ("base", base_dir)
    )
    if found is None:
        raise StageInputError(
            "no tokenizer: neither input 'model' nor 'base' holds tokenizer files and no 'tokenizer' input is given",
            hint="add `tokenizer: STAGE_OR_REF` (e.g. the tokenizer stage) to the inputs",
        )
    tok = load_tokenizer(found[1], input_name=found[0])
    weights_dir = base_dir if adapter_config(model_dir) is not None else model_dir
    config = read_json(weights_dir / "config.json") or {}
    vocab = config.get("vocab_size", (config.get("text_config") or {}).get("vocab_size"))
    if isinstance(vocab, int):
        _check_vocab(tok, found[0], vocab)
    judge = scoring.synthetic_judge() if cfg.judge != "none" else None
    loaded = {name: load_examples(ctx.inputs[name], name, cfg) for name in dataset_inputs(ctx.inputs)}
    _check_judge(cfg, judge, loaded)
    model, info = load_model(
        model_dir,
        base_dir,
        base_ref=ctx.input_refs.get("base"),
        check_base=cfg.check_base,
        logger=ctx.logger,
    )
    _check_vocab(tok, found[0], int(model.get_input_embeddings().weight.shape[0]))
    device = device_for(ctx.resources)
    model.to(device)
    torch.manual_seed(0)

    all_rows: list[dict[str, Any]] = []
    per_dataset: dict[str, dict[str, Any]] = {}
    formats: dict[str, str] = {}
    for name, (fmt, examples) in loaded.items():
        formats[name] = fmt
        rows = _score_dataset(ctx, cfg, name, (fmt, examples), model, info, tok, device, judge)
        all_rows += rows
        per_dataset[name] = {**scoring.summarize(rows), "families": scoring.by_family(rows)}
        ctx.log_metrics(dataset=name, **{k: v for k, v in per_dataset[name].items() if k != "families"})
    _write(all_rows, ctx.output)

    metrics: dict[str, Any] = {"model_type": info["model_type"], "split": cfg.split}
    if len(per_dataset) == 1:
        metrics.update(next(iter(per_dataset.values())))
    else:
        for name, m in per_dataset.items():
            metrics.update({f"{name}/{k}": v for k, v in m.items()})
    sections = {"Evaluation": _card(cfg, per_dataset, formats, all_rows, info)}
    return StageResult(metrics=metrics, card_sections=sections)


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
    cols = ("examples", "exact_match", "judge_accuracy", "loss", "perplexity")
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
    shown = [r for r in rows if r["generation"] is not None][: cfg.examples_in_card]
    for r in shown:
        lines += [
            f"- `{r['family']}`: prompt {r['prompt'][:200]!r} → generated {r['generation'][:200]!r} "
            f"(reference {str(r['reference'])[:200]!r})"
        ]
    return "\n".join(lines) + "\n"
