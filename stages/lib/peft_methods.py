"""Applying a PEFT method to a loaded model (seed §2.4): full, LoRA, QLoRA, prefix tuning
(peft) and bottleneck adapters (hubflow's own, ``stages.lib.adapters``).

Every training kind (sft, instruct, reward, dpo, ppo...) takes a ``peft:`` spec
(``stages.lib.peft_spec``) and calls :func:`apply_method` on the model :func:`stages.lib.models.load_model`
gave it. Checks run before any training: a LoRA target module that the model lacks names the
Linear layers it has; QLoRA needs bitsandbytes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hubflow.errors import StageInputError
from stages.lib.models import PEFT_TASK

HEAD_NAMES = ("score", "classifier", "qa_outputs")
"""Task heads created fresh on the base: they train under every method."""


def linear_leaf_names(model: Any) -> list[str]:
    """Last name component of every Linear-like leaf module (what LoRA's target_modules match)."""
    from torch import nn

    names = set()
    for name, module in model.named_modules():
        is_linear = isinstance(module, nn.Linear) or type(module).__name__ in (
            "Conv1D",
            "Linear4bit",
            "Linear8bitLt",
        )
        if is_linear and name:
            names.add(name.rsplit(".", 1)[-1])
    return sorted(names)


def check_lora_targets(model: Any, targets: list[str] | str | None) -> None:
    if targets is None or isinstance(targets, str):
        return
    have = linear_leaf_names(model)
    all_names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules() if name}
    missing = [t for t in targets if t not in all_names and not any(n.endswith(t) for n in all_names)]
    if missing:
        raise StageInputError(
            f"LoRA target module(s) {missing} are not in the model; its Linear layers are named {have}",
            hint=f"set peft.target_modules to some of {have} (or `all-linear`)",
        )


def quantization_config(spec: Any, mixed_precision: str) -> Any:
    """The BitsAndBytesConfig of a qlora spec (seed §2.4.2): 4-bit NF4 / FP4 base, double quantisation."""
    import torch
    from transformers import BitsAndBytesConfig

    try:
        import bitsandbytes  # noqa: F401
    except ImportError as exc:
        raise StageInputError(
            f"peft method qlora needs bitsandbytes, which cannot be imported: {exc}",
            hint="`pip install bitsandbytes` (recent versions also run on CPU), or use method lora",
        ) from exc
    compute = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed_precision, torch.float32)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=spec.quant_type,
        bnb_4bit_use_double_quant=spec.double_quant,
        bnb_4bit_compute_dtype=compute,
    )


def apply_method(model: Any, spec: Any, task: str) -> Any:
    """Freeze what the method freezes and add its trainable parameters; returns the model to train."""
    method = spec.method
    if method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    if method == "adapter":
        from stages.lib.adapters import insert_adapters

        for name, p in model.named_parameters():
            p.requires_grad_(any(f".{h}." in f".{name}" for h in HEAD_NAMES) and task != "causal_lm")
        insert_adapters(
            model, bottleneck=spec.bottleneck, activation=spec.activation, positions=spec.positions
        )
        return model
    from peft import LoraConfig, PrefixTuningConfig, get_peft_model

    if method in ("lora", "qlora"):
        check_lora_targets(model, spec.target_modules)
        if method == "qlora":
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        config = LoraConfig(
            r=spec.r,
            lora_alpha=spec.alpha,
            lora_dropout=spec.dropout,
            target_modules=spec.target_modules,
            bias=spec.bias,
            task_type=PEFT_TASK[task],
        )
    else:
        config = PrefixTuningConfig(
            num_virtual_tokens=spec.num_virtual_tokens,
            prefix_projection=spec.prefix_projection,
            encoder_hidden_size=spec.encoder_hidden_size or model.config.hidden_size,
            task_type=PEFT_TASK[task],
        )
    try:
        return get_peft_model(model, config)
    except ValueError as exc:
        text = str(exc)
        if "target_modules" in text or "Target modules" in text or "not found in the base model" in text:
            have = linear_leaf_names(model)
            raise StageInputError(
                f"peft cannot place LoRA on this model: {text[:300]}; its Linear layers are named {have}",
                hint=f"set peft.target_modules to some of {have}",
            ) from exc
        raise


_ADAPTER_OF_METHOD = {"lora": "lora", "prefix": "prefix_tuning", "adapter": "bottleneck"}
_SETTINGS = {
    "lora": (("r", "r"), ("alpha", "lora_alpha"), ("target_modules", "target_modules")),
    "prefix": (("num_virtual_tokens", "num_virtual_tokens"),),
    "adapter": (("bottleneck", "bottleneck"), ("activation", "activation"), ("positions", "positions")),
}


def check_continuable(folder: Path, spec: Any, *, input_name: str) -> None:
    """Refuse to continue training the adapter in ``folder`` with a ``peft`` spec of another method or
    other settings (continuing keeps the adapter's shape; the spec must say so)."""
    from stages.lib.lineage import adapter_config
    from stages.lib.models import adapter_kind

    config = adapter_config(folder) or {}
    kind = adapter_kind(config)
    method = spec.method
    fix = (
        "set `peft` to the adapter's own method and settings to continue training it, or `peft: {method: full}` "
        "to merge it into `base` and train every weight"
    )
    if method == "qlora" and kind == "lora":
        raise StageInputError(
            f"input {input_name!r} is a LoRA adapter; continuing it over a 4-bit base is not supported",
            hint="use `method: lora` to continue training it",
        )
    if _ADAPTER_OF_METHOD.get(method) != kind:
        raise StageInputError(
            f"input {input_name!r} is a {kind} adapter, but this stage's peft method is {method}", hint=fix
        )
    differ = []
    for ours, theirs in _SETTINGS[method]:
        want, have = getattr(spec, ours), config.get(theirs)
        if ours == "target_modules" and (want is None or isinstance(want, str)):
            continue  # peft's default or all-linear: whatever the adapter covers
        if isinstance(want, list) and isinstance(have, list):
            want, have = sorted(want), sorted(have)
        if want != have:
            differ.append(f"{ours} {want} (the adapter has {have})")
    if differ:
        raise StageInputError(
            f"input {input_name!r} is a {kind} adapter whose settings differ from this stage's peft: "
            + "; ".join(differ),
            hint=fix,
        )


def parameter_counts(model: Any) -> tuple[int, int]:
    """(trainable, total) parameters; 4-bit weights count as their unpacked size."""
    trainable = total = 0
    for p in model.parameters():
        n = p.numel()
        if hasattr(p, "quant_state") or type(p).__name__ == "Params4bit":
            n *= 2  # two 4-bit values per stored byte
        total += n
        if p.requires_grad:
            trainable += n
    return trainable, total
