"""Reward sources: a reward model, an ensemble (min / mean), the gold judge; and the tokens a policy
samples (split_prompt_completion), which reward models and preference losses are trained on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from hubflow.errors import StageInputError  # noqa: E402
from stages.lib.chat import end_of_turn_ids, generation_prompt_ids, split_prompt_completion  # noqa: E402
from stages.lib.rewards import (  # noqa: E402
    ENSEMBLE_FILE,
    check_reward_folder,
    check_same_tokenizer,
    gold_rewards,
    load_reward_model,
)
from stages.lib.testing import save_base, tiny_llama, tiny_tokenizer  # noqa: E402

PROMPT = [{"role": "user", "content": "What is one plus two?"}]
REPLY = [{"role": "assistant", "content": "three"}]


def _reward_model(folder: Path, seed: int) -> Path:
    from transformers import LlamaForSequenceClassification

    tok = tiny_tokenizer()
    lm = tiny_llama(len(tok), hidden=32, layers=1, heads=2, seed=seed)
    config = lm.config
    config.num_labels, config.pad_token_id = 1, tok.pad_token_id
    torch.manual_seed(seed)
    model = LlamaForSequenceClassification(config)
    folder.mkdir(parents=True)
    model.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return folder


def test_the_completion_is_what_a_policy_generates():
    tok = tiny_tokenizer()
    prompt_ids, completion_ids = split_prompt_completion(tok, PROMPT, REPLY)
    assert prompt_ids == generation_prompt_ids(tok, PROMPT)
    assert completion_ids[-1] in end_of_turn_ids(
        tok
    )  # ends at <|end|>, the template's trailing newline is not in it
    assert tok.decode(completion_ids, skip_special_tokens=True).strip() == "three"
    p, c = split_prompt_completion(tok, "one plus two", "three")
    assert p[0] == tok.bos_token_id and c[-1] == tok.eos_token_id
    with pytest.raises(StageInputError, match="both be chat message lists or both be strings"):
        split_prompt_completion(tok, PROMPT, "three")


def test_one_model_and_an_ensemble_score_like_a_plain_forward(tmp_path):
    single = _reward_model(tmp_path / "rm", seed=1)
    rm = load_reward_model(single)
    scores, per = rm.score_texts([PROMPT, PROMPT], [REPLY, [{"role": "assistant", "content": "four five"}]])
    from transformers import AutoModelForSequenceClassification

    plain = AutoModelForSequenceClassification.from_pretrained(str(single)).eval()
    ids = sum(split_prompt_completion(rm.tokenizer, PROMPT, REPLY), [])
    with torch.no_grad():
        expected = float(plain(input_ids=torch.tensor([ids])).logits[0, 0])
    assert scores[0] == pytest.approx(expected, abs=1e-5) and per == [scores]

    ens = tmp_path / "ens"
    for k in range(2):
        _reward_model(ens / f"member-{k}", seed=10 + k)
    (ens / ENSEMBLE_FILE).write_text(json.dumps({"members": ["member-0", "member-1"]}))
    low, each = load_reward_model(ens, aggregate="min").score_texts([PROMPT], [REPLY])
    mean, _ = load_reward_model(ens, aggregate="mean").score_texts([PROMPT], [REPLY])
    assert low[0] == pytest.approx(min(e[0] for e in each)) and mean[0] == pytest.approx(
        sum(e[0] for e in each) / 2
    )


def test_bad_reward_inputs_are_refused(tmp_path):
    lm = save_base(tmp_path / "lm", hidden=32, layers=1, heads=2)
    with pytest.raises(StageInputError, match="is not a reward model .* it is a causal_lm model"):
        check_reward_folder(lm)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / ENSEMBLE_FILE).write_text(json.dumps({"members": ["../lm"]}))
    with pytest.raises(StageInputError, match="member '../lm' is not a folder of the repo"):
        check_reward_folder(bad)
    other = tiny_tokenizer(["completely different words here"] * 4, vocab_size=300)
    with pytest.raises(StageInputError, match="do not share a tokenizer: vocabulary sizes"):
        check_same_tokenizer(tiny_tokenizer(), other, policy_input="policy", reward_input="reward")


def test_gold_rewards():
    prompt = "What is the largest number in this list: 15, 6, 18, 10, 14?"
    assert gold_rewards(["max", "max"], [prompt, prompt], ["18", "Answer: 15"]) == [1.0, 0.0]
    with pytest.raises(StageInputError, match="not 'poetry'"):
        gold_rewards(["poetry"], ["x"], ["y"])
