"""The ``grpo`` and ``rloo`` kinds (TRL 1.16's GRPOTrainer / RLOOTrainer) on the synthetic max/min families.

What is checked: the loss a step optimises and its gradient equal the GRPO / RLOO formulas computed with
our own functions (``stages.ppo.advantages``, ``stages.ppo.objectives``, ``stages.ppo.rewards``) on the
same batch; the gold reward rises over a hundred steps on 3 seeds for both kinds while KL stays under a
budget; the reward model scores exactly the sampled tokens; every policy shape measures KL against the
right reference; a crash resumes to the uninterrupted weights; bad inputs fail before any weight loads.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("trl")
pytest.importorskip("peft")

from hubflow.errors import StageInputError  # noqa: E402
from stages import grpo, rloo  # noqa: E402
from stages.lib.testing import stage_context, write_dataset  # noqa: E402

KINDS = {"grpo": grpo, "rloo": rloo}
REFS = {
    "policy": "model:demo/sft@" + "a" * 40,
    "base": "model:demo/sft@" + "a" * 40,  # an adapter made here records the policy as its base
    "prompts": "dataset:demo/prompts@" + "b" * 40,
}
SMALL = dict(
    per_device_train_batch_size=16,
    num_generations=4,
    max_completion_length=8,
    learning_rate=1e-3,
    logging_steps=1,
    eval_steps=2,
    save_steps=None,
)


def make(kind: str, tmp: Path, inputs: dict[str, Path], **fields: Any) -> tuple[Any, Any]:
    ctx = stage_context(tmp, inputs, {k: REFS.get(k, f"model:demo/{k}@" + "c" * 40) for k in inputs})
    ctx.outputs = {"policy": tmp / "out-policy", "rollouts": tmp / "out-rollouts"}
    ctx.resources.cpu = True
    refs = {k: ("dataset:demo/" if k == "prompts" else "model:demo/") + k for k in inputs}
    body = {**SMALL, **fields}
    cfg = KINDS[kind].Config(
        name=kind,
        kind=kind,
        inputs=refs,
        outputs={"policy": "model:demo/out", "rollouts": "dataset:demo/rollouts"},
        **body,
    )
    return ctx, cfg


def run(kind: str, tmp: Path, inputs: dict[str, Path], **fields: Any) -> Any:
    ctx, cfg = make(kind, tmp, inputs, **fields)
    return KINDS[kind].run(ctx, cfg)


@pytest.fixture(scope="module")
def policy(policy_factory) -> Path:
    return policy_factory()


@pytest.fixture(scope="module")
def prompts(synthetic_tasks) -> Path:
    return synthetic_tasks["prompts"]


def synthetic_inputs(policy: Path, prompts: Path) -> dict[str, Path]:
    return {"policy": policy, "prompts": prompts}


def capture_loss(monkeypatch: pytest.MonkeyPatch, cls: Any, check: Any) -> list[dict[str, Any]]:
    """Wrap ``cls._compute_loss``: after TRL's loss, ``check(trainer, model, inputs, loss)`` computes ours on
    the same batch at the same weights and returns what to record."""
    seen: list[dict[str, Any]] = []
    original = cls._compute_loss

    def wrapped(self: Any, model: Any, inputs: dict[str, Any]) -> Any:
        loss = original(self, model, inputs)
        seen.append(check(self, model, inputs, loss))
        return loss

    monkeypatch.setattr(cls, "_compute_loss", wrapped)
    return seen


def _new_logps(model: Any, inputs: dict[str, Any], temperature: float) -> tuple[Any, Any]:
    from stages.lib.logprobs import token_logprobs

    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
    mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
    logp, _ = token_logprobs(
        model, ids, mask, response_start=inputs["prompt_ids"].shape[1], temperature=temperature
    )
    return logp, inputs["completion_mask"].bool()


def _grads(loss: Any, model: Any, retain: bool) -> list[Any]:
    params = [p for p in model.parameters() if p.requires_grad]
    return list(torch.autograd.grad(loss, params, retain_graph=retain, allow_unused=True))


def _same_grads(a: list[Any], b: list[Any]) -> bool:
    """Equal gradients, up to float32 summation order (relative to the gradient's size)."""
    pairs = [(x, y) for x, y in zip(a, b, strict=True) if x is not None or y is not None]
    scale = max(float(torch.cat([x.flatten() for x, _ in pairs]).abs().max()), 1e-12)
    return all(float((x - y).abs().max()) <= 1e-4 * scale for x, y in pairs)


# --- the loss TRL optimises is the seed's formula ---------------------------------------------------------


@pytest.mark.slow
def test_grpo_loss_and_advantages_match_the_formula(tmp_path, policy, prompts, monkeypatch):
    """TRL's GRPO loss (loss_type dapo, β = 0.04, μ = 2 so the second pass has ρ ≠ 1 and a binding clip)
    against −mean_t min(ρ_t A_i, clip(ρ_t, 1 ± ε) A_i) + β·mean_t(ρ_t·k3_t) from stages.ppo.objectives and
    stages.ppo.rewards, value and gradient; TRL's advantages against stages.ppo.advantages.grpo on TRL's
    rewards (group = the G consecutive completions of a prompt); π_ref = the starting policy."""
    from trl import GRPOTrainer

    from stages.lib.masked import masked_mean
    from stages.lib.models import load_model
    from stages.ppo.advantages import grpo as grpo_advantages
    from stages.ppo.objectives import policy_loss
    from stages.ppo.rewards import kl_penalty

    beta, eps, temperature = 0.04, 0.05, 0.9
    reference = load_model(policy, task="causal_lm")

    def check(trainer: Any, model: Any, inputs: dict[str, Any], loss: Any) -> dict[str, Any]:
        logp, mask = _new_logps(model, inputs, temperature)
        old = inputs.get("old_per_token_logps")
        old = logp.detach() if old is None else old
        adv = inputs["advantages"][:, None].expand_as(logp)
        terms = policy_loss(logp, old, adv, mask, clip_eps=eps)
        with torch.no_grad():
            ref, _ = _new_logps(reference, inputs, temperature)
        ratio = torch.exp(logp - old)
        ours = terms.loss + beta * masked_mean(kl_penalty(logp, ref, "k3") * ratio, mask)
        rewards = torch.tensor(list(trainer._logs["rewards"]["gold_judge"]))
        groups = torch.arange(len(rewards)) // trainer.num_generations
        expected, _ = grpo_advantages(
            rewards[:, None], None, torch.ones(len(rewards), 1, dtype=torch.bool), group_ids=groups
        )
        return {
            "trl": float(loss.detach()),
            "ours": float(ours.detach()),
            "grads": _same_grads(_grads(loss, model, True), _grads(ours, model, False)),
            "ratio_mean": float(terms.ratio_mean),
            "clip_frac": float(terms.clip_frac),
            "adv_err": float((torch.tensor(list(trainer._logs["advantages"])) - expected[:, 0]).abs().max()),
        }

    seen = capture_loss(monkeypatch, GRPOTrainer, check)
    result = run(
        "grpo",
        tmp_path,
        synthetic_inputs(policy, prompts),
        reward="synthetic",
        max_steps=4,
        num_iterations=2,
        beta=beta,
        epsilon=eps,
        temperature=temperature,
        learning_rate=2e-2,
        lr_scheduler_type="constant",
    )
    assert result.metrics["steps"] == 4 and len(seen) == 4
    for s in seen:
        assert s["trl"] == pytest.approx(s["ours"], abs=1e-5), seen
        assert s["grads"], seen
        assert s["adv_err"] < 1e-5, seen
    # fresh samples: TRL's old log-probs (its fused head, at sampling) and ours agree, ρ = 1
    assert seen[0]["ratio_mean"] == pytest.approx(1.0, abs=1e-5) and seen[2]["ratio_mean"] == pytest.approx(
        1.0, abs=1e-5
    )
    assert any(s["clip_frac"] > 0 for s in seen[1::2]), seen  # μ = 2: the second pass clips


@pytest.mark.slow
def test_rloo_advantages_subtract_the_sequence_summed_kl(tmp_path, policy, prompts, monkeypatch):
    """RLOO (β = 0.05): A_i = R_i − mean of the other k − 1 R_j with R_i = r_i − β Σ_t (log π_old − log π_ref),
    from stages.ppo.advantages.rloo on the recorded rewards and our KL; the loss is the sequence-level
    clipped surrogate −mean_i min(ρ_i A_i, clip(ρ_i, 1 ± ε) A_i), ρ_i = exp(Σ_t log π − Σ_t log π_old)."""
    from trl import RLOOTrainer

    from stages.lib.models import load_model
    from stages.lib.reinforce.evaluation import sequence_kl
    from stages.ppo.advantages import rloo as rloo_advantages

    beta, eps = 0.05, 0.05
    reference = load_model(policy, task="causal_lm")

    def check(trainer: Any, model: Any, inputs: dict[str, Any], loss: Any) -> dict[str, Any]:
        logp, mask = _new_logps(model, inputs, 1.0)
        ratio = torch.exp((logp * mask).sum(1) - inputs["old_logps"])
        adv = inputs["advantages"]
        ours = -torch.minimum(ratio * adv, ratio.clamp(1 - eps, 1 + eps) * adv).mean()
        out = {
            "trl": float(loss.detach()),
            "ours": float(ours.detach()),
            "grads": _same_grads(_grads(loss, model, True), _grads(ours, model, False)),
        }
        scorer = trainer.reward_funcs[0]
        step = trainer.state.global_step + 1
        if step in scorer.setup.store.pending and trainer._step % 2 == 0:  # the first pass over a fresh batch
            rows = scorer.setup.store.pending[step]
            p_ids = [scorer.setup.prompt_ids[r["prompt_index"]] for r in rows]
            c_ids = [r["completion_ids"] for r in rows]
            kl = torch.tensor(sequence_kl(model, reference, p_ids, c_ids, pad_id=0))
            shaped = torch.tensor([r["reward"] for r in rows]) - beta * kl
            groups = torch.arange(len(rows)) // trainer.num_generations
            expected, _ = rloo_advantages(
                shaped[:, None], None, torch.ones(len(rows), 1, dtype=torch.bool), group_ids=groups
            )
            out["adv_err"] = float(
                (torch.tensor(list(trainer._logs["advantages"])) - expected[:, 0]).abs().max()
            )
            out["kl_mean"] = float(kl.mean())
        return out

    seen = capture_loss(monkeypatch, RLOOTrainer, check)
    result = run(
        "rloo",
        tmp_path,
        synthetic_inputs(policy, prompts),
        reward="synthetic",
        max_steps=4,
        num_iterations=2,
        epsilon=eps,
        learning_rate=2e-2,
        lr_scheduler_type="constant",
    )
    assert result.metrics["steps"] == 4 and len(seen) == 4
    for s in seen:
        assert s["trl"] == pytest.approx(s["ours"], abs=1e-5), seen
        assert s["grads"], seen
    checked = [s for s in seen if "adv_err" in s]
    assert len(checked) == 2 and all(s["adv_err"] < 1e-4 for s in checked), seen
    assert checked[0]["kl_mean"] == pytest.approx(0.0, abs=1e-6)  # first batch: π_old is π_ref
    assert abs(checked[1]["kl_mean"]) > 1e-3, seen  # after two updates the penalty is real


# --- learning on the synthetic families --------------------------------------------------------------------

LEARN = dict(
    reward="synthetic",
    max_steps=80,
    per_device_train_batch_size=64,
    num_generations=4,
    learning_rate=2e-3,
    warmup_steps=10,
    logging_steps=20,
    eval_steps=20,
    kl_budget=3.0,
)
FLOOR = 0.05
KL_LIMIT = 1.5


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["grpo", "rloo"])
def test_gold_reward_rises_on_three_seeds_within_a_kl_budget(tmp_path, policy, synthetic_tasks, kind):
    """From policy_factory() (~50% of sampled answers right), 100 steps of `kind` with the gold judge as the
    reward. The gold reward of the policy on the RL prompts (480 prompts × 4 samples, T = 1, fixed sampling
    seed) rises by more than FLOOR and by more than 2 standard deviations of the seed spread, with
    KL(π‖π_SFT) < KL_LIMIT nats per sequence on the same samples and the stage's kl_budget never hit. The
    held-out prompts (test split) are reported; their mean gain must be positive."""
    from stages.lib.datasets import read_rows
    from stages.lib.models import load_model
    from stages.lib.reinforce.evaluation import gold_evaluation
    from stages.lib.tokenizers import load_tokenizer

    tok = load_tokenizer(policy)
    train_rows = read_rows(synthetic_tasks["prompts"], "train", ["prompt", "family"], input_name="prompts")
    test_rows = read_rows(synthetic_tasks["prompts"], "test", ["prompt", "family"], input_name="prompts")
    reference = load_model(policy, task="causal_lm")

    def evaluate(model: Any, rows: list[dict[str, Any]]) -> Any:
        return gold_evaluation(model, reference, tok, rows, samples_per_prompt=4, max_new_tokens=8, seed=1234)

    before, before_test = evaluate(reference, train_rows), evaluate(reference, test_rows)
    gains, held_out, kls = [], [], []
    for seed in (0, 1, 2):
        result = run(
            kind,
            tmp_path / str(seed),
            synthetic_inputs(policy, synthetic_tasks["prompts"]),
            seed=seed,
            **LEARN,
        )
        assert result.metrics["stopped_early"] is None, result.metrics["stopped_early"]
        trained = load_model(tmp_path / str(seed) / "out-policy", task="causal_lm")
        after, after_test = evaluate(trained, train_rows), evaluate(trained, test_rows)
        gains.append(after.gold - before.gold)
        held_out.append(after_test.gold - before_test.gold)
        kls.append(after.kl_per_sequence)
    mean, spread = statistics.mean(gains), statistics.stdev(gains)
    report = (
        f"{kind}: gold before {before.gold:.3f}; gains {[round(g, 3) for g in gains]} (mean {mean:.3f}, std "
        f"{spread:.3f}); held-out gains {[round(g, 3) for g in held_out]}; KL/seq {[round(k, 3) for k in kls]}"
    )
    print(report)
    assert mean > FLOOR and mean > 2 * spread, report
    assert max(kls) < KL_LIMIT, report
    assert statistics.mean(held_out) > 0, report


