"""Fresh preference pairs from the current policy's samples (seed §4.10 steps 2–4; SPIN, §4.2).

- ``pairs: reward``: of the K responses to a prompt, chosen = the best by the reward, rejected = the worst
  (the first sampled among equals, both ways); a prompt whose K scores are all equal gives no pair (a tie,
  counted) — DPO on a tie teaches nothing the reward said;
- ``pairs: spin``: chosen = the dataset's gold completion, rejected = each of the K generations; a
  generation whose text equals the gold one is dropped (counted), since a pair of identical responses has
  Δ = 0 and a constant gradient of nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class RoundPairs:
    """A round's pairs as dataset rows, and what was dropped."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    ties: int = 0
    """Prompts (reward) or generations (spin) that gave no pair."""


def reward_pairs(
    prompts: Sequence[Any], candidates: Sequence[Sequence[Any]], scores: Any, *, round_index: int
) -> RoundPairs:
    """Best-vs-worst pairs; ``scores`` (:class:`stages.lib.reward_source.Scores`) cover the candidates in
    prompt-major order."""
    out = RoundPairs()
    flat = 0
    for p, group in zip(prompts, candidates, strict=True):
        k = len(group)
        reward = scores.reward[flat : flat + k]
        gold = scores.gold[flat : flat + k] if scores.gold is not None else None
        flat += k
        best = max(range(k), key=lambda i: (reward[i], -i))
        worst = min(range(k), key=lambda i: (reward[i], i))
        if reward[best] == reward[worst]:
            out.ties += 1
            continue
        row: dict[str, Any] = {
            "prompt": p.prompt,
            "chosen": group[best].completion,
            "rejected": group[worst].completion,
            "chosen_score": reward[best],
            "rejected_score": reward[worst],
            "family": p.family,
            "round": round_index,
            "prompt_index": p.row,
            **p.extra,
        }
        if gold is not None:
            row.update(chosen_gold=gold[best], rejected_gold=gold[worst])
        out.rows.append(row)
    return out


def spin_pairs(
    prompts: Sequence[Any], candidates: Sequence[Sequence[Any]], scores: Any | None, *, round_index: int
) -> RoundPairs:
    """Gold-vs-own-generation pairs (self-play fine-tuning); ``scores`` of the generations, if measured."""
    from stages.lib.sampling import completion_text

    out = RoundPairs()
    flat = 0
    for p, group in zip(prompts, candidates, strict=True):
        gold_text = completion_text(p.completion).strip()
        for c in group:
            i, flat = flat, flat + 1
            if c.text.strip() == gold_text:
                out.ties += 1
                continue
            row: dict[str, Any] = {
                "prompt": p.prompt,
                "chosen": p.completion,
                "rejected": c.completion,
                "family": p.family,
                "round": round_index,
                "prompt_index": p.row,
                **p.extra,
            }
            if scores is not None:
                row["rejected_score"] = scores.reward[i]
                if scores.gold is not None:
                    row["rejected_gold"] = scores.gold[i]
            out.rows.append(row)
    return out
