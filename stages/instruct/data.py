"""Data preparation of the ``instruct`` stage (seed §3.5-3.7 step 1).

1. Tasks: every (dataset input, ``family``) group of the training split is one task
   (a dataset without a family column is one task named after its input).
2. Mixing: p_k ∝ min(N_k, M)^(1/τ) (``stages.lib.mixing``, shared with curation);
   an epoch holds T = Σ_k min(N_k, M) examples unless ``num_examples`` says otherwise,
   split by largest remainder into counts c_k ≈ p_k·T; a task's rows are drawn by
   cycling through seeded shuffles (so τ > 1 repeats small tasks, the cap M trims
   large ones). The drawn examples are interleaved by a seeded shuffle.
3. Each drawn example gets a template picked at random from its task's template set
   and, with probability ``cot_ratio``, its reasoning chain: from a ``rationale``
   column (y <- cot_format(rationale, y), trigger appended to the instruction) or, for
   data whose rows already come in both forms (a boolean ``cot`` column, as the
   ``synthetic`` stage writes), by drawing from the chain-of-thought rows.
4. Conversations ``[system], user: template(instruction, input), assistant: y`` go
   through the chat template; the loss is on the assistant's reply only.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from hubflow.errors import StageInputError
from stages.lib.finetune.config import Template


@dataclass
class Task:
    name: str
    rows: list[dict[str, Any]] = field(default_factory=list)

    def pools(self, cot_column: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """(direct rows, chain-of-thought rows) by the boolean cot column (all direct without it)."""
        cot = [r for r in self.rows if r.get(cot_column) is True]
        direct = [r for r in self.rows if r.get(cot_column) is not True]
        return direct, cot


def group_tasks(rows_by_input: dict[str, list[dict[str, Any]]], family_column: str) -> dict[str, Task]:
    """Task name -> its rows: the family value, or the input name for rows without one."""
    tasks: dict[str, Task] = {}
    for input_name, rows in rows_by_input.items():
        for r in rows:
            fam = r.get(family_column)
            name = str(fam) if fam not in (None, "") else input_name
            tasks.setdefault(name, Task(name)).rows.append(r)
    return tasks


def plan_mix(
    sizes: dict[str, int], temperature: float, cap: int | None, num_examples: int | None
) -> tuple[dict[str, float], dict[str, int]]:
    """(target proportions p_k, examples per task c_k) for one epoch of the mixture."""
    from stages.lib.mixing import mix_counts, mix_proportions

    probs = mix_proportions(sizes, temperature=temperature, cap=cap)
    total = (
        num_examples if num_examples is not None else sum(min(n, cap) if cap else n for n in sizes.values())
    )
    counts = mix_counts(sizes, probs, target=total, upsample=True)
    return probs, counts


class _Cycler:
    """Rows in seeded random order, reshuffled each time the list is used up."""

    def __init__(self, rows: list[dict[str, Any]], rng: random.Random) -> None:
        self.rows, self.rng, self.order = rows, rng, []

    def next(self) -> dict[str, Any]:
        if not self.order:
            self.order = list(range(len(self.rows)))
            self.rng.shuffle(self.order)
        return self.rows[self.order.pop()]


@dataclass
class Drawn:
    family: str
    messages: list[dict[str, str]]
    cot: bool
    template: int


def draw(
    tasks: dict[str, Task],
    counts: dict[str, int],
    *,
    templates: dict[str, list[Template]],
    default_templates: list[Template],
    cols: dict[str, str],
    cot_ratio: float | None,
    cot_format: str,
    cot_trigger: str | None,
    system_prompt: str | None,
    seed: int,
) -> list[Drawn]:
    """The mixed, templated, interleaved training conversations of one epoch."""
    rng = random.Random(f"{seed}:instruct-mix")
    out: list[Drawn] = []
    for name in sorted(tasks):
        task = tasks[name]
        direct, cot_rows = task.pools(cols["cot"])
        both_forms = cot_ratio is not None and bool(direct) and bool(cot_rows)
        pick_any = _Cycler(task.rows, rng)
        pick_direct, pick_cot = _Cycler(direct, rng), _Cycler(cot_rows, rng)
        phrasings = templates.get(name) or default_templates
        for _ in range(counts.get(name, 0)):
            use_cot = cot_ratio is not None and rng.random() < cot_ratio
            augmented = False
            if both_forms:  # rows already come direct and with reasoning: draw the form
                row = pick_cot.next() if use_cot else pick_direct.next()
            else:  # null cot_ratio keeps the data as it comes; else a rationale column is prepended
                row = pick_any.next()
                augmented = use_cot and bool(row.get(cols["rationale"]))
            instruction = str(row[cols["instruction"]])
            output = str(row[cols["output"]])
            if augmented:
                output = cot_format.format(rationale=str(row[cols["rationale"]]).strip(), output=output)
                if cot_trigger:
                    instruction = f"{instruction} {cot_trigger}"
            k = rng.randrange(len(phrasings))
            inp = row.get(cols["input"])
            messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
            messages += [
                {"role": "user", "content": phrasings[k].render(instruction, str(inp) if inp else None)},
                {"role": "assistant", "content": output},
            ]
            is_cot = augmented or row.get(cols["cot"]) is True
            out.append(Drawn(name, messages, is_cot, k))
    rng.shuffle(out)
    return out


def check_cot_source(
    tasks: dict[str, Task], cols: dict[str, str], cot_ratio: float | None, inputs: list[str]
) -> None:
    if not cot_ratio:
        return
    for task in tasks.values():
        if any(r.get(cols["rationale"]) for r in task.rows) or any(
            r.get(cols["cot"]) is True for r in task.rows
        ):
            return
    raise StageInputError(
        f"cot_ratio is {cot_ratio} but no training row carries a reasoning chain: inputs {inputs} have neither "
        f"a non-empty {cols['rationale']!r} column nor rows with {cols['cot']!r} = true",
        hint="set cot_ratio: null (or 0), or feed data with rationales (the synthetic stage's cot_ratio makes them)",
    )


def user_prompt(row: dict[str, Any], cols: dict[str, str], template: Template) -> str:
    inp = row.get(cols["input"])
    return template.render(str(row[cols["instruction"]]), str(inp) if inp else None)
