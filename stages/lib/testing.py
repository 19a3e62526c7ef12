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


def word_tokenizer(words: Iterable[str]) -> Any:
    """A fast word-level tokenizer (one token per whitespace-separated word of ``words``), with
    ``<unk>``, ``<pad>`` and ``</s>`` (eos): exact token streams for planted-data tests."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["<unk>", "<pad>", "</s>", *dict.fromkeys(words)])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


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


def train_tiny_policy(
    folder: Path,
    pairs: list[tuple[Any, Any]],
    *,
    steps: int = 120,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    batch_size: int = 32,
    learning_rate: float = 3e-3,
    vocab_size: int = 400,
    seed: int = 0,
) -> Path:
    """Train a tiny chat policy from scratch on (prompt, completion) pairs (chat message lists or strings)
    with a plain loop (loss on the completion only, linear decay) and save it with its tokenizer.

    Seconds on one CPU thread. A short run gives a *mediocre* policy on the synthetic families (about
    20-50% of sampled answers right at 100-150 steps for `max`/`min` with numbers up to 9), the start
    alignment and RL tests need: room to improve, and some correct samples to learn from.
    """
    import random

    import torch

    from stages.lib.chat import split_prompt_completion

    def text(value: Any) -> str:
        return value if isinstance(value, str) else " ".join(str(m["content"]) for m in value)

    tok = tiny_tokenizer([f"{text(p)} {text(c)}" for p, c in pairs], vocab_size=vocab_size)
    model = tiny_llama(len(tok), hidden=hidden, layers=layers, heads=heads, seed=seed)
    model.config.bos_token_id, model.config.eos_token_id = tok.bos_token_id, tok.eos_token_id
    model.config.pad_token_id = tok.pad_token_id
    encoded = [split_prompt_completion(tok, p, c) for p, c in pairs]
    opt = torch.optim.AdamW(model.parameters(), lr=learning_rate)
    rng = random.Random(seed)
    model.train()
    for step in range(steps):
        batch = rng.sample(encoded, min(batch_size, len(encoded)))
        width = max(len(p) + len(c) for p, c in batch)
        ids = torch.full((len(batch), width), tok.pad_token_id)
        labels = torch.full((len(batch), width), -100)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, (p, c) in enumerate(batch):
            n = len(p) + len(c)
            ids[i, :n] = torch.tensor(p + c)
            labels[i, len(p) : n] = torch.tensor(c)
            mask[i, :n] = 1
        for group in opt.param_groups:
            group["lr"] = learning_rate * (1 - step / steps)
        model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    model.eval()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder), safe_serialization=True)
    tok.save_pretrained(str(folder))
    return folder


def save_lora(
    folder: Path,
    base: Path,
    *,
    seed: int = 0,
    r: int = 4,
    std: float = 0.3,
    targets: tuple = ("q_proj", "v_proj"),
) -> Path:
    """A causal-LM LoRA adapter of the model in ``base`` whose B matrices are random N(0, std²) (a fresh
    LoRA is an exact no-op), saved as an sft stage publishes one: a stand-in for an SFT adapter."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base), local_files_only=True)
    torch.manual_seed(seed)
    lora = get_peft_model(
        model, LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(targets), task_type="CAUSAL_LM")
    )
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, std)
    folder.mkdir(parents=True, exist_ok=True)
    lora.save_pretrained(str(folder), safe_serialization=True)
    (folder / "README.md").unlink(missing_ok=True)
    return folder
