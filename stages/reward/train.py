"""One reward model: the SFT model under a fresh scalar head, trained with TRL's ``RewardTrainer``.

Seed §4.4 phase 2: r_ψ(x, y) = W_rᵀ h_[last] + b_r on the hidden state of the last real token of
prompt ⊕ response, trained with the Bradley–Terry loss L_RM = −E[log σ(r_ψ(x, y_w) − r_ψ(x, y_l))]
(§4.3). ``RewardTrainer.compute_loss`` is exactly that mean (no margin, no centring term here), and it
is fed the pre-tokenised ``chosen_ids`` / ``rejected_ids`` of :func:`stages.lib.pairs.encode_pairs`:
prompt tokens ⊕ the completion a policy would sample, ending at the end-of-turn token. Its collator
right-pads both halves of the batch; the model reads the score at the last token that is not pad,
which is the last real token because the tokenizer's pad differs from eos and never occurs inside a
sequence (checked in ``inputs``).

The head is initialised N(0, 1/√(d+1)) with bias 0 (alignment notes item 4; Llama's score layer has
no bias, and a bias cancels in r_w − r_l anyway); TRL's ``disable_dropout`` turns every dropout off
(item 1), LoRA's included. A LoRA (``peft: {method: lora}``) trains with the score head as a module to
save and is merged before the model is written, so the output is always a full model.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from hubflow.errors import StageInputError
from hubflow.stage import StageContext
from stages.reward.config import BASE_INPUT, MODEL_INPUT, Config

MEMBER_FILE = "member.json"
"""Written beside a finished member in the resume folder: its training metrics (a rerun skips it)."""


def init_reward_head(model: Any) -> None:
    """The scalar head W_r ~ N(0, 1/√(d+1)), b_r = 0 (alignment notes item 4)."""
    import torch
    from torch import nn

    head = getattr(model, "score", None)
    if not isinstance(head, nn.Linear) or head.out_features != 1:
        raise StageInputError(
            f"the sequence-classification model of {type(model).__name__} has no linear `score` head with one "
            "output, so hubflow cannot initialise its reward head",
            hint="start from a decoder-only model whose AutoModelForSequenceClassification has a `score` layer "
            "(Llama, Mistral, Qwen, GPT-2...)",
        )
    with torch.no_grad():
        nn.init.normal_(head.weight, mean=0.0, std=1.0 / math.sqrt(head.in_features + 1))
        if head.bias is not None:
            head.bias.zero_()


def build_model(ctx: StageContext, cfg: Config, tok: Any, info: Any, seed: int) -> Any:
    """The SFT model (an adapter merged into its base) under a fresh scalar head, ready to train."""
    from transformers import set_seed

    from stages.lib.models import check_vocab, load_model
    from stages.lib.peft_methods import apply_method

    set_seed(seed)
    model = load_model(
        ctx.inputs[MODEL_INPUT],
        base=ctx.inputs.get(BASE_INPUT),
        base_ref=ctx.input_refs.get(BASE_INPUT),
        check_base=cfg.check_base,
        task="classification",
        head_kwargs={"num_labels": 1},
        merge=info.is_adapter,
        logger=ctx.logger,
    )
    check_vocab(model, tok, input_name=MODEL_INPUT)
    init_reward_head(model)
    model.config.pad_token_id = tok.pad_token_id
    model.config.id2label, model.config.label2id = {0: "reward"}, {"reward": 0}
    return apply_method(model, cfg.peft, "classification")


def reward_args(
    ctx: StageContext, cfg: Config, seed: int, output_dir: Path, *, evaluate: bool = False
) -> Any:
    """TRL ``RewardConfig`` from the training vocabulary; precision and gradient checkpointing explicit;
    ``evaluate``: TRL's held-out loss and accuracy every ``eval_steps``."""
    import torch
    from trl import RewardConfig

    from stages.lib.hardware import pick_mixed_precision, trl_precision_kwargs

    mp = pick_mixed_precision(ctx.resources.mixed_precision, cpu=ctx.resources.cpu)
    periodic = {"eval_strategy": "steps", "eval_steps": cfg.eval_steps} if evaluate and cfg.eval_steps else {}
    return RewardConfig(
        **{**cfg.trainer_kwargs(), "seed": seed, "data_seed": seed},
        **periodic,
        per_device_eval_batch_size=cfg.eval_batch_size,
        output_dir=str(output_dir),
        logging_first_step=True,  # train_loss_first is the loss of the first batch
        save_total_limit=1,
        report_to="none",
        disable_tqdm=True,
        use_cpu=ctx.resources.cpu or not torch.cuda.is_available(),
        optim=cfg.optim or "adamw_torch",
        dataloader_num_workers=0,
        include_num_input_tokens_seen="non_padding",
        max_length=None,  # encode_pairs has already cut every pair to max_length
        disable_dropout=True,
        center_rewards_coefficient=None,
        **trl_precision_kwargs(mp),
    )


