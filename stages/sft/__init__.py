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
``{type: classification, ...}`` or ``{type: extractive_qa, ...}`` put a task head on the base (seed §2.2).
With an adapter as ``model`` (another sft stage's LoRA, say) and its base as ``base``, the adapter is
merged into the base first and this stage trains on the merged model.

Output: peft methods publish ``adapter_model.safetensors`` + ``adapter_config.json``
(``peft.PeftModel.from_pretrained`` loads them), ``adapter`` the same two files
marked ``"hubflow_adapter": "bottleneck"``, ``full`` a whole model; the tokenizer
files always. ``stages.lib.models.load_model(folder, base=base_folder)`` loads any of them.
"""

from __future__ import annotations

from typing import Any

from hubflow.stage import StageContext, StageResult
from stages.sft.config import Config

__all__ = ["LIBRARIES", "VERSION", "Config", "describe", "fingerprint_extra", "run"]

VERSION = "1"
LIBRARIES = ("torch", "transformers", "trl", "peft", "accelerate", "tokenizers")


def fingerprint_extra(cfg: Config, base_dir: Any) -> dict[str, Any]:
    if cfg.peft.method == "qlora":
        from hubflow.fingerprint import library_version

        return {"bitsandbytes": library_version("bitsandbytes")}
    return {}


def describe(cfg: Config) -> list[str]:
    what = cfg.format if cfg.task.type == "causal_lm" else cfg.task.type
    steps = f"{cfg.max_steps} steps" if cfg.max_steps else f"{cfg.num_train_epochs:g} epoch(s)"
    ewc = f", EWC lambda={cfg.regularization.ewc.lambda_:g}" if cfg.regularization.ewc else ""
    return [f"{cfg.peft.method} fine-tuning on {what} data from {cfg.training_inputs()}, {steps}{ewc}"]


def run(ctx: StageContext, cfg: Config) -> StageResult:
    from stages.lib.finetune.evaluation import Evaluator
    from stages.lib.finetune.train import Job, check_model_input, prepare_model, save_output, train
    from stages.lib.tokenizers import stage_tokenizer
    from stages.sft.rows import causal_rows, head_rows

    check_model_input(ctx)  # an adapter without its base fails before any data is read
    tok, _ = stage_tokenizer(ctx.inputs, chat_template=cfg.chat_template)
    task = cfg.task.type
    head_kwargs: dict[str, Any] = {}
    if task == "causal_lm":
        rows, evals, data_stats = causal_rows(ctx, cfg, tok)
    else:
        rows, evals, data_stats, head_kwargs = head_rows(ctx, cfg, tok)
    model, ewc, ewc_metrics = prepare_model(ctx, cfg, tok, task, head_kwargs)
    evaluator = Evaluator(
        task=task, loss_sets=evals, pad_id=tok.pad_token_id, batch_size=cfg.per_device_train_batch_size
    )
    job = Job(
        ctx=ctx, cfg=cfg, task=task, model=model, tok=tok, train_rows=rows, evaluator=evaluator, ewc=ewc
    )
    job.metrics.update({"method": cfg.peft.method, "task": task, **ewc_metrics})
    if task == "causal_lm":
        job.metrics["format"] = cfg.format
    trainer = train(job)
    metadata: dict[str, Any] = {}
    if trainer.is_world_process_zero():
        metadata = save_output(job, ctx.output)
    metrics = {**job.metrics, "data": data_stats}
    return StageResult(
        metrics=metrics,
        card_sections={"Fine-tuning": _card(cfg, metrics)},
        card_metadata=metadata,
        revisions=job.revisions,
    )


def _card(cfg: Config, m: dict[str, Any]) -> str:
    lines = [
        f"Method **{cfg.peft.method}** ({', '.join(f'{k}={v}' for k, v in cfg.peft_dict().items() if k != 'method') or 'all weights'}), "
        f"task `{cfg.task.type}`"
        + (f", format `{cfg.format}`" if cfg.task.type == "causal_lm" else "")
        + ".",
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
        lines += ["", "Load with `stages.lib.models.load_model(this_folder, base=base_folder)`."]
    return "\n".join(lines)


def _num(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)
