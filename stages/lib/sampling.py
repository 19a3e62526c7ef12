"""The policy side of every kind that samples responses and scores them (best_of_n, online_dpo, cai;
seed §4.8.4, §4.9, §4.10): the checks on the policy and the prompts that run before any weight is read,
the prompts as token ids (refusing those that leave no room to answer), and N sampled candidates per
prompt as text.

Prompts are chat message lists (the synthetic stage's conversational format) or plain strings; a prompt
becomes the tokens a policy answers from with :func:`prompt_ids` (the chat template's generation prompt,
or ``tokens(prompt)`` with bos), exactly the prompt half of
:func:`stages.lib.chat.split_prompt_completion`, so a sampled response re-tokenised with its prompt (as a
reward model scores it and DPO trains on it) sits after the same prompt tokens. Responses are drawn by
:func:`stages.lib.generation.sample` (our decoding loop, seeded ``torch.Generator``) and decoded without
special tokens; a completion is ``[{"role": "assistant", "content": text}]`` for chat prompts, the text
otherwise (:func:`as_completion`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hubflow.errors import StageInputError

PROMPT_HINT = (
    "a prompts dataset has a `prompt` column (a string or a list of chat messages), e.g. the synthetic "
    "stage's `prompts` output"
)


@dataclass(frozen=True)
class PromptRow:
    """One row of a prompts dataset: the prompt, and what a judge or SPIN may need beside it."""

    prompt: Any
    row: int
    family: str | None = None
    completion: Any = None
    """The dataset's reference completion (SPIN's chosen), when it has one."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Columns copied to the outputs unchanged (``id``)."""


def read_prompts(
    folder: Path,
    split: str = "train",
    *,
    input_name: str = "prompts",
    need_completion: bool = False,
    limit: int | None = None,
) -> list[PromptRow]:
    """The rows of a prompts dataset; a missing ``prompt`` (or, ``need_completion``, ``completion``) column is
    named with the columns present. ``family`` and ``id`` are read when present."""
    from stages.lib.chat import as_chat
    from stages.lib.datasets import read_rows

    needed = ["prompt", "completion"] if need_completion else ["prompt"]
    hint = PROMPT_HINT + (
        "; SPIN also needs the gold `completion` (the synthetic stage's `instructions` output)"
        if need_completion
        else ""
    )
    rows = read_rows(
        folder, split, needed, input_name=input_name, hint=hint, optional=("family", "id"), limit=limit
    )
    out = []
    for i, r in enumerate(rows):
        prompt = r["prompt"]
        if not isinstance(prompt, str) and as_chat(prompt) is None:
            raise StageInputError(
                f"input {input_name!r} row {i}: `prompt` is a {type(prompt).__name__}, not a string or a list "
                "of chat messages",
                hint=PROMPT_HINT,
            )
        extra = {"id": r["id"]} if "id" in r else {}
        out.append(PromptRow(prompt, i, r.get("family"), r.get("completion"), extra))
    return out


# --- the policy: cheap checks first ----------------------------------------------------------------


@dataclass
class Policy:
    """What the checks found about the policy input, before any weight is read."""

    folder: Path
    base: Path | None
    base_ref: str | None
    info: Any
    """:class:`stages.lib.models.ModelInfo`."""
    tokenizer: Any
    tokenizer_input: str
    max_positions: int | None
    pad_id: int
    stop_ids: list[int]
    check_base: bool = True
    input_name: str = "model"

    def load(self, *, device: str | None = None, logger: Any = None, trainable: bool = False) -> Any:
        """The policy (a full model, or the adapter on its base), eval mode, checked against the tokenizer."""
        from stages.lib.models import check_vocab, load_model

        model = load_model(
            self.folder,
            base=self.base,
            base_ref=self.base_ref,
            check_base=self.check_base,
            device=device,
            trainable=trainable,
            logger=logger,
            input_name=self.input_name,
        )
        check_vocab(model, self.tokenizer, input_name=self.input_name)
        return model


