"""The gold judge's mean score of *sampled* completions: the expected reward that RL optimises.

Greedy exact match asks whether the single most likely answer is right; PPO, GRPO and best-of-N move
probability mass, which shows in what a policy samples at temperature T long before (or without) a
change of its argmax. With ``sampled: {samples: K, temperature: T}`` evaluate draws K completions per
prompt with :func:`stages.lib.generation.sample` (seeded) and reports the judge's mean over them,
``sampled_judge_accuracy``, overall and per family.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any


def sampled_scores(
    model: Any,
    tok: Any,
    examples: Sequence[Any],
    prompts: Sequence[list[int]],
    judge: Callable[[Any, str], float | None],
    *,
    samples: int,
    temperature: float,
    top_p: float,
    seed: int,
    max_new_tokens: int,
    stop_ids: Sequence[int],
    pad_id: int,
    batch_size: int,
) -> list[float | None]:
    """Per example: the mean judge score of ``samples`` sampled completions (None where the judge abstains)."""
    import torch

    from stages.lib.generation import decode, sample

    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    out: list[float | None] = []
    for lo in range(0, len(examples), batch_size):
        chunk = list(range(lo, min(lo + batch_size, len(examples))))
        rollout = sample(
            model,
            [prompts[i] for i in chunk],
            pad_id=pad_id,
            stop_ids=stop_ids,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            num_samples=samples,
            generator=generator,
        )
        texts = [t.strip() for t in decode(tok, rollout)]
        for j, i in enumerate(chunk):
            scores = [judge(examples[i], text) for text in texts[j * samples : (j + 1) * samples]]
            known = [s for s in scores if s is not None]
            out.append(round(sum(known) / len(known), 6) if known else None)
    return out