# --- the reward model scores the sampled tokens --------------------------------------------------------------


def r_stop(tok: Any) -> list[int]:
    from stages.lib.chat import end_of_turn_ids

    return end_of_turn_ids(tok)


def _reward_models(policy: Path, root: Path, seeds: tuple[int, ...]) -> Path:
    """A reward model (or an ensemble of several) initialised from the policy with a fresh scalar head."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(policy))
    folders = []
    for seed in seeds:
        torch.manual_seed(seed)
        model = AutoModelForSequenceClassification.from_pretrained(str(policy), num_labels=1)
        model.config.pad_token_id = tok.pad_token_id
        folder = root / f"member-{seed}" if len(seeds) > 1 else root
        model.save_pretrained(str(folder))
        tok.save_pretrained(str(folder))
        folders.append(folder.name)
    if len(seeds) > 1:
        (root / "ensemble.json").write_text(json.dumps({"members": folders}))
    return root


@pytest.mark.slow
def test_an_ensemble_reward_scores_the_sampled_tokens_beside_the_gold_reward(tmp_path, policy, prompts):
    """reward: model with a 2-member ensemble (aggregate min): each completion's reward is the min of the members'
    scores of prompt ⊕ completion tokenised as split_prompt_completion does (what a reward stage trains on);
    TRL's own reward-model path (chat template over prompt + decoded completion) reads another token. The
    gold reward is recorded beside the proxy, and the card shows both against KL."""
    from trl.data_utils import apply_chat_template

    from stages.lib.chat import split_prompt_completion
    from stages.lib.rewards import load_reward_model

    rm_folder = _reward_models(policy, tmp_path / "rm", seeds=(1, 2))
    result = run(
        "grpo",
        tmp_path / "run",
        {"policy": policy, "prompts": prompts, "reward": rm_folder},
        reward="model",
        aggregate="min",
        max_steps=2,
        eval_steps=1,
    )
    import pyarrow.parquet as pq

    rows = pq.read_table(
        tmp_path / "run" / "out-rollouts" / "data" / "train-00000-of-00001.parquet"
    ).to_pylist()
    assert len(rows) == 2 * 16 and {r["step"] for r in rows} == {1, 2}
    rm = load_reward_model(rm_folder, aggregate="min")
    tok = rm.tokenizer
    from stages.lib.generation import right_pad

    # the recorded reward is the ensemble's min over prompt ⊕ the sampled completion ids
    seqs = [split_prompt_completion(tok, r["prompt"], r["completion"])[0] + r["completion_ids"] for r in rows]
    ids, mask = right_pad(seqs, tok.pad_token_id)
    agg, each = rm.score_ids(ids, mask)
    assert [r["reward"] for r in rows] == pytest.approx(agg.tolist(), abs=1e-5)
    assert torch.allclose(torch.tensor([r["reward_members"] for r in rows]), each.T, atol=1e-5)
    # where decoding then re-tokenising gives back the sampled ids (a completion that ended with <|end|>),
    # that is what the reward stage trains on (split_prompt_completion of the text)
    same = [
        r
        for r in rows
        if split_prompt_completion(tok, r["prompt"], r["completion"])[1] == r["completion_ids"]
    ]
    assert len(same) >= len(rows) // 2 and all(r["completion_ids"][-1] in r_stop(tok) for r in same)
    texts, _ = rm.score_texts([r["prompt"] for r in same], [r["completion"] for r in same])
    assert [r["reward"] for r in same] == pytest.approx(texts, abs=1e-5)
    assert all(r["gold_reward"] in (0.0, 1.0) for r in rows)  # the gold judge beside the proxy

    rendered = [apply_chat_template({"messages": r["prompt"] + r["completion"]}, tok)["text"] for r in same]
    assert all(t.endswith("<|end|>\n") for t in rendered)  # TRL's own path scores the template's newline
    batch = tok(rendered, return_tensors="pt", padding=True, padding_side="right", add_special_tokens=False)
    with torch.no_grad():
        trl_way = torch.stack([m(**batch).logits[:, 0] for m in rm.members]).min(dim=0).values
    assert (trl_way - torch.tensor(texts)).abs().max() > 1e-3

    m = result.metrics
    assert m["reward_source"] == "reward_model" and m["reward_members"] == 2
    assert m["windows"][0]["gold"] is not None and m["windows"][0]["kl_per_sequence"] is not None
    assert result.images == {"Proxy and gold reward against KL": "overoptimization.png"}
    assert (tmp_path / "run" / "out-policy" / "overoptimization.png").stat().st_size > 1000
    logged = [
        json.loads(line) for line in (tmp_path / "run" / "logs" / "metrics.jsonl").read_text().splitlines()
    ]
    trl_logs = [x for x in logged if "reward" in x]
    assert trl_logs and all(
        {"gold_reward", "entropy", "completions/mean_length", "clip_ratio/region_mean"} <= set(x)
        for x in trl_logs
    )
    assert any("monitor/gold_reward" in x and "monitor/proxy_reward" in x for x in logged)


# --- every policy shape: π_ref is the starting policy ------------------------------------------------------


@pytest.fixture(scope="module")
def sft_adapter(tmp_path_factory, policy, prompts) -> Path:
    """A LoRA adapter on the policy, trained by this stage (fresh LoRA, β > 0: π_ref = adapter disabled)."""
    tmp = tmp_path_factory.mktemp("lora")
    result = run(
        "grpo",
        tmp,
        {"policy": policy, "prompts": prompts},
        reward="synthetic",
        max_steps=2,
        beta=0.04,
        learning_rate=2e-2,
        peft={"method": "lora", "r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
    )
    assert result.metrics["policy_mode"] == "fresh_lora" and result.metrics["start_kl_per_sequence"] == 0.0
    return tmp / "out-policy"


LORA = {"method": "lora", "r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("shape", "peft", "beta"),
    [
        ("full", {"method": "full"}, 0.0),
        ("full", {"method": "full"}, 0.04),
        ("adapter", LORA, 0.0),
        ("adapter", {"method": "full"}, 0.04),
    ],
)
def test_each_policy_shape_measures_kl_from_the_starting_policy(
    tmp_path, policy, prompts, sft_adapter, shape, peft, beta
):
    """The first batch is sampled before any update, so KL(π‖π_ref) on it is exactly 0 when π_ref is the
    starting policy: a frozen copy (full), TRL's reference (β > 0), the "ref" copy of a continued adapter,
    the merged model (adapter + base trained fully). The output loads with load_model."""
    from stages.lib.models import load_model

    inputs = (
        {"policy": policy, "prompts": prompts}
        if shape == "full"
        else {"policy": sft_adapter, "base": policy, "prompts": prompts}
    )
    result = run(
        "grpo", tmp_path, inputs, reward="synthetic", max_steps=2, beta=beta, learning_rate=2e-2, peft=peft
    )
    m = result.metrics
    assert m["start_kl_per_sequence"] == pytest.approx(0.0, abs=1e-6), m
    assert m["windows"][0]["kl_per_sequence"] > 1e-4, m  # after an update the policy has moved
    mode = {("full", "full"): "full", ("adapter", "lora"): "continued_lora", ("adapter", "full"): "full"}
    assert m["policy_mode"] == mode[(shape, peft["method"])]
    out = tmp_path / "out-policy"
    if m["policy_mode"] == "continued_lora":
        assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == "demo/sft"
        assert not (out / "ref").exists()  # only the trained adapter is published
        model = load_model(out, base=policy)
    else:
        model = load_model(out)
    assert result.card_metadata["pipeline_tag"] == "text-generation"
    assert model(input_ids=torch.tensor([[1, 5, 6]])).logits.shape[-1] >= 300


# --- resume -------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_crashed_run_resumes_to_the_uninterrupted_weights_and_rollouts(
    tmp_path, policy, prompts, monkeypatch
):
    from safetensors.torch import load_file

    from stages.lib.reinforce import monitor as monitor_module

    fields = dict(reward="synthetic", max_steps=6, save_steps=3, eval_steps=2)
    whole = run("grpo", tmp_path / "whole", synthetic_inputs(policy, prompts), **fields)
    original = monitor_module.Monitor.close

    def crash_at_4(self: Any, step: int) -> Any:
        if step == 4:
            raise RuntimeError("killed")
        return original(self, step)

    monkeypatch.setattr(monitor_module.Monitor, "close", crash_at_4)
    with pytest.raises(RuntimeError, match="killed"):
        run("grpo", tmp_path / "crash", synthetic_inputs(policy, prompts), **fields)
    monkeypatch.setattr(monitor_module.Monitor, "close", original)
    resumed = run("grpo", tmp_path / "crash", synthetic_inputs(policy, prompts), **fields)
    assert resumed.metrics["resumed_from_step"] == 3
    a = load_file(tmp_path / "whole" / "out-policy" / "model.safetensors")
    b = load_file(tmp_path / "crash" / "out-policy" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.metrics["windows"] == whole.metrics["windows"]
    import pyarrow.parquet as pq

    ra, rb = (
        pq.read_table(tmp_path / d / "out-rollouts" / "data" / "train-00000-of-00001.parquet").to_pylist()
        for d in ("whole", "crash")
    )
    assert [(r["step"], r["completion_ids"]) for r in ra] == [(r["step"], r["completion_ids"]) for r in rb]


# --- stopping rules ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_kl_budget_stops_training_and_says_so(tmp_path, policy, prompts):
    result = run(
        "rloo",
        tmp_path,
        synthetic_inputs(policy, prompts),
        reward="synthetic",
        max_steps=10,
        kl_budget=1e-3,
        learning_rate=2e-2,
    )
    m = result.metrics
    assert m["stopped_at_step"] == 2 and m["steps"] == 2, m
    assert "exceeds kl_budget" in m["stopped_early"] and "STOPPED" not in m["stopped_early"]
    assert "Stopped early at step 2" in result.card_sections["RLOO"]


# --- bad inputs fail before any weight is loaded ---------------------------------------------------------------


@pytest.fixture()
def no_weights(monkeypatch):
    """Any attempt to load the policy's weights fails the test: the checks must come first."""
    from stages.lib.reinforce import train as train_module

    def refuse(*a: Any, **k: Any) -> Any:
        raise AssertionError("weights were loaded before the bad input was reported")

    monkeypatch.setattr(train_module, "load_policy", refuse)


