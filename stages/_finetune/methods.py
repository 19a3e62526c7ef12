"""Loading the base model for a task and applying a PEFT method to it (seed §2.4).

Checks run before any training: a LoRA target module that the model lacks names
the Linear layers it has; QLoRA needs bitsandbytes; the tokenizer must fit the
model's embedding table.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from hubflow.errors import StageInputError
from stages.common import require_safetensors

TASK_AUTO = {
    "causal_lm": "AutoModelForCausalLM",
    "classification": "AutoModelForSequenceClassification",
    "extractive_qa": "AutoModelForQuestionAnswering",
}
PEFT_TASK = {"causal_lm": "CAUSAL_LM", "classification": "SEQ_CLS", "extractive_qa": "QUESTION_ANS"}
HEAD_NAMES = ("score", "classifier", "qa_outputs")
"""Task heads created fresh on the base: they train under every method."""


def device_for(cpu: bool) -> str:
    import torch

    if cpu or not torch.cuda.is_available():
        return "cpu"
    return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"


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


def check_vocab(model: Any, tok: Any, *, input_name: str) -> None:
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tok) > rows:
        raise StageInputError(
            f"the tokenizer has {len(tok)} tokens but the model of input {input_name!r} embeds only {rows}: "
            "they do not belong together",
            hint="use the tokenizer the model was trained with (the model repo's own, or the `tokenizer` input "
            "that made it)",
        )


def _quantization(spec: Any, mixed_precision: str) -> Any:
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


def load_base(
    folder: Path,
    *,
    task: str,
    spec: Any,
    mixed_precision: str,
    cpu: bool,
    input_name: str = "model",
    head_kwargs: dict[str, Any] | None = None,
) -> Any:
    """The base model for ``task`` (a fresh head on it for classification / QA), float32 or 4-bit."""
    import torch
    import transformers

    require_safetensors(folder, input_name=input_name)
    auto = getattr(transformers, TASK_AUTO[task])
    kwargs: dict[str, Any] = {
        "local_files_only": True,
        "trust_remote_code": False,
        "use_safetensors": True,
        "dtype": torch.float32,
        **(head_kwargs or {}),
    }
    if spec.method == "qlora":
        kwargs["quantization_config"] = _quantization(spec, mixed_precision)
        kwargs["device_map"] = {"": device_for(cpu)}
    try:
        model = auto.from_pretrained(str(folder), **kwargs)
    except ValueError as exc:
        if "Unrecognized configuration class" in str(exc):
            raise StageInputError(
                f"input {input_name!r}: this architecture has no {TASK_AUTO[task]} head: {str(exc)[:300]}",
                hint="use another base model or task",
            ) from exc
        raise
    if spec.method == "qlora":
        for module in model.modules():
            # bitsandbytes (0.50) repacks a 4-bit weight for its fast CPU kernel on the first no-grad eval
            # forward, and that layout gives zero gradients in training afterwards; keep the trainable layout
            if hasattr(module, "support_avx512bf16_for_cpu"):
                module.support_avx512bf16_for_cpu = False
    return model


def apply_method(model: Any, spec: Any, task: str) -> Any:
    """Freeze what the method freezes and add its trainable parameters; returns the model to train."""
    method = spec.method
    if method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    if method == "adapter":
        from stages._finetune.adapter import insert_adapters

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
