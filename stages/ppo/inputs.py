"""Every check on the ``ppo`` stage's inputs that needs no weights, run before any model loads or samples.

DESIGN: cross-stage checks before any compute. In order: the policy (a causal-LM full model, or a
LoRA-family adapter with its ``base``), the tokenizer (pad distinct from every stop token, PPO detail 13),
the reward model or ensemble (a one-label sequence classifier with the policy's tokenizer), the prompts
(column ``prompt``; ``family`` known to the gold judge where the judge is needed), and every prompt's
length against the context of each model that reads prompt ⊕ response.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hubflow.errors import StageInputError
from hubflow.stage import StageContext
from stages.ppo.config import (
    BASE_INPUT,
    POLICY_INPUT,
    PROMPTS_INPUT,
    REWARD_INPUT,
    TOKENIZER_INPUT,
)

PROMPTS_HINT = (
    "an RL prompt dataset has a `prompt` column (chat message lists or strings), and `family` for the gold "
    "judge: the synthetic stage's `prompts` output"
)


@dataclass
class PromptSet:
    """One split of the prompts, tokenised as the policy sees them (``chat.split_prompt_completion``)."""

    split: str
    prompts: list[Any]
    ids: list[list[int]]
    families: list[str | None] | None
    """Per row, when the dataset has a ``family`` column."""

    def __len__(self) -> int:
        return len(self.prompts)


@dataclass
class Checked:
    """What the checks found: everything the loop needs before it loads a weight."""

    policy_dir: Path
    base_dir: Path | None
    policy_info: Any
    """``stages.lib.models.ModelInfo`` of the policy input."""
    tokenizer: Any
    tokenizer_input: str
    stop_ids: list[int]
    reward_dir: Path | None
    """The ``reward`` input (a reward model or an ensemble), None with ``reward: synthetic``."""
    reward_members: list[Path]
    """The reward model's folders (one, or an ensemble's members); empty with ``reward: synthetic``."""
    train: PromptSet
    test: PromptSet | None
    """The prompts' test split, for the held-out gold evaluation (``eval_steps``)."""
    context: int | None
    context_source: str

    @property
    def gold(self) -> bool:
        """Whether the gold judge can grade the training prompts (they carry ``family``)."""
        return self.train.families is not None


def _policy(ctx: StageContext, cfg: Any) -> tuple[Path, Path | None, Any]:
    from stages.lib.datasets import input_folder
    from stages.lib.models import inspect_policy
    from stages.lib.peft_methods import check_continuable

    folder = input_folder(ctx, POLICY_INPUT)
    base = ctx.inputs.get(BASE_INPUT)
    info = inspect_policy(
        folder, base=base, base_ref=ctx.input_refs.get(BASE_INPUT), input_name=POLICY_INPUT, kind=cfg.kind
    )
    if info.is_adapter:
        if cfg.peft is not None and cfg.peft.method == "lora":
            check_continuable(folder, cfg.peft, input_name=POLICY_INPUT)
    elif base is not None:
        ctx.logger.warning("input %r is a full model; input %r is not used", POLICY_INPUT, BASE_INPUT)
        base = None
    return folder, (Path(base) if base is not None else None), info


def _tokenizer(ctx: StageContext, policy_dir: Path, base_dir: Path | None) -> tuple[Any, str, list[int]]:
    from stages.lib.chat import end_of_turn_ids
    from stages.lib.models import vocab_size_of
    from stages.lib.tokenizers import stage_tokenizer

    tok, name = stage_tokenizer(ctx.inputs, order=(TOKENIZER_INPUT, POLICY_INPUT, BASE_INPUT))
    stops = end_of_turn_ids(tok)
    if not stops:
        raise StageInputError(
            f"the tokenizer of input {name!r} has no eos token, so no response could end",
            hint="use a tokenizer with an eos token (the tokenizer stage sets </s>)",
        )
    if tok.pad_token_id in stops:
        raise StageInputError(
            f"the tokenizer of input {name!r} pads with a stop token ({tok.pad_token!r}): every response's "
            "stop token would be masked as padding and the policy would never learn to stop (PPO detail 13)",
            hint="give the tokenizer a pad token distinct from eos (the tokenizer stage sets <pad>)",
        )
    vocab = vocab_size_of(base_dir if base_dir is not None else policy_dir)
    if vocab is not None and len(tok) > vocab:
        raise StageInputError(
            f"the tokenizer (input {name!r}) has {len(tok)} tokens but the policy embeds only {vocab}",
            hint="feed the tokenizer the policy was trained with",
        )
    return tok, name, stops


def _reward(ctx: StageContext, cfg: Any, tok: Any) -> list[Path]:
    from stages.lib.datasets import input_folder
    from stages.lib.rewards import check_reward_folder, check_same_tokenizer
    from stages.lib.tokenizers import load_tokenizer, tokenizer_folder

    if cfg.reward == "synthetic":
        return []
    folder = input_folder(ctx, REWARD_INPUT)
    members = check_reward_folder(folder, input_name=REWARD_INPUT)
    found = tokenizer_folder((REWARD_INPUT, folder), (f"{REWARD_INPUT} member", members[0]))
    if found is None:
        raise StageInputError(
            f"input {REWARD_INPUT!r} ships no tokenizer files, so it cannot be checked against the policy's",
            hint="publish the reward model with its tokenizer (the reward stage does)",
        )
    reward_tok = load_tokenizer(found[1], input_name=REWARD_INPUT)
    check_same_tokenizer(tok, reward_tok, policy_input=POLICY_INPUT, reward_input=REWARD_INPUT)
    return members


