"""Models built from the ``architecture:`` block with transformers' own classes.

- ``causal`` -> ``LlamaForCausalLM`` (RMSNorm pre-norm, SwiGLU, RoPE; seed §1.3);
- ``mlm`` -> ``BertForMaskedLM`` (a small bidirectional encoder);
- ``span_corruption`` / ``ul2`` -> ``T5ForConditionalGeneration`` (gated-GELU FFN, relative positions).

Initialisation (seed §1.6 step 2.1): Llama linear weights Xavier-uniform, embeddings
N(0, init_std), norms 1; BERT and T5 keep transformers' own scaled-normal
initialisation. In every family the residual output projections (attention output
and FFN output: Llama ``o_proj``/``down_proj``, BERT ``attention.output.dense``/
``output.dense``, T5 ``o``/``wo``) start at zero, so each block starts as the identity.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hubflow.errors import StageInputError
from stages.lib.lm import init_weights, parameter_groups
from stages.lib.lm import rope_parameters as _rope_parameters
from stages.pretrain import objectives as obj
from stages.pretrain.scaling import Shape

SENTINEL = "<extra_id_{}>"
MASK_TOKEN = "<mask>"
PAD_TOKEN = "<pad>"
MODE_TOKENS = {"R": "[R]", "S": "[S]", "X": "[X]"}

__all__ = ["ObjectiveTokens", "build_config", "build_model", "init_weights", "parameter_groups"]


@dataclass
class ObjectiveTokens:
    """Token ids the objective uses, and the tokens it had to add to the tokenizer."""

    eos_id: int
    pad_id: int
    bos_id: int | None = None
    mask_id: int | None = None
    sentinel_ids: list[int] = field(default_factory=list)
    mode_ids: dict[str, int] = field(default_factory=dict)
    special_ids: list[int] = field(default_factory=list)
    added: list[str] = field(default_factory=list)


def span_settings(cfg: Any) -> list[tuple[float, float]]:
    """(noise_density, mean_span_length) of every span denoiser the objective uses."""
    if cfg.objective == "span_corruption":
        return [(cfg.noise_density, cfg.mean_span_length)]
    if cfg.objective == "ul2":
        return [(d.noise_density, d.mean_span_length) for d in cfg.denoisers if d.mode != "S"]
    return []


def prepare_tokenizer(tokenizer: Any, cfg: Any) -> ObjectiveTokens:
    """Check the tokenizer has what the objective needs; add mask / sentinel / mode tokens."""
    if tokenizer.eos_token_id is None:
        raise StageInputError(
            "input 'tokenizer' has no eos token; pretraining joins documents with it",
            hint="give the tokenizer an eos token (the tokenizer stage's special_tokens.eos)",
        )
    added: list[str] = []
    if cfg.objective == "mlm" and tokenizer.mask_token_id is None:
        tokenizer.add_special_tokens({"mask_token": MASK_TOKEN})
        added.append(MASK_TOKEN)
    if cfg.objective in ("span_corruption", "ul2") and tokenizer.pad_token_id is None:
        tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
        added.append(PAD_TOKEN)
    extra: list[str] = []
    if cfg.objective in ("span_corruption", "ul2"):
        needed = obj.sentinels_needed(cfg.architecture.context_length, span_settings(cfg))
        extra += [SENTINEL.format(i) for i in range(needed)]
    if cfg.objective == "ul2":
        extra += [MODE_TOKENS[m] for m in sorted({d.mode for d in cfg.denoisers})]
    vocab = tokenizer.get_vocab()
    new = [t for t in extra if t not in vocab]
    if new:
        tokenizer.add_special_tokens({"extra_special_tokens": new}, replace_extra_special_tokens=False)
        added += new
    ids = tokenizer.convert_tokens_to_ids
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    special = sorted(set(tokenizer.all_special_ids) | {ids(t) for t in extra})
    return ObjectiveTokens(
        eos_id=tokenizer.eos_token_id,
        pad_id=pad_id,
        bos_id=tokenizer.bos_token_id,
        mask_id=tokenizer.mask_token_id,
        sentinel_ids=[ids(t) for t in extra if t.startswith("<extra_id_")],
        mode_ids={m: ids(MODE_TOKENS[m]) for m in MODE_TOKENS if MODE_TOKENS[m] in extra},
        special_ids=special,
        added=added,
    )


def check_vocab(cfg: Any, vocab_size: int, added: list[str]) -> None:
    """``architecture.vocab_size``, when given, must be the vocabulary the model gets."""
    want = cfg.architecture.vocab_size
    if want is None or want == vocab_size:
        return
    base = vocab_size - len(added)
    why = f" ({base} tokens + {len(added)} the {cfg.objective} objective adds)" if added else ""
    raise StageInputError(
        f"architecture.vocab_size is {want} but the tokenizer input has {vocab_size} tokens{why}; "
        "the model's embedding must match its tokenizer",
        hint=f"set architecture.vocab_size: {vocab_size}, or remove it to take the tokenizer's",
    )


def build_config(cfg: Any, shape: Shape, vocab_size: int, tokens: ObjectiveTokens) -> Any:
    arch = cfg.architecture
    if shape.family == "llama":
        from transformers import LlamaConfig

        return LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=shape.hidden_size,
            intermediate_size=shape.intermediate_size,
            num_hidden_layers=shape.num_layers,
            num_attention_heads=shape.num_heads,
            num_key_value_heads=shape.num_kv_heads,
            max_position_embeddings=arch.position_limit(),
            rope_parameters=_rope_parameters(arch),
            tie_word_embeddings=shape.tie_embeddings,
            attention_dropout=arch.dropout,
            rms_norm_eps=arch.norm_eps,
            initializer_range=arch.init_std,
            bos_token_id=tokens.bos_id,
            eos_token_id=tokens.eos_id,
            pad_token_id=tokens.pad_id,
        )
    if shape.family == "bert":
        from transformers import BertConfig

        return BertConfig(
            vocab_size=vocab_size,
            hidden_size=shape.hidden_size,
            num_hidden_layers=shape.num_layers,
            num_attention_heads=shape.num_heads,
            intermediate_size=shape.intermediate_size,
            max_position_embeddings=arch.position_limit(),
            type_vocab_size=1,
            hidden_dropout_prob=arch.dropout,
            attention_probs_dropout_prob=arch.dropout,
            layer_norm_eps=arch.norm_eps,
            initializer_range=arch.init_std,
            tie_word_embeddings=shape.tie_embeddings,
            pad_token_id=tokens.pad_id,
            eos_token_id=tokens.eos_id,
        )
    from transformers import T5Config

    return T5Config(
        vocab_size=vocab_size,
        d_model=shape.hidden_size,
        d_kv=shape.head_dim,
        d_ff=shape.intermediate_size,
        num_layers=shape.num_layers,
        num_decoder_layers=shape.num_layers,
        num_heads=shape.num_heads,
        dropout_rate=arch.dropout,
        layer_norm_epsilon=arch.norm_eps,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=shape.tie_embeddings,
        pad_token_id=tokens.pad_id,
        eos_token_id=tokens.eos_id,
        decoder_start_token_id=tokens.pad_id,
    )


def model_class(family: str) -> Any:
    import transformers

    return {
        "llama": transformers.LlamaForCausalLM,
        "bert": transformers.BertForMaskedLM,
        "t5": transformers.T5ForConditionalGeneration,
    }[family]


def build_model(cfg: Any, config: Any, family: str) -> Any:
    """A freshly initialised model (float32; the loop's autocast handles bf16)."""
    import torch

    torch.manual_seed(cfg.seed)
    model = model_class(family)(config)
    init_weights(model, family, seed=cfg.seed, std=cfg.architecture.init_std)
    if model.can_generate():
        gc = model.generation_config
        gc.eos_token_id = config.eos_token_id
        gc.pad_token_id = config.pad_token_id
        if family == "llama":
            gc.bos_token_id = config.bos_token_id
    return model
