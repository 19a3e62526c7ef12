"""The shared test fixtures: synthetic task data and a mediocre tiny policy (room to improve, some right)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")


def test_the_tiny_policy_is_mediocre_by_design(policy_factory, synthetic_tasks):
    from stages.lib.chat import end_of_turn_ids, generation_prompt_ids
    from stages.lib.datasets import read_rows
    from stages.lib.generation import decode, sample
    from stages.lib.judge import score
    from stages.lib.models import load_model
    from stages.lib.tokenizers import load_tokenizer

    folder = policy_factory()
    tok, model = load_tokenizer(folder), load_model(folder)
    rows = read_rows(synthetic_tasks["prompts"], "test", ["prompt", "family"], input_name="prompts")[:64]
    prompts = [generation_prompt_ids(tok, r["prompt"]) for r in rows]
    out = sample(
        model,
        prompts,
        pad_id=tok.pad_token_id,
        stop_ids=end_of_turn_ids(tok),
        max_new_tokens=12,
        generator=torch.Generator().manual_seed(0),
    )
    accuracy = sum(
        score(r["family"], r["prompt"], t) for r, t in zip(rows, decode(tok, out), strict=True)
    ) / len(rows)
    print(f"tiny policy: {accuracy:.2f} of sampled answers right")
    assert 0.1 <= accuracy <= 0.8, accuracy
    assert set(synthetic_tasks) == {"instructions", "preferences", "feedback", "prompts"}
