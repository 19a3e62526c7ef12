"""Config fields shared by the kinds that sample from a policy and score what it wrote (pydantic only:
imported at validate time): ``best_of_n``, ``online_dpo``, ``cai`` (seed §4.8.4, §4.9, §4.10).

- :class:`SamplingFields`: which prompts (``split``, ``max_prompts``), how responses are drawn
  (``temperature``, ``top_p``, ``top_k``, ``max_new_tokens``: the distribution of
  :func:`stages.lib.generation.sampling_probs`) and how many rows go through at once;
- :class:`RewardFields`: where the reward comes from (``reward: model`` reads the ``reward`` input, a
  ``reward`` stage's model or ensemble, combined by ``aggregate``; ``reward: synthetic`` is the gold judge
  of the synthetic task families, which needs the prompts' ``family`` column).

A kind's Config inherits them next to :class:`hubflow.stage.StageConfig` (or the training vocabulary):
``class Config(StageConfig, SamplingFields, RewardFields)``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

POLICY_INPUT = "model"
BASE_INPUT = "base"
PROMPTS_INPUT = "prompts"
REWARD_INPUT = "reward"
TOKENIZER_INPUT = "tokenizer"

Temperature = Annotated[
    float, Field(gt=0, description="Sampling temperature T: tokens are drawn from softmax(logits / T).")
]
TopP = Annotated[
    float,
    Field(
        gt=0,
        le=1,
        description="Nucleus sampling: keep the smallest set of tokens with mass ≥ top_p (1: off).",
    ),
]
TopK = Annotated[int, Field(ge=0, description="Keep the top_k most likely tokens before top_p (0: off).")]
MaxNewTokens = Annotated[int, Field(ge=1, le=8192, description="Longest response sampled, in tokens.")]
RewardSource = Annotated[
    Literal["model", "synthetic"],
    Field(
        description="`model`: the `reward` input (a reward stage's model, or its ensemble combined by "
        "`aggregate`) scores prompt ⊕ response at its last token; `synthetic`: the gold judge of the "
        "synthetic task families (1 correct, 0 wrong; the prompts need a `family` column)."
    ),
]
Aggregate = Annotated[
    Literal["min", "mean"],
    Field(
        description="How an ensemble's member scores combine: `min`, the conservative estimate of seed "
        "§4.12, or `mean`. A single reward model ignores it."
    ),
]


class SamplingFields(BaseModel):
    """Which prompts a sampling kind reads and how it samples responses."""

    split: str = Field(
        "train", pattern=r"^[A-Za-z0-9_.-]+$", description="Split of the `prompts` input to sample on."
    )
    max_prompts: int | None = Field(
        None, ge=1, description="Use at most this many prompts (the first rows of the split); null: all."
    )
    temperature: Temperature = 1.0
    top_p: TopP = 1.0
    top_k: TopK = 0
    max_new_tokens: MaxNewTokens = 64
    generation_batch_size: int = Field(
        64,
        ge=1,
        description="Rows (prompt × sample) decoded together. Part of the fingerprint: batches draw their "
        "random numbers together, so another size samples other responses from the same seed.",
    )
    check_base: bool = Field(
        True,
        description="Refuse an adapter policy whose recorded base (lineage.json) is not the `base` input.",
    )


class RewardFields(BaseModel):
    """Where the reward of a sampled response comes from (``stages.lib.rewards``)."""

    reward: RewardSource = "model"
    aggregate: Aggregate = "min"
    score_batch_size: int = Field(32, ge=1, description="Sequences per reward-model forward.")


def reward_input_problem(reward: str, inputs: dict[str, Any]) -> str | None:
    """Why the inputs do not fit ``reward`` (a sentence for a validation error), or None."""
    if reward == "model" and REWARD_INPUT not in inputs:
        return (
            "reward: model scores responses with the `reward` input: add `reward: REWARD_STAGE` to the inputs "
            "(a reward stage's model or ensemble), or set `reward: synthetic` for the gold judge"
        )
    if reward == "synthetic" and REWARD_INPUT in inputs:
        return "reward: synthetic uses the gold judge, so the `reward` input is unused: remove it or set reward: model"
    return None


def policy_input_problem(inputs: dict[str, Any]) -> str | None:
    """Why the inputs lack what a sampling kind needs (the policy and the prompts), or None."""
    missing = [name for name in (POLICY_INPUT, PROMPTS_INPUT) if name not in inputs]
    if missing:
        return (
            f"this kind needs inputs {missing}: `model` (the policy: a full model, or an adapter with `base`) "
            "and `prompts` (a dataset with a `prompt` column, e.g. a synthetic stage's `prompts` output)"
        )
    return None
