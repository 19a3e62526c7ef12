"""The online_dpo stage (seed §4.10; SPIN §4.2): pairs from the current policy (best vs worst, ties dropped;
SPIN: gold vs own generation), DPO with the lib loss (the logged first-step loss equals the formula on the
same batch), every round versioned and saved complete, a killed run resumed at the first unfinished round with
the results of an uninterrupted one, and the gold reward of the policy rising over rounds (3 seeds)."""

from __future__ import annotations

import json
import logging
import math
import os
import statistics
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from hubflow.errors import StageInputError  # noqa: E402
from stages import online_dpo  # noqa: E402
from stages.lib.testing import stage_context  # noqa: E402
from stages.online_dpo.pairs import reward_pairs, spin_pairs  # noqa: E402
from stages.online_dpo.train import batch_order  # noqa: E402

POLICY_REF = "model:t/policy@" + "a" * 40
SMALL = {
    "rounds": 3,
    "prompts_per_round": 24,
    "samples_per_prompt": 4,
    "max_new_tokens": 6,
    "max_steps": 3,
    "per_device_train_batch_size": 8,
    "learning_rate": 1e-3,
    "sft_weight": 0.5,
    "reward": "synthetic",
    "eval_prompts": 0,
    "logging_steps": 1,
    "lr_scheduler_type": "constant",
    "warmup_steps": 0,
}


def config(inputs: dict[str, Path], **kw: Any) -> online_dpo.Config:
    return online_dpo.Config(
        name="odpo",
        kind="online_dpo",
        inputs={k: f"stage-{k}" for k in inputs},
        outputs={"policy": "model:t/odpo", "pairs": "dataset:t/odpo-pairs"},
        **{**SMALL, **kw},
    )


def make_ctx(tmp: Path, inputs: dict[str, Path]) -> Any:
    ctx = stage_context(tmp, inputs, {"model": POLICY_REF})
    ctx.outputs = {"policy": tmp / "policy", "pairs": tmp / "pairs"}
    for folder in ctx.outputs.values():
        folder.mkdir(exist_ok=True)
    return ctx


def run_stage(tmp: Path, inputs: dict[str, Path], **kw: Any) -> tuple[Any, Any]:
    ctx = make_ctx(tmp, inputs)
    return online_dpo.run(ctx, config(inputs, **kw)), ctx


