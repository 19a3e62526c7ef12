"""Loading a full model or an adapter on its base, and checking that an adapter's
recorded base is the model it is applied to (DESIGN: cross-stage checks before compute).

An adapter folder holds ``adapter_config.json``: a peft adapter (``peft_type``) or a
hubflow bottleneck adapter (``"hubflow_adapter": "bottleneck"``). Its base is read from,
in order: the adapter repo's ``lineage.json`` (the model input it was trained from, with
the exact revision), ``adapter_config.json``'s ``base_model_name_or_path`` when it is a
repo id, the card's ``base_model``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hubflow.errors import StageInputError

ADAPTER_CONFIG = "adapter_config.json"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
)
_BASE_INPUT_NAMES = ("model", "base", "base_model", "policy")
PROMPT_LEARNING = (
    "prefix_tuning",
    "prompt_tuning",
    "p_tuning",
    "adaption_prompt",
    "multitask_prompt_tuning",
    "cpt",
)
"""peft methods that prepend virtual tokens instead of changing weights."""
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def adapter_config(folder: Path) -> dict[str, Any] | None:
    """The folder's adapter_config.json, or None for a full model."""
    return read_json(folder / ADAPTER_CONFIG)


def adapter_kind(config: dict[str, Any]) -> str:
    """``bottleneck`` (hubflow's own adapter) or the peft type in lower case (``lora``, ``prefix_tuning``...)."""
    if config.get("hubflow_adapter"):
        return str(config["hubflow_adapter"])
    return str(config.get("peft_type", "unknown")).lower()


# --- which base an adapter belongs to ------------------------------------------------


@dataclass(frozen=True)
class BaseClaim:
    repo_id: str
    revision: str | None
    source: str
    """Where it was read (shown in errors)."""

    def __str__(self) -> str:
        return f"model:{self.repo_id}" + (f"@{self.revision}" if self.revision else "")


def _card_base_model(folder: Path) -> str | None:
    path = folder / "README.md"
    if not path.is_file():
        return None
    text = path.read_text(encoding="utf-8", errors="replace")
    if not text.startswith("---"):
        return None
    import yaml

    try:
        meta = yaml.safe_load(text.split("---", 2)[1]) or {}
    except yaml.YAMLError:
        return None
    value = meta.get("base_model") if isinstance(meta, dict) else None
    return value if isinstance(value, str) else None


def recorded_base(adapter_dir: Path) -> BaseClaim | None:
    """The base model the adapter records it was trained on, or None if it records none."""
    lineage = read_json(adapter_dir / "lineage.json")
    if lineage and isinstance(lineage.get("inputs"), dict):
        models = {
            name: rec
            for name, rec in lineage["inputs"].items()
            if isinstance(rec, dict) and rec.get("repo_type") == "model" and rec.get("repo_id")
        }
        chosen = next((models[n] for n in _BASE_INPUT_NAMES if n in models), None)
        if chosen is None:
            others = [rec for name, rec in models.items() if "tok" not in name]
            chosen = others[0] if len(others) == 1 else None
        if chosen is not None:
            return BaseClaim(chosen["repo_id"], chosen.get("revision"), "its lineage.json")
    config = adapter_config(adapter_dir) or {}
    name = config.get("base_model_name_or_path")
    if isinstance(name, str) and _REPO_ID.match(name) and not Path(name).exists():
        return BaseClaim(name, config.get("revision") or None, "adapter_config.json base_model_name_or_path")
    card = _card_base_model(adapter_dir)
    if card and _REPO_ID.match(card):
        return BaseClaim(card, None, "its card's base_model")
    return None


def given_base(base_dir: Path, base_ref: str | None) -> BaseClaim | None:
    """What the `base` input is: its exact ref when the runner gave one, else the repo its lineage names."""
    if base_ref:
        from hubflow.refs import parse_ref

        ref = parse_ref(base_ref)
        return BaseClaim(ref.repo_id, ref.revision, "the input ref")
    lineage = read_json(base_dir / "lineage.json") or {}
    for text in (lineage.get("outputs") or {}).values():
        if isinstance(text, str) and text.startswith("model:"):
            return BaseClaim(text.split(":", 1)[1].split("@")[0], None, "its lineage.json")
    return None


def check_adapter_base(
    adapter_dir: Path,
    base_dir: Path,
    *,
    adapter_input: str,
    base_input: str,
    base_ref: str | None,
) -> str:
    """Raise if the adapter records a base other than the given one; returns a note for the log/card."""
    claimed = recorded_base(adapter_dir)
    given = given_base(base_dir, base_ref)
    if claimed is None:
        return f"input {adapter_input!r} records no base model; not checked beyond weight shapes"
    if given is None:
        return (
            f"input {adapter_input!r} was trained on {claimed}; input {base_input!r} has no recorded repo id"
        )
    hint = (
        f"set input {base_input!r} to {claimed} (the model the adapter was trained on), or set "
        "`check_base: false` if you know both hold the same weights"
    )
    if claimed.repo_id != given.repo_id:
        raise StageInputError(
            f"input {adapter_input!r} is an adapter of {claimed} (from {claimed.source}), "
            f"but input {base_input!r} is {given}",
            hint=hint,
        )
    if claimed.revision and given.revision and claimed.revision != given.revision:
        raise StageInputError(
            f"input {adapter_input!r} was trained on {claimed.repo_id} at revision {claimed.revision} "
            f"(from {claimed.source}), but input {base_input!r} is revision {given.revision}",
            hint=hint,
        )
    return f"input {adapter_input!r} was trained on {claimed}; input {base_input!r} matches"


