"""The orpo stage: its first-step loss is stages.lib.preference.orpo_loss by hand, for either span of the
SFT term; ORPO raises held-out preference accuracy over its SFT start (3 seeds)."""

from __future__ import annotations

import statistics

import pytest

torch = pytest.importorskip("torch")

from stages import orpo  # noqa: E402
from stages.lib.models import load_model  # noqa: E402
from stages.lib.pairs import completion_batch, completion_logps, encode_pairs, read_pairs  # noqa: E402
from stages.lib.preference import orpo_loss  # noqa: E402
from stages.lib.tokenizers import load_tokenizer  # noqa: E402

LAMBDA = 0.4


def nll(model, prompts, completions, pad, *, with_prompt: bool) -> float:
    """Token-mean NLL of the chosen sequences: over the completion's tokens, or every token after the first."""
    ids, mask, comp = completion_batch(prompts, completions, pad)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
    logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    keep = (mask if with_prompt else comp)[:, 1:].bool()
    return float(-logp[keep].mean())


@pytest.mark.parametrize("nll_tokens", ["completion", "prompt_and_completion"])
def test_first_step_loss_equals_the_lib_formula(tmp_path, run, policy, small_prefs, nll_tokens):
    result, _ = run(
        orpo,
        tmp_path / "stage",
        {"model": policy, "data": small_prefs},
        **{"lambda": LAMBDA},
        nll_tokens=nll_tokens,
        max_steps=1,
        per_device_train_batch_size=8,
        learning_rate=1e-3,
    )
    tok = load_tokenizer(policy)
    encoded, _ = encode_pairs(tok, read_pairs(small_prefs, input_name="data"), max_length=1024)
    prompts = [e.prompt_ids for e in encoded]
    chosen, rejected = [e.chosen_ids for e in encoded], [e.rejected_ids for e in encoded]
    model, pad = load_model(policy), tok.pad_token_id
    with torch.no_grad():
        c = completion_logps(model, prompts, chosen, pad_id=pad, average=True)
        r = completion_logps(model, prompts, rejected, pad_id=pad, average=True)
    sft = torch.tensor(nll(model, prompts, chosen, pad, with_prompt=nll_tokens != "completion"))
    terms = orpo_loss(c, r, sft, lam=LAMBDA)
    m = result.metrics
    assert m["train_loss_first"] == pytest.approx(float(terms.loss), abs=2e-5)
    assert m["first_step"]["or_loss"] == pytest.approx(float(terms.or_loss), abs=2e-5)
    assert m["first_step"]["nll_loss"] == pytest.approx(float(sft), abs=2e-5)
    assert m["reference"].startswith("none") and "No reference model" in result.card_sections["ORPO"]


def test_lambda_is_written_as_in_the_seed():
    cfg = orpo.Config.model_validate(
        {
            "name": "o",
            "kind": "orpo",
            "inputs": {"model": "m", "data": "d"},
            "output": "model:a/o",
            "lambda": 0.5,
        }
    )
    assert cfg.lambda_ == 0.5 and orpo.Config.model_validate(cfg.model_dump()).lambda_ == 0.5


def held_out_accuracy(model_dir, prefs, tok) -> float:
    encoded, _ = encode_pairs(tok, read_pairs(prefs, "test", input_name="data"), max_length=1024)
    model = load_model(model_dir)
    prompts = [e.prompt_ids for e in encoded]
    with torch.no_grad():
        c = completion_logps(model, prompts, [e.chosen_ids for e in encoded], pad_id=tok.pad_token_id)
        r = completion_logps(model, prompts, [e.rejected_ids for e in encoded], pad_id=tok.pad_token_id)
    return float((c > r).float().mean())


@pytest.mark.slow
def test_orpo_raises_held_out_preference_accuracy_over_its_sft_start(tmp_path, run, policy, synthetic_tasks):
    prefs = synthetic_tasks["preferences"]
    tok = load_tokenizer(policy)
    start = held_out_accuracy(policy, prefs, tok)
    gains = []
    for seed in range(3):
        result, ctx = run(
            orpo,
            tmp_path / f"s{seed}",
            {"model": policy, "data": prefs},
            seed=seed,
            max_steps=80,
            per_device_train_batch_size=16,
            learning_rate=3e-3,
            logging_steps=20,
            eval_examples=120,
            **{"lambda": 0.5},
        )
        gains.append(held_out_accuracy(ctx.output, prefs, tok) - start)
        assert result.metrics["eval_preference_accuracy"] == pytest.approx(start + gains[-1], abs=1e-6)
    print(f"ORPO held-out preference accuracy {start:.4f} -> gains per seed {gains}")
    assert statistics.mean(gains) > 0.05 and statistics.mean(gains) > 2 * statistics.stdev(gains)