def _prompt_ids(tok: Any, prompt: Any) -> list[int]:
    from stages.lib.chat import as_chat, generation_prompt_ids

    messages = as_chat(prompt)
    if messages is not None:
        return generation_prompt_ids(tok, messages)
    return list(tok(str(prompt), add_special_tokens=True)["input_ids"])


def _read_prompts(folder: Path, split: str, tok: Any, *, need_family: str | None, logger: Any) -> PromptSet:
    from stages.lib.datasets import columns_of, read_rows
    from stages.lib.judge import gold_answer

    if need_family is not None:
        found = columns_of(folder, split, input_name=PROMPTS_INPUT)
        if "prompt" in found and "family" not in found:
            raise StageInputError(
                f"{need_family} grades responses with the gold judge, which needs each prompt's task family: "
                f"input {PROMPTS_INPUT!r} has no 'family' column (it has {found})",
                hint="use a synthetic stage's `prompts` output, or a reward model (`reward: model`)",
            )
    rows = read_rows(
        folder, split, ["prompt"], input_name=PROMPTS_INPUT, hint=PROMPTS_HINT, optional=("family",)
    )
    prompts = [r["prompt"] for r in rows]
    families = [r["family"] for r in rows] if "family" in rows[0] else None
    for i, (family, prompt) in enumerate(zip(families or [], prompts, strict=False)):
        try:
            gold_answer(str(family), prompt)
        except StageInputError as exc:
            if need_family is None:  # the judge only monitors: without it there is no gold column
                logger.warning(
                    "input %r row %d: %s; no gold reward is computed", PROMPTS_INPUT, i, exc.message
                )
                families = None
                break
            raise StageInputError(
                f"input {PROMPTS_INPUT!r} row {i} (split {split}): {exc.message}",
                hint=exc.hint or "grade prompts the synthetic stage made, with their own family",
            ) from exc
    ids = [_prompt_ids(tok, p) for p in prompts]
    for i, row_ids in enumerate(ids):
        if not row_ids:
            raise StageInputError(
                f"input {PROMPTS_INPUT!r} row {i} (split {split}) tokenises to no token",
                hint="drop empty prompts",
            )
    return PromptSet(split, prompts, ids, families)


def _context(ctx: StageContext, policy_dir: Path, base_dir: Path | None, members: list[Path]) -> tuple:
    """(the fewest positions any model reading prompt ⊕ response has, which model that is)."""
    from stages.lib.models import read_model_config

    limits = []
    policy_cfg = read_model_config(base_dir if base_dir is not None else policy_dir)
    if isinstance(policy_cfg.get("max_position_embeddings"), int):
        limits.append((policy_cfg["max_position_embeddings"], f"the policy's ({POLICY_INPUT!r})"))
    for member in members:
        value = read_model_config(member).get("max_position_embeddings")
        if isinstance(value, int):
            limits.append((value, f"the reward model's ({REWARD_INPUT!r})"))
    if not limits:
        return None, "unknown"
    return min(limits)


def _check_lengths(prompts: PromptSet, cfg: Any, context: int | None, source: str) -> None:
    if context is None:
        return
    for i, row_ids in enumerate(prompts.ids):
        if len(row_ids) + cfg.response_length > context:
            raise StageInputError(
                f"input {PROMPTS_INPUT!r} row {i} (split {prompts.split}) is {len(row_ids)} tokens long: with "
                f"response_length {cfg.response_length} it needs {len(row_ids) + cfg.response_length} positions, "
                f"more than {source} context of {context}",
                hint=f"drop or shorten prompts longer than {context - cfg.response_length} tokens, "
                "or lower response_length",
            )


def check_inputs(ctx: StageContext, cfg: Any) -> Checked:
    """All the cheap checks, in order; raises :class:`StageInputError` naming the input and the fix."""
    from stages.lib.datasets import has_split, input_folder

    policy_dir, base_dir, info = _policy(ctx, cfg)
    tok, tok_input, stops = _tokenizer(ctx, policy_dir, base_dir)
    members = _reward(ctx, cfg, tok)
    need_family = None
    if cfg.reward == "synthetic":
        need_family = "`reward: synthetic`"
    elif cfg.stop_when_gold_drops is not None:
        need_family = "stop_when_gold_drops"
    elif cfg.eval_steps is not None:
        need_family = "eval_steps (the held-out gold evaluation)"
    folder = input_folder(ctx, PROMPTS_INPUT)
    train = _read_prompts(folder, "train", tok, need_family=need_family, logger=ctx.logger)
    test = None
    if cfg.eval_steps is not None:
        if not has_split(folder, "test"):
            raise StageInputError(
                f"eval_steps: the held-out gold evaluation reads the test split of input {PROMPTS_INPUT!r}, "
                "which has none",
                hint="give the prompts a test split (the synthetic stage writes one), or remove eval_steps",
            )
        test = _read_prompts(folder, "test", tok, need_family=need_family, logger=ctx.logger)
    context, source = _context(ctx, policy_dir, base_dir, members)
    for split in (train, test):
        if split is not None:
            _check_lengths(split, cfg, context, source)
    if len(train) < 2:
        raise StageInputError(
            f"input {PROMPTS_INPUT!r} has {len(train)} training prompt(s); PPO normalises over a batch",
            hint="give it at least two prompts",
        )
    return Checked(
        policy_dir=policy_dir,
        base_dir=base_dir,
        policy_info=info,
        tokenizer=tok,
        tokenizer_input=tok_input,
        stop_ids=stops,
        reward_dir=input_folder(ctx, REWARD_INPUT) if members else None,
        reward_members=members,
        train=train,
        test=test,
        context=context,
        context_source=source,
    )
