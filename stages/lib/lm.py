"""Small language models built from scratch: the pieces ``pretrain`` and ``domain_weights`` share.

- :func:`llama_config` / :func:`build_llama`: a ``LlamaForCausalLM`` of an ``architecture:`` block
  (:class:`stages.lib.architecture.Architecture`) for a given vocabulary;
- :func:`init_weights`: the initialisation of seed §1.6 step 2.1 (Llama linear weights Xavier-uniform,
  embeddings N(0, init_std), norms 1; residual output projections zero in every family);
- :func:`parameter_groups`: AdamW groups, decay on matrices only (seed §1.6 step 2.2);
- :func:`lr_at`: linear warmup then cosine decay (seed §1.6), pure Python.

torch and transformers are imported inside the functions.
"""

from __future__ import annotations

import math
from typing import Any

_ZERO_INIT = {
    "llama": ("self_attn.o_proj", "mlp.down_proj"),
    "bert": ("attention.output.dense", "output.dense"),
    "t5": ("SelfAttention.o", "EncDecAttention.o", "DenseReluDense.wo"),
}


def rope_parameters(arch: Any) -> dict[str, Any]:
    params: dict[str, Any] = {"rope_type": "default", "rope_theta": float(arch.rope_theta)}
    if arch.rope_scaling is not None:
        rs = arch.rope_scaling
        params["rope_type"] = rs.type
        params["factor"] = float(rs.factor)
        if rs.original_max_position_embeddings is not None:
            params["original_max_position_embeddings"] = rs.original_max_position_embeddings
    return params


def init_weights(model: Any, family: str, *, seed: int, std: float) -> None:
    """§1.6 step 2.1; deterministic from ``seed`` whatever the global RNG did before."""
    import torch
    from torch import nn

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        if family == "llama":
            for module in model.modules():
                if isinstance(module, nn.Linear):
                    nn.init.xavier_uniform_(module.weight, generator=gen)
                    if module.bias is not None:
                        module.bias.zero_()
                elif isinstance(module, nn.Embedding):
                    nn.init.normal_(module.weight, 0.0, std, generator=gen)
                elif hasattr(module, "weight") and "RMSNorm" in type(module).__name__:
                    module.weight.fill_(1.0)
        for name, module in model.named_modules():
            if isinstance(module, nn.Linear) and name.endswith(_ZERO_INIT[family]):
                module.weight.zero_()
                if module.bias is not None:
                    module.bias.zero_()


def parameter_groups(model: Any, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: decay on matrices, none on norms, biases and embeddings (seed §1.6 step 2.2)."""
    from torch import nn

    no_decay: set[int] = set()
    for module in model.modules():
        if isinstance(module, nn.Embedding) or "Norm" in type(module).__name__:
            no_decay.update(id(p) for p in module.parameters(recurse=False))
    decay, plain, seen = [], [], set()
    for _, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (plain if id(p) in no_decay or p.ndim < 2 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


def default_intermediate(hidden_size: int) -> int:
    """SwiGLU FFN width: 8/3·d rounded up to a multiple of 32 (same FLOPs as a 4·d MLP)."""
    return 32 * math.ceil(8 * hidden_size / 3 / 32)


def llama_config(
    arch: Any, vocab_size: int, *, eos_id: int, pad_id: int | None = None, bos_id: int | None = None
) -> Any:
    """The ``LlamaConfig`` of an architecture block (its size fields as given, defaults filled)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=arch.hidden_size,
        intermediate_size=arch.intermediate_size or default_intermediate(arch.hidden_size),
        num_hidden_layers=arch.num_layers,
        num_attention_heads=arch.num_heads,
        num_key_value_heads=arch.num_kv_heads or arch.num_heads,
        max_position_embeddings=arch.position_limit(),
        rope_parameters=rope_parameters(arch),
        tie_word_embeddings=arch.tie_embeddings,
        attention_dropout=arch.dropout,
        rms_norm_eps=arch.norm_eps,
        initializer_range=arch.init_std,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id if pad_id is not None else eos_id,
    )


def build_llama(arch: Any, vocab_size: int, *, seed: int, eos_id: int, pad_id: int | None = None) -> Any:
    """A freshly initialised ``LlamaForCausalLM`` (float32, train mode, no KV cache), seeded."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(llama_config(arch, vocab_size, eos_id=eos_id, pad_id=pad_id))
    init_weights(model, "llama", seed=seed, std=arch.init_std)
    model.config.use_cache = False
    model.train()
    return model


def lr_at(step: int, *, lr: float, min_lr: float, warmup_steps: int, total_steps: int) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warmup to ``lr`` over
    ``warmup_steps`` (capped at the run's length), then cosine decay to ``min_lr`` at the last step."""
    warmup = min(warmup_steps, total_steps)
    if step < warmup:
        return lr * (step + 1) / warmup
    decay = max(1, total_steps - warmup - 1)
    progress = min(1.0, (step - warmup) / decay)
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))
