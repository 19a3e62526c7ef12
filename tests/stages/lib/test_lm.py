"""stages.lib.lm: the Llama of an architecture block, its initialisation and its AdamW groups (shared by
pretrain and domain_weights)."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from stages.lib.architecture import Architecture
from stages.lib.lm import build_llama, default_intermediate, llama_config, parameter_groups


def test_llama_of_an_architecture_block_is_seeded_and_starts_as_identity_blocks():
    import torch

    arch = Architecture(hidden_size=32, num_layers=2, num_heads=2, context_length=16)
    a = build_llama(arch, 50, seed=3, eos_id=2)
    b = build_llama(arch, 50, seed=3, eos_id=2)
    c = build_llama(arch, 50, seed=4, eos_id=2)
    cfg = a.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size) == (32, 2, 50)
    assert cfg.intermediate_size == default_intermediate(32) == 96 and cfg.max_position_embeddings == 16
    assert cfg.pad_token_id == 2 and cfg.tie_word_embeddings and a.training and not cfg.use_cache
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["model.embed_tokens.weight"], sc["model.embed_tokens.weight"])
    for name, tensor in sa.items():
        if name.endswith(("o_proj.weight", "down_proj.weight")):
            assert not tensor.any(), name  # residual output projections start at zero (seed §1.6 2.1)
    decay, plain = parameter_groups(a, 0.1)
    assert decay["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert all(p.ndim == 2 for p in decay["params"])
    assert any(p is a.model.embed_tokens.weight for p in plain["params"])  # embeddings: no decay


def test_rope_scaling_and_gqa_reach_the_config():
    arch = Architecture(
        hidden_size=64,
        num_heads=4,
        num_kv_heads=2,
        context_length=64,
        max_position_embeddings=128,
        rope_scaling={"type": "linear", "factor": 2.0},
    )
    cfg = llama_config(arch, 10, eos_id=1)
    assert cfg.num_key_value_heads == 2 and cfg.max_position_embeddings == 128
    assert cfg.rope_parameters["rope_type"] == "linear" and cfg.rope_parameters["factor"] == 2.0
