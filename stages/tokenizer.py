"""``tokenizer``: train a tokenizer on a dataset's text column -> a model repo.

Trains with the `tokenizers` library: byte-level BPE (GPT-2 style, lossless on
any UTF-8 text) or Unigram (SentencePiece style: NFKC, Metaspace ``▁``). The
output folder loads with ``AutoTokenizer.from_pretrained(folder)``: it holds
``tokenizer.json``, ``tokenizer_config.json`` (special tokens, chat template)
and ``special_tokens_map.json``.

The chat template renders ``{role marker}\\n{content}{end}\\n`` per message and
wraps each assistant turn's content *and its end marker* in
``{% generation %}…{% endgeneration %}``, so ``return_assistant_tokens_mask`` (and
TRL's ``assistant_only_loss=True``) trains on exactly the assistant's answer and
the token that stops it.

Bytes per token (UTF-8 bytes of the text / tokens, no special tokens) is measured
on a held-out slice of the documents that the tokenizer never trained on.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from hubflow.errors import StageInputError
from hubflow.stage import StageConfig, StageContext, StageResult

VERSION = "1"
LIBRARIES = ("tokenizers", "transformers")

BYTE_ALPHABET = 256
"""Byte-level BPE always holds one token per byte value."""

_SPLIT_NAMES = ("train", "test", "validation", "valid", "dev")


class SpecialTokens(BaseModel):
    """The named special tokens; ``null`` leaves one out."""

    model_config = ConfigDict(extra="forbid")

    bos: str | None = Field("<s>", min_length=1, description="Beginning of sequence token.")
    eos: str | None = Field("</s>", min_length=1, description="End of sequence (document separator) token.")
    pad: str | None = Field("<pad>", min_length=1, description="Padding token.")
    unk: str | None = Field(
        "<unk>",
        min_length=1,
        description="Unknown token (required by unigram; byte-level BPE never emits it).",
    )


class ChatMarkers(BaseModel):
    """Role markers of the chat template (seed §3.4); each becomes a special token."""

    model_config = ConfigDict(extra="forbid")

    system: str = Field("<|system|>", min_length=1, description="Starts a system message.")
    user: str = Field("<|user|>", min_length=1, description="Starts a user message.")
    assistant: str = Field("<|assistant|>", min_length=1, description="Starts an assistant message.")
    end: str = Field(
        "<|end|>",
        min_length=1,
        description="Ends every message; generation stops on it (it is inside the assistant loss mask).",
    )


class Config(StageConfig):
    OUTPUT_TYPES: ClassVar[dict[str, str]] = {"output": "model"}

    kind: Literal["tokenizer"] = Field(..., description="Train a tokenizer on a dataset's text column.")
    algorithm: Literal["bpe", "unigram"] = Field(
        "bpe", description="`bpe`: byte-level BPE (lossless); `unigram`: SentencePiece-style Unigram (NFKC)."
    )
    vocab_size: int = Field(8000, ge=1, description="Target vocabulary size, special tokens included.")
    min_frequency: int = Field(
        2, ge=1, description="BPE only: a pair must occur this often to be merged (unigram has no such knob)."
    )
    text_column: str = Field("text", min_length=1, description="The dataset column holding the documents.")
    split: str = Field(
        "train",
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="Which shards to read: data/{split}-*.parquet (all shards if none is named by split).",
    )
    max_documents: int | None = Field(
        None, ge=1, description="Read at most this many documents (the first ones, in shard order)."
    )
    heldout_fraction: float = Field(
        0.05,
        ge=0.0,
        lt=1.0,
        description="Fraction of documents kept out of training to measure bytes per token (0 disables).",
    )
    seed: int = Field(0, description="Seed of the deterministic held-out split.")
    special_tokens: SpecialTokens = Field(default_factory=SpecialTokens, description="bos, eos, pad, unk.")
    chat_markers: ChatMarkers = Field(default_factory=ChatMarkers, description="Chat role and end markers.")
    extra_special_tokens: list[str] = Field(
        default_factory=list, description="More special tokens (never split, removed by skip_special_tokens)."
    )
    add_bos_token: bool = Field(True, description="The post-processor puts bos before every encoded text.")
    add_eos_token: bool = Field(False, description="The post-processor puts eos after every encoded text.")
    chat_template: str | None = Field(
        None,
        description="A Jinja chat template replacing the built-in one; it must mark assistant turns with "
        "{% generation %}...{% endgeneration %}.",
    )
    model_max_length: int = Field(2048, ge=1, description="Recorded in tokenizer_config.json.")

    def all_special_tokens(self) -> list[str]:
        """Every special token, in id order (ids 0, 1, ...), without duplicates."""
        st, cm = self.special_tokens, self.chat_markers
        ordered = [st.unk, st.bos, st.eos, st.pad, cm.system, cm.user, cm.assistant, cm.end]
        ordered += self.extra_special_tokens
        out: list[str] = []
        for tok in ordered:
            if tok is not None and tok not in out:
                out.append(tok)
        return out

    @model_validator(mode="after")
    def _check_tokenizer(self) -> Config:
        if len(self.inputs) != 1:
            raise ValueError(
                f"a tokenizer stage reads exactly one dataset input, got {sorted(self.inputs) or 'none'}; "
                "write `inputs: {data: STAGE_OR_REF}`"
            )
        cm = self.chat_markers
        markers = [cm.system, cm.user, cm.assistant, cm.end]
        if len(set(markers)) != len(markers):
            raise ValueError(f"chat_markers must be four different tokens, got {markers}")
        named = [t for t in self.special_tokens.model_dump().values() if t is not None]
        clash = sorted(set(named) & set(markers))
        if clash:
            raise ValueError(f"special token(s) {clash} are also chat markers; give them different strings")
        if any(not t or t.isspace() for t in self.extra_special_tokens):
            raise ValueError("extra_special_tokens must be non-blank strings")
        n_special = len(self.all_special_tokens())
        if self.algorithm == "bpe" and self.vocab_size < n_special + BYTE_ALPHABET:
            raise ValueError(
                f"vocab_size {self.vocab_size} is too small for byte-level BPE: it needs {BYTE_ALPHABET} byte "
                f"tokens + {n_special} special tokens = {n_special + BYTE_ALPHABET} before any merge; "
                f"raise vocab_size (e.g. {max(1000, n_special + BYTE_ALPHABET)})"
            )
        if self.algorithm == "unigram":
            if self.special_tokens.unk is None:
                raise ValueError("unigram needs an unk token (special_tokens.unk); set one, e.g. '<unk>'")
            if self.vocab_size <= n_special:
                raise ValueError(
                    f"vocab_size {self.vocab_size} leaves no room next to the {n_special} special tokens; "
                    f"raise it above {n_special}"
                )
            if "min_frequency" in self.model_fields_set:
                raise ValueError("min_frequency applies to bpe only; remove it for algorithm: unigram")
        if self.add_bos_token and self.special_tokens.bos is None:
            raise ValueError("add_bos_token is true but special_tokens.bos is null; set one or disable it")
        if self.add_eos_token and self.special_tokens.eos is None:
            raise ValueError("add_eos_token is true but special_tokens.eos is null; set one or disable it")
        if self.chat_template is not None:
            from re import search

            if not search(r"\{%-?\s*generation\s*-?%\}", self.chat_template):
                raise ValueError(
                    "chat_template has no {% generation %}...{% endgeneration %} block around assistant turns; "
                    "without it assistant-only loss masks nothing"
                )
        return self


def build_chat_template(cfg: Config) -> str:
    """The default template: role marker, newline, content, end marker; assistant content+end is generated."""
    cm = cfg.chat_markers
    bos = "{{- bos_token }}\n" if cfg.special_tokens.bos is not None and cfg.add_bos_token else ""
    q = json.dumps  # Jinja string literals: JSON quoting is valid Jinja
    return (
        bos + "{%- for message in messages %}\n"
        "{%- if message['role'] == 'assistant' %}\n"
        f"{{{{- {q(cm.assistant + chr(10))} }}}}"
        f"{{% generation %}}{{{{- message['content'] + {q(cm.end)} }}}}{{% endgeneration %}}"
        "{{- '\\n' }}\n"
        f"{{%- elif message['role'] == 'user' %}}\n{{{{- {q(cm.user + chr(10))} + message['content'] + "
        f"{q(cm.end + chr(10))} }}}}\n"
        f"{{%- elif message['role'] == 'system' %}}\n{{{{- {q(cm.system + chr(10))} + message['content'] + "
        f"{q(cm.end + chr(10))} }}}}\n"
        "{%- else %}\n{{- raise_exception('unknown chat role: ' + message['role']) }}\n"
        "{%- endif %}\n{%- endfor %}\n"
        f"{{%- if add_generation_prompt %}}{{{{- {q(cm.assistant + chr(10))} }}}}{{%- endif %}}"
    )


# --- reading the dataset ------------------------------------------------------


def _shards(folder: Path, split: str) -> list[Path]:
    files = sorted(p for p in folder.rglob("*.parquet") if p.is_file() and ".cache" not in p.parts)
    if not files:
        raise StageInputError(
            f"input dataset {folder} holds no parquet file",
            hint="point `inputs` at a dataset repo with parquet shards under data/ (e.g. an ingest stage)",
        )
    chosen = [p for p in files if p.name.startswith((f"{split}-", f"{split}.", f"{split}_"))]
    if chosen:
        return chosen
    if not any(p.name.startswith(_SPLIT_NAMES) for p in files):
        return files  # no split naming at all: every shard is data
    raise StageInputError(
        f"input dataset has no {split!r} shard; it holds {[str(p.relative_to(folder)) for p in files]}",
        hint="set `split:` to one of the splits it has",
    )


def _check_column(shards: list[Path], column: str) -> int:
    """Rows in all shards; raise if a shard lacks the text column or it is not a string column."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = 0
    for shard in shards:
        pf = pq.ParquetFile(shard)
        schema = pf.schema_arrow
        if column not in schema.names:
            raise StageInputError(
                f"input dataset has no column {column!r} (shard {shard.name} has columns {schema.names})",
                hint=f"set `text_column:` to one of {schema.names}",
            )
        typ = schema.field(column).type
        if not (pa.types.is_string(typ) or pa.types.is_large_string(typ)):
            raise StageInputError(
                f"column {column!r} holds {typ}, not text (shard {shard.name})",
                hint="set `text_column:` to a string column",
            )
        rows += pf.metadata.num_rows
    return rows


