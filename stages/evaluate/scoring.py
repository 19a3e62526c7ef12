"""Held-out loss, greedy generation and the per-family scores of the ``evaluate`` stage.

Sequences and loss masks are built exactly as the ``sft`` stage builds them for
training (``stages.lib.chat``), so the loss is the training objective on
held-out data:

- plain prompt/completion: ``tokens(prompt) ⊕ tokens(completion) ⊕ eos``, loss on the
  completion and eos (seed §2.5 step 2);
- chat prompt/completion (or ``messages``, split before the last assistant turn): the
  conversation through the chat template, loss on the completion's assistant turns (their
  content and end marker, seed §3.4);
- text: ``tokens(text) ⊕ eos``, loss on every token but the first.

Loss = sum of token NLL / number of loss tokens (token-weighted, seed §3.7 step 3.2);
perplexity = exp(loss). Generation starts from the prompt the model was trained to answer
(the chat template's generation prompt for chat prompts) and stops at eos or the end-of-turn
token.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from stages.evaluate.data import Example

IGNORE = -100


def prompt_ids(tok: Any, ex: Example) -> list[int]:
    """What the model is given to generate from."""
    from stages.lib.chat import generation_prompt_ids

    if ex.conversational:
        return generation_prompt_ids(tok, list(ex.prompt))
    return list(tok(ex.prompt, add_special_tokens=True)["input_ids"])


def loss_sequence(tok: Any, ex: Example) -> tuple[list[int], list[int]]:
    """(token ids, labels): labels are the ids where the loss applies, IGNORE elsewhere."""
    from stages.lib.chat import encode_messages, encode_prompt_completion

    if ex.text is not None:
        ids = list(tok(ex.text, add_special_tokens=True)["input_ids"])
        if tok.eos_token_id is not None:
            ids.append(tok.eos_token_id)
        return ids, [IGNORE, *ids[1:]]
    if ex.conversational:
        enc = encode_messages(tok, list(ex.prompt) + list(ex.completion), train_from=len(ex.prompt))
    else:
        enc = encode_prompt_completion(tok, str(ex.prompt), str(ex.completion))
    return list(enc.input_ids), list(enc.labels)


def stop_ids(tok: Any, extra_tokens: Sequence[str]) -> list[int]:
    """eos, the chat template's end-of-turn token, and the named extra tokens that exist."""
    from stages.lib.chat import end_of_turn_ids

    vocab = tok.get_vocab()
    ids = list(end_of_turn_ids(tok)) + [vocab[t] for t in extra_tokens if t in vocab]
    return list(dict.fromkeys(int(i) for i in ids))


def token_losses(
    model: Any,
    sequences: Sequence[tuple[list[int], list[int]]],
    *,
    batch_size: int,
    max_length: int,
    pad_id: int,
    device: str,
) -> list[tuple[float, int]]:
    """Per sequence: (sum of NLL over the loss tokens, number of loss tokens)."""
    import torch
    import torch.nn.functional as F

    out: list[tuple[float, int]] = [(0.0, 0)] * len(sequences)
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i][0]))
    for lo in range(0, len(order), batch_size):
        chunk = order[lo : lo + batch_size]
        seqs = [(sequences[i][0][:max_length], sequences[i][1][:max_length]) for i in chunk]
        width = max(len(ids) for ids, _ in seqs)
        input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(seqs), width), dtype=torch.long)
        labels = torch.full((len(seqs), width), IGNORE, dtype=torch.long)
        for r, (ids, labs) in enumerate(seqs):
            input_ids[r, : len(ids)] = torch.tensor(ids)
            attention[r, : len(ids)] = 1
            labels[r, : len(labs)] = torch.tensor(labs)
            labels[r, 0] = IGNORE  # the first token is never predicted
        with torch.no_grad():
            logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits.float()
        shift_logits, shift_labels = logits[:, :-1], labels[:, 1:].to(device)
        nll = F.cross_entropy(
            shift_logits.reshape(-1, shift_logits.shape[-1]),
            shift_labels.reshape(-1),
            ignore_index=IGNORE,
            reduction="none",
        ).view(shift_labels.shape)
        mask = shift_labels != IGNORE
        sums, counts = (nll * mask).sum(dim=1), mask.sum(dim=1)
        for r, i in enumerate(chunk):
            out[i] = (float(sums[r]), int(counts[r]))
    return out


def generate(
    model: Any,
    tok: Any,
    prompts: Sequence[list[int]],
    *,
    max_new_tokens: int,
    batch_size: int,
    stop_ids: Sequence[int],
    pad_id: int,
    device: str,
    max_length: int,
) -> list[str]:
    """Greedy continuations (decoded without special tokens, stripped), cut at the first stop token."""
    import torch

    texts: list[str] = [""] * len(prompts)
    keep = max(1, max_length - max_new_tokens)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    stops = set(stop_ids)
    for lo in range(0, len(order), batch_size):
        chunk = order[lo : lo + batch_size]
        seqs = [prompts[i][-keep:] for i in chunk]
        width = max(len(s) for s in seqs)
        input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(seqs), width), dtype=torch.long)
        for r, ids in enumerate(seqs):  # left padding: every prompt ends at the last column
            input_ids[r, width - len(ids) :] = torch.tensor(ids)
            attention[r, width - len(ids) :] = 1
        with torch.no_grad():
            out = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention.to(device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=list(stop_ids) or None,
                pad_token_id=pad_id,
            )
        for r, i in enumerate(chunk):
            new = [int(t) for t in out[r, width:].tolist()]
            cut = next((k for k, t in enumerate(new) if t in stops), len(new))
            texts[i] = tok.decode(new[:cut], skip_special_tokens=True).strip()
    return texts


def normalize(text: str) -> str:
    return " ".join(text.split())


def exact_match(generation: str, reference: str) -> bool:
    """Equal after collapsing whitespace (leading/trailing/repeated)."""
    return normalize(generation) == normalize(reference)


def synthetic_judge() -> tuple[Callable[[str, Any, str], float], set[str]]:
    """(score, known families) of the gold judge of the synthetic task families (``stages.lib.judge``)."""
    from stages.lib.judge import score
    from stages.lib.tasks import FAMILIES

    return score, set(FAMILIES)


def judge_one(judge: Callable[[str, Any, str], float], ex: Example, generation: str) -> float | None:
    from hubflow.errors import StageInputError

    try:
        return float(judge(ex.family, ex.prompt, generation))
    except StageInputError:  # the prompt is not a task of that family
        return None


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Overall scores of result rows (keys: loss_sum, tokens, exact_match, judge_score)."""
    tokens = sum(r["tokens"] for r in rows)
    out: dict[str, Any] = {"examples": len(rows)}
    if tokens:
        loss = sum(r["loss_sum"] for r in rows) / tokens
        out.update(loss=round(loss, 6), perplexity=round(math.exp(min(loss, 700.0)), 4), loss_tokens=tokens)
    em = [r["exact_match"] for r in rows if r["exact_match"] is not None]
    if em:
        out["exact_match"] = round(sum(em) / len(em), 6)
    judged = [r["judge_score"] for r in rows if r["judge_score"] is not None]
    if judged:
        out.update(judge_accuracy=round(sum(judged) / len(judged), 6), judged=len(judged))
    sampled = [r["sampled_judge_score"] for r in rows if r.get("sampled_judge_score") is not None]
    if sampled:
        out["sampled_judge_accuracy"] = round(sum(sampled) / len(sampled), 6)
    return out


def by_family(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if r["family"] is not None:
            groups.setdefault(r["family"], []).append(r)
    return {fam: summarize(group) for fam, group in sorted(groups.items())}