def test_a_reward_model_with_another_tokenizer_is_refused(tmp_path, policy, prompts, no_weights):
    from stages.lib.testing import save_base

    other = save_base(tmp_path / "other-base", corpus=["completely different words here"] * 4)
    from transformers import AutoModelForSequenceClassification

    rm = AutoModelForSequenceClassification.from_pretrained(str(other), num_labels=1)
    rm.save_pretrained(str(tmp_path / "rm"))
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(str(other)).save_pretrained(str(tmp_path / "rm"))
    with pytest.raises(StageInputError, match="'policy' and 'reward' do not share a tokenizer") as err:
        run(
            "grpo",
            tmp_path / "run",
            {"policy": policy, "prompts": prompts, "reward": tmp_path / "rm"},
            reward="model",
        )
    assert "train the reward model from the same SFT model" in err.value.hint


def test_prompts_longer_than_the_context_are_refused(tmp_path, policy, prompts, no_weights):
    with pytest.raises(
        StageInputError,
        match=r"the longest prompt \(row \d+\) has \d+ tokens; with max_completion_length 500",
    ) as err:
        run(
            "grpo", tmp_path, synthetic_inputs(policy, prompts), reward="synthetic", max_completion_length=500
        )
    assert "the context of input 'policy' is 512" in str(err.value)
    assert "lower max_completion_length to" in err.value.hint


