"""The AI preference label of CAI / RLAIF (seed §4.8.4 step 2): a judge model asked which of two responses
better follows a principle, answering "(A)" or "(B)".

For a pair (y_1, y_2) the judge prompt J(x, principle, A, B) is the ``judge_template`` with the two
responses in the options, sent as a user turn through the judge's chat template (a plain string without
one). The judge's preference is read from the log-probability of each reply, not from a sampled answer:

    ℓ_A = log π_judge("(A)" | J),   ℓ_B = log π_judge("(B)" | J),   P(A) = σ(ℓ_A − ℓ_B)

(each summed over the reply's tokens, the end-of-turn token included: the same for both). Judges prefer
one slot whatever the content (position bias), so both orders are scored and averaged:

    P(y_2 ≻ y_1) = ½ · [σ(ℓ_B − ℓ_A) with (A, B) = (y_1, y_2)  +  σ(ℓ_A − ℓ_B) with (A, B) = (y_2, y_1)]

The pair is labelled y_2 ≻ y_1 when that exceeds ½, y_1 ≻ y_2 below, and is a tie (dropped) at exactly ½.
The mean over both orders of P(A) measures the judge's position bias (½: none).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from stages.cai.config import CHOICES


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


@dataclass(frozen=True)
class Verdict:
    """Both orders' log-probs of answering (A) and (B), and the order-averaged preference for ``second``."""

    logp_a_first: float
    """Order 1 — (A) = first, (B) = second: ℓ_A."""
    logp_b_first: float
    logp_a_second: float
    """Order 2 — (A) = second, (B) = first: ℓ_A."""
    logp_b_second: float

    @property
    def p_second(self) -> float:
        """P(second ≻ first), averaged over the two orders."""
        order1 = _sigmoid(self.logp_b_first - self.logp_a_first)
        order2 = _sigmoid(self.logp_a_second - self.logp_b_second)
        return 0.5 * (order1 + order2)

    @property
    def p_slot_a(self) -> float:
        """P(the judge answers (A)), averaged over the two orders: its position bias (½: none)."""
        return 0.5 * (
            _sigmoid(self.logp_a_first - self.logp_b_first)
            + _sigmoid(self.logp_a_second - self.logp_b_second)
        )


def judge_prompt(template: str, *, prompt: str, principle: str, response_a: str, response_b: str) -> str:
    return template.format(prompt=prompt, principle=principle, response_a=response_a, response_b=response_b)


def as_judge_turn(tok: Any, text: str) -> tuple[Any, list[Any]]:
    """(prompt, [reply "(A)", reply "(B)"]) in the judge tokenizer's format: chat turns when it has a chat
    template, plain strings otherwise."""
    if getattr(tok, "chat_template", None):
        prompt: Any = [{"role": "user", "content": text}]
        return prompt, [[{"role": "assistant", "content": c}] for c in CHOICES]
    return text, list(CHOICES)


def choice_logps(
    model: Any, tok: Any, texts: Sequence[str], *, batch_size: int = 16
) -> list[tuple[float, float]]:
    """(ℓ_A, ℓ_B) for each judge prompt text: log π(reply | prompt) summed over the reply's tokens."""
    import torch

    from stages.lib.chat import split_prompt_completion
    from stages.lib.pairs import completion_logps

    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    prompts, completions = [], []
    for text in texts:
        prompt, replies = as_judge_turn(tok, text)
        for reply in replies:
            p, c = split_prompt_completion(tok, prompt, reply)
            prompts.append(p)
            completions.append(c)
    values: list[float] = []
    with torch.no_grad():
        for lo in range(0, len(prompts), 2 * batch_size):
            logps = completion_logps(
                model, prompts[lo : lo + 2 * batch_size], completions[lo : lo + 2 * batch_size], pad_id=pad
            )
            values += [float(v) for v in logps.cpu()]
    return [(values[2 * i], values[2 * i + 1]) for i in range(len(texts))]


def judge_pairs(
    model: Any,
    tok: Any,
    template: str,
    items: Sequence[tuple[str, str, str, str]],
    *,
    batch_size: int = 16,
) -> list[Verdict]:
    """A :class:`Verdict` for each (prompt, principle, first, second), both orders scored."""
    texts = []
    for prompt, principle, first, second in items:
        texts.append(
            judge_prompt(template, prompt=prompt, principle=principle, response_a=first, response_b=second)
        )
        texts.append(
            judge_prompt(template, prompt=prompt, principle=principle, response_a=second, response_b=first)
        )
    logps = choice_logps(model, tok, texts, batch_size=batch_size)
    return [Verdict(*logps[2 * i], *logps[2 * i + 1]) for i in range(len(items))]
