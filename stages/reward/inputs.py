"""The ``reward`` stage's checks and data, all before any weight is read (seed §4.3 data, §4.4 phase 2).

Order: the model input (a causal LM, or a LoRA-family adapter with its base), the tokenizer (a pad
token distinct from eos, a vocabulary the model embeds, a chat template for chat data), then the
preference dataset's columns and splits, then tokenisation with
:func:`stages.lib.pairs.encode_pairs` (the tokens a policy samples, TRL's truncation).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hubflow.errors import StageInputError
from hubflow.stage import StageContext
from stages.reward.config import BASE_INPUT, MODEL_INPUT, Config


@dataclass
class Prepared:
    """What the checks found: the tokenizer, the model input, and the encoded pairs."""

    tok: Any
    tok_input: str
    model_info: Any
    train: list[Any]
    test: list[Any]
    data_stats: dict[str, Any] = field(default_factory=dict)


def check_model(ctx: StageContext, cfg: Config) -> Any:
    """The model input is an SFT policy: a causal LM, or a LoRA-family adapter (merged) on its base."""
    from stages.lib.datasets import input_folder
    from stages.lib.models import LORA_FAMILY, inspect_model

    info = inspect_model(
        input_folder(ctx, MODEL_INPUT),
        base=ctx.inputs.get(BASE_INPUT),
        base_ref=ctx.input_refs.get(BASE_INPUT),
        check_base=cfg.check_base,
    )
    if info.task != "causal_lm":
        raise StageInputError(
            f"input {MODEL_INPUT!r} is a {info.task} model; a reward model starts from an SFT policy, a causal "
            "language model whose LM head is replaced by a scalar head (seed §4.4 phase 2)",
            hint="feed it the output of an sft stage (a full model, or its adapter with `base`)",
        )
    if info.is_adapter and info.adapter_kind not in LORA_FAMILY:
        raise StageInputError(
            f"input {MODEL_INPUT!r} is a {info.adapter_kind} adapter, which cannot be merged into its base; the "
            "reward model is initialised from the merged SFT model",
            hint="merge-free adapters cannot start a reward model: use a LoRA sft output or a full model",
        )
    return info


def check_tokenizer(ctx: StageContext, info: Any) -> tuple[Any, str]:
    """(tokenizer, its input): a pad token distinct from eos, and no more tokens than the model embeds.

    pad == eos is refused (alignment notes item 13): transformers' sequence-classification models read
    the score at the last token that is not ``pad_token_id``, so with pad == eos the score of a sequence
    ending in eos would be read one token early by every consumer that loads the model directly."""
    from stages.lib.models import vocab_size_of
    from stages.lib.tokenizers import stage_tokenizer

    tok, name = stage_tokenizer(ctx.inputs, need_pad=False)
    if tok.pad_token_id is None:
        raise StageInputError(
            f"the tokenizer of input {name!r} has no pad token; a reward model reads its score at the last "
            "non-pad token, so padding must be a token of its own",
            hint="use a tokenizer with a pad token distinct from eos (the tokenizer stage writes <pad>)",
        )
    if tok.pad_token_id == tok.eos_token_id:
        raise StageInputError(
            f"the tokenizer of input {name!r} pads with its eos token {tok.eos_token!r} (id {tok.eos_token_id}): "
            "a sequence-classification model finds the last real token by looking for pad, so the score of a "
            "sequence ending in eos would be read at the wrong token",
            hint="use a tokenizer with a pad token distinct from eos (the tokenizer stage writes <pad>)",
        )
    folder = ctx.inputs.get(BASE_INPUT) if info.is_adapter else ctx.inputs.get(MODEL_INPUT)
    rows = vocab_size_of(Path(folder)) if folder is not None else None
    if rows is not None and len(tok) > rows:
        raise StageInputError(
            f"the tokenizer (input {name!r}) has {len(tok)} tokens but the model of input {MODEL_INPUT!r} embeds "
            f"only {rows}: they were not made together",
            hint="use the tokenizer the SFT model was trained with (the model repo's own)",
        )
    return tok, name


def _read(ctx: StageContext, cfg: Config, split: str) -> list[Any]:
    from stages.lib.pairs import read_pairs

    return read_pairs(ctx.inputs[cfg.data_input], split, input_name=cfg.data_input)


def prepare(ctx: StageContext, cfg: Config) -> Prepared:
    """Every check, then the tokenised train and held-out pairs."""
    from stages.lib.chat import as_chat, require_chat_template
    from stages.lib.datasets import has_split, input_folder
    from stages.lib.pairs import encode_pairs

    info = check_model(ctx, cfg)
    tok, tok_input = check_tokenizer(ctx, info)
    name = cfg.data_input
    folder = input_folder(ctx, name)
    train = _read(ctx, cfg, cfg.split)
    if cfg.eval_split is not None and not has_split(folder, cfg.eval_split):
        raise StageInputError(
            f"input {name!r} has no {cfg.eval_split!r} split for the held-out pair accuracy and calibration",
            hint="point eval_split at a split the dataset has (the synthetic stage writes `test`), or set "
            "`eval_split: null` to publish without held-out diagnostics",
        )
    test = _read(ctx, cfg, cfg.eval_split) if cfg.eval_split is not None else []
    if any(as_chat(p.prompt) is not None for p in train[:1]):
        require_chat_template(tok, input_name=tok_input)
    stats: dict[str, Any] = {"input": name, "split": cfg.split, "eval_split": cfg.eval_split}
    encoded: dict[str, list[Any]] = {}
    for which, pairs in (("train", train), ("test", test)):
        enc, dropped = encode_pairs(
            tok, pairs, max_length=cfg.max_length, max_prompt_length=cfg.max_prompt_length
        )
        encoded[which] = enc
        stats[f"{which}_pairs"], stats[f"{which}_dropped"] = len(enc), dropped
    if not encoded["train"]:
        raise StageInputError(
            f"input {name!r}: none of the {len(train)} training pairs fits max_length {cfg.max_length} (each "
            "prompt alone fills it)",
            hint="raise max_length, or set max_prompt_length to keep only the end of long prompts",
        )
    if cfg.eval_split is not None and not encoded["test"]:
        raise StageInputError(
            f"input {name!r}: none of the {len(test)} held-out pairs fits max_length {cfg.max_length}",
            hint="raise max_length, or set max_prompt_length",
        )
    return Prepared(tok, tok_input, info, encoded["train"], encoded["test"], stats)


def member_pairs(pairs: list[Any], cfg: Config) -> list[list[Any]]:
    """The training pairs of each ensemble member (seed §4.12 item 2), per ``cfg.ensemble_data``."""
    import random

    k, n = cfg.ensemble, len(pairs)
    if cfg.ensemble_data == "full":
        return [list(pairs) for _ in range(k)]
    if cfg.ensemble_data == "bootstrap":
        draws = [random.Random(cfg.seed + m) for m in range(k)]
        return [[pairs[rng.randrange(n)] for _ in range(n)] for rng in draws]
    if n < k:
        raise StageInputError(
            f"ensemble_data: disjoint needs at least {k} training pairs for {k} members; there are {n}",
            hint="use ensemble_data: full, or fewer members",
        )
    order = list(range(n))
    random.Random(cfg.seed).shuffle(order)
    return [[pairs[i] for i in sorted(order[m::k])] for m in range(k)]
