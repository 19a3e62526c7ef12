"""The checks a REINFORCE-family stage runs before it loads a weight or samples a token.

In order, cheapest first: the policy (a causal LM, or an adapter of the LoRA family with its ``base``;
no weights read), the prompts (a ``prompt`` column; a ``family`` column the gold judge can grade when the
reward or the monitor needs one), the reward model (a one-output sequence classifier sharing the
policy's tokenizer), the generation batch against ``num_generations`` with the real process count, and
the prompts' length against the policy's (and reward model's) context.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hubflow.errors import StageInputError
from stages.lib.reinforce.config import (
    BASE_INPUT,
    POLICY_INPUT,
    PROMPTS_INPUT,
    REWARD_INPUT,
    ReinforceConfig,
    generation_batch_problem,
)


@dataclass
class Checked:
    """What the checks established, for the run."""

    tok: Any
    policy_info: Any
    rows: list[dict[str, Any]]
    """One dict per prompt: ``prompt`` and, when the dataset has it, ``family``."""
    has_family: bool
    prompt_ids: list[list[int]]
    """The token ids TRL will feed the policy for each prompt (see :func:`prompt_ids`)."""
    reward_members: list[Path] = field(default_factory=list)


def check_policy(ctx: Any, cfg: ReinforceConfig) -> Any:
    """The policy is a causal LM (full, or a LoRA-family adapter on its ``base``)."""
    from stages.lib.datasets import input_folder
    from stages.lib.models import inspect_policy
    from stages.lib.peft_methods import check_continuable

    folder = input_folder(ctx, POLICY_INPUT)
    info = inspect_policy(
        folder,
        base=ctx.inputs.get(BASE_INPUT),
        base_ref=ctx.input_refs.get(BASE_INPUT),
        input_name=POLICY_INPUT,
        kind=cfg.kind,
    )
    if info.is_adapter and cfg.peft.method != "full":
        check_continuable(folder, cfg.peft, input_name=POLICY_INPUT)
    return info


def read_prompts(ctx: Any, cfg: ReinforceConfig, tok: Any) -> tuple[list[dict[str, Any]], bool]:
    """(rows with ``prompt``, ``prompt_index`` [and ``family``], whether the dataset has a family column),
    checked. TRL hands every column but ``prompt`` to the reward function."""
    from stages.lib.chat import as_chat, require_chat_template
    from stages.lib.datasets import columns_of, input_folder, read_rows

    folder = input_folder(ctx, PROMPTS_INPUT)
    rows = read_rows(
        folder,
        cfg.split,
        ["prompt"],
        input_name=PROMPTS_INPUT,
        optional=["family"],
        hint="use a `synthetic` stage's `prompts` output, or a dataset with a `prompt` column (chat message lists "
        "or strings)",
    )
    has_family = "family" in columns_of(folder, cfg.split, input_name=PROMPTS_INPUT)
    needs = []
    if cfg.reward == "synthetic":
        needs.append("reward: synthetic (the gold judge grades each completion by its row's family)")
    if cfg.stop_when_gold_drops is not None:
        needs.append("stop_when_gold_drops (it watches the gold reward)")
    if needs and not has_family:
        found = columns_of(folder, cfg.split, input_name=PROMPTS_INPUT)
        raise StageInputError(
            f"input {PROMPTS_INPUT!r} has no `family` column, which {' and '.join(needs)} needs; it has {found}",
            hint="use the `prompts` output of a `synthetic` stage (it names each row's task family), or set "
            "`reward: model` with a `reward` input",
        )
    chat = [as_chat(r["prompt"]) is not None for r in rows]
    if any(chat) and not all(chat):
        raise StageInputError(
            f"input {PROMPTS_INPUT!r} mixes chat prompts (message lists) and plain-string prompts",
            hint="write the dataset in one format (the synthetic stage's `format:` sets it)",
        )
    if chat and chat[0]:
        require_chat_template(tok, input_name=POLICY_INPUT)
    if has_family:
        _check_families(rows)
    out = [
        {"prompt": r["prompt"], "prompt_index": i, **({"family": r["family"]} if has_family else {})}
        for i, r in enumerate(rows)
    ]
    return out, has_family


def _check_families(rows: list[dict[str, Any]]) -> None:
    """Every row's family is a synthetic family and its prompt parses as that task, so the judge cannot fail
    mid-training."""
    from stages.lib.judge import parse_prompt
    from stages.lib.tasks import FAMILIES

    for i, row in enumerate(rows):
        family = row.get("family")
        if family not in FAMILIES:
            raise StageInputError(
                f"input {PROMPTS_INPUT!r} row {i}: family {family!r} is not one the gold judge grades "
                f"(it knows {sorted(FAMILIES)})",
                hint="use a `synthetic` stage's prompts, or drop the family column and use `reward: model`",
            )
        parse_prompt(family, row["prompt"])


def prompt_ids(tok: Any, prompt: Any) -> list[int]:
    """The token ids TRL feeds the policy for one prompt: a chat prompt rendered with the assistant's turn
    opened (``apply_chat_template(add_generation_prompt=True)``), a plain one tokenised with bos."""
    from stages.lib.chat import as_chat, generation_prompt_ids

    messages = as_chat(prompt)
    if messages is not None:
        return generation_prompt_ids(tok, messages)
    return list(tok(str(prompt))["input_ids"])


def context_of(folder: Path) -> int | None:
    from stages.lib.models import read_model_config

    config = read_model_config(folder)
    value = config.get(
        "max_position_embeddings", (config.get("text_config") or {}).get("max_position_embeddings")
    )
    return value if isinstance(value, int) else None


def check_lengths(lengths: list[int], cfg: ReinforceConfig, contexts: dict[str, int | None]) -> None:
    """prompt + max_completion_length must fit every model's context (TRL 1.16 no longer truncates prompts)."""
    longest = max(lengths)
    row = lengths.index(longest)
    need = longest + cfg.max_completion_length
    for name, context in contexts.items():
        if context is not None and need > context:
            room = context - longest
            raise StageInputError(
                f"input {PROMPTS_INPUT!r}: the longest prompt (row {row}) has {longest} tokens; with "
                f"max_completion_length {cfg.max_completion_length} a sequence needs {need} positions, but the "
                f"context of input {name!r} is {context}",
                hint=(f"lower max_completion_length to {room} or less, or " if room > 0 else "")
                + "drop or shorten the long prompts in the stage that makes the dataset",
            )


