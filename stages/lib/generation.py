"""Sampling from a causal LM: padding, position ids, the ``Rollout`` and our own decoding loop.

Shared by every stage that generates (evaluate, best_of_n, online_dpo, ppo, cai). Item numbers refer
to "PPO details" in ``shared/notes/alignment-reference.md``:

- prompts are left-padded and every forward gets explicit ``position_ids = cumsum(mask) - 1`` (item 14);
- pad must differ from every stop token, else the stop token is masked as padding (item 13);
- a row ends at its first stop token, which its response mask includes; rows without one are
  ``ended=False`` so that a stage can penalise them (item 12);
- sampling draws from exactly ``softmax(logits / T)`` filtered by top-k then top-p, the distribution
  whose log-probs :mod:`stages.lib.logprobs` computes with the same T (item 2).

Scoring forwards (log-probs, reward model, critic) live in :mod:`stages.lib.logprobs`.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) [B, max len]: every sequence ends at the last column (for generation)."""
    width = max((len(s) for s in sequences), default=0)
    ids = torch.full((len(sequences), width), int(pad_id), dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for r, seq in enumerate(sequences):
        if len(seq):
            ids[r, width - len(seq) :] = torch.tensor([int(t) for t in seq], dtype=torch.long)
            mask[r, width - len(seq) :] = 1
    return ids, mask


def right_pad(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) [B, max len]: every sequence starts at column 0."""
    width = max((len(s) for s in sequences), default=0)
    ids = torch.full((len(sequences), width), int(pad_id), dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for r, seq in enumerate(sequences):
        if len(seq):
            ids[r, : len(seq)] = torch.tensor([int(t) for t in seq], dtype=torch.long)
            mask[r, : len(seq)] = 1
    return ids, mask


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """``cumsum(mask) - 1`` on real tokens and 0 on padding (item 14): a left-padded row starts at 0."""
    mask = attention_mask.long()
    return ((mask.cumsum(-1) - 1) * mask).clamp(min=0)


@dataclass
class Rollout:
    """Prompts and their sampled responses, one row per sample.

    ``prompt_ids``/``prompt_mask`` [B, P] are left-padded; ``response_ids``/``response_mask`` [B, R] are
    right-padded, with pad after each row's end, and the mask is 1 on the real response tokens up to and
    including the first stop token (item 12). ``ended`` [B] says a stop token came within
    ``max_new_tokens``; ``prompt_index`` [B] names the input prompt of each row (``num_samples`` rows per
    prompt, consecutive). Tensors live on the model's device.
    """

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    response_ids: torch.Tensor
    response_mask: torch.Tensor
    ended: torch.Tensor
    prompt_index: torch.Tensor

    @property
    def response_start(self) -> int:
        """Column of the first response token in :meth:`sequences` (the padded prompt width P)."""
        return int(self.prompt_ids.shape[1])

    def sequences(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(input_ids, attention_mask, position_ids) [B, P + R] of prompt ⊕ response (item 14)."""
        ids = torch.cat([self.prompt_ids, self.response_ids], dim=1)
        mask = torch.cat([self.prompt_mask, self.response_mask], dim=1)
        return ids, mask, position_ids(mask)

    def response_lengths(self) -> torch.Tensor:
        """[B] real response tokens per row, the stop token included."""
        return self.response_mask.sum(dim=1)

    def last_token_index(self) -> torch.Tensor:
        """[B] column in :meth:`sequences` of each row's last real token, where a reward model or critic reads
        its score (item 14): the stop token of an ended row, else the last sampled token."""
        return self.response_start + self.response_lengths() - 1


def sampling_probs(
    logits: torch.Tensor, *, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0
) -> torch.Tensor:
    """The distribution :func:`sample` draws from: ``softmax(logits / T)`` restricted to the ``top_k`` most
    likely tokens (0: all), then to the smallest set whose mass reaches ``top_p``, renormalised (item 2)."""
    scores = logits.float() / temperature
    if 0 < top_k < scores.shape[-1]:
        kth = torch.topk(scores, top_k, dim=-1).values[..., -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p < 1.0:
        ordered, order = torch.sort(scores, dim=-1, descending=True)
        probs = ordered.softmax(dim=-1)
        drop = (probs.cumsum(dim=-1) - probs) >= top_p  # the mass above a token already reaches top_p
        drop[..., 0] = False
        scores = scores.masked_fill(torch.zeros_like(drop).scatter(-1, order, drop), float("-inf"))
    return scores.softmax(dim=-1)


def sample(
    model: Any,
    prompts: Sequence[Sequence[int]],
    *,
    pad_id: int,
    stop_ids: Sequence[int],
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    greedy: bool = False,
    num_samples: int = 1,
    batch_size: int | None = None,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
) -> Rollout:
    """Sample ``num_samples`` responses per prompt with our own decoding loop (not ``model.generate``).

    Each step draws from :func:`sampling_probs` (or takes the argmax with ``greedy``) using ``generator``,
    so a seed fixes the samples. With ``use_cache`` the prompt is encoded once into a ``DynamicCache`` and
    each step feeds one token with its position id and the grown attention mask; without it the whole
    sequence is re-encoded every step (same tokens, slower). Left-padded prompts, explicit position ids
    (item 14); a row ends at its first stop token and emits pad afterwards (items 12, 13); the loop stops
    when every row has ended. Runs in eval mode (dropout off, item 1) under ``torch.no_grad()`` and
    restores the model's training mode. ``batch_size`` rows (prompt × sample) go through at a time,
    grouped by prompt length; rows come back in input order. Works on a ``PeftModel`` with LoRA.
    """
    _check_sampling(
        prompts, pad_id, stop_ids, max_new_tokens, temperature, top_p, top_k, greedy, num_samples, batch_size
    )
    if getattr(getattr(model, "active_peft_config", None), "is_prompt_learning", False):
        raise ValueError(
            "model: prompt-learning adapters change positions and the cache; use LoRA or merge it"
        )
    device = _device(model)
    if generator is not None and generator.device.type != device.type:
        raise ValueError(f"generator is on {generator.device} but the model on {device}: create it there")
    rows = [[int(t) for t in p] for p in prompts for _ in range(num_samples)]
    index = [i for i in range(len(prompts)) for _ in range(num_samples)]
    size = batch_size or len(rows)
    order = (
        sorted(range(len(rows)), key=lambda r: len(rows[r])) if size < len(rows) else list(range(len(rows)))
    )
    options = dict(
        pad_id=int(pad_id),
        stop_ids=[int(s) for s in stop_ids],
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        greedy=greedy,
        generator=generator,
        use_cache=use_cache,
    )
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            parts = [
                _sample_batch(model, [rows[r] for r in order[lo : lo + size]], device, **options)
                for lo in range(0, len(order), size)
            ]
    finally:
        model.train(was_training)
    return _assemble(parts, order, index, int(pad_id), device)


def decode(tok: Any, rollout: Rollout, *, skip_special_tokens: bool = True) -> list[str]:
    """The responses as text, without the stop token and the padding after it (not stripped)."""
    lengths = (rollout.response_lengths() - rollout.ended.long()).tolist()
    rows = rollout.response_ids.tolist()
    return [
        tok.decode(ids[:n], skip_special_tokens=skip_special_tokens)
        for ids, n in zip(rows, lengths, strict=True)
    ]


def _check_sampling(
    prompts: Sequence[Sequence[int]],
    pad_id: int,
    stop_ids: Sequence[int],
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    top_k: int,
    greedy: bool,
    num_samples: int,
    batch_size: int | None,
) -> None:
    if len(prompts) == 0:
        raise ValueError("prompts is empty: pass at least one prompt")
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise ValueError(f"prompts[{i}] is empty: every prompt needs at least one token (e.g. bos)")
    if len(stop_ids) == 0:
        raise ValueError("stop_ids is empty: name eos (and the end-of-turn token) so that rows can end")
    if int(pad_id) in {int(s) for s in stop_ids}:
        raise ValueError(
            f"pad and stop tokens must differ: pad_id {pad_id} is in stop_ids {list(stop_ids)}; "
            "give the tokenizer a pad token distinct from eos (item 13)"
        )
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if temperature <= 0 and not greedy:
        raise ValueError(f"temperature must be > 0, got {temperature}: pass greedy=True for argmax decoding")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}: 1 disables nucleus filtering")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0, got {top_k}: 0 disables top-k filtering")
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 or None (all rows at once), got {batch_size}")


