"""The ppo stage in-process on the tiny SFT policy: the loss is the seed's formula and the first ratio is
exactly 1, per-token rewards and whitening, the memory layouts of adapter policies, reward ensembles with
the gold reward beside the proxy, the hard KL budget, adaptive β, gold early stopping, and bad inputs
refused before any model loads (seed §4.4, §4.5 phase 3, §4.12)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from ppo_helpers import inputs_of, ppo_config, ppo_context

torch = pytest.importorskip("torch")


def _run(tmp: Path, inputs: dict[str, Path], observer: Any = None, **overrides: Any) -> tuple[Any, Any]:
    """(StageResult, Run) of one in-process run."""
    from stages.ppo.loop import Run

    ctx = ppo_context(tmp, inputs)
    cfg = ppo_config(inputs=inputs_of(inputs), **overrides)
    run = Run(ctx, cfg, observer)
    return run.run(), run


def _history(tmp: Path) -> list[dict[str, Any]]:
    lines = (tmp / "policy" / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def _rollouts(tmp: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    return pq.read_table(tmp / "rollouts" / "data" / "train-00000-of-00001.parquet").to_pylist()


@pytest.fixture(scope="module")
def reward_models(tmp_path_factory, policy_factory):
    """A one-label reward model initialised from the SFT policy (random head), and an ensemble of two."""
    from stages.lib.models import load_model
    from stages.lib.tokenizers import load_tokenizer

    policy = policy_factory()
    tok = load_tokenizer(policy)
    root = tmp_path_factory.mktemp("rewards")
    ensemble = root / "ensemble"
    for k in range(2):
        torch.manual_seed(100 + k)
        rm = load_model(policy, task="classification", head_kwargs={"num_labels": 1})
        rm.config.pad_token_id = tok.pad_token_id
        rm.save_pretrained(ensemble / f"member-{k}")
        tok.save_pretrained(ensemble / f"member-{k}")
    (ensemble / "ensemble.json").write_text(json.dumps({"members": ["member-0", "member-1"]}))
    tok.save_pretrained(ensemble)
    return {"single": ensemble / "member-0", "ensemble": ensemble}


@pytest.fixture(scope="module")
def sft_lora(tmp_path_factory, policy_factory):
    """An SFT LoRA adapter on the tiny policy (non-zero B, so it changes the policy)."""
    from peft import LoraConfig, get_peft_model

    from stages.lib.models import load_model
    from stages.lib.tokenizers import load_tokenizer

    base = policy_factory()
    torch.manual_seed(7)
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, task_type="CAUSAL_LM")  # PPO must switch it off
    model = get_peft_model(load_model(base), config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    folder = tmp_path_factory.mktemp("sft-lora")
    model.save_pretrained(folder)
    load_tokenizer(base).save_pretrained(folder)
    return folder


def test_first_minibatch_ratio_is_exactly_one_and_the_loss_is_the_seed_formula(
    tmp_path, policy_factory, synthetic_tasks
):
    events: list[Any] = []
    inputs = {"policy": policy_factory(), "prompts": synthetic_tasks["prompts"]}
    result, _ = _run(
        tmp_path,
        inputs,
        events.append,
        gradient_accumulation_steps=2,
        per_device_train_batch_size=4,
        entropy_coef=0.01,
        vf_coef=0.1,
        cliprange_value=0.2,
        num_ppo_epochs=2,
    )
    from stages.ppo.experience import Experience
    from stages.ppo.update import MicroBatch

    exps = {e.step: e for e in events if isinstance(e, Experience)}
    micro = [e for e in events if isinstance(e, MicroBatch)]
    assert sorted(exps) == [1, 2] and result.metrics["steps"] == 2
    for step, exp in exps.items():
        first = [m for m in micro if m.step == step and m.epoch == 0 and m.minibatch == 0]
        assert len(first) == 2  # gradient_accumulation_steps micro-batches before the first optimizer step
        for m in first:  # rollout and training forwards agree bit for bit: ratio exactly 1
            ratio = (m.logp.detach() - exp.old_logp[m.index]).exp()
            assert torch.equal(ratio[exp.mask[m.index]], torch.ones_like(ratio[exp.mask[m.index]]))
        later = [m for m in micro if m.step == step and (m.epoch, m.minibatch) != (0, 0)]
        assert any(float(m.policy_terms.approx_kl) > 0 for m in later)  # the policy did move
    # the policy starts equal to the reference: the first batch's KL is exactly 0, then it is not
    assert torch.equal(exps[1].kl, torch.zeros_like(exps[1].kl))
    assert float(exps[2].kl.abs().sum()) > 0

    # L = L_actor + c1 L_critic - c2 H, written out from the seed (§4.5 step 5.3), on one micro-batch
    m, exp = micro[0], exps[1]
    i, mask = m.index, exp.mask[m.index].float()
    adv, old, logp = exp.advantages[i], exp.old_logp[i], m.logp.float()
    rho = torch.exp(logp - old)
    actor = -(torch.minimum(rho * adv, rho.clamp(0.8, 1.2) * adv) * mask).sum() / mask.sum()
    v, v_old, g = m.values.float(), exp.values[i], exp.returns[i]
    v_clip = v_old + (v - v_old).clamp(-0.2, 0.2)
    critic = 0.5 * (torch.maximum((v - g) ** 2, (v_clip - g) ** 2) * mask).sum() / mask.sum()
    entropy = (m.entropy.float() * mask).sum() / mask.sum()
    assert float(m.loss) == pytest.approx(float(actor + 0.1 * critic - 0.01 * entropy), abs=1e-6)

    # per-token rewards: -beta * k1 on every real token, the normalised score on the last one only
    for exp in exps.values():
        lengths = exp.mask.sum(dim=1)
        expected = -exp.beta * (exp.old_logp - exp.ref_logp) * exp.mask
        expected[torch.arange(len(exp)), lengths - 1] += exp.scores
        assert torch.allclose(exp.rewards, expected, atol=1e-6)
        assert torch.equal(exp.rewards[~exp.mask], torch.zeros_like(exp.rewards[~exp.mask]))
        # advantages whitened over real tokens only; padding stays 0 and enters neither mean nor std
        real = exp.advantages[exp.mask]
        assert abs(float(real.mean())) < 1e-5 and float(real.std()) == pytest.approx(1.0, abs=1e-4)
        assert torch.equal(exp.advantages[~exp.mask], torch.zeros_like(exp.advantages[~exp.mask]))
        # GAE by hand (seed §4.5 step 5.2): delta_t = r_t + V_{t+1} - V_t with V = 0 after the end
        for row in range(len(exp)):
            n, a, v = int(lengths[row]), 0.0, exp.values[row]
            for t in reversed(range(n)):
                delta = float(exp.rewards[row, t]) + (float(v[t + 1]) if t + 1 < n else 0.0) - float(v[t])
                a = delta + 0.95 * a
                assert float(exp.returns[row, t]) == pytest.approx(a + float(v[t]), abs=1e-5)
    history = [r for r in _history(tmp_path) if r["split"] == "train"]
    assert [r["policy/first_minibatch_ratio_max_dev"] for r in history] == [0.0, 0.0]
    for key in ("objective/scores", "objective/gold_scores", "objective/kl", "response_length", "loss"):
        assert all(key in r for r in history), key
    for key in ("policy/clipfrac_avg", "loss/value_avg", "val/explained_variance", "policy/entropy_avg"):
        assert all(key in r for r in history), key
    assert "policy/approxkl_avg" in history[0]


def test_a_new_lora_on_a_full_policy_uses_the_disabled_adapter_as_reference(
    tmp_path, policy_factory, synthetic_tasks
):
    from stages.lib.logprobs import rollout_logprobs
    from stages.lib.models import load_model

    events: list[Any] = []
    policy = policy_factory()
    inputs = {"policy": policy, "prompts": synthetic_tasks["prompts"]}
    result, run = _run(
        tmp_path, inputs, events.append, peft={"method": "lora", "r": 4, "alpha": 8}, learning_rate=5e-3
    )
    assert result.metrics["policy_layout"] == "lora"
    held = {h["role"]: h for h in result.metrics["models_held"]}
    assert held["reference"]["parameters"] == 0 and held["actor"]["trainable"] < held["actor"]["parameters"]
    sft = load_model(policy)
    last = [e for e in events if getattr(e, "step", None) == 2][0]
    with torch.no_grad():
        ref = rollout_logprobs(sft, last.rollout, 1.0, with_entropy=True)[0]
    assert torch.equal(ref, last.ref_logp)  # the reference is exactly the SFT model
    assert not torch.equal(last.old_logp, last.ref_logp)
    out = tmp_path / "policy"
    assert (out / "adapter_config.json").is_file() and not (out / "model.safetensors").exists()
    trained = load_model(out, base=policy)  # loads as a peft adapter on the SFT model
    with torch.no_grad():
        again = rollout_logprobs(trained, last.rollout, 1.0)[0]
        now = rollout_logprobs(run.models.policy.model, last.rollout, 1.0)[0]
    assert torch.allclose(again, now, atol=1e-6)


def test_an_sft_adapter_is_continued_beside_a_frozen_copy_on_one_base(
    tmp_path, policy_factory, synthetic_tasks, sft_lora
):
    from stages.lib.logprobs import rollout_logprobs
    from stages.lib.models import load_model

    events: list[Any] = []
    base = policy_factory()
    inputs = {"policy": sft_lora, "base": base, "prompts": synthetic_tasks["prompts"]}
    result, run = _run(
        tmp_path, inputs, events.append, critic="shared", eval_steps=1, learning_rate=5e-3, max_steps=2
    )
    m = result.metrics
    assert m["policy_layout"] == "lora_continued" and m["critic"] == "shared"
    held = {h["role"]: h for h in m["models_held"]}
    assert held["reference"]["parameters"] == held["actor"]["trainable"]  # adapter weights only
    base_params = sum(p.numel() for p in load_model(base).parameters())
    value_head = held["critic"]["parameters"]
    assert m["distinct_parameters"] == base_params + 2 * held["actor"]["trainable"] + value_head
    dropouts = [mod for mod in run.models.policy.model.modules() if isinstance(mod, torch.nn.Dropout)]
    assert dropouts and all(d.p == 0.0 for d in dropouts)  # PPO detail 1, the SFT adapter's 0.1 included
    assert not any(mod.training for mod in run.models.policy.model.modules())
    sft = load_model(sft_lora, base=base)
    last = [e for e in events if getattr(e, "step", None) == 2][0]
    with torch.no_grad():
        ref = rollout_logprobs(sft, last.rollout, 1.0, with_entropy=True)[0]
    assert torch.equal(ref, last.ref_logp)  # the frozen copy did not train
    assert not torch.equal(last.old_logp, last.ref_logp)  # the trained adapter did
    trained = load_model(tmp_path / "policy", base=base)
    with torch.no_grad():
        assert not torch.allclose(rollout_logprobs(trained, last.rollout, 1.0)[0], ref)
    evals = [r for r in _history(tmp_path) if r["split"] == "eval"]
    assert [r["step"] for r in evals] == [0, 1, 2]
    assert m["eval_gold_before"] == evals[0]["eval/gold_reward"]


def test_an_ensemble_scores_by_its_minimum_with_the_gold_reward_beside_it(
    tmp_path, policy_factory, synthetic_tasks, reward_models
):
    inputs = {
        "policy": policy_factory(),
        "reward": reward_models["ensemble"],
        "prompts": synthetic_tasks["prompts"],
    }
    result, _ = _run(tmp_path, inputs, reward="model", response_length=1, missing_eos_penalty=0.5)
    m = result.metrics
    assert m["critic"] == "reward_model" and m["reward"] == "model"
    assert [h["role"] for h in m["models_held"]] == ["actor", "reference", "critic", "reward"]
    assert "ensemble of 2" in m["models_held"][3]["what"] and m["peak_memory_mb"] > 0
    rows = _rollouts(tmp_path)
    assert len(rows) == 2 * 16 and {r["step"] for r in rows} == {1, 2}
    for r in rows:
        assert r["score"] == min(r["member_scores"])  # seed §4.12 item 2: the conservative minimum
        assert r["gold_reward"] in (0.0, 1.0)  # the prompts carry `family`: gold beside the proxy
    # step 1: running moments of this batch only; a response that never stopped loses the penalty
    first = [r for r in rows if r["step"] == 1]
    scores = torch.tensor([r["score"] for r in first], dtype=torch.float64)
    normalised = (scores - scores.mean()) / (scores.std() + 1e-8)
    assert any(not r["ended"] for r in first)
    for r, z in zip(first, normalised.tolist(), strict=True):
        assert r["reward"] == pytest.approx(z - (0.0 if r["ended"] else 0.5), abs=1e-5)
    history = [r for r in _history(tmp_path) if r["split"] == "train"]
    assert all("objective/gold_scores" in r and "objective/scores" in r for r in history)
    for folder in ("policy", "rollouts"):
        assert (tmp_path / folder / "reward_vs_kl.png").read_bytes()[:4] == b"\x89PNG"
    assert result.images == {"Proxy and gold reward against KL": "reward_vs_kl.png"}
    assert result.card_metadata["pipeline_tag"] == "text-generation"
    assert "nats per sequence" in result.card_sections["PPO"]


def test_the_kl_budget_stops_training_and_publishes_the_last_policy_within_it(
    tmp_path, policy_factory, synthetic_tasks
):
    from safetensors.torch import load_file

    from stages.ppo.experience import Experience
    from stages.ppo.state import snapshot

    weights: dict[int, dict[str, Any]] = {}

    def observe(event: Any) -> None:
        if isinstance(event, Experience):  # the weights that sampled this step's batch
            weights[event.step] = snapshot(run_box[0].models.policy.trainable())

    from stages.ppo.loop import Run

    run_box: list[Any] = []
    inputs = {"policy": policy_factory(), "prompts": synthetic_tasks["prompts"]}
    ctx = ppo_context(tmp_path, inputs)
    cfg = ppo_config(
        inputs=inputs_of(inputs),
        max_steps=8,
        learning_rate=1e-2,
        kl_control={"type": "adaptive", "init_kl_coef": 0.1, "target": 0.5, "horizon": 20},
        kl_budget={"max_kl": 1.0},
    )
    run_box.append(Run(ctx, cfg, observe))
    result = run_box[0].run()
    m = result.metrics
    train = [r for r in _history(tmp_path) if r["split"] == "train"]
    assert m["stopped_by"] == "kl_budget" and m["stopped_at_step"] == train[-1]["step"] < 8
    assert train[-1]["objective/kl"] > 1.0 and all(r["objective/kl"] <= 1.0 for r in train[:-1])
    assert "KL budget exceeded" in result.card_sections["PPO"]
    assert m["published_weights_step"] == m["stopped_at_step"] - 1
    published = load_file(str(tmp_path / "policy" / "model.safetensors"))
    kept = weights[m["published_weights_step"]]
    assert all(torch.equal(published[k], kept[k]) for k in published if k in kept)
    # the adaptive controller (seed §4.5 step 5.4): beta <- beta (1 + clip(KL/target - 1, ±0.2) n/horizon)
    for before, after in zip(train, train[1:], strict=False):
        error = min(max(before["objective/kl"] / 0.5 - 1, -0.2), 0.2)
        assert after["kl_coef"] == pytest.approx(before["kl_coef"] * (1 + error * 16 / 20), rel=1e-12)
    assert train[1]["kl_coef"] < train[0]["kl_coef"]  # the first KL (0) undershoots the target: beta falls


def test_stop_when_gold_drops_publishes_the_best_evaluated_weights(tmp_path, policy_factory, synthetic_tasks):
    from safetensors.torch import load_file

    from stages.ppo.experience import Experience
    from stages.ppo.loop import Run
    from stages.ppo.state import snapshot

    weights: dict[int, dict[str, Any]] = {}
    box: list[Any] = []

    def observe(event: Any) -> None:
        if isinstance(event, Experience):
            weights[event.step] = snapshot(box[0].models.policy.trainable())

    inputs = {"policy": policy_factory(), "prompts": synthetic_tasks["prompts"]}
    ctx = ppo_context(tmp_path, inputs)
    cfg = ppo_config(inputs=inputs_of(inputs), max_steps=12, stop_when_gold_drops={"patience": 2})
    box.append(Run(ctx, cfg, observe))
    result = box[0].run()
    m = result.metrics
    gold = [r["objective/gold_scores"] for r in _history(tmp_path) if r["split"] == "train"]
    assert m["stopped_by"] == "gold_drop", gold
    best = max(range(len(gold)), key=lambda i: (gold[i], -i)) + 1  # the first best evaluation
    assert m["published_weights_step"] == best and gold[-1] < gold[best - 1] and gold[-2] < gold[best - 1]
    published = load_file(str(tmp_path / "policy" / "model.safetensors"))
    assert all(torch.equal(published[k], weights[best][k]) for k in published if k in weights[best])
    assert "stop_when_gold_drops" in result.card_sections["PPO"]


# --- bad input fails before any model loads or samples -------------------------------------


@pytest.fixture
def no_compute(monkeypatch):
    def boom(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a model was loaded or sampled before the input checks failed")

    monkeypatch.setattr("stages.ppo.models.load_models", boom)
    monkeypatch.setattr("stages.lib.generation.sample", boom)


def _prompts(folder: Path, rows: list[dict[str, Any]]) -> Path:
    from stages.lib.testing import write_dataset

    return write_dataset(folder, rows)


def _chat(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def test_a_reward_model_with_another_tokenizer_is_refused(
    tmp_path, policy_factory, synthetic_tasks, no_compute
):
    from stages.lib.models import load_model
    from stages.lib.testing import save_base
    from stages.lib.tokenizers import load_tokenizer

    other = save_base(tmp_path / "other", corpus=["a completely different corpus of words"] * 4)
    rm = tmp_path / "rm"
    load_model(other, task="classification", head_kwargs={"num_labels": 1}).save_pretrained(rm)
    load_tokenizer(other).save_pretrained(rm)
    inputs = {"policy": policy_factory(), "reward": rm, "prompts": synthetic_tasks["prompts"]}
    from hubflow.errors import StageInputError

    with pytest.raises(StageInputError, match="inputs 'policy' and 'reward' do not share a tokenizer"):
        _run(tmp_path / "run", inputs, reward="model")


def test_a_prompt_longer_than_the_context_is_named_with_the_limit(tmp_path, policy_factory, no_compute):
    from hubflow.errors import StageInputError

    rows = [
        {"prompt": _chat(f"What is the largest number in this list: {i}, 2?"), "family": "max"}
        for i in range(5)
    ]
    rows[3]["prompt"] = _chat("What is the largest number in this list: " + ", ".join(["1"] * 400) + "?")
    inputs = {"policy": policy_factory(), "prompts": _prompts(tmp_path / "p", rows)}
    with pytest.raises(
        StageInputError, match=r"row 3 \(split train\) is \d+ tokens long.*context of 512"
    ) as err:
        _run(tmp_path / "run", inputs)
    assert "response_length 8" in err.value.message


def test_prompts_without_a_prompt_column_are_refused(tmp_path, policy_factory, no_compute):
    from hubflow.errors import StageInputError

    rows = [{"question": "What is the largest number in this list: 1, 2?", "family": "max"}] * 3
    inputs = {"policy": policy_factory(), "prompts": _prompts(tmp_path / "p", rows)}
    with pytest.raises(StageInputError, match=r"input 'prompts' lacks column\(s\) \['prompt'\]; it has"):
        _run(tmp_path / "run", inputs)


def test_synthetic_reward_without_family_is_refused(tmp_path, policy_factory, no_compute):
    from hubflow.errors import StageInputError

    rows = [{"prompt": _chat("What is the largest number in this list: 1, 2?")}] * 3
    inputs = {"policy": policy_factory(), "prompts": _prompts(tmp_path / "p", rows)}
    with pytest.raises(
        StageInputError, match="`reward: synthetic` grades responses with the gold judge.*'family'"
    ):
        _run(tmp_path / "run", inputs)


def test_an_unknown_family_under_the_gold_judge_names_its_row(tmp_path, policy_factory, no_compute):
    from hubflow.errors import StageInputError

    rows = [{"prompt": _chat("What is the largest number in this list: 1, 2?"), "family": "max"}] * 3
    rows = [*rows, {"prompt": _chat("Write a poem."), "family": "poetry"}]
    inputs = {"policy": policy_factory(), "prompts": _prompts(tmp_path / "p", rows)}
    with pytest.raises(StageInputError, match=r"row 3 \(split train\): unknown task family 'poetry'"):
        _run(tmp_path / "run", inputs)


def test_an_adapter_policy_without_its_base_and_a_policy_as_reward_are_refused(
    tmp_path, policy_factory, synthetic_tasks, sft_lora, no_compute
):
    from hubflow.errors import StageInputError

    with pytest.raises(StageInputError, match="no 'base' input"):
        _run(tmp_path / "a", {"policy": sft_lora, "prompts": synthetic_tasks["prompts"]})
    inputs = {"policy": policy_factory(), "reward": policy_factory(), "prompts": synthetic_tasks["prompts"]}
    with pytest.raises(StageInputError, match="is not a reward model"):
        _run(tmp_path / "b", inputs, reward="model")
