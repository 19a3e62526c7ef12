"""Loading what ``sft`` / ``instruct`` publish, whatever the method.

``load_finetuned(folder, base_folder=None)`` returns a ready model (eval mode):

- a full model (``config.json`` + safetensors): loaded with the Auto class of its
  architecture (causal LM, sequence classification, question answering);
- a peft adapter (``adapter_config.json`` with ``peft_type``: LoRA, QLoRA's LoRA,
  prefix tuning): the base (``base_folder``) with ``PeftModel.from_pretrained``;
  ``merge=True`` folds LoRA into the weights (W0 + (alpha/r) B A, seed §2.5 step 4);
- a hubflow bottleneck adapter (``"hubflow_adapter": "bottleneck"``): the base with
  :func:`stages._finetune.adapter.load_with_adapter`.

Weights load from safetensors only. The task head of an adapter comes from its
``task_type`` (``CAUSAL_LM``, ``SEQ_CLS``, ``QUESTION_ANS``) and, for a classifier,
the number of classes from ``hubflow_head.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hubflow.errors import StageInputError
from stages.common import require_safetensors

HEAD_FILE = "hubflow_head.json"
"""Beside an adapter of a task head: {"task", "num_labels", "id2label"} (the head's shape and names)."""

_AUTO_BY_TASK_TYPE = {
    "CAUSAL_LM": "AutoModelForCausalLM",
    "SEQ_CLS": "AutoModelForSequenceClassification",
    "QUESTION_ANS": "AutoModelForQuestionAnswering",
}
_AUTO_BY_SUFFIX = {
    "ForSequenceClassification": "AutoModelForSequenceClassification",
    "ForQuestionAnswering": "AutoModelForQuestionAnswering",
}


def _auto_for_full(folder: Path) -> Any:
    import transformers

    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    arch = (config.get("architectures") or [""])[0]
    name = next(
        (auto for suffix, auto in _AUTO_BY_SUFFIX.items() if arch.endswith(suffix)), "AutoModelForCausalLM"
    )
    return getattr(transformers, name)


def _load_full(folder: Path, auto: Any, dtype: Any, **kwargs: Any) -> Any:
    require_safetensors(folder, input_name=str(folder))
    return auto.from_pretrained(
        str(folder),
        local_files_only=True,
        trust_remote_code=False,
        use_safetensors=True,
        dtype=dtype,
        **kwargs,
    )


def load_finetuned(
    model_folder_or_adapter_folder: str | Path,
    base_folder: str | Path | None = None,
    *,
    dtype: Any = None,
    merge: bool = False,
) -> Any:
    """The fine-tuned model in eval mode (see the module docstring)."""
    import torch
    import transformers

    folder = Path(model_folder_or_adapter_folder)
    dtype = dtype or torch.float32
    config_path = folder / "adapter_config.json"
    if not config_path.is_file():
        if not (folder / "config.json").is_file():
            raise StageInputError(
                f"{folder} holds neither a model (config.json) nor an adapter (adapter_config.json)",
                hint="point at the output of an sft / instruct stage",
            )
        return _load_full(folder, _auto_for_full(folder), dtype).eval()
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if base_folder is None:
        raise StageInputError(
            f"{folder} is an adapter; its base model is needed to load it "
            f"(it was trained on {config.get('base_model_name_or_path') or 'an unrecorded base'})",
            hint="pass base_folder (a snapshot of the base model)",
        )
    base_path = Path(base_folder)
    if not (folder / "adapter_model.safetensors").is_file():
        raise StageInputError(
            f"{folder} has no adapter_model.safetensors", hint="publish the adapter's weights"
        )
    auto = getattr(transformers, _AUTO_BY_TASK_TYPE.get(str(config.get("task_type")), "AutoModelForCausalLM"))
    head = folder / HEAD_FILE
    head_kwargs: dict[str, Any] = {}
    if head.is_file():
        info = json.loads(head.read_text(encoding="utf-8"))
        head_kwargs = {"num_labels": int(info["num_labels"])}
        if info.get("id2label"):
            head_kwargs["id2label"] = {int(k): v for k, v in info["id2label"].items()}
            head_kwargs["label2id"] = {v: int(k) for k, v in info["id2label"].items()}
    base = _load_full(base_path, auto, dtype, **head_kwargs)
    if config.get("hubflow_adapter"):
        from stages._finetune.adapter import load_with_adapter

        return load_with_adapter(base, folder).eval()
    from peft import PeftModel

    model = PeftModel.from_pretrained(base, str(folder), is_trainable=False)
    if merge and str(config.get("peft_type", "")).upper() == "LORA":
        model = model.merge_and_unload()
    return model.eval()
