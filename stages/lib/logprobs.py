"""Scoring forwards over prompt ⊕ response: token log-probs, reward-model scores, critic values.

Every forward gets the attention mask and explicit ``position_ids = cumsum(mask) - 1`` (item 14 of "PPO
details" in ``shared/notes/alignment-reference.md``), so a left-padded batch scores like its rows one at a
time, and builds no KV cache. These functions neither switch the model's mode nor disable gradients: the
policy's new log-probs need gradients, the reference's and the reward model's do not (wrap those calls in
``torch.no_grad()``), and dropout must be off in all of them (item 1).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from stages.lib.generation import Rollout, forward_logits, position_ids, unwrap


def token_logprobs(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    response_start: int,
    temperature: float = 1.0,
    with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(log-probs [B, R], entropy [B, R] or None) of the tokens from column ``response_start`` on.

    One forward; only the R positions that predict those tokens go through the LM head (``logits_to_keep``)
    and the softmax, with logits divided by ``temperature``, the sampling temperature (item 2). Without
    ``with_entropy`` the log-prob is ``logit[token] - logsumexp(logits)``, never materialising a second
    [B, R, V] tensor. Padded positions (``attention_mask`` 0) hold 0.
    """
    length = int(input_ids.shape[1])
    if not 0 < response_start < length:
        raise ValueError(
            f"response_start must be in [1, {length - 1}] for sequences of {length}, got {response_start}"
        )
    if temperature <= 0:
        raise ValueError(
            f"temperature must be > 0, got {temperature}: use the sampling temperature (1 for greedy)"
        )
    width = length - response_start
    logits = forward_logits(model, input_ids, attention_mask, position_ids(attention_mask), keep=width + 1)
    logits = logits[:, -(width + 1) : -1].float() / temperature
    targets = input_ids[:, response_start:].unsqueeze(-1)
    mask = attention_mask[:, response_start:].to(logits.dtype)
    if not with_entropy:
        picked = logits.gather(-1, targets).squeeze(-1) - logits.logsumexp(dim=-1)
        return picked * mask, None
    logp = logits.log_softmax(dim=-1)
    entropy = -(logp.exp() * logp).sum(dim=-1)
    return logp.gather(-1, targets).squeeze(-1) * mask, entropy * mask


def rollout_logprobs(
    model: Any, rollout: Rollout, temperature: float = 1.0, with_entropy: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`token_logprobs` of a rollout's responses [B, R], 0 after each row's end (item 12)."""
    ids, mask, _ = rollout.sequences()
    logp, entropy = token_logprobs(
        model,
        ids,
        mask,
        response_start=rollout.response_start,
        temperature=temperature,
        with_entropy=with_entropy,
    )
    keep = rollout.response_mask.to(logp.dtype)
    return logp * keep, None if entropy is None else entropy * keep


def hidden_states(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, L, H] last hidden states of the model's backbone (``model.model`` of a Llama, under a PeftModel
    too), with explicit position ids (item 14) and no cache."""
    base = unwrap(model)
    backbone = getattr(base, base.base_model_prefix)
    out = backbone(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids(attention_mask),
        use_cache=False,
    )
    return out.last_hidden_state


def last_token_scores(
    model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, head: Callable | None = None
) -> torch.Tensor:
    """[B] scores of a reward model at each row's last real token (item 14), for any contiguous padding.

    ``head`` maps hidden states [..., H] to [..., 1]; by default the ``score`` head of an
    ``AutoModelForSequenceClassification`` with ``num_labels=1``. We pick the token from the attention
    mask rather than letting transformers look for the last token that differs from ``pad_token_id``
    (which is wrong when pad equals eos, item 13, and refuses batches when the config has no pad id).
    """
    last = (torch.arange(input_ids.shape[1], device=input_ids.device) * attention_mask.long()).argmax(dim=-1)
    return _pooled(model, input_ids, attention_mask, last, head)


def sequence_scores(model: Any, rollout: Rollout, *, head: Callable | None = None) -> torch.Tensor:
    """[B] reward-model scores of prompt ⊕ response at :meth:`Rollout.last_token_index` (items 6, 14):
    the stop token of an ended row, else its last sampled token."""
    ids, mask, _ = rollout.sequences()
    return _pooled(model, ids, mask, rollout.last_token_index(), head)


def token_values(model: Any, rollout: Rollout, *, head: Callable | None = None) -> torch.Tensor:
    """[B, R] critic values aligned with the response tokens (item 3), 0 after each row's end.

    ``values[:, t]`` is read at the hidden state of the token before response token t, i.e. the value of
    the state in which token t was chosen; the same alignment as :func:`rollout_logprobs`, which is what
    GAE (item 9) needs. ``head`` maps hidden states [..., H] to [..., 1] (a value head module); by default
    it is the ``score`` head of a sequence-classification critic initialised from the reward model,
    applied at every position.
    """
    ids, mask, _ = rollout.sequences()
    start = rollout.response_start
    hidden = hidden_states(model, ids, mask)[:, start - 1 : -1]
    values = _score_head(model, head)(hidden)
    values = values.squeeze(-1) if values.dim() == 3 else values
    return values * rollout.response_mask.to(values.dtype)


def _pooled(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    last: torch.Tensor,
    head: Callable | None,
) -> torch.Tensor:
    hidden = hidden_states(model, input_ids, attention_mask)
    picked = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    scores = _score_head(model, head)(picked)
    return scores.squeeze(-1) if scores.dim() == 2 and scores.shape[-1] == 1 else scores


def _score_head(model: Any, head: Callable | None) -> Callable:
    if head is not None:
        return head
    score = getattr(unwrap(model), "score", None)
    if score is None:
        raise ValueError(
            f"model ({type(unwrap(model)).__name__}) has no `score` head: load the reward model or critic "
            "with AutoModelForSequenceClassification(num_labels=1), or pass head="
        )
    return score