def logged(ctx: Any) -> list[dict[str, Any]]:
    lines = (ctx.log_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def pair_rows(folder: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    return pq.read_table(folder / "data" / "train-00000-of-00001.parquet").to_pylist()


def weights(folder: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


# -- pairs ------------------------------------------------------------------------------------------------


class _C:
    def __init__(self, text: str) -> None:
        self.text, self.completion = text, [{"role": "assistant", "content": text}]


class _P:
    def __init__(self, row: int, completion: Any = None) -> None:
        self.row, self.prompt, self.family, self.completion, self.extra = row, "p", "max", completion, {}


class _S:
    def __init__(self, reward: list[float]) -> None:
        self.reward, self.gold, self.members = reward, None, None


def test_reward_pairs_are_best_against_worst_and_ties_are_dropped():
    groups = [[_C("a"), _C("b"), _C("c")], [_C("d"), _C("e"), _C("f")], [_C("g"), _C("h"), _C("i")]]
    made = reward_pairs(
        [_P(0), _P(1), _P(2)], groups, _S([0.2, 0.9, 0.9, 0.5, 0.5, 0.5, 1.0, 0.0, 0.0]), round_index=1
    )
    assert made.ties == 1 and len(made.rows) == 2
    assert (made.rows[0]["chosen"][0]["content"], made.rows[0]["rejected"][0]["content"]) == ("b", "a")
    assert (made.rows[1]["chosen"][0]["content"], made.rows[1]["rejected"][0]["content"]) == ("g", "h")
    assert made.rows[1]["chosen_score"] == 1.0 and made.rows[1]["rejected_score"] == 0.0


def test_spin_pairs_are_gold_against_each_own_generation():
    gold = [{"role": "assistant", "content": "7"}]
    made = spin_pairs([_P(0, gold)], [[_C("7"), _C("3"), _C(" 7 ")]], None, round_index=2)
    assert made.ties == 2 and len(made.rows) == 1
    assert made.rows[0]["chosen"] == gold and made.rows[0]["rejected"][0]["content"] == "3"


def test_batch_order_is_fixed_by_its_seed_and_covers_every_pair_each_epoch():
    order = batch_order(10, batch_size=4, steps=6, accumulation=1, seed="0-train-1")
    assert order == batch_order(10, batch_size=4, steps=6, accumulation=1, seed="0-train-1")
    assert sorted(i for b in order[:3] for i in b) == list(range(10)) and [len(b) for b in order[:3]] == [
        4,
        4,
        2,
    ]
    assert order != batch_order(10, batch_size=4, steps=6, accumulation=1, seed="0-train-2")


# -- one uninterrupted run: versioning, the loss ------------------------------------------------------------


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, policy_factory, synthetic_tasks):
    tmp = tmp_path_factory.mktemp("odpo-full")
    inputs = {"model": policy_factory(), "prompts": synthetic_tasks["prompts"]}
    result, ctx = run_stage(tmp, inputs)
    return result, ctx, inputs


def test_every_round_is_versioned_and_the_outputs_are_the_last(uninterrupted):
    result, ctx, _ = uninterrupted
    labels = [(r.output, r.label) for r in result.revisions]
    assert labels == [(o, f"round-{k}") for k in (1, 2, 3) for o in ("pairs", "policy")]
    for rev in result.revisions:
        assert rev.folder.is_dir() and ctx.resume_dir in rev.folder.parents
        if rev.output == "policy":
            assert (rev.folder / "model.safetensors").is_file() and (rev.folder / "tokenizer.json").is_file()
        else:
            rows = pair_rows(rev.folder)
            assert rows and {"prompt", "chosen", "rejected", "chosen_score", "rejected_score"} <= set(rows[0])
            assert all(r["chosen_score"] > r["rejected_score"] for r in rows)
    assert pair_rows(ctx.outputs["pairs"]) == pair_rows(result.revisions[-2].folder)
    assert all(
        torch.equal(a, b)
        for a, b in zip(
            weights(ctx.outputs["policy"]).values(),
            weights(result.revisions[-1].folder).values(),
            strict=True,
        )
    )
    m = result.metrics
    assert m["resumed_from_round"] == 0 and len(m["per_round"]) == 3
    assert m["pairs_total"] + m["ties_dropped_total"] == 3 * 24
    assert (
        result.card_metadata["base_model"] == "t/policy"
        and result.card_metadata["base_model_relation"] == "finetune"
    )


def test_the_logged_first_step_loss_is_the_dpo_formula_on_that_batch(uninterrupted):
    """Round 2 (policy = round 1's, reference = the initial policy): recompute the first step from the saved
    round-1 policy, the input and round 2's saved pairs with the lib functions."""
    from stages.lib.models import load_model
    from stages.lib.pairs import completion_logps, encode_pairs, read_pairs
    from stages.lib.preference import dpo_loss
    from stages.lib.tokenizers import load_tokenizer

    result, ctx, inputs = uninterrupted
    cfg = config(inputs)
    root = ctx.resume_dir / "online_dpo"
    tok = load_tokenizer(inputs["model"])
    encoded, dropped = encode_pairs(
        tok, read_pairs(root / "round-2" / "pairs", input_name="pairs"), max_length=cfg.max_length
    )
    assert dropped == 0
    batch = [
        encoded[i]
        for i in batch_order(len(encoded), batch_size=8, steps=3, accumulation=1, seed="0-train-2")[0]
    ]
    policy, reference = load_model(root / "round-1" / "policy"), load_model(inputs["model"])
    prompts, chosen, rejected = (
        [p.prompt_ids for p in batch],
        [p.chosen_ids for p in batch],
        [p.rejected_ids for p in batch],
    )
    pad = tok.pad_token_id
    with torch.no_grad():
        pc, pr = (
            completion_logps(policy, prompts, chosen, pad_id=pad),
            completion_logps(policy, prompts, rejected, pad_id=pad),
        )
        rc, rr = (
            completion_logps(reference, prompts, chosen, pad_id=pad),
            completion_logps(reference, prompts, rejected, pad_id=pad),
        )
    dpo = dpo_loss(pc, pr, rc, rr, beta=cfg.beta).loss
    nll = -pc.sum() / sum(len(c) for c in chosen)
    steps_round_1 = result.metrics["per_round"][0]["steps"]
    first = next(r for r in logged(ctx) if r.get("step") == steps_round_1 + 1)
    assert first["round"] == 2
    assert first["dpo_loss"] == pytest.approx(float(dpo), abs=2e-5)
    assert first["loss"] == pytest.approx(float(dpo + cfg.sft_weight * nll), abs=2e-5)
    assert first["dpo_loss"] != pytest.approx(
        math.log(2), abs=1e-3
    )  # the policy has moved from the reference


# -- a killed run resumes ------------------------------------------------------------------------------------

KILLER = textwrap.dedent(
    """
    import os, signal, sys
    import stages.online_dpo.rounds as rounds
    write = rounds._write_pairs
    calls = []
    def write_then_die(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # round 2's policy is saved in round-2.partial, its pairs not yet: die there
            os.kill(os.getpid(), signal.SIGKILL)
        return write(*args, **kwargs)
    rounds._write_pairs = write_then_die
    from hubflow.worker import main
    sys.exit(main(sys.argv[1:]))
    """
)


@pytest.mark.slow
def test_a_killed_run_resumes_at_the_first_unfinished_round(tmp_path, uninterrupted, caplog):
    """The stage process is SIGKILLed inside round 2 (after saving its policy, before its pairs and marker).
    Asserted: round 1 stays finished, the partial round 2 is discarded, the re-run logs that it resumes and
    reports resumed_from_round 1, trains only rounds 2 and 3, and every round's pairs and the final weights
    equal the uninterrupted run's (same machine and thread count: the draws are seeded per round)."""
    full_result, full_ctx, inputs = uninterrupted
    ctx = make_ctx(tmp_path / "run", inputs)
    cfg = config(inputs)
    spec = {
        "stage": "odpo",
        "kind": "online_dpo",
        "config": cfg.model_dump(mode="json"),
        "fingerprint": "0" * 64,
        "inputs": {k: str(v) for k, v in inputs.items()},
        "input_refs": {"model": POLICY_REF},
        "outputs": {k: str(v) for k, v in ctx.outputs.items()},
        "resume_dir": str(ctx.resume_dir),
        "base_dir": str(tmp_path),
        "log_dir": str(tmp_path),
        "resources": cfg.resources.model_dump(mode="json"),
        "result_path": str(tmp_path / "result.json"),
        "error_path": str(tmp_path / "error.json"),
    }
    (tmp_path / "spec.json").write_text(json.dumps(spec), encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", KILLER, str(tmp_path / "spec.json")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -9, proc.stderr[-2000:]
    root = ctx.resume_dir / "online_dpo"
    assert (root / "round-1" / "round.json").is_file() and (root / "round-2.partial" / "policy").is_dir()
    assert not (root / "round-2").exists() and not (tmp_path / "result.json").exists()

    with caplog.at_level(logging.INFO, logger="hubflow.stage"):
        result = online_dpo.run(ctx, cfg)
    assert (
        "resuming: rounds 1..1 are finished in the resume folder; continuing at round 2 of 3" in caplog.text
    )
    assert result.metrics["resumed_from_round"] == 1 and not (root / "round-2.partial").exists()
    trained = {r["round"] for r in logged(ctx) if "step" in r}
    assert trained == {2, 3}  # round 1 was not trained again
    for k in (1, 2, 3):
        assert pair_rows(root / f"round-{k}" / "pairs") == pair_rows(
            full_ctx.resume_dir / "online_dpo" / f"round-{k}" / "pairs"
        )
    final, expected = weights(ctx.outputs["policy"]), weights(full_ctx.outputs["policy"])
    assert all(torch.allclose(final[n], expected[n], atol=1e-6, rtol=0) for n in expected)
    assert [m["pairs"] for m in result.metrics["per_round"]] == [
        m["pairs"] for m in full_result.metrics["per_round"]
    ]


# -- LoRA, SPIN, the reference -----------------------------------------------------------------------------


def test_a_lora_policy_starts_at_its_reference_and_publishes_an_adapter(
    tmp_path, policy_factory, synthetic_tasks
):
    from stages.lib.models import load_model

    inputs = {"model": policy_factory(), "prompts": synthetic_tasks["prompts"]}
    result, ctx = run_stage(
        tmp_path, inputs, rounds=1, max_steps=2, peft={"method": "lora", "r": 4, "dropout": 0.0}
    )
    first = next(r for r in logged(ctx) if r.get("step") == 1)
    assert first["dpo_loss"] == pytest.approx(math.log(2), abs=1e-6)  # B = 0: π_θ = π_ref (adapter disabled)
    out = ctx.outputs["policy"]
    config_json = json.loads((out / "adapter_config.json").read_text())
    assert (
        config_json["base_model_name_or_path"] == "t/policy" and (out / "adapter_model.safetensors").is_file()
    )
    load_model(out, base=inputs["model"], check_base=False)
    assert result.card_metadata["base_model_relation"] == "adapter"


def test_spin_pairs_the_gold_completion_with_the_policys_generation(
    tmp_path, policy_factory, synthetic_tasks
):
    from stages.lib.datasets import read_rows

    data = synthetic_tasks["instructions"]
    inputs = {"model": policy_factory(), "prompts": data}
    result, ctx = run_stage(
        tmp_path,
        inputs,
        pairs="spin",
        reward="model",
        reference="previous_round",
        rounds=2,
        samples_per_prompt=2,
    )
    gold = {
        json.dumps(r["prompt"]): r["completion"]
        for r in read_rows(data, "train", ["prompt", "completion"], input_name="d")
    }
    for k in (1, 2):
        rows = pair_rows(ctx.resume_dir / "online_dpo" / f"round-{k}" / "pairs")
        assert rows and all(r["chosen"] == gold[json.dumps(r["prompt"])] != r["rejected"] for r in rows)
        assert "rejected_gold" in rows[0]  # the gold judge measures, without a reward model
        assert (
            result.metrics["per_round"][k - 1]["pairs"] + result.metrics["per_round"][k - 1]["ties_dropped"]
            == 48
        )
    round_2_first = next(r for r in logged(ctx) if r.get("round") == 2 and "step" in r)
    assert round_2_first["dpo_loss"] == pytest.approx(math.log(2), abs=1e-6)  # reference: the round's start


# -- learning ------------------------------------------------------------------------------------------------


def gold_of(folder: Path, prompts: Path) -> float:
    """Mean gold score of the policy's sampled responses (T = 1, 4 per test prompt, one fixed seed)."""
    from stages.lib.rewards import gold_rewards
    from stages.lib.sampling import (
        check_policy,
        encode_prompts,
        make_generator,
        read_prompts,
        sample_candidates,
    )

    policy = check_policy(stage_context(folder.parent / f"eval-{folder.name}", {"model": folder}))
    rows = read_prompts(prompts, "test")
    ids = encode_prompts(policy.tokenizer, rows, max_positions=policy.max_positions, max_new_tokens=8)
    groups = sample_candidates(
        policy.load(), policy.tokenizer, rows, ids, n=4, pad_id=policy.pad_id, stop_ids=policy.stop_ids,
        max_new_tokens=8, generator=make_generator(1234, "cpu"),
    )  # fmt: skip
    flat = [(rows[c.prompt_index], c) for g in groups for c in g]
    scores = gold_rewards(
        [r.family for r, _ in flat], [r.prompt for r, _ in flat], [c.completion for _, c in flat]
    )
    return statistics.fmean(scores)


@pytest.mark.slow
def test_online_dpo_raises_the_gold_reward_of_the_policy_over_rounds(
    tmp_path, policy_factory, synthetic_tasks
):
    start_policy, prompts = policy_factory(), synthetic_tasks["prompts"]
    start = gold_of(start_policy, prompts)
    gains, stage_gains = [], []
    for seed in range(3):
        result, ctx = run_stage(
            tmp_path / f"s{seed}",
            {"model": start_policy, "prompts": prompts},
            rounds=5,
            prompts_per_round=128,
            samples_per_prompt=8,
            max_new_tokens=8,
            max_steps=16,
            per_device_train_batch_size=16,
            sft_weight=1.0,
            eval_prompts=120,
            logging_steps=16,
            seed=seed,
        )
        gains.append(gold_of(ctx.outputs["policy"], prompts) - start)
        stage_gains.append(result.metrics["eval_gold_gain"])
    mean, spread = statistics.fmean(gains), statistics.stdev(gains)
    assert mean > 0.05 + 2 * spread, (
        f"gold gains per seed {gains} (start {start}); the stage's own {stage_gains}"
    )
    assert all(g > 0 for g in stage_gains), stage_gains


# -- bad input -------------------------------------------------------------------------------------------------


def test_bad_inputs_fail_before_sampling(tmp_path, monkeypatch, policy_factory, synthetic_tasks):
    import stages.lib.generation

    def no_sampling(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("sampled before the inputs were checked")

    monkeypatch.setattr(stages.lib.generation, "sample", no_sampling)
    inputs = {"model": policy_factory(), "prompts": synthetic_tasks["prompts"]}
    with pytest.raises(StageInputError, match=r"SPIN also needs the gold `completion`"):
        run_stage(tmp_path / "a", inputs, pairs="spin")
    with pytest.raises(StageInputError, match=r"'prompts' row 0 has no `family`"):
        from stages.lib.testing import write_dataset

        bare = write_dataset(
            tmp_path / "bare", [{"prompt": "What is the largest number in this list: 1, 2?"}]
        )
        run_stage(tmp_path / "b", {**inputs, "prompts": bare})


def test_the_config_refuses_what_cannot_run():
    inputs = {"model": Path("m"), "prompts": Path("p")}
    with pytest.raises(ValueError, match="samples_per_prompt ≥ 2"):
        config(inputs, samples_per_prompt=1)
    with pytest.raises(ValueError, match="trains peft methods full and lora, not prefix"):
        config(inputs, peft={"method": "prefix"})
    with pytest.raises(ValueError, match="reward: model scores responses with the `reward` input"):
        config(inputs, reward="model")
    assert (
        config(inputs, pairs="spin", reward="model", samples_per_prompt=None).k == 1
    )  # SPIN needs no reward
    assert config(inputs, samples_per_prompt=None).k == 4
