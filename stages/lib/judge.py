"""The gold judge: grade a completion from the prompt alone.

``score(family, prompt, completion)`` parses the task instance out of the prompt (every
template embeds its slots with a fixed pattern), computes the gold answer, extracts the
final answer from the completion and compares. Scores are 0.0 or 1.0 (no partial credit).

Final-answer extraction (seed §3.6): if the completion contains ``Answer:`` (any case),
the answer is the text after the *last* one; otherwise it is the whole completion. Either
way surrounding whitespace is ignored, and nothing else may follow the answer. Numbers
compare as integers (a trailing period is allowed), lists compare item by item (commas
and/or spaces separate items), JSON compares as parsed objects (key order and spacing are
free, types are not), strings compare exactly.

Prompts and completions may be plain strings or chat messages (lists of
``{"role", "content"}``): the last user message is the prompt, the last message of a
completion list is the completion. A prompt rendered through a chat template also works:
when the whole text is not a task, the last task found in it is graded.
"""

from __future__ import annotations

import re
import string
from functools import cache
from typing import Any

from hubflow.errors import StageInputError
from stages.lib.tasks import COT_TRIGGERS, FAMILIES, Family, Slots, families

_ANSWER = re.compile(r"answer\s*:", re.IGNORECASE)
_TRIGGER = "(?:[ \n](?:" + "|".join(re.escape(t) for t in COT_TRIGGERS) + "))?"
"""A chain-of-thought trigger may follow the instruction (before the input line) or end the prompt."""


def get_family(name: str) -> Family:
    if name not in FAMILIES:
        raise StageInputError(f"unknown task family {name!r}", hint=f"use one of: {', '.join(families())}")
    return FAMILIES[name]


def _part_regex(fam: Family, text: str) -> str:
    out = []
    for literal, field, _, _ in string.Formatter().parse(text):
        out.append(re.escape(literal))
        if field is not None:
            out.append(f"(?P<{field}>{fam.slots[field]})")
    return "".join(out)


@cache
def _patterns(name: str) -> tuple[re.Pattern[str], ...]:
    """One pattern per template: instruction [+ CoT trigger] [+ newline + input] [+ CoT trigger]."""
    fam = FAMILIES[name]
    out = []
    for instruction, inp in fam.templates:
        body = _part_regex(fam, instruction) + _TRIGGER
        if inp:
            body += "\n" + _part_regex(fam, inp) + _TRIGGER
        out.append(re.compile(body))
    return tuple(out)


def _text(value: Any, role: str | None) -> str:
    """A plain string from a string or a list of chat messages."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and "content" in value:
        return str(value["content"])
    if isinstance(value, (list, tuple)):
        messages = [m for m in value if isinstance(m, dict) and "content" in m]
        if role is not None:
            messages = [m for m in messages if m.get("role") == role] or messages
        if messages:
            return str(messages[-1]["content"])
        if not value:
            return ""
    raise TypeError(f"expected a string or a list of chat messages, got {type(value).__name__}")


def parse_prompt(family: str, prompt: Any) -> Slots:
    """The task instance (slot name -> text) a prompt asks about; raises if it is not such a task."""
    get_family(family)
    text = _text(prompt, "user").strip()
    pats = _patterns(family)
    for pat in pats:
        m = pat.fullmatch(text)
        if m:
            return m.groupdict()
    best: re.Match[str] | None = None
    for pat in pats:
        for m in pat.finditer(text):
            if best is None or (m.start(), m.end()) > (best.start(), best.end()):
                best = m
    if best is None:
        raise StageInputError(
            f"the prompt is not a {family!r} task this judge can parse: {text[:200]!r}",
            hint="grade prompts produced by the synthetic stage, with the family column of the same row",
        )
    return best.groupdict()


def gold_answer(family: str, prompt: Any) -> str:
    """The canonical correct answer to a prompt."""
    return get_family(family).solve(parse_prompt(family, prompt))


def extract_answer(completion: Any) -> str:
    """The final answer: the text after the last 'Answer:' (any case), else the whole completion, stripped."""
    text = _text(completion, None)
    last = None
    for last in _ANSWER.finditer(text):  # noqa: B007 - we want the last match
        pass
    return (text[last.end() :] if last else text).strip()


def score(family: str, prompt: Any, completion: Any) -> float:
    """1.0 if ``completion`` answers the ``family`` task in ``prompt`` correctly (plain or CoT form), else 0.0."""
    fam = get_family(family)
    gold = fam.solve(parse_prompt(family, prompt))
    return 1.0 if fam.same(extract_answer(completion), gold) else 0.0
