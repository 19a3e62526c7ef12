"""The shared sampling and scoring layer: stages/lib/generation.py and stages/lib/logprobs.py."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from stages.lib.generation import decode, left_pad, position_ids, right_pad, sample, sampling_probs
from stages.lib.logprobs import last_token_scores, rollout_logprobs, sequence_scores, token_values
from stages.lib.testing import tiny_llama, tiny_tokenizer

torch.set_num_threads(1)

TEXTS = ["the quick brown fox", "what", "answer : three . the lazy dog", "hello world"]


@pytest.fixture(scope="module")
def tok():
    t = tiny_tokenizer()
    assert t.pad_token_id != t.eos_token_id
    return t


@pytest.fixture(scope="module")
def model(tok):
    return tiny_llama(len(tok), hidden=32, layers=2, heads=2).eval()


@pytest.fixture(scope="module")
def prompts(tok):
    ps = [tok(t)["input_ids"] for t in TEXTS]
    assert len({len(p) for p in ps}) == len(ps)  # all lengths differ: real left padding
    return ps


def run(model, prompts, tok, **kw):
    kw.setdefault("max_new_tokens", 10)
    kw.setdefault("stop_ids", [tok.eos_token_id])
    return sample(model, prompts, pad_id=tok.pad_token_id, **kw)


def truncate(tokens, stops):
    cut = next((k for k, t in enumerate(tokens) if t in stops), None)
    return tokens if cut is None else tokens[: cut + 1]


def real_response(rollout, r):
    return rollout.response_ids[r, : int(rollout.response_lengths()[r])].tolist()


def test_padding_and_position_ids():
    ids, mask = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert position_ids(mask).tolist() == [[0, 1, 2], [0, 0, 0]]
    ids, mask = right_pad([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert position_ids(torch.tensor([[0, 1, 1, 1, 0]])).tolist() == [[0, 0, 1, 2, 0]]


def test_greedy_batched_equals_single_and_cache_equals_reencoding(model, tok, prompts):
    singles = [real_response(run(model, [p], tok, greedy=True), 0) for p in prompts]
    for kw in ({}, {"batch_size": 3}, {"use_cache": False}):
        r = run(model, prompts, tok, greedy=True, **kw)
        assert [real_response(r, i) for i in range(len(prompts))] == singles, kw
        assert r.prompt_mask.sum(1).tolist() == [len(p) for p in prompts]
        assert [r.prompt_ids[i, -len(p) :].tolist() for i, p in enumerate(prompts)] == prompts


def test_same_seed_same_samples_with_and_without_cache(model, tok, prompts):
    def draw(seed, **kw):
        return run(model, prompts, tok, num_samples=3, generator=torch.Generator().manual_seed(seed), **kw)

    a, b, c = draw(0), draw(0, use_cache=False), draw(1)
    assert torch.equal(a.response_ids, b.response_ids) and torch.equal(a.response_mask, b.response_mask)
    assert not torch.equal(a.response_ids, c.response_ids)
    assert a.prompt_index.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert not torch.equal(a.response_ids[0], a.response_ids[1])  # the samples of one prompt differ


def test_first_stop_token_ends_a_row_and_masks_cover_real_tokens(model, tok, prompts):
    free = run(model, prompts, tok, greedy=True)
    assert not free.ended.any() and free.response_ids.shape[1] == 10
    row0 = free.response_ids[0].tolist()
    k = next(k for k in range(2, 10) if row0[k] not in row0[:k])  # a token first seen at step k
    stops = [row0[k], tok.eos_token_id]
    r = run(model, prompts, tok, greedy=True, stop_ids=stops)
    assert r.ended[0] and int(r.response_lengths()[0]) == k + 1
    for i in range(len(prompts)):
        expected = truncate(free.response_ids[i].tolist(), stops)
        n = len(expected)
        assert real_response(r, i) == expected
        assert bool(r.ended[i]) == (expected[-1] in stops)
        assert r.response_mask[i].tolist() == [1] * n + [0] * (r.response_ids.shape[1] - n)
        assert set(r.response_ids[i, n:].tolist()) <= {tok.pad_token_id}
        assert int(r.last_token_index()[i]) == r.prompt_ids.shape[1] + n - 1
    first = run(model, prompts, tok, greedy=True, stop_ids=free.response_ids[:, 0].tolist())
    assert first.ended.all() and first.response_ids.shape[1] == 1  # stops as soon as every row has ended
    texts = decode(tok, r)
    assert texts[0] == tok.decode(row0[:k], skip_special_tokens=True)


def test_token_logprobs_batched_equal_unpadded_singles_at_temperature(model, tok, prompts):
    def draw(**kw):
        return run(
            model,
            prompts,
            tok,
            num_samples=2,
            generator=torch.Generator().manual_seed(3),
            temperature=1.3,
            **kw,
        )

    free = draw()
    r = draw(stop_ids=[tok.eos_token_id, *free.response_ids[[0, 5], [2, 6]].tolist()])
    assert len(set(r.response_lengths().tolist())) > 1
    temp = 0.7
    with torch.no_grad():
        logp, entropy = rollout_logprobs(model, r, temp, with_entropy=True)
        for i in range(r.response_ids.shape[0]):
            prompt = prompts[int(r.prompt_index[i])]
            resp = real_response(r, i)
            ids = torch.tensor([prompt + resp])
            logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1] / temp
            hand = F.log_softmax(logits, dim=-1)
            torch.testing.assert_close(
                logp[i, : len(resp)], hand.gather(-1, ids[0, len(prompt) :, None])[:, 0], atol=1e-5, rtol=0
            )
            torch.testing.assert_close(
                entropy[i, : len(resp)], -(hand.exp() * hand).sum(-1), atol=1e-5, rtol=0
            )
            assert not logp[i, len(resp) :].any() and not entropy[i, len(resp) :].any()


def test_learned_absolute_positions_get_the_real_position_ids(tok, prompts):
    """Llama's RoPE only sees position differences, so left padding cannot show a wrong offset; GPT-2's
    learned position embeddings do (item 14)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(
        vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2, n_positions=64, bos_token_id=1, eos_token_id=2
    )
    gpt = GPT2LMHeadModel(cfg).eval()
    r = run(gpt, prompts, tok, greedy=True)
    for i, p in enumerate(prompts):
        assert real_response(run(gpt, [p], tok, greedy=True), 0) == real_response(r, i)
    with torch.no_grad():
        logp, _ = rollout_logprobs(gpt, r, 0.5)
        for i, p in enumerate(prompts):
            single, _ = rollout_logprobs(gpt, run(gpt, [p], tok, greedy=True), 0.5)
            torch.testing.assert_close(logp[i], single[0], atol=1e-5, rtol=0)