def _sample_batch(
    model: Any,
    rows: list[list[int]],
    device: torch.device,
    *,
    pad_id: int,
    stop_ids: list[int],
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    top_k: int,
    greedy: bool,
    generator: torch.Generator | None,
    use_cache: bool,
) -> tuple[torch.Tensor, ...]:
    """(prompt_ids, prompt_mask, response_ids, response_mask, ended) of one batch of rows."""
    prompt_ids, prompt_mask = (t.to(device) for t in left_pad(rows, pad_id))
    stops = torch.tensor(stop_ids, device=device)
    done = torch.zeros(len(rows), dtype=torch.bool, device=device)
    ids, mask = prompt_ids, prompt_mask
    step_ids, step_pos = prompt_ids, position_ids(prompt_mask)
    cache = _new_cache(model) if use_cache else None
    tokens, real = [], []
    for _ in range(max_new_tokens):
        if cache is None:  # re-encode everything: the reference the cached path must equal
            step_ids, step_pos = ids, position_ids(mask)
        logits = forward_logits(model, step_ids, mask, step_pos, cache=cache, keep=1)[:, -1]
        if greedy:
            nxt = logits.argmax(dim=-1)
        else:
            probs = sampling_probs(logits, temperature=temperature, top_k=top_k, top_p=top_p)
            nxt = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        live = ~done
        nxt = torch.where(live, nxt, torch.full_like(nxt, pad_id))
        done = done | torch.isin(nxt, stops)
        tokens.append(nxt)
        real.append(live.long())
        ids = torch.cat([ids, nxt[:, None]], dim=1)
        mask = torch.cat([mask, live.long()[:, None]], dim=1)
        if bool(done.all()):
            break
        step_ids, step_pos = nxt[:, None], position_ids(mask)[:, -1:]
    return prompt_ids, prompt_mask, torch.stack(tokens, dim=1), torch.stack(real, dim=1), done


