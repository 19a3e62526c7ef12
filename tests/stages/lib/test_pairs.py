"""Preference data: reading with checks, tokenising as a policy samples, completion log-probs."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from hubflow.errors import StageInputError  # noqa: E402
from stages.lib.pairs import (  # noqa: E402
    Pair,
    completion_logps,
    encode_pairs,
    read_pairs,
    read_pointwise,
)
from stages.lib.testing import tiny_llama, tiny_tokenizer, write_dataset  # noqa: E402

P = [{"role": "user", "content": "one plus two"}]
C = [{"role": "assistant", "content": "three"}]
R = [{"role": "assistant", "content": "four"}]


def test_pairs_and_pointwise_rows_are_checked(tmp_path, synthetic_tasks):
    pairs = read_pairs(synthetic_tasks["preferences"], "test", input_name="prefs")
    assert pairs and pairs[0].family in ("max", "min") and pairs[0].chosen != pairs[0].rejected
    assert {p.label for p in read_pointwise(synthetic_tasks["feedback"], input_name="fb")} == {True, False}
    bad = write_dataset(tmp_path / "bad", [{"prompt": "x", "chosen": "y", "score": 1}])
    with pytest.raises(
        StageInputError, match=r"lacks column\(s\) \['rejected'\]; it has \['prompt', 'chosen', 'score'\]"
    ):
        read_pairs(bad, input_name="prefs")
    one = write_dataset(tmp_path / "one", [{"prompt": "x", "completion": "y", "label": True}] * 3)
    with pytest.raises(StageInputError, match="has only desirable rows .* KTO needs both labels"):
        read_pointwise(one, input_name="fb")
    ints = write_dataset(tmp_path / "ints", [{"prompt": "x", "completion": "y", "label": 1}])
    with pytest.raises(StageInputError, match="column 'label' must be booleans"):
        read_pointwise(ints, input_name="fb")


def test_truncation_keeps_the_prompt_end_and_drops_prompts_that_fill_the_length():
    tok = tiny_tokenizer()
    long_prompt = [{"role": "user", "content": "one plus two " * 30}]
    encoded, dropped = encode_pairs(tok, [Pair(P, C, R), Pair(long_prompt, C, R)], max_length=40)
    assert dropped == 1 and len(encoded) == 1
    kept, _ = encode_pairs(tok, [Pair(long_prompt, C, R)], max_length=40, max_prompt_length=20)
    assert len(kept[0].prompt_ids) == 20 and len(kept[0].prompt_ids) + len(kept[0].chosen_ids) <= 40


def test_completion_logps_equal_one_sequence_at_a_time():
    tok = tiny_tokenizer()
    model = tiny_llama(len(tok), hidden=32, layers=1, heads=2, seed=3).eval()
    encoded, _ = encode_pairs(
        tok, [Pair(P, C, R), Pair([{"role": "user", "content": "hi"}], R, C)], max_length=64
    )
    prompts = [e.prompt_ids for e in encoded] * 2
    completions = [e.chosen_ids for e in encoded] + [e.rejected_ids for e in encoded]
    with torch.no_grad():
        batched = completion_logps(model, prompts, completions, pad_id=tok.pad_token_id)
        averaged = completion_logps(model, prompts, completions, pad_id=tok.pad_token_id, average=True)
        for i, (p, c) in enumerate(zip(prompts, completions, strict=True)):
            logits = model(input_ids=torch.tensor([p + c])).logits[0, len(p) - 1 : -1].log_softmax(-1)
            expected = logits.gather(-1, torch.tensor(c).unsqueeze(-1)).sum()
            assert batched[i] == pytest.approx(float(expected), abs=1e-4)
            assert averaged[i] == pytest.approx(float(expected) / len(c), abs=1e-4)
