"""Task families: instances, phrasing templates, chain of thought, gold answers and plausible mistakes.

An instance is a dict of *slot texts* (e.g. ``{"a": "12", "op": "+", "b": "7"}``). Every
template embeds each slot exactly once with a fixed pattern, so the judge can parse the
instance back out of any prompt (``judge.parse_prompt``) and grade from the prompt alone.
Everything here is stdlib only and deterministic given a ``random.Random``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from random import Random

WORDS = tuple(
    "apple bird cat dog egg fish goat hat ice jam kite lamp moon nest owl pig rain sun tree cup van web "
    "box yak zoo ant bell cake door fox gold hill ink key leaf milk note pen ring star toy wind blue red "
    "green road ship book song fire snow lake corn bean rock wolf frog duck".split()
)
"""Short words for the string and word-list families (none of them is 'answer')."""

COT_TRIGGERS = (
    'Think step by step, then give the final answer after "Answer:".',
    'Explain your reasoning briefly and end with "Answer:" followed by the result.',
    'Let\'s think step by step. Finish with a line that starts with "Answer:".',
)
"""Appended (after a newline) to the prompt of a chain-of-thought example (seed §3.6)."""

WORDS_RE = r"[a-z]+(?: [a-z]+)*"
LETTERS_RE = r"[a-z]+"
INT_RE = r"-?\d+"
INTS_RE = r"-?\d+(?:, -?\d+)*"
LIST_RE = r"[a-z]+(?:, [a-z]+)*"
_VALUE_RE = r'(?:"[a-z]*"|-?\d+|true|false)'
FIELDS_RE = rf"\w+ = {_VALUE_RE}(?:, \w+ = {_VALUE_RE})*"

Slots = dict[str, str]
Mistake = tuple[str, str]
"""(kind, wrong answer text); kinds: off_by_one, wrong_order, partial, wrong_format, ..."""


@dataclass(frozen=True)
class Knobs:
    """Difficulty knobs shared by all families."""

    max_number: int = 20
    """Numbers are drawn from 0..max_number."""
    max_length: int = 6
    """Random letter strings are 2..max_length letters long (at least 3 where possible)."""
    max_items: int = 5
    """Lists (numbers, words, copy text, JSON fields) hold 2..max_items items."""


@dataclass(frozen=True)
class Family:
    name: str
    difficulty: int
    """1 (one step) .. 3 (several steps or format control)."""
    description: str
    slots: dict[str, str]
    """slot name -> the regex its text always matches."""
    templates: tuple[tuple[str, str], ...]
    """(instruction, input) pairs with {slot} placeholders; the prompt is instruction [+ "\\n" + input]."""
    sample: Callable[[Random, Knobs], Slots]
    solve: Callable[[Slots], str]
    """The gold (canonical) answer text."""
    reason: Callable[[Slots], str]
    """Chain-of-thought text written before the final "Answer: ..." line."""
    same: Callable[[str, str], bool]
    """(extracted answer, gold answer) -> correct."""
    mistakes: Callable[[Slots, Random], list[Mistake]]


def render(family: Family, slots: Slots, template: int) -> tuple[str, str]:
    """(instruction, input) of one instance in one phrasing."""
    instruction, inp = family.templates[template]
    return instruction.format(**slots), inp.format(**slots)


def join_prompt(instruction: str, inp: str) -> str:
    return f"{instruction}\n{inp}" if inp else instruction


# --- answer comparisons -----------------------------------------------------------


def _same_text(answer: str, gold: str) -> bool:
    return answer.strip() == gold


def _same_int(answer: str, gold: str) -> bool:
    m = re.fullmatch(r"\s*(-?\d+)\.?\s*", answer)
    return m is not None and int(m.group(1)) == int(gold)


def _items(text: str) -> list[str]:
    return [t for t in re.split(r"[,\s]+", text.strip()) if t]


def _same_int_list(answer: str, gold: str) -> bool:
    got = _items(answer)
    if not all(re.fullmatch(r"-?\d+", t) for t in got):
        return False
    return [int(t) for t in got] == [int(t) for t in _items(gold)]


def _same_word_list(answer: str, gold: str) -> bool:
    return _items(answer) == _items(gold)


def _same_json(answer: str, gold: str) -> bool:
    """Parsed objects must match, types included (json.dumps tells 1 from true, which == does not)."""
    try:
        got = json.loads(answer)
    except ValueError:
        return False
    if not isinstance(got, dict):
        return False
    return json.dumps(got, sort_keys=True) == json.dumps(json.loads(gold), sort_keys=True)


# --- sampling helpers -----------------------------------------------------------------


def _n_items(rng: Random, k: Knobs) -> int:
    return rng.randint(2, max(2, k.max_items))


def _letters(rng: Random, k: Knobs, alphabet: str = "abcdefghijklmnopqrstuvwxyz") -> str:
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(min(3, k.max_length), k.max_length)))


def _numbers(rng: Random, k: Knobs) -> list[int]:
    n = _n_items(rng, k)
    if k.max_number + 1 >= n:
        return rng.sample(range(k.max_number + 1), n)
    return [rng.randint(0, k.max_number) for _ in range(n)]


def _ints(text: str) -> list[int]:
    return [int(t) for t in text.split(", ")]


def _csv(values: list) -> str:
    return ", ".join(str(v) for v in values)


def _swap_adjacent(values: list, rng: Random) -> list:
    out = list(values)
    if len(out) >= 2:
        i = rng.randrange(len(out) - 1)
        out[i], out[i + 1] = out[i + 1], out[i]
    return out


# --- the families --------------------------------------------------------------------------


def _copy_mistakes(s: Slots, rng: Random) -> list[Mistake]:
    text = s["text"]
    words = text.split()
    partial = " ".join(words[:-1]) if len(words) > 1 else text[:-1]
    return [
        ("partial", partial),
        ("typo", _typo(text, rng)),
        ("wrong_format", text.upper()),
        ("wrong_format", f'"{text}"'),
    ]


def _typo(text: str, rng: Random) -> str:
    chars = list(text)
    idx = [
        i
        for i in range(len(chars) - 1)
        if chars[i] != " " and chars[i + 1] != " " and chars[i] != chars[i + 1]
    ]
    if not idx:
        return text + text[-1]
    i = rng.choice(idx)
    chars[i], chars[i + 1] = chars[i + 1], chars[i]
    return "".join(chars)


def _count_sample(rng: Random, k: Knobs) -> Slots:
    alphabet = "".join(rng.sample("abcdefghijklmnopqrstuvwxyz", 3))
    text = _letters(rng, k, alphabet)
    letter = rng.choice(text) if rng.random() < 0.85 else rng.choice("abcdefghijklmnopqrstuvwxyz")
    return {"letter": letter, "text": text}


def _count_reason(s: Slots) -> str:
    steps, n = [], 0
    for ch in s["text"]:
        if ch == s["letter"]:
            n += 1
            steps.append(f"{ch} ({n})")
        else:
            steps.append(ch)
    return f'Go through "{s["text"]}" letter by letter: {", ".join(steps)}. The letter "{s["letter"]}" appears {n} times.'


def _extreme_reason(values: list[int], pick: Callable, word: str) -> str:
    best, parts = values[0], [f"start with {values[0]}"]
    for v in values[1:]:
        new = pick(best, v)
        parts.append(f"{v} vs {best} keeps {new}")
        best = new
    return f"Keep the {word} number seen so far: {'; '.join(parts)}. The {word} is {best}."


def _extreme_mistakes(values: list[int], pick: Callable) -> list[Mistake]:
    best = pick(values)
    rest = [v for v in values if v != best]
    out = [("near_miss", str(pick(rest)))] if rest else []
    other = min if pick is max else max
    return [
        *out,
        ("wrong_direction", str(other(values))),
        ("first_item", str(values[0])),
        ("off_by_one", str(best + 1)),
    ]


def _arith_sample(rng: Random, k: Knobs) -> Slots:
    a, b = rng.randint(0, k.max_number), rng.randint(0, k.max_number)
    op = rng.choice("+-")
    if op == "-" and b > a:
        a, b = b, a
    return {"a": str(a), "op": op, "b": str(b)}


def _arith(s: Slots) -> int:
    a, b = int(s["a"]), int(s["b"])
    return a + b if s["op"] == "+" else a - b


def _arith_reason(s: Slots) -> str:
    a, b, r = int(s["a"]), int(s["b"]), _arith(s)
    tens, ones = b - b % 10, b % 10
    if tens == 0 or ones == 0:
        verb = "Count up" if s["op"] == "+" else "Count down"
        return f"{verb} {b} from {a}: {a} {s['op']} {b} = {r}."
    if s["op"] == "+":
        mid = a + tens
        return f"Add the tens first: {a} + {tens} = {mid}. Then the ones: {mid} + {ones} = {r}."
    mid = a - tens
    return f"Take away the tens first: {a} - {tens} = {mid}. Then the ones: {mid} - {ones} = {r}."


_JSON_KEYS = (
    ("name", "word"),
    ("city", "word"),
    ("color", "color"),
    ("age", "int"),
    ("count", "int"),
    ("score", "int"),
    ("active", "bool"),
    ("done", "bool"),
)
_COLORS = ("red", "blue", "green", "black", "white", "pink")


def _json_sample(rng: Random, k: Knobs) -> Slots:
    keys = rng.sample(_JSON_KEYS, min(len(_JSON_KEYS), rng.randint(2, max(2, min(4, k.max_items)))))
    parts = []
    for key, kind in keys:
        if kind == "word":
            value = f'"{rng.choice(WORDS)}"'
        elif kind == "color":
            value = f'"{rng.choice(_COLORS)}"'
        elif kind == "int":
            value = str(rng.randint(0, k.max_number))
        else:
            value = rng.choice(["true", "false"])
        parts.append(f"{key} = {value}")
    return {"fields": ", ".join(parts)}


def _json_fields(s: Slots) -> list[tuple[str, object]]:
    return [(k, json.loads(v)) for k, v in re.findall(rf"(\w+) = ({_VALUE_RE})", s["fields"])]


def _json_solve(s: Slots) -> str:
    return json.dumps(dict(_json_fields(s)))


def _json_mistakes(s: Slots, rng: Random) -> list[Mistake]:
    fields = _json_fields(s)
    obj = dict(fields)
    out = [("wrong_format", repr(obj)), ("partial", json.dumps(dict(fields[:-1])))]
    typed = [k for k, v in fields if not isinstance(v, str)]
    if typed:
        out.append(("wrong_type", json.dumps({k: (str(v).lower() if k in typed else v) for k, v in fields})))
    return [*out, ("wrong_format", s["fields"])]


def _listing(word: str) -> tuple[tuple[str, str], ...]:
    return (
        (f"What is the {word} number in this list: {{items}}?", ""),
        (f"Find the {'maximum' if word == 'largest' else 'minimum'}.", "{items}"),
        (f"Which of these numbers is the {'biggest' if word == 'largest' else 'smallest'}? {{items}}", ""),
    )


FAMILIES: dict[str, Family] = {}


def _register(*fams: Family) -> None:
    for fam in fams:
        assert len(fam.templates) >= 3, fam.name
        FAMILIES[fam.name] = fam


_register(
    Family(
        "copy",
        1,
        "Repeat a short text exactly.",
        {"text": WORDS_RE},
        (
            ("Repeat the following text exactly.", "{text}"),
            ('Copy this text: "{text}"', ""),
            ('Write back exactly what is between the quotes: "{text}"', ""),
            ("Echo the input word for word.", "{text}"),
        ),
        lambda r, k: {
            "text": " ".join(r.choice(WORDS) for _ in range(r.randint(1, max(1, k.max_items - 1))))
        },
        lambda s: s["text"],
        lambda s: f'The text to repeat is "{s["text"]}". Copying it unchanged gives {s["text"]}.',
        _same_text,
        _copy_mistakes,
    ),
    Family(
        "uppercase",
        1,
        "Rewrite a text in capital letters.",
        {"text": WORDS_RE},
        (
            ('Convert "{text}" to uppercase.', ""),
            ("Rewrite the text in capital letters.", "{text}"),
            ('Write "{text}" in all caps.', ""),
            ("Uppercase every letter of the input.", "{text}"),
        ),
        lambda r, k: {"text": " ".join(r.choice(WORDS) for _ in range(r.randint(1, 2)))},
        lambda s: s["text"].upper(),
        lambda s: (
            "Change each letter to its capital: "
            + ", ".join(f"{c} -> {c.upper()}" for c in s["text"].replace(" ", ""))
            + "."
        ),
        _same_text,
        lambda s, r: [
            ("no_op", s["text"]),
            ("partial", s["text"].title()),
            ("partial", s["text"][:-1].upper() + s["text"][-1]),
        ],
    ),
    Family(
        "successor",
        1,
        "Give the number that comes after n.",
        {"n": INT_RE},
        (
            ("What number comes after {n}?", ""),
            ("Give the successor of {n}.", ""),
            ("Add one to the number.", "{n}"),
        ),
        lambda r, k: {"n": str(r.randint(0, k.max_number))},
        lambda s: str(int(s["n"]) + 1),
        lambda s: f"The number after {s['n']} is {s['n']} + 1 = {int(s['n']) + 1}.",
        _same_int,
        lambda s, r: [
            ("no_op", s["n"]),
            ("off_by_one", str(int(s["n"]) - 1)),
            ("off_by_one", str(int(s["n"]) + 2)),
        ],
    ),
    Family(
        "reverse",
        2,
        "Write a string of letters backwards.",
        {"text": LETTERS_RE},
        (
            ('Reverse the string "{text}".', ""),
            ("Write the input backwards, letter by letter.", "{text}"),
            ('What is "{text}" spelled backwards?', ""),
        ),
        lambda r, k: {"text": _letters(r, k)},
        lambda s: s["text"][::-1],
        lambda s: (
            f"The letters are {', '.join(s['text'])}. From last to first: {', '.join(s['text'][::-1])}."
        ),
        _same_text,
        lambda s, r: [
            ("no_op", s["text"]),
            ("partial", s["text"][::-1][:-1]),
            ("wrong_order", "".join(_swap_adjacent(list(s["text"][::-1]), r))),
        ],
    ),
    Family(
        "arithmetic",
        2,
        "Add or subtract two small non-negative integers (results are never negative).",
        {"a": r"\d+", "op": r"[+-]", "b": r"\d+"},
        (
            ("What is {a} {op} {b}?", ""),
            ("Compute {a} {op} {b}.", ""),
            ("Calculate the result.", "{a} {op} {b}"),
            ("Solve: {a} {op} {b} =", ""),
        ),
        _arith_sample,
        lambda s: str(_arith(s)),
        _arith_reason,
        _same_int,
        lambda s, r: [
            ("off_by_one", str(_arith(s) + r.choice([-1, 1]))),
            ("wrong_operation", str(_arith({**s, "op": "-" if s["op"] == "+" else "+"}))),
            ("off_by_one", str(_arith(s) + 1)),
        ],
    ),
    Family(
        "count",
        2,
        "Count how often a letter occurs in a string.",
        {"letter": r"[a-z]", "text": LETTERS_RE},
        (
            ('How many times does the letter "{letter}" appear in "{text}"?', ""),
            ('Count the occurrences of "{letter}" in the word below.', "{text}"),
            ('In "{text}", how many "{letter}" are there?', ""),
        ),
        _count_sample,
        lambda s: str(s["text"].count(s["letter"])),
        _count_reason,
        _same_int,
        lambda s, r: [
            ("off_by_one", str(s["text"].count(s["letter"]) + 1)),
            ("off_by_one", str(max(0, s["text"].count(s["letter"]) - 1))),
            ("wrong_quantity", str(len(s["text"]))),
        ],
    ),
    Family(
        "max",
        2,
        "Find the largest number in a short list.",
        {"items": INTS_RE},
        _listing("largest"),
        lambda r, k: {"items": _csv(_numbers(r, k))},
        lambda s: str(max(_ints(s["items"]))),
        lambda s: _extreme_reason(_ints(s["items"]), max, "largest"),
        _same_int,
        lambda s, r: _extreme_mistakes(_ints(s["items"]), max),
    ),
    Family(
        "min",
        2,
        "Find the smallest number in a short list.",
        {"items": INTS_RE},
        _listing("smallest"),
        lambda r, k: {"items": _csv(_numbers(r, k))},
        lambda s: str(min(_ints(s["items"]))),
        lambda s: _extreme_reason(_ints(s["items"]), min, "smallest"),
        _same_int,
        lambda s, r: _extreme_mistakes(_ints(s["items"]), min),
    ),
    Family(
        "sort",
        3,
        "Sort a short list of numbers in ascending order (answer: comma-separated).",
        {"items": INTS_RE},
        (
            ("Sort these numbers in ascending order: {items}", ""),
            ("Arrange the numbers from smallest to largest.", "{items}"),
            ("Put {items} in increasing order.", ""),
        ),
        lambda r, k: {"items": _csv(_numbers(r, k))},
        lambda s: _csv(sorted(_ints(s["items"]))),
        lambda s: (
            "Take the smallest remaining number each time: "
            + ", then ".join(map(str, sorted(_ints(s["items"]))))
            + "."
        ),
        _same_int_list,
        lambda s, r: [
            ("wrong_order", _csv(sorted(_ints(s["items"]), reverse=True))),
            ("no_op", s["items"]),
            ("wrong_order", _csv(_swap_adjacent(sorted(_ints(s["items"])), r))),
            ("partial", _csv(sorted(_ints(s["items"]))[:-1])),
        ],
    ),
    Family(
        "sort_words",
        3,
        "Sort a short list of words alphabetically (answer: comma-separated).",
        {"items": LIST_RE},
        (
            ("Sort these words alphabetically: {items}", ""),
            ("Put the words in alphabetical order.", "{items}"),
            ("Arrange {items} from A to Z.", ""),
        ),
        lambda r, k: {"items": _csv(r.sample(WORDS, min(len(WORDS), _n_items(r, k))))},
        lambda s: _csv(sorted(s["items"].split(", "))),
        lambda s: (
            "Compare the words letter by letter from the first: "
            + ", then ".join(sorted(s["items"].split(", ")))
            + "."
        ),
        _same_word_list,
        lambda s, r: [
            ("wrong_order", _csv(sorted(s["items"].split(", "), reverse=True))),
            ("no_op", s["items"]),
            ("wrong_order", _csv(_swap_adjacent(sorted(s["items"].split(", ")), r))),
            ("partial", _csv(sorted(s["items"].split(", "))[:-1])),
        ],
    ),
    Family(
        "json_format",
        3,
        "Emit one JSON object with given keys and values (format control; key order is free).",
        {"fields": FIELDS_RE},
        (
            ("Write a JSON object with these fields: {fields}.", ""),
            ("Format the following as a JSON object.", "{fields}"),
            ("Return only a JSON object where {fields}.", ""),
        ),
        _json_sample,
        _json_solve,
        lambda s: (
            f"The object needs the keys {', '.join(k for k, _ in _json_fields(s))}. "
            "Text values go in double quotes; numbers and true/false stay bare."
        ),
        _same_json,
        _json_mistakes,
    ),
)


def families() -> list[str]:
    """Every family name, easiest first."""
    return sorted(FAMILIES, key=lambda n: (FAMILIES[n].difficulty, list(FAMILIES).index(n)))