# --- loading --------------------------------------------------------------------------


def device_for(resources: Any) -> str:
    import torch

    if getattr(resources, "cpu", False) or not torch.cuda.is_available():
        return "cpu"
    return "cuda"


def require_adapter_weights(folder: Path, *, input_name: str) -> None:
    if not (folder / "adapter_model.safetensors").is_file():
        pickles = sorted(p.name for p in folder.glob("adapter_model.*"))
        raise StageInputError(
            f"input {input_name!r} has adapter_config.json but no adapter_model.safetensors"
            + (f" (found {pickles}, which hubflow never loads)" if pickles else ""),
            hint="save the adapter with save_pretrained(..., safe_serialization=True) and publish it again",
        )


def load_base(folder: Path, *, input_name: str) -> Any:
    import torch

    from stages.common import load_causal_lm

    return load_causal_lm(folder, input_name=input_name, dtype=torch.float32)


def attach_adapter(base: Any, adapter_dir: Path, *, adapter_input: str, base_input: str) -> Any:
    """The base with the adapter applied (peft or hubflow bottleneck), in eval mode."""
    config = adapter_config(adapter_dir) or {}
    kind = adapter_kind(config)
    require_adapter_weights(adapter_dir, input_name=adapter_input)
    fit_hint = f"feed input {base_input!r} the model the adapter was trained on (same architecture and sizes)"
    if kind == "bottleneck":
        try:
            from stages._finetune.adapter import load_with_adapter
        except ImportError as exc:
            raise StageInputError(
                f"input {adapter_input!r} is a hubflow bottleneck adapter, but its loader "
                f"(stages._finetune.adapter) cannot be imported: {exc}",
                hint="install a hubflow version with the sft stage",
            ) from exc
        try:
            model = load_with_adapter(base, adapter_dir)
        except StageInputError:
            raise
        except (ValueError, RuntimeError, KeyError, AttributeError) as exc:
            raise StageInputError(
                f"bottleneck adapter {adapter_input!r} does not fit base {base_input!r}: {exc}", hint=fit_hint
            ) from exc
        return model.eval()
    if "peft_type" not in config:
        raise StageInputError(
            f"input {adapter_input!r}: adapter_config.json has neither `peft_type` nor `hubflow_adapter`",
            hint="publish an adapter saved by peft's save_pretrained or by hubflow's sft stage",
        )
    from peft import PeftModel

    try:
        model = PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=False)
    except (ValueError, RuntimeError, KeyError, AttributeError) as exc:
        raise StageInputError(
            f"{kind} adapter {adapter_input!r} does not fit base {base_input!r}: {str(exc)[:500]}",
            hint=fit_hint,
        ) from exc
    return model.eval()


def load_model(
    model_dir: Path,
    base_dir: Path | None,
    *,
    model_input: str = "model",
    base_input: str = "base",
    base_ref: str | None = None,
    check_base: bool = True,
    logger: Any = None,
) -> tuple[Any, dict[str, Any]]:
    """(model in eval mode, info) for a full model, or an adapter applied to ``base_dir``."""
    info = check_model_inputs(
        model_dir,
        base_dir,
        model_input=model_input,
        base_input=base_input,
        base_ref=base_ref,
        check_base=check_base,
    )
    if logger is not None and info.get("base_check"):
        logger.info(info["base_check"])
    if info["model_type"] == "full":
        if base_dir is not None and logger is not None:
            logger.warning("input %r is a full model; input %r is not used", model_input, base_input)
        return load_base(model_dir, input_name=model_input).eval(), info
    assert base_dir is not None
    base = load_base(base_dir, input_name=base_input)
    model = attach_adapter(base, model_dir, adapter_input=model_input, base_input=base_input)
    return model, info


def check_model_inputs(
    model_dir: Path,
    base_dir: Path | None,
    *,
    model_input: str = "model",
    base_input: str = "base",
    base_ref: str | None = None,
    check_base: bool = True,
) -> dict[str, Any]:
    """The checks of :func:`load_model` that need no weights: a full model has safetensors; an
    adapter has a base input, safetensors weights and (``check_base``) was trained on that base."""
    config = adapter_config(model_dir)
    if config is None:
        from stages.common import require_safetensors

        require_safetensors(model_dir, input_name=model_input)
        return {"model_type": "full"}
    kind = adapter_kind(config)
    if base_dir is None:
        raise StageInputError(
            f"input {model_input!r} is a {kind} adapter (it holds adapter_config.json) and no {base_input!r} "
            "input gives the model to apply it to",
            hint=f"add `{base_input}: STAGE_OR_REF` (the adapter's base model) to the stage's inputs",
        )
    require_adapter_weights(model_dir, input_name=model_input)
    note = "not checked (check_base: false)"
    if check_base:
        note = check_adapter_base(
            model_dir, base_dir, adapter_input=model_input, base_input=base_input, base_ref=base_ref
        )
    return {"model_type": "adapter", "adapter_kind": kind, "base_check": note}


def tokenizer_folder(*candidates: tuple[str, Path | None]) -> tuple[str, Path] | None:
    """The first (input name, folder) that holds tokenizer files."""
    for name, folder in candidates:
        if folder is not None and (
            (folder / "tokenizer.json").exists() or (folder / "tokenizer_config.json").exists()
        ):
            return name, folder
    return None