def _documents(shards: list[Path], column: str, limit: int) -> Iterator[tuple[int, str]]:
    """(row index, text) for the first ``limit`` rows; null or empty texts are skipped."""
    import pyarrow.parquet as pq

    index = 0
    for shard in shards:
        for batch in pq.ParquetFile(shard).iter_batches(columns=[column], batch_size=1024):
            for text in batch.column(0).to_pylist():
                if index >= limit:
                    return
                if text:
                    yield index, text
                index += 1


# --- training -------------------------------------------------------------------


def _build(cfg: Config) -> tuple[Any, Any]:
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    specials = cfg.all_special_tokens()
    if cfg.algorithm == "bpe":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=cfg.vocab_size,
            min_frequency=cfg.min_frequency,
            special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
    else:
        tok = Tokenizer(models.Unigram())
        tok.normalizer = normalizers.NFKC()
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
        tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
        trainer = trainers.UnigramTrainer(
            vocab_size=cfg.vocab_size,
            special_tokens=specials,
            unk_token=cfg.special_tokens.unk,
            show_progress=False,
        )
    return tok, trainer


def _post_processor(cfg: Config, tok: Any) -> Any:
    from tokenizers import processors

    st = cfg.special_tokens
    pre = [st.bos] if cfg.add_bos_token else []
    post = [st.eos] if cfg.add_eos_token else []
    single = " ".join([*pre, "$A", *post])
    pair = " ".join([*pre, "$A", *post, *pre, "$B:1", *post])
    ids = [(t, tok.token_to_id(t)) for t in dict.fromkeys(pre + post)]
    return processors.TemplateProcessing(single=single, pair=pair, special_tokens=ids)


