"""Tokenisation with loss masks (seed §2.5 step 2, §3.4).

Every training example becomes ``input_ids`` and ``labels``, where ``labels`` is
``input_ids`` with every token that must not be learned set to ``IGNORE`` (-100):

- prompt/completion: ``s = tokens(prompt) ⊕ tokens(completion) ⊕ <eos>`` with
  ``m_t = 0`` on the prompt and 1 on the completion and the eos. The two parts are
  tokenised separately, so the prompt tokens are exactly those the model sees
  at inference (no merge across the boundary);
- chat messages: the conversation rendered by the tokenizer's chat template;
  only tokens inside the trained assistant turns count. A turn's region is where
  the rendering of ``messages[:i]`` with the generation prompt ends and that of
  ``messages[:i+1]`` ends (the template must render prefixes consistently); when
  the template marks assistant turns with ``{% generation %}``, the region is cut
  to what those blocks contain (the content and its end marker).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from hubflow.errors import StageInputError

IGNORE = -100
_GENERATION = re.compile(r"\{%-?\s*generation\s*-?%\}")


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]

    @property
    def trained(self) -> int:
        return sum(1 for t in self.labels if t != IGNORE)

    def truncated(self, max_length: int) -> Encoded:
        return Encoded(self.input_ids[:max_length], self.labels[:max_length])

    def as_row(self) -> dict[str, list[int]]:
        return {"input_ids": self.input_ids, "labels": self.labels}


def require_chat_template(tok: Any, *, input_name: str) -> None:
    if not getattr(tok, "chat_template", None):
        raise StageInputError(
            f"the tokenizer of input {input_name!r} has no chat template, which format `messages` (and the "
            "instruct stage) need to render conversations",
            hint="use a tokenizer made by the `tokenizer` stage (it writes one), or set `chat_template:` on this "
            "stage to a Jinja template",
        )


def has_generation_blocks(tok: Any) -> bool:
    return bool(_GENERATION.search(tok.chat_template or ""))


def encode_prompt_completion(tok: Any, prompt: str, completion: str) -> Encoded:
    """tokens(prompt) (with the tokenizer's bos) ⊕ tokens(completion) ⊕ eos; loss on completion and eos."""
    prompt_ids = list(tok(prompt, add_special_tokens=True)["input_ids"])
    completion_ids = list(tok(completion, add_special_tokens=False)["input_ids"])
    if tok.eos_token_id is not None:
        completion_ids.append(tok.eos_token_id)
    return Encoded(prompt_ids + completion_ids, [IGNORE] * len(prompt_ids) + completion_ids)


def _render(tok: Any, messages: list[dict[str, Any]], add_generation_prompt: bool = False) -> str:
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def turn_spans(
    tok: Any, messages: list[dict[str, Any]], train_from: int = 0
) -> tuple[str, list[tuple[int, int]]]:
    """(rendered text, character span of each assistant turn at index >= train_from)."""
    text = _render(tok, messages)
    spans: list[tuple[int, int]] = []
    for i, message in enumerate(messages):
        if message.get("role") != "assistant" or i < train_from:
            continue
        before = _render(tok, messages[:i], add_generation_prompt=True) if i else ""
        upto = _render(tok, messages[: i + 1])
        if not (text.startswith(before) and text.startswith(upto) and len(upto) >= len(before)):
            raise StageInputError(
                "the chat template renders a conversation's beginning differently from the whole conversation, "
                "so the assistant turns cannot be located for the loss mask",
                hint="use a template whose rendering of messages[:i] (with add_generation_prompt) is a prefix of "
                "the full rendering, or mark assistant turns with {% generation %}...{% endgeneration %}",
            )
        spans.append((len(before), len(upto)))
    return text, spans


def _overlaps(start: int, end: int, spans: list[tuple[int, int]]) -> bool:
    return any(start < b and end > a for a, b in spans)


def encode_messages(tok: Any, messages: list[dict[str, Any]], train_from: int = 0) -> Encoded:
    """A conversation through the chat template; loss only on assistant turns at index >= ``train_from``."""
    text, spans = turn_spans(tok, messages, train_from)
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    keep = [_overlaps(a, b, spans) if b > a else False for a, b in enc["offset_mapping"]]
    if has_generation_blocks(tok):
        masked = tok.apply_chat_template(messages, return_dict=True, return_assistant_tokens_mask=True)
        if list(masked["input_ids"]) != ids:
            raise StageInputError(
                "the chat template's tokenisation differs between two identical renderings",
                hint="check the tokenizer; rendering then tokenising should be deterministic",
            )
        keep = [k and bool(g) for k, g in zip(keep, masked["assistant_masks"], strict=True)]
    labels = [t if k else IGNORE for t, k in zip(ids, keep, strict=True)]
    return Encoded(ids, labels)


def generation_prompt_ids(tok: Any, messages: list[dict[str, Any]]) -> list[int]:
    """Token ids of a conversation ending with the assistant's turn opened (for greedy decoding)."""
    text = _render(tok, messages, add_generation_prompt=True)
    return list(tok(text, add_special_tokens=False)["input_ids"])


def end_of_turn_ids(tok: Any) -> list[int]:
    """Token ids that end a reply: eos, and the special token the chat template closes an assistant turn with."""
    out = [tok.eos_token_id] if tok.eos_token_id is not None else []
    if getattr(tok, "chat_template", None):
        try:
            enc = encode_messages(
                tok, [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]
            )
        except Exception:  # a template that needs more (a system turn...) just gives no extra stop token
            return out
        trained = [t for t in enc.labels if t != IGNORE]
        special = set(getattr(tok, "all_special_ids", []))
        if trained and trained[-1] in special and trained[-1] not in out:
            out.append(trained[-1])
    return out


def as_chat(value: Any) -> list[dict[str, Any]] | None:
    """``value`` as a list of chat messages (``{role, content}`` dicts), or None for a plain string."""
    if isinstance(value, (list, tuple)):
        return [dict(m) for m in value]
    if isinstance(value, dict):
        return [dict(value)]
    return None


def split_prompt_completion(tok: Any, prompt: Any, completion: Any) -> tuple[list[int], list[int]]:
    """(prompt ids, completion ids) of one example exactly as a policy sees and produces them.

    Chat data (lists of ``{role, content}``): the prompt rendered with the assistant's turn opened
    (:func:`generation_prompt_ids`), the completion's trained tokens (its content and the end-of-turn
    marker, nothing after). Plain strings: ``tokens(prompt)`` with bos, ``tokens(completion) ⊕ eos``.
    Every preference and RL kind tokenises through this, so a reward model is trained on the tokens
    a policy samples, and a DPO log-prob covers exactly the tokens a policy generates.
    """
    prompt_msgs, completion_msgs = as_chat(prompt), as_chat(completion)
    if prompt_msgs is None and completion_msgs is None:
        enc = encode_prompt_completion(tok, str(prompt), str(completion))
        n = sum(1 for t in enc.labels if t == IGNORE)
        return enc.input_ids[:n], enc.input_ids[n:]
    if prompt_msgs is None or completion_msgs is None:
        raise StageInputError(
            "a prompt and its completion must both be chat message lists or both be strings; got "
            f"{type(prompt).__name__} and {type(completion).__name__}",
            hint="write the dataset with one format (the synthetic stage's `format:` sets it for all columns)",
        )
    prompt_ids = generation_prompt_ids(tok, prompt_msgs)
    enc = encode_messages(tok, [*prompt_msgs, *completion_msgs], train_from=len(prompt_msgs))
    if enc.input_ids[: len(prompt_ids)] != prompt_ids:
        raise StageInputError(
            "the chat template renders the prompt differently on its own and inside the conversation",
            hint="use a template whose rendering of the prompt with add_generation_prompt is a prefix of the full one",
        )
    trained = [i for i, t in enumerate(enc.labels) if t != IGNORE]
    if not trained:
        return prompt_ids, []
    return prompt_ids, enc.input_ids[len(prompt_ids) : trained[-1] + 1]