def _progress(ctx: StageContext, member: int, losses: list[float], start: dict[str, int]) -> Any:
    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            start["tokens"] = state.num_input_tokens_seen  # a resumed run starts from its checkpoint's count

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> Any:
            if state.max_steps and state.global_step >= state.max_steps:
                control.should_log = True  # the last step's loss is always logged
            return control

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            if not state.is_world_process_zero or not logs:
                return
            if "loss" in logs:
                losses.append(float(logs["loss"]))
            values = {
                k: v for k, v in logs.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
            }
            ctx.log_metrics(step=state.global_step, total=state.max_steps or None, member=member, **values)

    return Progress()


def train_member(
    ctx: StageContext, cfg: Config, prep: Any, member: int, pairs: list[Any], folder: Path
) -> dict[str, Any]:
    """Train member ``member`` (seed ``cfg.seed + member``) on ``pairs`` and write the full model with its
    tokenizer into ``folder`` (the resume folder: a rerun after a crash skips finished members).
    Returns its training metrics (and the held-out diagnostics of the freshly initialised head)."""
    import datasets
    from transformers.trainer_utils import get_last_checkpoint
    from trl import RewardTrainer

    from stages.lib.hardware import device_for
    from stages.lib.peft_methods import parameter_counts
    from stages.lib.trainer_logging import quiet_printer
    from stages.reward.diagnostics import score_pairs, summarize

    done = folder / MEMBER_FILE
    if done.is_file():
        ctx.logger.info("member %d was trained before the crash: reusing %s", member, folder)
        return json.loads(done.read_text(encoding="utf-8"))
    seed = cfg.seed + member
    model = build_model(ctx, cfg, prep.tok, prep.model_info, seed)
    before: dict[str, Any] = {}
    if prep.test:
        device = device_for(ctx.resources)
        chosen, rejected = score_pairs(
            model.to(device), prep.test, pad_id=prep.tok.pad_token_id, batch_size=cfg.eval_batch_size
        )
        before = summarize(chosen, rejected, n_bins=cfg.calibration_bins)
    periodic = bool(cfg.eval_steps and prep.test)
    args = reward_args(ctx, cfg, seed, folder.parent / f"{folder.name}-checkpoints", evaluate=periodic)

    def rows(of: list[Any]) -> Any:
        ids = [
            {"chosen_ids": p.prompt_ids + p.chosen_ids, "rejected_ids": p.prompt_ids + p.rejected_ids}
            for p in of
        ]
        return datasets.Dataset.from_list(ids)

    losses: list[float] = []
    start = {"tokens": 0}
    trainer = RewardTrainer(
        model=model,
        args=args,
        train_dataset=rows(pairs),
        eval_dataset=rows(prep.test) if periodic else None,
        processing_class=prep.tok,
        callbacks=[_progress(ctx, member, losses, start)],
    )
    quiet_printer(trainer)  # progress lines come from ctx.log_metrics, not the Trainer's dict printer
    trainable, total = parameter_counts(model)
    ckpt = Path(args.output_dir)
    last = get_last_checkpoint(str(ckpt)) if ckpt.is_dir() else None
    if last:
        ctx.logger.info("member %d: resuming from checkpoint %s", member, last)
    started = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=last)
    seconds = time.perf_counter() - started
    tokens = int(trainer.state.num_input_tokens_seen) - start["tokens"]
    metrics: dict[str, Any] = {
        "member": member,
        "seed": seed,
        "train_pairs": len(pairs),
        "unique_train_pairs": len({p.row for p in pairs}),
        "steps": trainer.state.global_step,
        "train_loss_first": losses[0] if losses else None,
        "train_loss_last": losses[-1] if losses else None,
        "train_loss_mean": round(float(result.training_loss), 6),
        "train_tokens": tokens,
        "train_seconds": round(seconds, 3),
        "tokens_per_s": round(tokens / seconds, 1) if seconds > 0 else None,
        "trainable_params": trainable,
        "total_params": total,
        "processes": max(1, args.world_size),
        "resumed_from_step": int(Path(last).name.split("-")[-1]) if last else 0,
        "eval_before": before,
    }
    if trainer.is_world_process_zero():
        save_member(trainer.model, prep.tok, folder)
        done.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return metrics


def save_member(model: Any, tok: Any, folder: Path) -> None:
    """A full sequence-classification model (a LoRA merged) and its tokenizer, safetensors only."""
    if hasattr(model, "merge_and_unload"):  # a PeftModel: fold the LoRA (and the trained head) in
        model = model.merge_and_unload()
    model.eval()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder), safe_serialization=True)
    tok.save_pretrained(str(folder))