def test_sampling_distribution_respects_top_k_and_top_p(model, tok, prompts):
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log()
    torch.testing.assert_close(sampling_probs(logits, temperature=2.0), F.softmax(logits / 2, -1))
    torch.testing.assert_close(sampling_probs(logits, top_p=0.75), torch.tensor([0.625, 0.375, 0, 0]))
    torch.testing.assert_close(sampling_probs(logits, top_k=3), torch.tensor([0.5, 0.3, 0.15, 0]) / 0.95)
    greedy = run(model, prompts, tok, greedy=True)
    for kw in ({"top_k": 1}, {"top_p": 1e-6}):
        r = run(model, prompts, tok, generator=torch.Generator().manual_seed(0), temperature=1.5, **kw)
        assert torch.equal(r.response_ids, greedy.response_ids), kw
    # the first sampled token follows sampling_probs: only the top 5, at their renormalised frequencies
    n = 4000
    r = run(
        model,
        prompts[:1],
        tok,
        max_new_tokens=1,
        num_samples=n,
        temperature=1.5,
        top_k=5,
        generator=torch.Generator().manual_seed(0),
    )
    with torch.no_grad():
        expected = sampling_probs(
            model(input_ids=torch.tensor(prompts[:1])).logits[0, -1], temperature=1.5, top_k=5
        )
    counts = torch.bincount(r.response_ids[:, 0], minlength=expected.shape[0]).float() / n
    assert set(counts.nonzero()[:, 0].tolist()) <= set(expected.nonzero()[:, 0].tolist())
    assert (counts - expected).abs().max() < 0.03