def _save(cfg: Config, tok: Any, out: Path) -> str:
    from transformers import PreTrainedTokenizerFast

    st, cm = cfg.special_tokens, cfg.chat_markers
    template = cfg.chat_template or build_chat_template(cfg)
    named = {f"{k}_token": v for k, v in st.model_dump().items() if v is not None}
    extra = [
        t
        for t in [cm.system, cm.user, cm.assistant, cm.end, *cfg.extra_special_tokens]
        if t not in named.values()
    ]
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        **named,
        extra_special_tokens=list(dict.fromkeys(extra)),
        chat_template=template,
        add_bos_token=cfg.add_bos_token,
        add_eos_token=cfg.add_eos_token,
        clean_up_tokenization_spaces=False,
        model_max_length=cfg.model_max_length,
    )
    out.mkdir(parents=True, exist_ok=True)
    # save_jinja_files=False keeps the template inside tokenizer_config.json, which every reader finds.
    fast.save_pretrained(str(out), save_jinja_files=False)
    config_path = out / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    # transformers 5 writes its own class name; the generic name also loads in transformers 4.
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config["chat_template"] = template
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False) + "\n", "utf-8")
    special_map: dict[str, Any] = dict(named)
    special_map["additional_special_tokens"] = list(dict.fromkeys(extra))
    (out / "special_tokens_map.json").write_text(
        json.dumps(special_map, indent=2, sort_keys=True, ensure_ascii=False) + "\n", "utf-8"
    )
    return template


def _input_folder(ctx: StageContext) -> Path:
    if len(ctx.inputs) != 1:
        raise StageInputError(
            f"the tokenizer stage reads exactly one dataset input, got {sorted(ctx.inputs) or 'none'}",
            hint="write `inputs: {data: STAGE_OR_REF}`",
        )
    return next(iter(ctx.inputs.values()))


