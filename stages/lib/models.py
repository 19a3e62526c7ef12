"""The one model loader of the stage library: a full model, a peft adapter or a hubflow
bottleneck adapter on its base, for any task, loaded the same way by every kind.

    model = load_model(folder)                                  # full model, eval mode, float32
    model = load_model(adapter, base=base_folder)               # adapter on its (checked) base
    model = load_model(folder, task="classification", head_kwargs={"num_labels": 1})  # fresh head
    model = load_model(adapter, base=base, merge=True)          # LoRA folded into the weights

What a folder is decides how it loads:

- a full model (``config.json`` + ``*.safetensors``): the Auto class of ``task``, else of its
  architecture (``...ForCausalLM``, ``...ForSequenceClassification``, ``...ForQuestionAnswering``);
- a peft adapter (``adapter_config.json`` with ``peft_type``: LoRA, QLoRA's LoRA, prefix tuning...):
  its base (``base=``, required) with ``PeftModel.from_pretrained``;
- a hubflow bottleneck adapter (``"hubflow_adapter": "bottleneck"``, seed §2.4.3): its base with
  :func:`stages.lib.adapters.load_with_adapter`.

Everything is local: ``local_files_only=True``, ``trust_remote_code=False``, safetensors only, and
an adapter never follows its ``base_model_name_or_path`` to a hub. The checks that need no weights
(:func:`inspect_model`) run first, so a bad input fails before any tensor is read. Models come back
in eval mode (dropout off); training code switches them to train mode itself.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hubflow.errors import StageInputError
from stages.lib.lineage import ADAPTER_CONFIG, adapter_config, check_adapter_base, read_json

HEAD_FILE = "hubflow_head.json"
"""Beside an adapter of a task head: {"task", "num_labels", "id2label"} (the head's shape and names)."""
ADAPTER_WEIGHTS = "adapter_model.safetensors"

TASKS = ("causal_lm", "classification", "extractive_qa")
TASK_AUTO = {
    "causal_lm": "AutoModelForCausalLM",
    "classification": "AutoModelForSequenceClassification",
    "extractive_qa": "AutoModelForQuestionAnswering",
}
PEFT_TASK = {"causal_lm": "CAUSAL_LM", "classification": "SEQ_CLS", "extractive_qa": "QUESTION_ANS"}
_TASK_OF_PEFT = {v: k for k, v in PEFT_TASK.items()}
_TASK_OF_ARCH_SUFFIX = {
    "ForSequenceClassification": "classification",
    "ForQuestionAnswering": "extractive_qa",
}

PROMPT_LEARNING = (
    "prefix_tuning",
    "prompt_tuning",
    "p_tuning",
    "adaption_prompt",
    "multitask_prompt_tuning",
    "cpt",
)
"""peft methods that prepend virtual tokens instead of changing weights."""
LORA_FAMILY = ("lora", "loha", "lokr", "ia3", "oft", "boft", "adalora", "vera")
"""peft methods whose update is a change of weights (``merge_and_unload`` folds them in)."""


# --- what a folder holds (no weights read) ------------------------------------------


def adapter_kind(config: dict[str, Any]) -> str:
    """``bottleneck`` (hubflow's own adapter) or the peft type in lower case (``lora``, ``prefix_tuning``...)."""
    if config.get("hubflow_adapter"):
        return str(config["hubflow_adapter"])
    return str(config.get("peft_type", "unknown")).lower()


def is_adapter(folder: Path) -> bool:
    return (Path(folder) / ADAPTER_CONFIG).is_file()


def require_safetensors(folder: Path, *, input_name: str) -> None:
    """Refuse pickled weights: a model input must hold safetensors."""
    if not list(Path(folder).glob("*.safetensors")):
        pickles = [p.name for p in Path(folder).glob("*.bin")] + [p.name for p in Path(folder).glob("*.pt")]
        raise StageInputError(
            f"input {input_name!r} holds no .safetensors weights"
            + (f" (found pickled weights {pickles}, which hubflow never loads)" if pickles else ""),
            hint="convert the model with save_pretrained(..., safe_serialization=True) and import it again",
        )


def require_adapter_weights(folder: Path, *, input_name: str) -> None:
    if not (Path(folder) / ADAPTER_WEIGHTS).is_file():
        pickles = sorted(p.name for p in Path(folder).glob("adapter_model.*"))
        raise StageInputError(
            f"input {input_name!r} has adapter_config.json but no {ADAPTER_WEIGHTS}"
            + (f" (found {pickles}, which hubflow never loads)" if pickles else ""),
            hint="save the adapter with save_pretrained(..., safe_serialization=True) and publish it again",
        )


def task_of(folder: Path) -> str:
    """The task a published model or adapter was trained for: ``causal_lm`` unless its
    architecture (full) or ``task_type`` (adapter) says classification / extractive QA."""
    config = adapter_config(folder)
    if config is not None:
        return _TASK_OF_PEFT.get(str(config.get("task_type")), "causal_lm")
    arch = ((read_json(Path(folder) / "config.json") or {}).get("architectures") or [""])[0]
    return next((t for suffix, t in _TASK_OF_ARCH_SUFFIX.items() if str(arch).endswith(suffix)), "causal_lm")


@dataclass(frozen=True)
class ModelInfo:
    """What :func:`inspect_model` found: a ``full`` model or an ``adapter`` (of ``adapter_kind``)."""

    kind: str
    task: str
    adapter_kind: str | None = None
    base_check: str | None = None
    """A sentence on the adapter/base check, for the log and the card."""

    @property
    def is_adapter(self) -> bool:
        return self.kind == "adapter"

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"model_type": self.kind, "task": self.task}
        if self.adapter_kind:
            out.update(adapter_kind=self.adapter_kind, base_check=self.base_check)
        return out