def test_lora_model_samples_and_scores_like_its_merged_equivalent(model, tok, prompts):
    from peft import LoraConfig, get_peft_model

    lora = get_peft_model(
        copy.deepcopy(model),
        LoraConfig(
            r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False
        ),
    )
    merged = copy.deepcopy(lora).merge_and_unload()
    assert type(merged).__name__ == "LlamaForCausalLM"
    g = run(lora, prompts, tok, greedy=True)
    assert torch.equal(g.response_ids, run(merged, prompts, tok, greedy=True).response_ids)
    assert not torch.equal(g.response_ids, run(model, prompts, tok, greedy=True).response_ids)  # LoRA is live
    a = run(lora, prompts, tok, num_samples=2, generator=torch.Generator().manual_seed(5))
    b = run(merged, prompts, tok, num_samples=2, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a.response_ids, b.response_ids)
    lora.train()
    with torch.no_grad():
        lp_lora, _ = rollout_logprobs(lora, a, 1.0)
        lp_merged, _ = rollout_logprobs(merged, a, 1.0)
    assert lora.training  # sample() restores the training mode; scoring never touches it
    torch.testing.assert_close(lp_lora, lp_merged, atol=1e-5, rtol=0)


def test_reward_and_value_heads_read_real_tokens(tok, prompts):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        num_labels=1,
    )
    assert cfg.pad_token_id is None  # we pick the token from the mask, not by looking for pad ids
    rm = LlamaForSequenceClassification(cfg).eval()
    policy = tiny_llama(len(tok), hidden=32, layers=2, heads=2, seed=1)
    first_tokens = run(policy, prompts, tok, greedy=True).response_ids[:2, 3].tolist()
    r = run(policy, prompts, tok, greedy=True, stop_ids=first_tokens)
    assert r.ended.any() and not r.ended.all()
    with torch.no_grad():
        scores, values = sequence_scores(rm, r), token_values(rm, r)
        ids, mask, _ = r.sequences()
        seqs = [prompts[i] + real_response(r, i) for i in range(len(prompts))]
        rp_ids, rp_mask = right_pad(seqs, tok.pad_token_id)
        torch.testing.assert_close(last_token_scores(rm, rp_ids, rp_mask), scores, atol=1e-5, rtol=0)
        for i, seq in enumerate(seqs):
            single = rm(input_ids=torch.tensor([seq]))
            torch.testing.assert_close(scores[i], single.logits[0, 0], atol=1e-5, rtol=0)
            hidden = rm.model(input_ids=torch.tensor([seq])).last_hidden_state[0]
            n = len(seq) - len(prompts[i])
            expected = rm.score(hidden[len(prompts[i]) - 1 : -1])[:, 0]
            torch.testing.assert_close(values[i, :n], expected, atol=1e-5, rtol=0)
            assert not values[i, n:].any()
    assert scores.shape == (len(prompts),) and values.shape == r.response_ids.shape


def test_replaces_the_evaluate_stage_greedy_generate(model, tok, prompts):
    from stages.evaluate.scoring import generate

    stops = [tok.eos_token_id, *run(model, prompts, tok, greedy=True).response_ids[:2, 4].tolist()]
    theirs = generate(
        model,
        tok,
        prompts,
        max_new_tokens=10,
        batch_size=3,
        stop_ids=stops,
        pad_id=tok.pad_token_id,
        device="cpu",
        max_length=64,
    )
    ours = run(model, prompts, tok, greedy=True, stop_ids=stops, batch_size=3)
    assert [t.strip() for t in decode(tok, ours)] == theirs


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"stop_ids": [3, 2]}, "pad and stop tokens must differ"),
        ({"temperature": 0.0}, "temperature must be > 0"),
        ({"top_p": 0.0}, "top_p must be in"),
        ({"top_k": -1}, "top_k must be >= 0"),
        ({"max_new_tokens": 0}, "max_new_tokens must be >= 1"),
        ({"stop_ids": []}, "stop_ids is empty"),
        ({"prompts": [[1], []]}, r"prompts\[1\] is empty"),
    ],
)
def test_bad_inputs_name_the_argument(model, tok, kw, message):
    kw = {"prompts": [[1, 5]], "stop_ids": [2], "max_new_tokens": 4, **kw}
    with pytest.raises(ValueError, match=message):
        sample(model, kw.pop("prompts"), pad_id=3, **kw)
    assert run(model, [[1, 5]], tok, temperature=0.0, greedy=True).response_ids.shape[0] == 1
