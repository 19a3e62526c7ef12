"""One REINFORCE-family run through TRL: load the policy, build TRL's config and trainer, train (resuming
from the last checkpoint in the resume folder), save the policy and the rollouts.

The policy's four shapes, and which model stands for π_ref (the starting SFT policy) in TRL's KL term and in
the monitor's KL:

| policy input | ``peft.method`` | trains | π_ref |
| --- | --- | --- | --- |
| full model | full | every weight | a frozen copy loaded from the policy folder |
| full model | lora | a new LoRA adapter (TRL wraps the model with our ``LoraConfig``) | the policy with the adapter disabled |
| LoRA adapter + base | lora | that adapter, continued | a frozen copy of the adapter ("ref", as TRL makes it) |
| LoRA adapter + base | full | every weight of the merged model | a frozen copy of the merged model (saved once under the resume folder) |

Dropout is off in every model (TRL ``disable_dropout``, alignment notes "PPO details" 1) and generation
stops at every end-of-turn token of the chat template (``stages.lib.chat.end_of_turn_ids``), as the SFT
policy was trained to end its replies.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from hubflow.stage import StageContext
from stages.lib.reinforce.config import BASE_INPUT, POLICY_INPUT, REWARD_INPUT, ReinforceConfig
from stages.lib.reinforce.inputs import Checked, check_inputs

Method = Literal["grpo", "rloo"]
PLOT_FILE = "overoptimization.png"
REFERENCE_DIR = "reference"


@dataclass
class Policy:
    model: Any
    """The model handed to TRL: a transformers model, or a PeftModel when an adapter is continued."""
    mode: Literal["full", "fresh_lora", "continued_lora"]
    peft_config: Any = None
    """The LoraConfig TRL wraps the model with (fresh LoRA only)."""
    reference_folder: Path | None = None
    """A full model equal to the starting policy (full modes)."""


def load_policy(ctx: StageContext, cfg: ReinforceConfig, checked: Checked) -> Policy:
    """The policy ready for TRL (see the module docstring's table)."""
    from stages.lib.datasets import input_folder
    from stages.lib.models import check_vocab, load_model
    from stages.lib.peft_methods import check_lora_targets

    folder = input_folder(ctx, POLICY_INPUT)
    info = checked.policy_info
    continued = info.is_adapter and cfg.peft.method == "lora"
    merged = info.is_adapter and cfg.peft.method == "full"
    model = load_model(
        folder,
        base=ctx.inputs.get(BASE_INPUT),
        base_ref=ctx.input_refs.get(BASE_INPUT),
        task="causal_lm",
        merge=merged,
        trainable=continued,
        input_name=POLICY_INPUT,
        base_input=BASE_INPUT,
        logger=ctx.logger,
    )
    check_vocab(model, checked.tok, input_name=POLICY_INPUT)
    if continued:
        if cfg.beta == 0.0 and cfg.monitor_kl:
            _add_reference_adapter(model)  # TRL adds it only when beta > 0
        return Policy(model, "continued_lora")
    reference = Path(folder)
    if merged:
        reference = ctx.resume_dir / REFERENCE_DIR
        if not (reference / "config.json").is_file():
            model.save_pretrained(str(reference), safe_serialization=True)
    # TRL loads its reference model (beta > 0) from the policy's config name: point it at the starting policy
    model.config._name_or_path = str(reference)
    if cfg.peft.method == "lora":
        from peft import LoraConfig

        check_lora_targets(model, cfg.peft.target_modules)
        config = LoraConfig(
            r=cfg.peft.r,
            lora_alpha=cfg.peft.alpha,
            lora_dropout=cfg.peft.dropout,
            target_modules=cfg.peft.target_modules,
            bias=cfg.peft.bias,
            task_type="CAUSAL_LM",
        )
        return Policy(model, "fresh_lora", peft_config=config, reference_folder=reference)
    for p in model.parameters():
        p.requires_grad_(True)
    return Policy(model, "full", reference_folder=reference)


def _add_reference_adapter(model: Any) -> None:
    """A frozen copy of the "default" adapter named "ref", as TRL makes one for beta > 0."""
    model.add_adapter("ref", model.peft_config["default"])
    for name, param in model.named_parameters():
        if ".ref." in name:
            param.requires_grad_(False)
            param.data.copy_(model.get_parameter(name.replace(".ref.", ".default.")).data)
    model.set_adapter("default")


def trl_args(ctx: StageContext, cfg: ReinforceConfig, method: Method) -> Any:
    """TRL's GRPOConfig / RLOOConfig from the stage config (the training vocabulary keeps its names)."""
    import torch

    from stages.lib.hardware import pick_mixed_precision, trl_precision_kwargs

    use_cpu = ctx.resources.cpu or not torch.cuda.is_available()
    mp = pick_mixed_precision(ctx.resources.mixed_precision, cpu=use_cpu)
    kwargs: dict[str, Any] = {
        **cfg.trainer_kwargs(),
        "output_dir": str(ctx.resume_dir / "checkpoints"),
        "logging_first_step": True,
        "save_total_limit": 1,
        "report_to": "none",
        "disable_tqdm": True,
        "use_cpu": use_cpu,
        "dataloader_num_workers": 0,
        "remove_unused_columns": False,
        "disable_dropout": True,
        "num_generations": cfg.num_generations,
        "max_completion_length": cfg.max_completion_length,
        "temperature": cfg.temperature,
        "top_p": cfg.top_p,
        "top_k": cfg.top_k,
        "beta": cfg.beta,
        "epsilon": cfg.epsilon,
        "epsilon_high": cfg.epsilon_high,
        "num_iterations": cfg.num_iterations,
        "mask_truncated_completions": cfg.mask_truncated_completions,
        **trl_precision_kwargs(mp),
    }
    if cfg.optim:  # else TRL's default (adamw_torch_fused)
        kwargs["optim"] = cfg.optim
    if method == "grpo":
        from trl import GRPOConfig

        return GRPOConfig(**kwargs, scale_rewards=cfg.scale_rewards, loss_type=cfg.loss_type)  # type: ignore[attr-defined]
    from trl import RLOOConfig

    return RLOOConfig(
        **kwargs,
        normalize_advantages=cfg.normalize_advantages,  # type: ignore[attr-defined]
        reward_clip_range=cfg.reward_clip_range,  # type: ignore[attr-defined]
    )


@dataclass
class Run:
    """A built trainer and what the stage keeps beside it."""

    trainer: Any
    policy: Policy
    scorer: Any
    monitor: Any
    checked: Checked
    metrics: dict[str, Any] = field(default_factory=dict)


def build(ctx: StageContext, cfg: ReinforceConfig, method: Method) -> Run:
    """Check the inputs, load the models and build TRL's trainer with the scorer and the monitor."""
    import datasets
    import torch
    from transformers import set_seed
    from transformers.trainer_callback import PrinterCallback

    from stages.lib.chat import end_of_turn_ids
    from stages.lib.datasets import input_folder
    from stages.lib.generation import unwrap
    from stages.lib.hardware import device_for
    from stages.lib.reinforce.monitor import Monitor, monitor_callback
    from stages.lib.reinforce.scoring import KlProbe, RolloutStore, Scorer, ScoringSetup
    from stages.lib.rewards import load_reward_model

    processes = int(os.environ.get("WORLD_SIZE", "1"))
    checked = check_inputs(ctx, cfg, processes)
    set_seed(cfg.seed)
    policy = load_policy(ctx, cfg, checked)
    tok = checked.tok
    stop_ids = tuple(end_of_turn_ids(tok))
    unwrap(policy.model).generation_config.eos_token_id = list(stop_ids)
    reward_model = None
    if cfg.reward == "model":
        reward_model = load_reward_model(
            input_folder(ctx, REWARD_INPUT),
            aggregate=cfg.aggregate,
            device=device_for(ctx.resources),
            input_name=REWARD_INPUT,
        )
    rank = int(os.environ.get("RANK", "0"))
    store = RolloutStore(ctx.resume_dir / "rollouts", rank)
    own_reference: list[Any] = []
    holder: dict[str, Any] = {}
    probe = None
    if cfg.monitor_kl:
        probe = KlProbe(
            lambda: _reference(holder["trainer"], policy, own_reference),
            temperature=cfg.temperature,
            pad_id=tok.pad_token_id if tok.pad_token_id is not None else 0,
            batch_size=cfg.per_device_train_batch_size,
        )
    scorer = Scorer(
        ScoringSetup(
            tok=tok,
            store=store,
            reward_model=reward_model,
            kl_probe=probe,
            eval_steps=cfg.eval_steps,
            span=cfg.num_iterations,
            stop_ids=stop_ids,
            batch_size=cfg.per_device_train_batch_size,
            prompt_ids=checked.prompt_ids,
        )
    )
    gold = cfg.stop_when_gold_drops
    monitor = Monitor(
        store,
        eval_steps=cfg.eval_steps,
        patience=gold.patience if gold else None,
        min_delta=gold.min_delta if gold else 0.0,
        kl_budget=cfg.kl_budget,
    )
    if method == "grpo":
        from trl import GRPOTrainer as TrainerClass
    else:
        from trl import RLOOTrainer as TrainerClass  # type: ignore[assignment]
    trainer = TrainerClass(
        model=policy.model,
        reward_funcs=scorer,
        args=trl_args(ctx, cfg, method),
        train_dataset=datasets.Dataset.from_list(checked.rows),
        processing_class=tok,
        peft_config=policy.peft_config,
        callbacks=[monitor_callback(monitor, ctx.log_metrics)],
    )
    trainer.remove_callback(PrinterCallback)  # no prints: the logs go to metrics.jsonl
    holder["trainer"] = trainer
    scorer.bind(trainer.model)
    if probe is not None:
        with _reference(trainer, policy, own_reference):
            pass  # load the monitor's frozen copy now (if it needs one), as TRL loads its reference here
    if trainer.accelerator.num_processes > 1:
        device = trainer.accelerator.device

        def _reduce(values: list[float]) -> list[float]:
            return trainer.accelerator.reduce(torch.tensor(values, device=device), reduction="sum").tolist()

        monitor.reduce = _reduce
    return Run(trainer, policy, scorer, monitor, checked)


@contextmanager
def _reference(trainer: Any, policy: Policy, own: list[Any]) -> Iterator[Any]:
    """The model that scores π_ref for the monitor's KL (see the module docstring's table)."""
    if trainer.ref_model is not None:  # TRL's own (beta > 0, full policy)
        yield trainer.ref_model
        return
    model = trainer.accelerator.unwrap_model(trainer.model)
    if policy.mode != "full":
        from trl.trainer.utils import use_adapter

        with use_adapter(model, adapter_name="ref" if "ref" in model.peft_config else None):
            yield model
        return
    if not own:
        from stages.lib.models import load_model

        assert policy.reference_folder is not None
        ref = load_model(policy.reference_folder, task="causal_lm", device=str(trainer.accelerator.device))
        for p in ref.parameters():
            p.requires_grad_(False)
        own.append(ref)
    yield own[0]


def train(run: Run, ctx: StageContext) -> None:
    """Train, resuming from the last checkpoint in the resume folder; fills ``run.metrics``."""
    from transformers.trainer_utils import get_last_checkpoint

    from stages.lib.peft_methods import parameter_counts

    trainer = run.trainer
    ckpt = Path(trainer.args.output_dir)
    last = get_last_checkpoint(str(ckpt)) if ckpt.is_dir() else None
    resumed = int(Path(last).name.split("-")[-1]) if last else 0
    run.scorer.setup.store.truncate(resumed)  # what a crash scored after the checkpoint is sampled again
    run.monitor.replay(resumed)
    if last:
        ctx.logger.info("resuming from checkpoint %s", last)
    trainable, total = parameter_counts(trainer.model)
    started, cpu = time.perf_counter(), time.process_time()
    trainer.train(resume_from_checkpoint=last)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    steps = trainer.state.global_step
    times = [h["step_time"] for h in trainer.state.log_history if "step_time" in h]
    run.metrics.update(
        {
            "steps": steps,
            "resumed_from_step": resumed,
            "train_seconds": round(seconds, 3),
            "train_cpu_seconds": round(cpu, 3),
            "seconds_per_step": round(seconds / max(1, steps - resumed), 4),
            "trl_step_time_mean": round(sum(times) / len(times), 4) if times else None,
            "prompts": len(run.checked.rows),
            "trainable_params": trainable,
            "total_params": total,
            "processes": trainer.accelerator.num_processes,
        }
    )


def save_outputs(run: Run, ctx: StageContext, cfg: ReinforceConfig) -> dict[str, Any]:
    """Write the policy (with its tokenizer) and the rollouts dataset; returns card metadata."""
    import json

    from stages.lib.datasets import write_split
    from stages.lib.finetune.train import base_ref

    out = ctx.outputs["policy"]
    out.mkdir(parents=True, exist_ok=True)
    model = run.trainer.accelerator.unwrap_model(run.trainer.model)
    mode = run.policy.mode
    if mode == "full":
        repo, rev = base_ref(ctx, POLICY_INPUT)
        model.save_pretrained(str(out), safe_serialization=True)
        relation, library = "finetune", "transformers"
    else:
        repo, rev = base_ref(ctx, BASE_INPUT if mode == "continued_lora" else POLICY_INPUT)
        model.save_pretrained(
            str(out), safe_serialization=True, selected_adapters=["default"], save_embedding_layers=False
        )
        path = out / "adapter_config.json"
        config = json.loads(path.read_text(encoding="utf-8"))
        config.update(base_model_name_or_path=repo, revision=rev)
        path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        (out / "README.md").unlink(missing_ok=True)  # peft's stub; the runner writes the card
        relation, library = "adapter", "peft"
    run.checked.tok.save_pretrained(str(out))
    run.scorer.setup.store.flush()
    rows = run.scorer.setup.store.rows()
    write_split(ctx.outputs["rollouts"], "train", rows)
    meta: dict[str, Any] = {
        "base_model_relation": relation,
        "library_name": library,
        "pipeline_tag": "text-generation",
    }
    if repo:
        meta["base_model"] = repo
    return meta
