"""Tiny models and tokenizers built locally (no download), for tests and benchmarks.

``tiny_tokenizer`` trains a byte-level BPE with the ``tokenizers`` library and
gives it a chat template whose assistant turns sit in ``{% generation %}``
blocks (as the ``tokenizer`` stage writes them); ``tiny_llama`` builds a
randomly initialised Llama from a config. ``save_base`` writes both to a folder
the way a ``pretrain`` stage or ``hubflow import`` publishes a base model.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{- '<|assistant|>\\n' }}{% generation %}{{- message['content'] + '<|end|>' }}{% endgeneration %}{{- '\\n' }}"
    "{%- elif message['role'] == 'user' %}{{- '<|user|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{%- elif message['role'] == 'system' %}{{- '<|system|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{%- else %}{{- raise_exception('unknown role ' + message['role']) }}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|assistant|>\\n' }}{%- endif %}"
)
"""Role marker, newline, content, ``<|end|>``; the assistant's content and end marker are generated."""

SPECIALS = ["<unk>", "<s>", "</s>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]

DEFAULT_CORPUS = (
    "the quick brown fox jumps over the lazy dog . what is one plus two ? answer : three . "
    "translate to upper case : hello world -> HELLO WORLD . the answer is 0 1 2 3 4 5 6 7 8 9 10 . "
    "question context answer positive negative neutral label review good bad movie great awful"
)


def tiny_tokenizer(
    corpus: Iterable[str] | None = None, vocab_size: int = 384, chat_template: bool = True
) -> Any:
    """A fast tokenizer trained here: byte-level BPE, bos prepended, pad/eos/unk set."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    texts = list(corpus) if corpus is not None else [DEFAULT_CORPUS] * 4
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B:1", special_tokens=[("<s>", bos)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        extra_special_tokens=["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"],
        clean_up_tokenization_spaces=False,
    )
    if chat_template:
        fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_llama(
    vocab_size: int, *, hidden: int = 64, layers: int = 2, heads: int = 4, seed: int = 0, **kw: Any
) -> Any:
    """A randomly initialised LlamaForCausalLM (about 0.15M parameters at the defaults)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=kw.pop("intermediate", 2 * hidden),
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=kw.pop("max_positions", 512),
        tie_word_embeddings=kw.pop("tie_word_embeddings", False),
        **kw,
    )
    return LlamaForCausalLM(cfg)


def save_base(
    folder: Path, *, corpus: Iterable[str] | None = None, chat_template: bool = True, **model_kw: Any
) -> Path:
    """Write a tiny base model (safetensors) and its tokenizer into ``folder``."""
    tok = tiny_tokenizer(corpus, chat_template=chat_template)
    model = tiny_llama(len(tok), **model_kw)
    model.config.bos_token_id = tok.bos_token_id
    model.config.eos_token_id = tok.eos_token_id
    model.config.pad_token_id = tok.pad_token_id
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder), safe_serialization=True)
    tok.save_pretrained(str(folder))
    return folder


def write_dataset(
    folder: Path, train: list[dict[str, Any]], test: list[dict[str, Any]] | None = None
) -> Path:
    """A dataset snapshot as hubflow stages publish them: data/{split}-00000-of-00001.parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (folder / "data").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(train), folder / "data" / "train-00000-of-00001.parquet")
    if test:
        pq.write_table(pa.Table.from_pylist(test), folder / "data" / "test-00000-of-00001.parquet")
    return folder


def stage_context(tmp: Path, inputs: dict[str, Path], input_refs: dict[str, str] | None = None) -> Any:
    """A StageContext on folders under ``tmp`` (out, logs, resume), as the worker builds it."""
    from hubflow.stage import StageContext

    for d in ("out", "logs", "resume"):
        (tmp / d).mkdir(parents=True, exist_ok=True)
    return StageContext(
        stage_name="stage",
        fingerprint="0" * 64,
        inputs=dict(inputs),
        outputs={"output": tmp / "out"},
        resume_dir=tmp / "resume",
        base_dir=tmp,
        log_dir=tmp / "logs",
        input_refs=dict(input_refs or {}),
    )
