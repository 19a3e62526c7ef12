"""The policy of the offline preference kinds (dpo, kto, orpo) and where its reference comes from
(seed §4.7 step 1: θ ← θ_SFT, π_ref ← θ_SFT frozen).

- :func:`check_models`: the cheap checks, before any weight or data is read: a model or an adapter
  with its ``base`` (the adapter's recorded base must be the ``base`` input), the same for an optional
  ``reference`` input;
- :func:`policy_tokenizer`: the stage's tokenizer, compared with every other input that ships one
  (policy, base, reference must share a vocabulary: a log-prob of other token ids means nothing);
- :func:`load_policy`: a full model trains every weight; a model + ``peft`` gets a fresh adapter; an
  adapter ``model`` (with ``base``) is *continued* (``check_continuable``);
- :func:`reference_scope`: the reference is the policy's starting point, on the one model in memory:
  full -> the weights before training; fresh peft adapter -> the same base with the adapter disabled
  (peft ``disable_adapter()``); fresh bottleneck adapter -> its zero-initialised ``W_up`` makes it the
  identity; continued LoRA -> a frozen second copy of the adapter, loaded as adapter ``reference`` on the
  same base (peft multi-adapter; TRL's ``ref`` adapter), active only during the reference pass and then
  deleted (the reference log-probs are precomputed, so training never needs it again).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hubflow.errors import StageInputError
from hubflow.stage import StageContext

REFERENCE_ADAPTER = "reference"


def check_models(ctx: StageContext, *, reference: bool = True) -> dict[str, Any]:
    """inspect_model on ``model`` (and ``reference``) with ``base``: no weights read."""
    from stages.lib.datasets import input_folder
    from stages.lib.models import inspect_model

    base, base_ref = ctx.inputs.get("base"), ctx.input_refs.get("base")
    out = {"model": inspect_model(input_folder(ctx, "model"), base=base, base_ref=base_ref)}
    if out["model"].task != "causal_lm":
        raise StageInputError(
            f"input 'model' is a {out['model'].task} model; a policy is a causal language model",
            hint="feed it an sft stage's output (task causal_lm)",
        )
    if reference and "reference" in ctx.inputs:
        out["reference"] = inspect_model(
            ctx.inputs["reference"], base=base, base_ref=base_ref, input_name="reference"
        )
    return out


def policy_tokenizer(ctx: StageContext) -> Any:
    """The tokenizer (``tokenizer`` input, else the model's, else the base's), after checking that every
    other input shipping a tokenizer has the same vocabulary."""
    from stages.lib.tokenizers import has_tokenizer, load_tokenizer, same_vocabulary, stage_tokenizer

    tok, source = stage_tokenizer(ctx.inputs)
    for name in ("tokenizer", "model", "base", "reference"):
        folder = ctx.inputs.get(name)
        if name == source or folder is None or not has_tokenizer(Path(folder)):
            continue
        differences = same_vocabulary(tok, load_tokenizer(Path(folder), input_name=name))
        if differences:
            raise StageInputError(
                f"inputs {source!r} and {name!r} do not share a tokenizer: " + "; ".join(differences),
                hint="policy, reference and tokenizer must come from the same SFT model (or tokenizer stage)",
            )
    return tok


@dataclass
class Policy:
    """The model to train and how its reference is obtained."""

    model: Any
    mode: str
    """``full``, ``adapter`` (a fresh one on the model) or ``continued`` (the input adapter trains on)."""
    method: str
    adapter_folder: Path | None = None
    held: list[str] = field(default_factory=list)
    """What this process holds, for the metrics and the card."""


def disable_dropout(model: Any) -> None:
    """Every ``nn.Dropout`` to p = 0 and attention dropout to 0 (TRL's ``disable_dropout``)."""
    from torch import nn

    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0


def load_policy(ctx: StageContext, cfg: Any, tok: Any) -> Policy:
    """Load the ``model`` input as the policy to train (see the module docstring)."""
    from stages.lib.datasets import input_folder
    from stages.lib.hardware import device_for, pick_mixed_precision
    from stages.lib.models import check_vocab, load_model
    from stages.lib.peft_methods import apply_method, check_continuable, quantization_config

    folder = input_folder(ctx, "model")
    info = check_models(ctx, reference=False)["model"]
    continued = info.is_adapter and cfg.peft.method != "full"
    if continued:
        check_continuable(folder, cfg.peft, input_name="model")
    qlora = cfg.peft.method == "qlora"
    mp = pick_mixed_precision(ctx.resources.mixed_precision, cpu=ctx.resources.cpu)
    model = load_model(
        folder,
        base=ctx.inputs.get("base"),
        base_ref=ctx.input_refs.get("base"),
        task="causal_lm",
        quantization=quantization_config(cfg.peft, mp) if qlora else None,
        device=device_for(ctx.resources) if qlora else None,
        merge=info.is_adapter and not continued,
        trainable=continued,
        logger=ctx.logger,
    )
    check_vocab(model, tok, input_name="model")
    if continued:
        mode, held = "continued", [f"base + the input's {info.adapter_kind} adapter (training)"]
    elif cfg.peft.method == "full":
        mode, held = "full", ["the policy (every weight training)"]
    else:
        model = apply_method(model, cfg.peft, "causal_lm")
        mode, held = "adapter", [f"the SFT model + a fresh {cfg.peft.method} adapter (training)"]
    if cfg.disable_dropout:
        disable_dropout(model)
    if not qlora:  # (qlora is placed on its device as it loads)
        model.to(device_for(ctx.resources))
    return Policy(model, mode, cfg.peft.method, folder if continued else None, held)


def _is_peft(model: Any) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "disable_adapter")