def inspect_model(
    folder: Path,
    *,
    base: Path | None = None,
    input_name: str = "model",
    base_input: str = "base",
    base_ref: str | None = None,
    check_base: bool = True,
) -> ModelInfo:
    """The checks of :func:`load_model` that need no weights: a full model has a config and
    safetensors; an adapter has a base input, safetensors weights and (``check_base``) records that
    base as the one it was trained on."""
    folder = Path(folder)
    config = adapter_config(folder)
    if config is None:
        if not (folder / "config.json").is_file():
            raise StageInputError(
                f"input {input_name!r} holds neither a model (config.json) nor an adapter (adapter_config.json)",
                hint="point it at the output of a pretrain / sft / merge stage, or `hubflow import` a model",
            )
        require_safetensors(folder, input_name=input_name)
        return ModelInfo("full", task_of(folder))
    kind = adapter_kind(config)
    if base is None:
        trained_on = config.get("base_model_name_or_path")
        raise StageInputError(
            f"input {input_name!r} is a {kind} adapter (it holds adapter_config.json), and no {base_input!r} "
            "input gives the model to apply it to"
            + (f" (it was trained on {trained_on})" if isinstance(trained_on, str) and trained_on else ""),
            hint=f"add `{base_input}: STAGE_OR_REF` (the adapter's base model) to the stage's inputs",
        )
    if kind != "bottleneck" and "peft_type" not in config:
        raise StageInputError(
            f"input {input_name!r}: adapter_config.json has neither `peft_type` nor `hubflow_adapter`",
            hint="publish an adapter saved by peft's save_pretrained or by hubflow's sft stage",
        )
    require_adapter_weights(folder, input_name=input_name)
    inspect_model(base, input_name=base_input)  # the base must itself be a full model
    note = "not checked (check_base: false)"
    if check_base:
        note = check_adapter_base(
            folder, Path(base), adapter_input=input_name, base_input=base_input, base_ref=base_ref
        )
    return ModelInfo("adapter", task_of(folder), adapter_kind=kind, base_check=note)


def inspect_policy(
    folder: Path,
    *,
    base: Path | None,
    base_ref: str | None = None,
    input_name: str = "policy",
    base_input: str = "base",
    kind: str = "this stage",
) -> ModelInfo:
    """:func:`inspect_model` of a policy to train with RL or preferences: a causal LM, full or a LoRA-family
    adapter on its base (a frozen copy of which can be the reference, on the same base)."""
    info = inspect_model(folder, base=base, input_name=input_name, base_input=base_input, base_ref=base_ref)
    if info.task != "causal_lm":
        raise StageInputError(
            f"input {input_name!r} is a {info.task} model, not a policy (a causal language model)",
            hint="feed it the output of an sft / instruct / merge stage; a reward model goes to the `reward` input",
        )
    if info.is_adapter and info.adapter_kind not in LORA_FAMILY:
        raise StageInputError(
            f"input {input_name!r} is a {info.adapter_kind} adapter; {kind} continues or merges LoRA-family "
            "adapters only",
            hint="train the SFT policy with LoRA or fully, or merge it into its base first (a merge stage)",
        )
    return info


