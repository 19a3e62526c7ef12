"""Bottleneck adapters (seed §2.4.3): ``Adapter(h) = h + f(h W_down) W_up``.

peft has no such method, so hubflow inserts them itself: one small module per
chosen sub-layer (the attention block and/or the feed-forward block of every
decoder layer), applied by a forward hook to that sub-layer's output, before the
layer adds its residual (Houlsby et al.). ``W_up`` starts at zero, so a fresh
adapter leaves the model's outputs unchanged.

On disk (the same two file names as peft, told apart by ``hubflow_adapter``)::

    adapter_config.json        {"hubflow_adapter": "bottleneck", "bottleneck": 16, "activation": "gelu",
                                "positions": ["attention", "mlp"], "targets": [...], "hidden_size": 64,
                                "extra_trainable": [...], "base_model_name_or_path": "NS/NAME", ...}
    adapter_model.safetensors  "<sub-layer path>.hubflow_adapter.{down,up}.{weight,bias}"
                               plus any other weight that trained (a task head such as ``score``)

``load_with_adapter(base_model, folder)`` puts them back on a freshly loaded base.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hubflow.errors import StageInputError

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
KIND = "bottleneck"
MODULE_NAME = "hubflow_adapter"

ATTENTION_NAMES = ("self_attn", "attn", "attention", "self_attention")
MLP_NAMES = ("mlp", "feed_forward", "ffn")


def _bottleneck_class() -> Any:
    import torch
    from torch import nn

    class Bottleneck(nn.Module):
        """h + f(h W_down) W_up, with W_up (and its bias) zero at initialisation."""

        def __init__(self, hidden: int, width: int, activation: str) -> None:
            super().__init__()
            self.down = nn.Linear(hidden, width)
            self.up = nn.Linear(width, hidden)
            self.act = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}[activation]()
            nn.init.zeros_(self.up.weight)
            nn.init.zeros_(self.up.bias)

        def forward(self, h: torch.Tensor) -> torch.Tensor:
            return h + self.up(self.act(self.down(h.to(self.down.weight.dtype)))).to(h.dtype)

    return Bottleneck


def _hook(module: Any, _args: Any, output: Any) -> Any:
    adapter = getattr(module, MODULE_NAME)
    if isinstance(output, tuple):
        return (adapter(output[0]), *output[1:])
    return adapter(output)


def find_targets(model: Any, positions: list[str]) -> list[str]:
    """Dotted paths of the attention / feed-forward sub-modules of every decoder layer."""
    from torch import nn

    wanted = {"attention": ATTENTION_NAMES, "mlp": MLP_NAMES}
    targets: list[str] = []
    for name, module in model.named_modules():
        children = dict(module.named_children())
        is_layer = any(a in children for a in ATTENTION_NAMES) and any(m in children for m in MLP_NAMES)
        if not is_layer:
            continue
        for pos in positions:
            child = next((c for c in wanted[pos] if c in children), None)
            if child is not None and isinstance(children[child], nn.Module):
                targets.append(f"{name}.{child}" if name else child)
    if not targets:
        raise StageInputError(
            f"found no decoder layer with an attention block ({'/'.join(ATTENTION_NAMES)}) and a feed-forward "
            f"block ({'/'.join(MLP_NAMES)}) to put bottleneck adapters after",
            hint="use peft method lora (it adapts any Linear layer by name) for this architecture",
        )
    return targets


def hidden_size(model: Any) -> int:
    cfg = getattr(model, "config", None)
    for attr in ("hidden_size", "n_embd", "d_model"):
        value = getattr(cfg, attr, None)
        if isinstance(value, int):
            return value
    raise StageInputError("cannot read the model's hidden size from its config", hint="use peft method lora")


def insert_adapters(model: Any, *, bottleneck: int, activation: str, positions: list[str]) -> list[str]:
    """Add a zero-initialised adapter after each target sub-layer; returns the target paths."""
    Bottleneck = _bottleneck_class()
    d = hidden_size(model)
    targets = find_targets(model, positions)
    dtype = next(model.parameters()).dtype
    device = next(model.parameters()).device
    for path in targets:
        module = model.get_submodule(path)
        module.add_module(MODULE_NAME, Bottleneck(d, bottleneck, activation).to(device=device, dtype=dtype))
        module.register_forward_hook(_hook)
    model._hubflow_adapter = {
        "bottleneck": bottleneck,
        "activation": activation,
        "positions": list(positions),
        "targets": targets,
        "hidden_size": d,
    }
    return targets


def adapter_parameters(model: Any) -> dict[str, Any]:
    return {n: p for n, p in model.named_parameters() if f".{MODULE_NAME}." in f".{n}"}


def save_adapter(model: Any, folder: Path, *, extra_config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the adapters and every other trainable weight (e.g. a task head) as safetensors."""
    from safetensors.torch import save_file

    info = getattr(model, "_hubflow_adapter", None)
    if info is None:
        raise ValueError("the model has no bottleneck adapters (insert_adapters was not called)")
    params = dict(model.named_parameters())
    tensors = {n: p.detach().to("cpu").contiguous() for n, p in adapter_parameters(model).items()}
    extra = sorted(n for n, p in params.items() if p.requires_grad and n not in tensors)
    for n in extra:
        tensors[n] = params[n].detach().to("cpu").contiguous()
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / WEIGHTS_NAME), metadata={"format": "pt", "hubflow_adapter": KIND})
    config = {
        "hubflow_adapter": KIND,
        **info,
        "extra_trainable": extra,
        "model_type": getattr(model.config, "model_type", None),
        "architectures": getattr(model.config, "architectures", None),
        **(extra_config or {}),
    }
    (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return config


def read_config(folder: Path) -> dict[str, Any]:
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise StageInputError(f"{folder} has no {CONFIG_NAME}", hint="point at a folder the sft stage wrote")
    config = json.loads(path.read_text(encoding="utf-8"))
    if config.get("hubflow_adapter") != KIND:
        raise StageInputError(
            f'{path} is not a hubflow bottleneck adapter (no "hubflow_adapter": "bottleneck")',
            hint="load peft adapters with peft.PeftModel.from_pretrained",
        )
    return config


def load_with_adapter(base_model: Any, adapter_folder: str | Path) -> Any:
    """``base_model`` with the bottleneck adapters of ``adapter_folder`` inserted and loaded (in place)."""
    from safetensors.torch import load_file

    folder = Path(adapter_folder)
    config = read_config(folder)
    if not (folder / WEIGHTS_NAME).is_file():
        raise StageInputError(f"{folder} has no {WEIGHTS_NAME}", hint="publish the adapter with its weights")
    if getattr(base_model, "_hubflow_adapter", None) is not None:
        raise ValueError("this model already carries bottleneck adapters")
    d = hidden_size(base_model)
    if d != config["hidden_size"]:
        raise StageInputError(
            f"the adapter was trained on a model of hidden size {config['hidden_size']}, this base has {d}",
            hint="apply it to the base model it was trained on",
        )
    targets = insert_adapters(
        base_model,
        bottleneck=int(config["bottleneck"]),
        activation=str(config["activation"]),
        positions=list(config["positions"]),
    )
    if targets != list(config["targets"]):
        raise StageInputError(
            f"the adapter sits on {len(config['targets'])} sub-layers, this base has {len(targets)} of them",
            hint="apply it to the base model it was trained on",
        )
    tensors = load_file(str(folder / WEIGHTS_NAME))
    params = dict(base_model.named_parameters())
    unknown = sorted(k for k in tensors if k not in params)
    if unknown:
        raise StageInputError(
            f"the adapter holds weights this base lacks: {unknown[:5]}",
            hint="apply it to the base (and task head) it was trained on",
        )
    import torch

    with torch.no_grad():
        for name, value in tensors.items():
            if params[name].shape != value.shape:
                raise StageInputError(
                    f"adapter weight {name} has shape {tuple(value.shape)}, the model's is {tuple(params[name].shape)}",
                    hint="apply it to the base model it was trained on",
                )
            params[name].copy_(value.to(params[name].dtype))
    return base_model