def check_inputs(ctx: Any, cfg: ReinforceConfig, processes: int) -> Checked:
    """Every check above, in order; returns the tokenizer and the prompt rows."""
    from stages.lib.datasets import input_folder
    from stages.lib.rewards import check_reward_folder, check_same_tokenizer
    from stages.lib.tokenizers import load_tokenizer, stage_tokenizer, tokenizer_folder

    info = check_policy(ctx, cfg)
    tok, _ = stage_tokenizer(ctx.inputs, order=(POLICY_INPUT, BASE_INPUT))
    rows, has_family = read_prompts(ctx, cfg, tok)
    members: list[Path] = []
    contexts: dict[str, int | None] = {}
    policy_config = ctx.inputs[BASE_INPUT] if info.is_adapter else input_folder(ctx, POLICY_INPUT)
    contexts[POLICY_INPUT] = context_of(Path(policy_config))
    if cfg.reward == "model":
        folder = input_folder(ctx, REWARD_INPUT)
        members = check_reward_folder(folder, input_name=REWARD_INPUT)
        found = tokenizer_folder((REWARD_INPUT, folder), (f"{REWARD_INPUT} member", members[0]))
        if found is None:
            raise StageInputError(
                f"input {REWARD_INPUT!r} ships no tokenizer files, so it cannot be checked against the policy's",
                hint="publish the reward model with its tokenizer (the reward stage does)",
            )
        check_same_tokenizer(
            tok,
            load_tokenizer(found[1], input_name=REWARD_INPUT),
            policy_input=POLICY_INPUT,
            reward_input=REWARD_INPUT,
        )
        contexts[REWARD_INPUT] = min(
            (c for c in (context_of(m) for m in members) if c is not None), default=None
        )
    problem = generation_batch_problem(cfg, processes)
    if problem:
        raise StageInputError(
            problem, hint="TRL's GRPO/RLOO group the completions of a prompt inside one batch"
        )
    ids = [prompt_ids(tok, r["prompt"]) for r in rows]
    check_lengths([len(i) for i in ids], cfg, contexts)
    return Checked(tok, info, rows, has_family, ids, members)
