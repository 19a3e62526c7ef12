"""A gold evaluation of a policy against its reference on a fixed prompt set (seed §4.12: track the gold
reward and the KL as optimisation proceeds).

:func:`gold_evaluation` samples ``samples_per_prompt`` completions per prompt from the policy with our own
decoding loop (:func:`stages.lib.generation.sample`: left padding, explicit position ids, softmax(z/T)),
grades them with the gold judge and measures KL(π‖π_ref) per sequence on the same samples
(:func:`sequence_kl`). A seed fixes the samples, so two policies can be compared on the same prompts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class GoldEvaluation:
    gold: float
    """Mean gold reward per completion."""
    kl_per_sequence: float
    """Mean over the samples of Σ_t log π(y_t|…) − log π_ref(y_t|…), nats per sequence."""
    completions: int
    mean_length: float


def sequence_kl(
    policy: Any,
    reference: Any,
    prompts: Sequence[Sequence[int]],
    completions: Sequence[Sequence[int]],
    *,
    pad_id: int,
    temperature: float = 1.0,
    batch_size: int = 256,
) -> list[float]:
    """Per-sequence k1 KL of each (prompt, completion) pair: Σ_t [log π − log π_ref] over the completion's
    tokens, log-probs of softmax(logits / T) with explicit position ids; no gradient."""
    from contextlib import nullcontext

    from stages.lib.reinforce.scoring import KlProbe

    probe = KlProbe(
        lambda: nullcontext(reference), temperature=temperature, pad_id=pad_id, batch_size=batch_size
    )
    return probe.measure(policy, prompts, completions)


def gold_evaluation(
    policy: Any,
    reference: Any,
    tok: Any,
    rows: Sequence[dict[str, Any]],
    *,
    samples_per_prompt: int = 4,
    max_new_tokens: int = 16,
    temperature: float = 1.0,
    seed: int = 0,
) -> GoldEvaluation:
    """Sample from ``policy`` on ``rows`` (``prompt`` and ``family``), grade with the gold judge, and measure
    KL to ``reference`` on the same samples."""
    import torch

    from stages.lib.chat import end_of_turn_ids
    from stages.lib.generation import sample
    from stages.lib.reinforce.inputs import prompt_ids
    from stages.lib.rewards import gold_rewards

    ids = [prompt_ids(tok, r["prompt"]) for r in rows]
    device = next(policy.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    rollout = sample(
        policy,
        ids,
        pad_id=tok.pad_token_id,
        stop_ids=end_of_turn_ids(tok),
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        num_samples=samples_per_prompt,
        generator=generator,
    )
    chat = isinstance(rows[0]["prompt"], (list, tuple))
    index = [int(i) for i in rollout.prompt_index.cpu()]
    completion_ids, completions = [], []
    for r in range(rollout.response_ids.shape[0]):
        tokens = rollout.response_ids[r][rollout.response_mask[r].bool()].tolist()
        completion_ids.append(tokens)
        text = tok.decode(tokens, skip_special_tokens=True)
        completions.append([{"role": "assistant", "content": text}] if chat else text)
    gold = gold_rewards([rows[i]["family"] for i in index], [rows[i]["prompt"] for i in index], completions)
    kl = sequence_kl(
        policy,
        reference,
        [ids[i] for i in index],
        completion_ids,
        pad_id=tok.pad_token_id,
        temperature=temperature,
    )
    return GoldEvaluation(
        gold=sum(gold) / len(gold),
        kl_per_sequence=sum(kl) / len(kl),
        completions=len(gold),
        mean_length=sum(len(c) for c in completion_ids) / len(completion_ids),
    )
