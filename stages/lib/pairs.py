"""Preference data for every preference kind (reward, dpo, kto, orpo, evaluate, online_dpo): reading
pairs ``(prompt, chosen, rejected)`` and pointwise rows ``(prompt, completion, label)`` with their checks,
tokenising them as a policy sees and produces them, and the log-probability of a completion.

Seed §4.3: ``D_pref = {(x, y_w, y_l)}``; §4.8.2: ``D_KTO = {(x, y, b)}``. Prompts and completions are
chat message lists (the ``synthetic`` stage's conversational format) or plain strings; both go through
:func:`stages.lib.chat.split_prompt_completion`.

Truncation, as TRL does it: the prompt keeps its last ``max_prompt_length`` tokens, a completion is cut
so prompt + completion fit ``max_length``, and a row whose prompt alone fills ``max_length`` is dropped
(counted, never silently).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hubflow.errors import StageInputError

PAIR_COLUMNS = ("prompt", "chosen", "rejected")
POINTWISE_COLUMNS = ("prompt", "completion", "label")


@dataclass(frozen=True)
class Pair:
    prompt: Any
    chosen: Any
    rejected: Any
    family: str | None = None
    row: int = 0


@dataclass(frozen=True)
class Pointwise:
    prompt: Any
    completion: Any
    label: bool
    family: str | None = None
    row: int = 0


def read_pairs(
    folder: Path, split: str = "train", *, input_name: str, limit: int | None = None
) -> list[Pair]:
    """The preference pairs of a split; a missing column is named with the columns present."""
    from stages.lib.datasets import read_rows

    rows = read_rows(
        folder,
        split,
        PAIR_COLUMNS,
        input_name=input_name,
        hint="a preference dataset has columns prompt, chosen and rejected (the synthetic stage's "
        "`preferences` output), chat message lists or strings",
        optional=("family",),
        limit=limit,
    )
    return [Pair(r["prompt"], r["chosen"], r["rejected"], r.get("family"), i) for i, r in enumerate(rows)]


def read_pointwise(
    folder: Path, split: str = "train", *, input_name: str, limit: int | None = None, both_labels: bool = True
) -> list[Pointwise]:
    """KTO rows ``(prompt, completion, label)``; ``both_labels`` refuses data with only one label."""
    from stages.lib.datasets import read_rows

    rows = read_rows(
        folder,
        split,
        POINTWISE_COLUMNS,
        input_name=input_name,
        hint="pointwise feedback has columns prompt, completion and label (true = desirable; the synthetic "
        "stage's `feedback` output)",
        optional=("family",),
        limit=limit,
    )
    bad = [i for i, r in enumerate(rows) if not isinstance(r["label"], bool)]
    if bad:
        raise StageInputError(
            f"input {input_name!r}: column 'label' must be booleans (desirable or not); row {bad[0]} is "
            f"{rows[bad[0]]['label']!r}",
            hint="write the label column as true/false",
        )
    out = [
        Pointwise(r["prompt"], r["completion"], r["label"], r.get("family"), i) for i, r in enumerate(rows)
    ]
    if both_labels:
        desirable = sum(p.label for p in out)
        if desirable in (0, len(out)):
            which = "desirable" if desirable else "undesirable"
            raise StageInputError(
                f"input {input_name!r} ({split}) has only {which} rows ({len(out)}): KTO needs both labels",
                hint="add rows of the other label (the synthetic stage's `desirable_ratio` sets the mix)",
            )
    return out


@dataclass(frozen=True)
class EncodedPair:
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    row: int = 0


def _fit(prompt: list[int], completion: list[int], max_length: int, max_prompt_length: int | None) -> tuple:
    if max_prompt_length is not None and len(prompt) > max_prompt_length:
        prompt = prompt[-max_prompt_length:]
    return prompt, completion[: max(0, max_length - len(prompt))]


def encode_pairs(
    tok: Any, pairs: Sequence[Pair], *, max_length: int, max_prompt_length: int | None = None
) -> tuple[list[EncodedPair], int]:
    """(encoded pairs, rows dropped because the prompt alone fills ``max_length``)."""
    from stages.lib.chat import split_prompt_completion

    out, dropped = [], 0
    for pair in pairs:
        prompt, chosen = split_prompt_completion(tok, pair.prompt, pair.chosen)
        _, rejected = split_prompt_completion(tok, pair.prompt, pair.rejected)
        p, c = _fit(prompt, chosen, max_length, max_prompt_length)
        _, r = _fit(prompt, rejected, max_length, max_prompt_length)
        if not c or not r:
            dropped += 1
            continue
        out.append(EncodedPair(p, c, r, pair.row))
    return out, dropped


def completion_batch(
    prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]], pad_id: int
) -> tuple[Any, Any, Any]:
    """(input_ids, attention_mask, completion_mask) [B, L] of prompt ⊕ completion, right-padded;
    ``completion_mask`` is 1 on the completion's tokens."""
    import torch

    from stages.lib.generation import right_pad

    seqs = [list(p) + list(c) for p, c in zip(prompts, completions, strict=True)]
    ids, mask = right_pad(seqs, pad_id)
    comp = torch.zeros_like(mask)
    for i, (p, c) in enumerate(zip(prompts, completions, strict=True)):
        comp[i, len(p) : len(p) + len(c)] = 1
    return ids, mask, comp


def completion_token_logps(
    model: Any, input_ids: Any, attention_mask: Any, completion_mask: Any, *, temperature: float = 1.0
) -> Any:
    """[B, L-1] log-probs of every token given the ones before it (logits / T), 0 outside the completion;
    one forward with explicit position ids. Gradients flow (wrap a frozen model's call in no_grad)."""
    from stages.lib.generation import forward_logits, position_ids

    logits = forward_logits(model, input_ids, attention_mask, position_ids(attention_mask))[:, :-1].float()
    logits = logits / temperature
    targets = input_ids[:, 1:].unsqueeze(-1)
    picked = logits.gather(-1, targets).squeeze(-1) - logits.logsumexp(dim=-1)
    return picked * completion_mask[:, 1:].to(picked.dtype)


def completion_logps(
    model: Any,
    prompts: Sequence[Sequence[int]],
    completions: Sequence[Sequence[int]],
    *,
    pad_id: int,
    average: bool = False,
    temperature: float = 1.0,
) -> Any:
    """[B] log π(completion | prompt): the sum (or, ``average``, the mean) over the completion's tokens."""
    from stages.lib.preference import sequence_logps

    ids, mask, comp = completion_batch(prompts, completions, pad_id)
    device = next(model.parameters()).device
    ids, mask, comp = ids.to(device), mask.to(device), comp.to(device)
    token = completion_token_logps(model, ids, mask, comp, temperature=temperature)
    return sequence_logps(token, comp[:, 1:], average=average)
