"""Deterministic example generation and the train/test split of the ``synthetic`` stage."""

from __future__ import annotations

from dataclasses import dataclass
from random import Random

from stages.lib.tasks import COT_TRIGGERS, FAMILIES, Knobs, join_prompt, render

FALLBACK_MISTAKE = ("wrong_format", "I don't know.")


@dataclass(frozen=True)
class Example:
    id: str
    family: str
    difficulty: int
    instance: tuple[tuple[str, str], ...]
    """The task instance (sorted slot items): examples sharing it never straddle train and test."""
    instruction: str
    input: str
    prompt: str
    answer: str
    """The gold final answer."""
    output: str
    """The gold response: the answer, or reasoning then 'Answer: <answer>' for CoT examples."""
    cot: bool
    mistake: str
    """Kind of the plausible mistake in ``rejected`` (off_by_one, wrong_order, partial, wrong_format...)."""
    rejected: str
    """A wrong response in the same form as ``output`` (CoT examples: same reasoning, wrong final answer)."""
    desirable: bool
    """For the feedback output: whether this example's completion is the gold one (True) or the mistake."""


def generate_family(
    name: str, n: int, *, seed: int, knobs: Knobs, cot_ratio: float, desirable_ratio: float
) -> tuple[list[Example], int]:
    """``n`` examples of one family and how many repeat an earlier prompt (only when its space is exhausted).

    Example ``i`` draws everything from ``Random(f"{seed}:{name}:{attempt}")``: a family's
    examples do not depend on which other families or outputs are chosen.
    """
    fam = FAMILIES[name]
    out: list[Example] = []
    seen: set[str] = set()
    duplicates = attempt = 0
    patience = 20 * n + 100
    while len(out) < n:
        rng = Random(f"{seed}:{name}:{attempt}")
        attempt += 1
        slots = fam.sample(rng, knobs)
        template = rng.randrange(len(fam.templates))
        cot = rng.random() < cot_ratio
        trigger = rng.choice(COT_TRIGGERS)
        desirable = rng.random() < desirable_ratio
        instruction, inp = render(fam, slots, template)
        if cot:
            instruction = f"{instruction} {trigger}"
        prompt = join_prompt(instruction, inp)
        if prompt in seen:
            if attempt < patience:
                continue
            duplicates += 1
        seen.add(prompt)
        answer = fam.solve(slots)
        reasoning = fam.reason(slots)
        mistakes = [(k, m) for k, m in fam.mistakes(slots, rng) if m.strip() and not fam.same(m, answer)]
        kind, wrong = rng.choice(mistakes) if mistakes else FALLBACK_MISTAKE
        out.append(
            Example(
                id=f"{name}-{len(out):06d}",
                family=name,
                difficulty=fam.difficulty,
                instance=tuple(sorted(slots.items())),
                instruction=instruction,
                input=inp,
                prompt=prompt,
                answer=answer,
                output=f"{reasoning}\nAnswer: {answer}" if cot else answer,
                cot=cot,
                mistake=kind,
                rejected=f"{reasoning}\nAnswer: {wrong}" if cot else wrong,
                desirable=desirable,
            )
        )
    return out, duplicates


def split_family(
    examples: list[Example], *, heldout: bool, test_fraction: float, seed: int
) -> tuple[list[Example], list[Example]]:
    """(train, test). A held-out family goes to test whole; otherwise whole instances go to test
    until it holds about ``test_fraction`` of the examples, never emptying train."""
    if heldout:
        return [], list(examples)
    groups: dict[tuple, list[Example]] = {}
    for ex in examples:
        groups.setdefault(ex.instance, []).append(ex)
    keys = list(groups)
    if examples:
        Random(f"{seed}:{examples[0].family}:split").shuffle(keys)
    target = round(test_fraction * len(examples))
    test_keys: set[tuple] = set()
    n_test = 0
    for key in keys:
        if n_test >= target:
            break
        if len(examples) - n_test - len(groups[key]) <= 0:
            continue
        test_keys.add(key)
        n_test += len(groups[key])
    train = [ex for ex in examples if ex.instance not in test_keys]
    test = [ex for ex in examples if ex.instance in test_keys]
    return train, test


def shuffled(examples: list[Example], seed: int, split: str) -> list[Example]:
    out = sorted(examples, key=lambda e: e.id)
    Random(f"{seed}:shuffle:{split}").shuffle(out)
    return out
