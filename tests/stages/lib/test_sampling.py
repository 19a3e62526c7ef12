"""The shared layer of the sampling kinds (best_of_n, online_dpo, cai): the policy and prompt checks that read
no weights, prompts as the tokens a policy answers from, seeded candidates, and one reward over texts
(reward model, ensemble, gold judge; gold scored beside a model)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from hubflow.errors import StageInputError  # noqa: E402
from stages.lib.chat import split_prompt_completion  # noqa: E402
from stages.lib.reward_source import check_reward, judge_problem  # noqa: E402
from stages.lib.rewards import ENSEMBLE_FILE  # noqa: E402
from stages.lib.sampling import (  # noqa: E402
    PromptRow,
    as_completion,
    check_policy,
    completion_text,
    encode_prompts,
    make_generator,
    prompt_ids,
    read_prompts,
    sample_candidates,
)
from stages.lib.testing import stage_context, tiny_tokenizer, write_dataset  # noqa: E402


def reward_model_from(policy: Path, folder: Path, seed: int) -> Path:
    """A one-label classifier on the policy's backbone with a fresh, seeded head (the policy's tokenizer)."""
    from stages.lib.models import load_model
    from stages.lib.tokenizers import load_tokenizer

    torch.manual_seed(seed)
    model = load_model(policy, task="classification", head_kwargs={"num_labels": 1})
    tok = load_tokenizer(policy)
    model.config.pad_token_id = tok.pad_token_id
    folder.mkdir(parents=True)
    model.save_pretrained(str(folder), safe_serialization=True)
    tok.save_pretrained(str(folder))
    return folder


def test_prompts_are_read_with_their_family_and_checked(tmp_path, synthetic_tasks):
    rows = read_prompts(synthetic_tasks["prompts"], "test", limit=5)
    assert len(rows) == 5 and all(r.family in ("max", "min") and "id" in r.extra for r in rows)
    assert judge_problem(rows) is None
    bad = write_dataset(tmp_path / "bad", [{"question": "q", "family": "max"}])
    with pytest.raises(
        StageInputError, match=r"lacks column\(s\) \['prompt'\]; it has \['question', 'family'\]"
    ):
        read_prompts(bad)
    with pytest.raises(StageInputError, match=r"\['completion'\]"):
        read_prompts(synthetic_tasks["prompts"], need_completion=True)
    assert "no `family`" in judge_problem([PromptRow("What is the largest number in this list: 1, 2?", 0)])


def test_prompt_ids_are_the_prompt_half_of_a_pair_and_long_prompts_are_refused():
    tok = tiny_tokenizer()
    chat = [{"role": "user", "content": "one plus two"}]
    assert prompt_ids(tok, chat) == split_prompt_completion(tok, chat, as_completion(chat, "three"))[0]
    assert prompt_ids(tok, "one plus two") == split_prompt_completion(tok, "one plus two", "three")[0]
    assert completion_text(as_completion(chat, "three")) == "three" == completion_text("three")
    rows = [PromptRow("one plus two", 0), PromptRow("one plus two " * 30, 1)]
    assert len(encode_prompts(tok, rows[:1], max_positions=64, max_new_tokens=16)) == 1
    with pytest.raises(
        StageInputError, match=r"row 1: the prompt has \d+ tokens, more than .* 64 .* 16 \(= 48\)"
    ):
        encode_prompts(tok, rows, max_positions=64, max_new_tokens=16)


def test_candidates_are_grouped_by_prompt_and_fixed_by_the_seed(policy_factory, synthetic_tasks):
    folder = policy_factory()
    ctx = stage_context(Path(folder).parent / "ctx", {"model": folder})
    policy = check_policy(ctx)
    model = policy.load()
    rows = read_prompts(synthetic_tasks["prompts"], "test", limit=4)
    ids = encode_prompts(policy.tokenizer, rows, max_positions=policy.max_positions, max_new_tokens=6)

    def draw(seed: int) -> list[list[str]]:
        groups = sample_candidates(
            model, policy.tokenizer, rows, ids, n=3, pad_id=policy.pad_id, stop_ids=policy.stop_ids,
            max_new_tokens=6, generator=make_generator(seed, "cpu"),
        )  # fmt: skip
        assert [len(g) for g in groups] == [3] * 4
        assert all(
            c.prompt_index == i and c.sample == j for i, g in enumerate(groups) for j, c in enumerate(g)
        )
        assert all(c.completion == [{"role": "assistant", "content": c.text}] for g in groups for c in g)
        return [[c.text for c in g] for g in groups]

    assert draw(3) == draw(3)
    assert draw(3) != draw(4)


def test_reward_checks_need_no_weights_and_a_model_scores_with_gold_beside(
    tmp_path, policy_factory, synthetic_tasks
):
    policy_dir = policy_factory()
    ens = tmp_path / "ens"
    for k in range(2):
        reward_model_from(policy_dir, ens / f"member-{k}", seed=k)
    (ens / ENSEMBLE_FILE).write_text(json.dumps({"members": ["member-0", "member-1"]}))
    ctx = stage_context(tmp_path / "ctx", {"model": policy_dir, "reward": ens})
    policy = check_policy(ctx)
    rows = read_prompts(synthetic_tasks["prompts"], "test", limit=3)
    plan = check_reward(ctx, "model", policy.tokenizer, rows)
    assert (plan.mode, plan.gold, plan.members) == ("model", True, 2)
    scorer = plan.load(aggregate="min")
    completions = [as_completion(r.prompt, r.prompt[-1]["content"][-1]) for r in rows]
    scores = scorer(rows, completions)
    assert scores.members is not None and len(scores.members) == 2
    assert scores.reward == pytest.approx([min(a, b) for a, b in zip(*scores.members, strict=True)])
    assert scores.gold is not None and set(scores.gold) <= {0.0, 1.0}

    other = tmp_path / "other"
    reward_model_from(policy_dir, other, seed=0)
    tiny_tokenizer(["entirely other words"] * 4, vocab_size=300).save_pretrained(str(other))
    with pytest.raises(StageInputError, match="'model' and 'reward' do not share a tokenizer"):
        check_reward(
            stage_context(tmp_path / "c2", {"model": policy_dir, "reward": other}),
            "model",
            policy.tokenizer,
            rows,
        )
    with pytest.raises(StageInputError, match="is not a reward model"):
        check_reward(
            stage_context(tmp_path / "c3", {"model": policy_dir, "reward": policy_dir}),
            "model",
            policy.tokenizer,
            rows,
        )
    no_family = [PromptRow(r.prompt, r.row) for r in rows]
    with pytest.raises(StageInputError, match="reward: synthetic .* row 0 has no `family`"):
        check_reward(ctx, "synthetic", policy.tokenizer, no_family)


def test_a_policy_padding_with_eos_is_refused(tmp_path, policy_factory):
    from stages.lib.tokenizers import load_tokenizer

    folder = tmp_path / "tok"
    tok = load_tokenizer(policy_factory())
    tok.pad_token = tok.eos_token
    tok.save_pretrained(str(folder))
    ctx = stage_context(tmp_path / "ctx", {"model": policy_factory(), "tokenizer": folder})
    with pytest.raises(StageInputError, match=r"pads with a stop token \(pad == eos\)"):
        check_policy(ctx)
