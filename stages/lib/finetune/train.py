"""The training core shared by ``sft`` and ``instruct``.

Causal-LM training goes through TRL's ``SFTTrainer`` on rows that are already
tokenised and masked (``input_ids`` + ``labels``, see ``masking``), so TRL
neither re-templates nor re-masks them; the classification and extractive-QA
heads train with the plain transformers ``Trainer``. Both get the EWC gradient
(seed §2.3) when configured, the periodic evaluator, the count of non-padding
tokens trained (tokens/s) and checkpoints in the stage's resume folder (a failed
run resumes from the last one). Under ``accelerate launch`` every process
trains; only the main process writes the output.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hubflow.stage import StageContext
from stages.lib.checkpoints import CheckpointWriter, trainer_callback
from stages.lib.finetune.evaluation import Evaluator, evaluation_callback
from stages.lib.hardware import pick_mixed_precision, trl_precision_kwargs
from stages.lib.peft_methods import parameter_counts
from stages.lib.trainer_logging import quiet_printer


@dataclass
class Job:
    ctx: StageContext
    cfg: Any
    """A FinetuneConfig (sft or instruct)."""
    task: str
    model: Any
    tok: Any
    train_rows: list[dict[str, Any]]
    evaluator: Evaluator | None = None
    ewc: Any = None
    metrics: dict[str, Any] = field(default_factory=dict)
    revisions: list[Any] = field(default_factory=list)
    """The checkpoints published as revisions (``checkpoints: {every: K}``), filled by :func:`train`."""


def _args(job: Job, *, sft: bool) -> Any:
    import torch

    cfg, ctx = job.cfg, job.ctx
    mp = pick_mixed_precision(ctx.resources.mixed_precision, cpu=ctx.resources.cpu)
    use_cpu = ctx.resources.cpu or not torch.cuda.is_available()
    optim = cfg.optim or (
        "paged_adamw_32bit" if cfg.peft.method == "qlora" and not use_cpu else "adamw_torch"
    )
    common: dict[str, Any] = {
        **cfg.trainer_kwargs(),
        "output_dir": str(ctx.resume_dir / "checkpoints"),
        "logging_first_step": True,  # train_loss_first is the first step's loss
        "save_total_limit": 1,
        "report_to": "none",
        "disable_tqdm": True,
        "use_cpu": use_cpu,
        "optim": optim,
        "dataloader_num_workers": 0,
        "include_num_input_tokens_seen": "non_padding",  # gathered over processes: real tokens trained
        **trl_precision_kwargs(mp),
    }
    if sft:
        from trl import SFTConfig

        return SFTConfig(**common, max_length=cfg.max_length, packing=False)
    from transformers import TrainingArguments

    return TrainingArguments(**common)


def _callbacks(
    job: Job, losses: list[tuple[int, float]], start: dict[str, int], writer: CheckpointWriter
) -> list[Any]:
    from transformers import TrainerCallback

    ctx = job.ctx

    class Progress(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            start["tokens"] = state.num_input_tokens_seen  # a resumed run starts from its checkpoint's count

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> Any:
            if state.max_steps and state.global_step >= state.max_steps:
                control.should_log = True  # the last step's loss is always logged (train_loss_last)
            return control

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            if not state.is_world_process_zero or not logs:
                return
            if "loss" in logs:
                losses.append((state.global_step, float(logs["loss"])))
            ctx.log_metrics(
                step=state.global_step,
                total=state.max_steps or None,
                **{k: v for k, v in logs.items() if isinstance(v, (int, float))},
            )

    out: list[Any] = []
    if job.ewc is not None:  # first: it adds the penalty to the logs the others record
        from stages.lib.finetune.ewc import ewc_callback

        out.append(ewc_callback(job.ewc))
    out.append(Progress())
    if job.evaluator is not None and not job.evaluator.empty:
        out.append(evaluation_callback(job.evaluator, job.cfg.eval_steps, ctx.log_metrics))
    if writer.enabled:  # last: a checkpoint's metrics include this step's evaluation
        out.append(
            trainer_callback(
                writer, lambda folder: save_output(job, folder), lambda step: _latest(job, losses, step)
            )
        )
    return out


def _latest(job: Job, losses: list[tuple[int, float]], step: int) -> dict[str, Any]:
    """A checkpoint's metrics: the last logged training loss and this step's evaluation, if it ran."""
    values: dict[str, Any] = {"loss": losses[-1][1]} if losses else {}
    history = job.evaluator.history if job.evaluator is not None else []
    if history and history[-1].get("step") == step:
        values.update(
            {k if k.startswith("eval_") else f"eval_{k}": v for k, v in history[-1].items() if k != "step"}
        )
    return values


def train(job: Job) -> Any:
    """Train ``job.model`` in place; returns the trainer (metrics are added to ``job.metrics``)."""
    import datasets
    from transformers import DataCollatorWithPadding, Trainer
    from transformers.trainer_utils import get_last_checkpoint

    from stages.lib.finetune.ewc import ewc_trainer_class

    sft = job.task == "causal_lm"
    args = _args(job, sft=sft)
    losses: list[tuple[int, float]] = []
    start: dict[str, int] = {"tokens": 0}
    writer = CheckpointWriter(job.ctx, job.cfg)
    dataset = datasets.Dataset.from_list(job.train_rows)
    if sft:
        from trl import SFTTrainer

        cls = ewc_trainer_class(SFTTrainer)
        trainer = cls(
            model=job.model,
            args=args,
            train_dataset=dataset,
            processing_class=job.tok,
            callbacks=_callbacks(job, losses, start, writer),
        )
    else:
        cls = ewc_trainer_class(Trainer)
        trainer = cls(
            model=job.model,
            args=args,
            train_dataset=dataset,
            data_collator=DataCollatorWithPadding(job.tok),
            processing_class=job.tok,
            callbacks=_callbacks(job, losses, start, writer),
        )
    quiet_printer(trainer)
    trainer.ewc = job.ewc
    trainable, total = parameter_counts(job.model)

    ckpt = Path(args.output_dir)
    last = get_last_checkpoint(str(ckpt)) if ckpt.is_dir() else None
    if last:
        job.ctx.logger.info("resuming from checkpoint %s", last)
    started = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=last)
    seconds = time.perf_counter() - started
    job.revisions = writer.revisions()
    world = max(1, args.world_size)
    tokens = int(trainer.state.num_input_tokens_seen) - start["tokens"]
    job.metrics.update(
        {
            "steps": trainer.state.global_step,
            "train_examples": len(job.train_rows),
            "train_loss_first": losses[0][1] if losses else None,
            "train_loss_last": losses[-1][1] if losses else None,
            "train_loss_mean": round(float(result.training_loss), 6),
            "train_tokens": tokens,
            "train_seconds": round(seconds, 3),
            "tokens_per_s": round(tokens / seconds, 1) if seconds > 0 else None,
            "trainable_params": trainable,
            "total_params": total,
            "trainable_percent": round(100.0 * trainable / total, 4) if total else None,
            "processes": world,
            "resumed_from_step": int(Path(last).name.split("-")[-1]) if last else 0,
        }
    )
    if job.ewc is not None:
        job.metrics["ewc_penalty_last"] = round(job.ewc.last_penalty, 8)
    if job.evaluator is not None and job.evaluator.history:
        first, final = job.evaluator.history[0], job.evaluator.history[-1]
        for key, value in final.items():
            if key != "step":
                job.metrics[f"eval_{key}"] = value
                if key in first and first["step"] != final["step"]:
                    job.metrics[f"eval_{key}_before"] = first[key]
    return trainer


def base_ref(ctx: StageContext, name: str = "model") -> tuple[str | None, str | None]:
    """(repo id, revision) of an input from its ref ``model:NS/NAME@SHA``."""
    text = ctx.input_refs.get(name)
    if not text:
        return None, None
    body = text.split(":", 1)[1] if ":" in text else text
    repo, _, rev = body.partition("@")
    return repo, rev or None


def save_output(job: Job, out: Path) -> dict[str, Any]:
    """Write the adapter or the full model and the tokenizer into ``out``; returns card metadata."""
    from stages.lib.models import HEAD_FILE, PEFT_TASK

    method = job.cfg.peft.method
    # an adapter applies to the `base` input when the `model` input was itself an adapter (continued here)
    repo, rev = base_ref(job.ctx, "base" if method != "full" and "base" in job.ctx.inputs else "model")
    model = job.model
    out.mkdir(parents=True, exist_ok=True)
    if method == "full":
        model.save_pretrained(str(out), safe_serialization=True)
        relation, library = "finetune", "transformers"
    elif method == "adapter":
        from stages.lib.adapters import save_adapter

        save_adapter(
            model,
            out,
            extra_config={"base_model_name_or_path": repo, "revision": rev, "task_type": PEFT_TASK[job.task]},
        )
        relation, library = "adapter", "hubflow"
    else:
        # save_embedding_layers=False: "auto" looks the base up on the Hub (the embeddings never train here)
        model.save_pretrained(str(out), safe_serialization=True, save_embedding_layers=False)
        config_path = out / "adapter_config.json"
        config = json.loads(config_path.read_text(encoding="utf-8"))
        config.update(base_model_name_or_path=repo, revision=rev)
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        relation, library = "adapter", "peft"
        (out / "README.md").unlink(missing_ok=True)  # peft's stub card; the runner writes the real one
    if job.task != "causal_lm" and method != "full":
        base_cfg = model.config if method == "adapter" else model.get_base_model().config
        head = {"task": job.task, "num_labels": base_cfg.num_labels, "id2label": base_cfg.id2label}
        (out / HEAD_FILE).write_text(json.dumps(head, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    job.tok.save_pretrained(str(out))  # with the chat template in use (a `chat_template:` override too)
    pipeline = {"causal_lm": "text-generation", "classification": "text-classification"}
    meta: dict[str, Any] = {
        "base_model_relation": relation,
        "library_name": library,
        "pipeline_tag": pipeline.get(job.task, "question-answering"),
    }
    if repo:
        meta["base_model"] = repo
    return meta


def check_model_input(ctx: StageContext) -> Any:
    """The cheap checks on the ``model`` input (and ``base`` when it is an adapter), before any data or weights."""
    from stages.lib.datasets import input_folder
    from stages.lib.models import inspect_model

    return inspect_model(
        input_folder(ctx, "model"), base=ctx.inputs.get("base"), base_ref=ctx.input_refs.get("base")
    )


def prepare_model(
    ctx: StageContext, cfg: Any, tok: Any, task: str, head_kwargs: dict[str, Any] | None = None
) -> tuple[Any, Any, dict[str, Any]]:
    """(model ready to train, EWC or None, metrics): load the model for ``task``, check it fits the
    tokenizer, apply the PEFT method, estimate the Fisher when EWC is on.

    With an adapter as ``model`` (and its ``base``): ``peft.method: full`` merges it into the base and trains
    every weight; the adapter's own method continues training that adapter (an output on the same base)."""
    from transformers import set_seed

    from stages.lib.datasets import input_folder
    from stages.lib.finetune.data import ewc_sequences
    from stages.lib.hardware import device_for
    from stages.lib.models import check_vocab, load_model
    from stages.lib.peft_methods import apply_method, check_continuable, quantization_config

    set_seed(cfg.seed)
    mp = pick_mixed_precision(ctx.resources.mixed_precision, cpu=ctx.resources.cpu)
    qlora = cfg.peft.method == "qlora"
    folder = input_folder(ctx, "model")
    info = check_model_input(ctx)
    continued = info.is_adapter and cfg.peft.method != "full"
    if continued:
        check_continuable(folder, cfg.peft, input_name="model")
    model = load_model(
        folder,
        base=ctx.inputs.get("base"),
        base_ref=ctx.input_refs.get("base"),
        task=task,
        head_kwargs=None if info.is_adapter else (head_kwargs or {}),  # an adapter's head: hubflow_head.json
        quantization=quantization_config(cfg.peft, mp) if qlora else None,
        device=device_for(ctx.resources) if qlora else None,
        merge=info.is_adapter and not continued,
        trainable=continued,
        logger=ctx.logger,
    )
    check_vocab(model, tok, input_name="model")
    if task != "causal_lm" and model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id
    if not continued:
        model = apply_method(model, cfg.peft, task)
    metrics: dict[str, Any] = {"continued_adapter": True} if continued else {}
    ewc = None
    spec = cfg.regularization.ewc
    if spec is not None:
        from stages.lib.finetune.ewc import EWC, fisher_diagonal

        if not qlora:  # (qlora is placed on its device when it loads)
            model.to(device_for(ctx.resources))  # this process's device: the Fisher pass runs there
        started = time.perf_counter()
        fisher, used = fisher_diagonal(model, ewc_sequences(ctx, spec, tok, cfg.seed))
        ewc = EWC(model, fisher, spec.lambda_)
        metrics.update(
            {
                "ewc_fisher_samples": used,
                "ewc_fisher_seconds": round(time.perf_counter() - started, 3),
                "ewc_fisher_mean": float(
                    sum(float(f.sum()) for f in fisher.values())
                    / max(1, sum(f.numel() for f in fisher.values()))
                ),
            }
        )
    return model, ewc, metrics