def _assemble(
    parts: list[tuple[torch.Tensor, ...]],
    order: list[int],
    index: list[int],
    pad_id: int,
    device: torch.device,
) -> Rollout:
    """One Rollout from batches of different widths, rows back in input order."""
    width_p = max(p[0].shape[1] for p in parts)
    width_r = max(p[2].shape[1] for p in parts)

    def left(t: torch.Tensor, value: int) -> torch.Tensor:
        return F.pad(t, (width_p - t.shape[1], 0), value=value)

    def right(t: torch.Tensor, value: int) -> torch.Tensor:
        return F.pad(t, (0, width_r - t.shape[1]), value=value)

    inverse = torch.argsort(torch.tensor(order, device=device))
    return Rollout(
        prompt_ids=torch.cat([left(p[0], pad_id) for p in parts])[inverse],
        prompt_mask=torch.cat([left(p[1], 0) for p in parts])[inverse],
        response_ids=torch.cat([right(p[2], pad_id) for p in parts])[inverse],
        response_mask=torch.cat([right(p[3], 0) for p in parts])[inverse],
        ended=torch.cat([p[4] for p in parts])[inverse],
        prompt_index=torch.tensor(index, dtype=torch.long, device=device),
    )


def forward_logits(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor,
    *,
    cache: Any = None,
    keep: int = 0,
) -> torch.Tensor:
    """Logits of a causal LM (or a PeftModel around one) with explicit position ids (item 14).

    ``cache`` is passed under the name the model's forward takes (transformers 5 renamed
    ``past_key_values`` to ``cache``) and ``use_cache`` is off without one, so scoring forwards build no
    cache. ``keep`` > 0 asks for the last ``keep`` positions' logits only (``logits_to_keep``) where the
    model supports it; the result always holds at least those positions last.
    """
    params = _forward_params(model)
    kwargs: dict[str, Any] = dict(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        use_cache=cache is not None,
    )
    if cache is not None:
        kwargs["cache" if "cache" in params else "past_key_values"] = cache
    if keep and "logits_to_keep" in params:
        kwargs["logits_to_keep"] = keep
    return model(**kwargs).logits


def unwrap(model: Any) -> Any:
    """The transformers model under a PeftModel (its LoRA layers injected in place), else ``model``."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _forward_params(model: Any) -> set[str]:
    return set(inspect.signature(unwrap(model).forward).parameters)


def _new_cache(model: Any) -> Any:
    from transformers import DynamicCache

    try:
        return DynamicCache(config=model.config)
    except TypeError:  # transformers < 4.56 takes no config
        return DynamicCache()


def _device(model: Any) -> torch.device:
    return next(model.parameters()).device