def check_policy(
    ctx: Any,
    *,
    check_base: bool = True,
    input_name: str = "model",
    base_input: str = "base",
    tokenizer_input: str | None = "tokenizer",
    need_chat_template: bool = False,
    sampling: bool = True,
) -> Policy:
    """The checks on a policy input that read no weights: a full model or an adapter with its (recorded)
    base, a causal LM, a tokenizer (input ``tokenizer``, else the model's or the base's files) no larger than
    the embedding, a pad token distinct from every stop token (eos, the chat template's end of turn).
    ``tokenizer_input`` (None: none) overrides the model's own tokenizer files. ``sampling=False`` (a model that
    only scores, such as a judge) skips the pad and stop-token check."""
    from stages.lib.chat import end_of_turn_ids, require_chat_template
    from stages.lib.datasets import input_folder
    from stages.lib.models import inspect_model, read_model_config, vocab_size_of
    from stages.lib.tokenizers import stage_tokenizer

    folder = input_folder(ctx, input_name)
    base = ctx.inputs.get(base_input)
    base_ref = ctx.input_refs.get(base_input)
    info = inspect_model(
        folder,
        base=base,
        input_name=input_name,
        base_input=base_input,
        base_ref=base_ref,
        check_base=check_base,
    )
    if info.task != "causal_lm":
        raise StageInputError(
            f"input {input_name!r} is a {info.task} model; a policy must generate text (a causal LM)",
            hint="feed it an sft / instruct / pretrain stage's model; a reward model goes to the `reward` input",
        )
    order = (tokenizer_input, input_name, base_input) if tokenizer_input else (input_name, base_input)
    tok, tok_input = stage_tokenizer(ctx.inputs, order=order, need_pad=False)
    if need_chat_template:
        require_chat_template(tok, input_name=tok_input)
    config_folder = Path(base) if info.is_adapter and base is not None else folder
    vocab = vocab_size_of(config_folder)
    if vocab is not None and len(tok) > vocab:
        raise StageInputError(
            f"the tokenizer (input {tok_input!r}) has {len(tok)} tokens but the model of input {input_name!r} "
            f"embeds {vocab}: they were not made together",
            hint="use the tokenizer the policy was trained with",
        )
    config = read_model_config(config_folder)
    positions = config.get("max_position_embeddings", config.get("n_positions"))
    stops = end_of_turn_ids(tok)
    if sampling and (tok.pad_token_id is None or tok.pad_token_id in stops):
        raise StageInputError(
            f"the tokenizer of input {tok_input!r} "
            + ("has no pad token" if tok.pad_token_id is None else "pads with a stop token (pad == eos)")
            + ": sampled responses could not end, or their end would be masked as padding",
            hint="give the tokenizer a pad token distinct from eos (the tokenizer stage sets <pad>)",
        )
    return Policy(
        folder=folder,
        base=Path(base) if info.is_adapter and base is not None else None,
        base_ref=base_ref,
        info=info,
        tokenizer=tok,
        tokenizer_input=tok_input,
        max_positions=int(positions) if isinstance(positions, int) else None,
        pad_id=int(tok.pad_token_id if tok.pad_token_id is not None else 0),
        stop_ids=[int(s) for s in stops],
        check_base=check_base,
        input_name=input_name,
    )


# --- prompts as token ids ----------------------------------------------------------------------------


def prompt_ids(tok: Any, prompt: Any) -> list[int]:
    """The tokens a policy answers ``prompt`` from: the chat template with the assistant's turn opened for
    chat messages, ``tokens(prompt)`` with bos for a string (the prompt half of split_prompt_completion)."""
    from stages.lib.chat import as_chat, generation_prompt_ids

    messages = as_chat(prompt)
    if messages is not None:
        return generation_prompt_ids(tok, messages)
    return list(tok(str(prompt), add_special_tokens=True)["input_ids"])