def test_prompts_without_a_prompt_column_are_refused(tmp_path, policy, no_weights):
    data = write_dataset(tmp_path / "q", [{"question": "What is 1?", "family": "max"}] * 4)
    with pytest.raises(
        StageInputError,
        match=r"input 'prompts' lacks column\(s\) \['prompt'\]; it has \['question', 'family'\]",
    ):
        run("grpo", tmp_path / "run", {"policy": policy, "prompts": data}, reward="synthetic")


def test_reward_synthetic_without_family_is_refused(tmp_path, policy, no_weights):
    rows = [{"prompt": [{"role": "user", "content": "Which of these numbers is the biggest? 3, 9, 5"}]}] * 8
    data = write_dataset(tmp_path / "p", rows)
    with pytest.raises(StageInputError, match="has no `family` column, which reward: synthetic") as err:
        run("grpo", tmp_path / "run", {"policy": policy, "prompts": data}, reward="synthetic")
    assert "`prompts` output of a `synthetic` stage" in err.value.hint


def test_num_generations_must_divide_the_generation_batch(tmp_path, policy, prompts, no_weights, monkeypatch):
    with pytest.raises(
        ValueError, match=r"num_generations 3 does not divide the generation batch of 16 completions"
    ) as err:
        make("grpo", tmp_path, synthetic_inputs(policy, prompts), reward="synthetic", num_generations=3)
    assert "per_device_train_batch_size to 18" in str(
        err.value
    ) and "num_generations to one of [2, 4, 8, 16]" in str(err.value)
    # valid for the 2 processes the manifest declares, refused in a run that has 1
    ctx, cfg = make(
        "grpo",
        tmp_path,
        synthetic_inputs(policy, prompts),
        reward="synthetic",
        per_device_train_batch_size=4,
        num_generations=8,
        resources={"num_processes": 2, "cpu": True},
    )
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(StageInputError, match=r"generation batch of 4 completions .* × 1 process\(es\)"):
        grpo.run(ctx, cfg)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"reward": "model"}, "reward: model needs a `reward` input"),
        ({"reward": "synthetic", "peft": {"method": "prefix"}}, "peft method 'prefix' is not supported"),
        (
            {"reward": "synthetic", "kl_budget": 1.0, "monitor_kl": False},
            "kl_budget needs the KL measurement",
        ),
        (
            {"reward": "synthetic", "stop_when_gold_drops": {"patience": 2}, "eval_steps": None},
            "act on the eval_steps windows",
        ),
        ({"reward": "synthetic", "lr": 1e-3}, "`lr` is now `learning_rate`"),
    ],
)
def test_config_errors_name_the_field_and_the_fix(fields, message):
    body = {
        "name": "g",
        "kind": "grpo",
        "inputs": {"policy": "model:a/p", "prompts": "dataset:a/q"},
        "outputs": {"policy": "model:a/o", "rollouts": "dataset:a/r"},
        **fields,
    }
    with pytest.raises(ValueError, match=message):
        grpo.Config(**body)