def check_vocab(model: Any, tok: Any, *, input_name: str) -> None:
    """Refuse a tokenizer with more tokens than the model embeds."""
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tok) > rows:
        raise StageInputError(
            f"the tokenizer has {len(tok)} tokens but the model of input {input_name!r} embeds only {rows}: "
            "they do not belong together",
            hint="use the tokenizer the model was trained with (the model repo's own, or the `tokenizer` input "
            "that made it)",
        )


def head_kwargs_of(folder: Path) -> dict[str, Any]:
    """num_labels / id2label / label2id recorded beside an adapter of a task head (``hubflow_head.json``)."""
    info = read_json(Path(folder) / HEAD_FILE)
    if not info:
        return {}
    out: dict[str, Any] = {"num_labels": int(info["num_labels"])}
    if info.get("id2label"):
        out["id2label"] = {int(k): v for k, v in info["id2label"].items()}
        out["label2id"] = {v: int(k) for k, v in info["id2label"].items()}
    return out


# --- loading ---------------------------------------------------------------------------


def _torch_dtype(dtype: Any) -> Any:
    import torch

    if dtype is None:
        return torch.float32
    if isinstance(dtype, str):
        names = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
        names.update(
            {"fp32": torch.float32, "no": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
        )
        if dtype not in names:
            raise ValueError(f"dtype {dtype!r}: use one of {sorted(names)}")
        return names[dtype]
    return dtype


def _from_pretrained(
    folder: Path, task: str, *, input_name: str, dtype: Any, quantization: Any, device: str | None, **kw: Any
) -> Any:
    import transformers

    auto = getattr(transformers, TASK_AUTO[task])
    kwargs: dict[str, Any] = {
        "local_files_only": True,
        "trust_remote_code": False,
        "use_safetensors": True,
        "dtype": dtype,
        **kw,
    }
    if quantization is not None:
        kwargs["quantization_config"] = quantization
        kwargs["device_map"] = {"": device or "cpu"}
    try:
        model = auto.from_pretrained(str(folder), **kwargs)
    except ValueError as exc:
        if "Unrecognized configuration class" in str(exc):
            raise StageInputError(
                f"input {input_name!r}: this architecture has no {TASK_AUTO[task]} head: {str(exc)[:300]}",
                hint="use another base model or task",
            ) from exc
        raise
    if quantization is not None:
        for module in model.modules():
            # bitsandbytes (0.50) repacks a 4-bit weight for its fast CPU kernel on the first no-grad eval
            # forward, and that layout gives zero gradients in training afterwards; keep the trainable layout
            if hasattr(module, "support_avx512bf16_for_cpu"):
                module.support_avx512bf16_for_cpu = False
    return model


def _with_fresh_head(model: Any, task: str, head_kwargs: dict[str, Any], dtype: Any) -> Any:
    """The backbone of ``model`` (``model.<base_model_prefix>``) under a freshly initialised head of ``task``."""
    import copy

    import transformers

    config = copy.deepcopy(model.config)
    for key, value in head_kwargs.items():
        setattr(config, key, value)
    config.architectures = None
    target = getattr(transformers, TASK_AUTO[task]).from_config(config, dtype=dtype)
    prefix = target.base_model_prefix
    getattr(target, prefix).load_state_dict(getattr(model, prefix).state_dict())
    return target


def _attach(base: Any, folder: Path, *, kind: str, input_name: str, base_input: str, trainable: bool) -> Any:
    fit_hint = f"feed input {base_input!r} the model the adapter was trained on (same architecture and sizes)"
    if kind == "bottleneck":
        from stages.lib.adapters import load_with_adapter

        try:
            model = load_with_adapter(base, folder)
        except StageInputError:
            raise
        except (ValueError, RuntimeError, KeyError, AttributeError) as exc:
            raise StageInputError(
                f"bottleneck adapter {input_name!r} does not fit base {base_input!r}: {exc}", hint=fit_hint
            ) from exc
        if trainable:  # only the adapter trains (and a task head, which it saved with itself)
            from stages.lib.adapters import adapter_parameters

            extra = set(read_json(folder / ADAPTER_CONFIG).get("extra_trainable") or [])
            for name, p in model.named_parameters():
                p.requires_grad_(name in extra)
            for p in adapter_parameters(model).values():
                p.requires_grad_(True)
        return model
    from peft import PeftModel

    try:
        return PeftModel.from_pretrained(base, str(folder), is_trainable=trainable)
    except (ValueError, RuntimeError, KeyError, AttributeError) as exc:
        raise StageInputError(
            f"{kind} adapter {input_name!r} does not fit base {base_input!r}: {str(exc)[:500]}", hint=fit_hint
        ) from exc


def load_model(
    folder: Path,
    *,
    base: Path | None = None,
    task: str | None = None,
    device: str | None = None,
    dtype: Any = None,
    quantization: Any = None,
    head_kwargs: dict[str, Any] | None = None,
    trainable: bool = False,
    merge: bool = False,
    input_name: str = "model",
    base_input: str = "base",
    base_ref: str | None = None,
    check_base: bool = True,
    logger: Any = None,
) -> Any:
    """Load the model or adapter in ``folder`` (see the module docstring).

    ``task``: ``causal_lm`` | ``classification`` | ``extractive_qa``; default: what the folder was trained
    for. A full model loaded for another task gets a fresh head (``head_kwargs``: num_labels...).
    ``dtype``: a torch dtype or its name (default float32). ``quantization``: a BitsAndBytesConfig (the base
    loads in 4-bit, placed on ``device``). ``trainable``: the adapter's weights train. ``merge``: fold a
    LoRA-family adapter into the base weights and return a plain model (prefix tuning and bottleneck
    adapters cannot merge: refused). ``base_ref``: the base input's exact ref, for the adapter/base check.
    """
    folder = Path(folder)
    info = inspect_model(
        folder,
        base=base,
        input_name=input_name,
        base_input=base_input,
        base_ref=base_ref,
        check_base=check_base,
    )
    if task is not None and task not in TASK_AUTO:
        raise ValueError(f"task {task!r}: use one of {list(TASK_AUTO)}")
    task = task or info.task
    torch_dtype = _torch_dtype(dtype)
    if logger is not None and info.base_check:
        logger.info(info.base_check)
    if not info.is_adapter:
        if base is not None and logger is not None:
            logger.warning("input %r is a full model; input %r is not used", input_name, base_input)
        model = _from_pretrained(
            folder,
            task,
            input_name=input_name,
            dtype=torch_dtype,
            quantization=quantization,
            device=device,
            **(head_kwargs or {}),
        )
    else:
        assert base is not None and info.adapter_kind is not None
        if merge and info.adapter_kind not in LORA_FAMILY:
            raise StageInputError(
                f"input {input_name!r} is a {info.adapter_kind} adapter: it "
                + (
                    "prepends learned virtual tokens instead of changing weights"
                    if info.adapter_kind in PROMPT_LEARNING
                    else "computes a nonlinear function of each sub-layer's output"
                )
                + ", so it cannot be merged into its base",
                hint="train this stage on the base model with its own adapter, or use a LoRA adapter",
            )
        # peft attaches an adapter only to a model of the task it was trained for; merging one into another
        # task's model (an SFT LoRA as the start of a reward model) merges on its own task, then re-heads
        rehead = merge and task != info.task
        kwargs = head_kwargs if head_kwargs is not None and not rehead else head_kwargs_of(folder)
        base_model = _from_pretrained(
            Path(base),
            info.task if rehead else task,
            input_name=base_input,
            dtype=torch_dtype,
            quantization=quantization,
            device=device,
            **kwargs,
        )
        model = _attach(
            base_model,
            folder,
            kind=info.adapter_kind,
            input_name=input_name,
            base_input=base_input,
            trainable=trainable and not merge,
        )
        if merge:
            model = model.merge_and_unload()
        if rehead:
            model = _with_fresh_head(model, task, head_kwargs or {}, torch_dtype)
    if device is not None and quantization is None:
        model = model.to(device)
    return model.eval()


def read_model_config(folder: Path) -> dict[str, Any]:
    """config.json of a full model (or {}), without loading weights."""
    return read_json(Path(folder) / "config.json") or {}


def vocab_size_of(folder: Path) -> int | None:
    """The embedding rows a full model's config declares (text models and multimodal ``text_config``)."""
    config = read_model_config(folder)
    vocab = config.get("vocab_size", (config.get("text_config") or {}).get("vocab_size"))
    return vocab if isinstance(vocab, int) else None


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