def encode_prompts(
    tok: Any,
    prompts: Sequence[PromptRow],
    *,
    max_positions: int | None,
    max_new_tokens: int,
    input_name: str = "prompts",
) -> list[list[int]]:
    """Every prompt's token ids; a prompt longer than ``max_positions − max_new_tokens`` (no room left for a
    full response) is refused, naming its row."""
    from stages.lib.chat import as_chat, require_chat_template

    if any(as_chat(p.prompt) is not None for p in prompts):
        require_chat_template(tok, input_name="tokenizer")
    limit = None if max_positions is None else max_positions - max_new_tokens
    if limit is not None and limit < 1:
        raise StageInputError(
            f"max_new_tokens {max_new_tokens} leaves no room for a prompt: the model has {max_positions} positions",
            hint=f"set max_new_tokens below {max_positions}",
        )
    out = []
    for p in prompts:
        ids = prompt_ids(tok, p.prompt)
        if not ids:
            raise StageInputError(
                f"input {input_name!r} row {p.row}: the prompt tokenises to nothing",
                hint="drop the empty row",
            )
        if limit is not None and len(ids) > limit:
            raise StageInputError(
                f"input {input_name!r} row {p.row}: the prompt has {len(ids)} tokens, more than the model's "
                f"{max_positions} positions minus max_new_tokens {max_new_tokens} (= {limit})",
                hint="drop or shorten the long prompts, or lower max_new_tokens",
            )
        out.append(ids)
    return out


# --- candidates ------------------------------------------------------------------------------------------


def as_completion(prompt: Any, text: str) -> Any:
    """A sampled text as a completion in the prompt's format (one assistant message for chat prompts)."""
    from stages.lib.chat import as_chat

    return [{"role": "assistant", "content": text}] if as_chat(prompt) is not None else text


def completion_text(completion: Any) -> str:
    """The text of a completion (the last message's content of a chat completion)."""
    from stages.lib.chat import as_chat

    messages = as_chat(completion)
    if messages is None:
        return str(completion)
    return str(messages[-1].get("content", "")) if messages else ""


@dataclass(frozen=True)
class Candidate:
    """One sampled response: its text, that text as a completion, whether a stop token ended it within
    ``max_new_tokens`` (else it was cut), and its length in tokens (the stop token included)."""

    prompt_index: int
    sample: int
    text: str
    completion: Any
    ended: bool
    tokens: int


def sample_candidates(
    model: Any,
    tok: Any,
    prompts: Sequence[PromptRow],
    ids: Sequence[Sequence[int]],
    *,
    n: int,
    pad_id: int,
    stop_ids: Sequence[int],
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    generator: Any = None,
    batch_size: int | None = None,
) -> list[list[Candidate]]:
    """``n`` responses per prompt (``candidates[i][j]``: prompt i, sample j) from our sampling loop: rows
    decoded ``batch_size`` at a time, random numbers from ``generator`` (a seed fixes the candidates)."""
    from stages.lib.generation import decode, sample

    rollout = sample(
        model,
        ids,
        pad_id=pad_id,
        stop_ids=stop_ids,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        num_samples=n,
        batch_size=batch_size,
        generator=generator,
    )
    texts = decode(tok, rollout)
    ended = [bool(e) for e in rollout.ended.tolist()]
    lengths = [int(x) for x in rollout.response_lengths().tolist()]
    out: list[list[Candidate]] = [[] for _ in prompts]
    for r, i in enumerate(rollout.prompt_index.tolist()):
        out[i].append(
            Candidate(
                i, len(out[i]), texts[r], as_completion(prompts[i].prompt, texts[r]), ended[r], lengths[r]
            )
        )
    return out


def make_generator(seed: int, device: Any) -> Any:
    """A ``torch.Generator`` on ``device`` seeded with ``seed`` (the model's device: sampling requires it)."""
    import torch

    return torch.Generator(device=torch.device(device)).manual_seed(int(seed))
