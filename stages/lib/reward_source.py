"""One reward for a sampling kind, over (prompt, completion) texts: the ``reward`` input (a reward model or
an ensemble, :mod:`stages.lib.rewards`) or the gold judge (``reward: synthetic``), plus the gold judge's
score beside a model's whenever every prompt is a synthetic task (proxy and gold side by side, seed §4.12).

Two steps, so that bad input fails before any compute: :func:`check_reward` reads no weights (the judge
can parse every prompt; the reward folder holds one-label classifiers whose tokenizer is the policy's),
then :meth:`RewardPlan.load` loads the models and returns a :class:`Scorer`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hubflow.errors import StageInputError


def judge_problem(prompts: Sequence[Any], *, input_name: str = "prompts") -> str | None:
    """Why the gold judge cannot grade these rows (``PromptRow``: family and prompt), or None."""
    from stages.lib.judge import parse_prompt
    from stages.lib.tasks import FAMILIES

    for p in prompts:
        if p.family is None:
            return f"input {input_name!r} row {p.row} has no `family`"
        if p.family not in FAMILIES:
            return f"input {input_name!r} row {p.row}: the gold judge does not know family {p.family!r}"
        try:
            parse_prompt(p.family, p.prompt)
        except StageInputError as exc:
            return f"input {input_name!r} row {p.row}: {exc.message}"
    return None


@dataclass
class RewardPlan:
    """What :func:`check_reward` found: the reward source and whether gold scores come with it."""

    mode: str
    folder: Path | None
    gold: bool
    """Every prompt is a synthetic task the gold judge grades (always, for ``reward: synthetic``)."""
    members: int = 0

    def load(self, *, aggregate: str = "min", device: str | None = None, batch_size: int = 32) -> Scorer:
        from stages.lib.rewards import load_reward_model

        model = None
        if self.mode == "model":
            assert self.folder is not None
            model = load_reward_model(self.folder, aggregate=aggregate, device=device)  # type: ignore[arg-type]
        return Scorer(self.mode, model, self.gold, batch_size)


def check_reward(
    ctx: Any,
    reward: str,
    policy_tokenizer: Any,
    prompts: Sequence[Any],
    *,
    policy_input: str = "model",
    reward_input: str = "reward",
    prompts_input: str = "prompts",
) -> RewardPlan:
    """The reward checks that need no weights: ``synthetic`` needs every row's ``family`` (a family the judge
    knows, a prompt it parses); ``model`` needs the ``reward`` input to be a reward model or ensemble whose
    tokenizer is the policy's (:func:`stages.lib.rewards.check_same_tokenizer`)."""
    from stages.lib.datasets import input_folder
    from stages.lib.rewards import check_reward_folder, check_same_tokenizer
    from stages.lib.tokenizers import load_tokenizer, tokenizer_folder

    problem = judge_problem(prompts, input_name=prompts_input)
    if reward == "synthetic":
        if problem is not None:
            raise StageInputError(
                f"reward: synthetic grades each response with the gold judge, which needs the task family: "
                f"{problem}",
                hint="use a synthetic stage's prompts (they carry a `family` column), or a reward model "
                "(reward: model with a `reward` input)",
            )
        return RewardPlan("synthetic", None, True)
    if reward != "model":
        raise ValueError(f"reward must be 'model' or 'synthetic', got {reward!r}")
    folder = input_folder(ctx, reward_input)
    members = check_reward_folder(folder, input_name=reward_input)
    found = tokenizer_folder((reward_input, folder), (f"{reward_input} member", members[0]))
    if found is None:
        raise StageInputError(
            f"input {reward_input!r} ships no tokenizer files",
            hint="publish the reward model with its tokenizer",
        )
    check_same_tokenizer(
        policy_tokenizer,
        load_tokenizer(found[1], input_name=reward_input),
        policy_input=policy_input,
        reward_input=reward_input,
    )
    return RewardPlan("model", folder, problem is None, len(members))


@dataclass
class Scores:
    """Scores of a list of responses: the reward used, each ensemble member's, and the gold judge's."""

    reward: list[float]
    members: list[list[float]] | None = None
    """[K][B] per-member scores of an ensemble (None for one model or the judge)."""
    gold: list[float] | None = None


@dataclass
class Scorer:
    """Scores (prompt, completion) pairs with the planned reward (see :class:`RewardPlan`)."""

    mode: str
    model: Any
    """A :class:`stages.lib.rewards.RewardModel`, or None for the gold judge."""
    gold: bool
    batch_size: int = 32

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any]) -> Scores:
        """``prompts``: :class:`stages.lib.sampling.PromptRow` per completion (repeat a row for its N
        candidates); ``completions``: chat lists or strings, as the prompts."""
        from stages.lib.rewards import gold_rewards

        texts = [p.prompt for p in prompts]
        gold = gold_rewards([p.family for p in prompts], texts, completions) if self.gold else None
        if self.model is None:
            assert gold is not None
            return Scores(list(gold), None, gold)
        agg, per = self.model.score_texts(texts, list(completions), batch_size=self.batch_size)
        return Scores(agg, per if len(per) > 1 else None, gold)

    def describe(self) -> str:
        if self.model is None:
            return "the gold judge of the synthetic task families (1 correct, 0 wrong)"
        k = len(self.model.members)
        what = (
            f"an ensemble of {k} reward models ({self.model.aggregate} over members)"
            if k > 1
            else "a reward model"
        )
        return what + ("; the gold judge scores the same responses for comparison" if self.gold else "")


def judge_fingerprint() -> dict[str, str]:
    """The gold judge's code decides gold scores (and, with ``reward: synthetic``, the reward): its source hash,
    for a kind's ``fingerprint_extra`` (stdlib only: cheap at plan time)."""
    import hashlib
    import inspect

    from stages.lib import judge, tasks

    src = "".join(inspect.getsource(m) for m in (judge, tasks))
    return {"judge_sha256": hashlib.sha256(src.encode()).hexdigest()}