def test_defaults_are_trls():
    from trl import GRPOConfig, RLOOConfig

    body = {
        "name": "g",
        "inputs": {"policy": "model:a/p", "prompts": "dataset:a/q"},
        "reward": "synthetic",
        "outputs": {"policy": "model:a/o", "rollouts": "dataset:a/r"},
    }
    g, r = grpo.Config(kind="grpo", **body), rloo.Config(kind="rloo", **body)
    tg, tr = GRPOConfig(output_dir="/tmp/x", use_cpu=True), RLOOConfig(output_dir="/tmp/x", use_cpu=True)
    for ours, theirs in ((g, tg), (r, tr)):
        for name in (
            "num_generations",
            "beta",
            "epsilon",
            "epsilon_high",
            "temperature",
            "top_p",
            "top_k",
            "max_completion_length",
            "num_iterations",
            "learning_rate",
            "mask_truncated_completions",
            "per_device_train_batch_size",
        ):
            assert getattr(ours, name) == getattr(theirs, name), name
    assert (g.scale_rewards, g.loss_type) == (tg.scale_rewards, tg.loss_type) == ("group", "dapo")
    assert (r.normalize_advantages, r.reward_clip_range) == (tr.normalize_advantages, tr.reward_clip_range)
    assert (g.beta, r.beta, g.num_generations, r.num_generations) == (0.0, 0.05, 8, 2)