@contextmanager
def reference_scope(policy: Policy) -> Iterator[str]:
    """The policy's model switched to the reference (its starting point) for a no-grad pass; yields what
    the reference is, in words. Eval mode inside; the previous mode and active adapter are restored."""
    model = policy.model
    was_training = model.training
    model.eval()
    try:
        if policy.mode == "full":
            yield "the policy's weights before training (the same model)"
        elif policy.mode == "adapter" and _is_peft(model):
            with model.disable_adapter():
                yield "the same base with the adapter disabled (peft disable_adapter)"
        elif policy.mode == "adapter":
            yield "the same base: the fresh bottleneck adapters are the identity (W_up = 0)"
        elif _is_peft(model) and "default" in model.peft_config and policy.method == "lora":
            model.load_adapter(str(policy.adapter_folder), adapter_name=REFERENCE_ADAPTER, is_trainable=False)
            policy.held.append(
                f"a frozen copy of that adapter as adapter {REFERENCE_ADAPTER!r} (reference pass only)"
            )
            model.set_adapter(REFERENCE_ADAPTER, inference_mode=True)
            try:
                yield f"a frozen copy of the input adapter (adapter {REFERENCE_ADAPTER!r} on the same base)"
            finally:
                model.set_adapter("default")  # trainable again
                model.delete_adapter(REFERENCE_ADAPTER)
        else:
            yield "the input adapter before training (the same model)"
    finally:
        model.train(was_training)


def load_reference(ctx: StageContext, tok: Any) -> Any:
    """The ``reference`` input (full, or an adapter on ``base``), frozen, eval mode, on this process's device."""
    from stages.lib.hardware import device_for
    from stages.lib.models import check_vocab, load_model

    model = load_model(
        ctx.inputs["reference"],
        base=ctx.inputs.get("base"),
        base_ref=ctx.input_refs.get("base"),
        task="causal_lm",
        input_name="reference",
        logger=ctx.logger,
    )
    check_vocab(model, tok, input_name="reference")
    for p in model.parameters():
        p.requires_grad_(False)
    return model.to(device_for(ctx.resources))


def save_policy(
    ctx: StageContext, cfg: Any, policy: Policy, tok: Any, folder: Path | None = None
) -> dict[str, Any]:
    """Write the trained adapter or full model and the tokenizer into ``folder`` (default ``ctx.output``);
    card metadata."""
    from stages.lib.finetune.train import Job, save_output

    job = Job(ctx=ctx, cfg=cfg, task="causal_lm", model=policy.model, tok=tok, train_rows=[])
    return save_output(job, folder or ctx.output)


def policy_saver(ctx: StageContext, cfg: Any, policy: Policy, tok: Any) -> Any:
    """``save(model, folder)`` for ``preference_loop.train``: the output's files for the model being
    trained (its checkpoints)."""
    from dataclasses import replace

    def save(model: Any, folder: Path) -> None:
        save_policy(ctx, cfg, replace(policy, model=model), tok, folder)

    return save


def is_main_process() -> bool:
    """Rank 0 (or a single process): the one that logs warnings and writes the output."""
    import os

    return os.environ.get("RANK", "0") == "0"


def peak_memory_mb(device: Any = None) -> dict[str, Any]:
    """Peak memory of this process: the accelerator's allocator peak on CUDA, else the peak resident set."""
    import resource

    import torch

    if device is not None and str(device).startswith("cuda") and torch.cuda.is_available():
        return {"peak_memory_mb": round(torch.cuda.max_memory_allocated(device) / 2**20, 1), "memory": "cuda"}
    return {
        "peak_memory_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "memory": "rss",
    }