def run(ctx: StageContext, cfg: Config) -> StageResult:
    folder = _input_folder(ctx)
    shards = _shards(folder, cfg.split)
    rows = _check_column(shards, cfg.text_column)
    n = min(rows, cfg.max_documents or rows)
    if n == 0:
        raise StageInputError(
            f"input dataset is empty: its {cfg.split!r} shards hold no rows",
            hint="check the upstream stage's output (metrics.json shows its row counts)",
        )
    n_heldout = 0
    if cfg.heldout_fraction > 0 and n >= 2:
        n_heldout = min(n - 1, max(1, round(cfg.heldout_fraction * n)))
    heldout = set(random.Random(f"{cfg.seed}:heldout").sample(range(n), n_heldout))

    stats = {"train_documents": 0, "train_bytes": 0}

    def train_texts() -> Iterator[str]:
        for index, text in _documents(shards, cfg.text_column, n):
            if index not in heldout:
                stats["train_documents"] += 1
                stats["train_bytes"] += len(text.encode("utf-8"))
                yield text

    tok, trainer = _build(cfg)
    started = time.perf_counter()
    tok.train_from_iterator(train_texts(), trainer=trainer, length=n - n_heldout)
    seconds = time.perf_counter() - started
    if stats["train_documents"] == 0:
        raise StageInputError(
            f"input column {cfg.text_column!r} holds no non-empty text in its first {n} rows",
            hint="check the upstream data, or point `text_column:` at the column with the documents",
        )
    tok.post_processor = _post_processor(cfg, tok)
    template = _save(cfg, tok, ctx.output)

    heldout_docs = heldout_bytes = heldout_tokens = 0
    batch: list[str] = []

    def flush() -> None:
        nonlocal heldout_tokens
        heldout_tokens += sum(len(e.ids) for e in tok.encode_batch(batch, add_special_tokens=False))
        batch.clear()

    if heldout:
        for index, text in _documents(shards, cfg.text_column, n):
            if index in heldout:
                heldout_docs += 1
                heldout_bytes += len(text.encode("utf-8"))
                batch.append(text)
                if len(batch) >= 256:
                    flush()
        flush()
    bpt = round(heldout_bytes / heldout_tokens, 4) if heldout_tokens else None

    metrics: dict[str, Any] = {
        "algorithm": cfg.algorithm,
        "vocab_size": tok.get_vocab_size(with_added_tokens=True),
        "special_tokens": len(cfg.all_special_tokens()),
        "train_documents": stats["train_documents"],
        "train_bytes": stats["train_bytes"],
        "heldout_documents": heldout_docs,
        "heldout_bytes": heldout_bytes,
        "heldout_tokens": heldout_tokens,
        "bytes_per_token": bpt,
        "train_seconds": round(seconds, 3),
    }
    ctx.logger.info(
        "trained %s tokenizer: %d tokens, %s bytes/token on %d held-out documents",
        cfg.algorithm,
        metrics["vocab_size"],
        bpt,
        heldout_docs,
    )
    return StageResult(metrics=metrics, card_sections={"Tokenizer": _card(cfg, metrics, template)})


def _card(cfg: Config, m: dict[str, Any], template: str) -> str:
    algo = "byte-level BPE" if cfg.algorithm == "bpe" else "Unigram (SentencePiece-style, NFKC, Metaspace)"
    bpt = (
        f"**{m['bytes_per_token']}** bytes per token on {m['heldout_documents']} held-out documents "
        f"({m['heldout_bytes']} bytes, {m['heldout_tokens']} tokens; never seen in training)"
        if m["bytes_per_token"] is not None
        else "not measured (no held-out documents: heldout_fraction is 0 or the corpus has one document)"
    )
    specials = ", ".join(f"`{t}`" for t in cfg.all_special_tokens())
    return (
        f"{algo} tokenizer, vocabulary {m['vocab_size']} (target {cfg.vocab_size}), trained on "
        f"{m['train_documents']} documents ({m['train_bytes']} bytes) from column `{cfg.text_column}`.\n\n"
        f"- Compression: {bpt}\n"
        f"- Special tokens (ids 0…): {specials}\n"
        f"- bos added by the post-processor: {cfg.add_bos_token}; eos: {cfg.add_eos_token}\n"
        f"- Chat: assistant turns end with `{cfg.chat_markers.end}`; stop generation on it. The chat template "
        "marks assistant content and its end marker with `{% generation %}`, so "
        "`apply_chat_template(..., return_assistant_tokens_mask=True, return_dict=True)` and TRL's "
        "`assistant_only_loss=True` train on the answers only.\n\n"
        "```python\nfrom transformers import AutoTokenizer\ntok = AutoTokenizer.from_pretrained(path)\n"
        'ids = tok.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True)\n```\n'
    )
