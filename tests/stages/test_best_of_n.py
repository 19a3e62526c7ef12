"""The best_of_n stage (seed §4.9): it keeps the argmax of N candidates (ties: the first sampled), publishes
every candidate with its score, raises the gold reward over plain sampling on the synthetic tasks (3 seeds,
floor + 2 std), feeds an sft stage directly, and refuses bad inputs before sampling."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from hubflow.errors import StageInputError  # noqa: E402
from stages import best_of_n  # noqa: E402
from stages.best_of_n.job import kl_estimate, select_best  # noqa: E402
from stages.lib.datasets import read_rows  # noqa: E402
from stages.lib.rewards import ENSEMBLE_FILE  # noqa: E402
from stages.lib.testing import stage_context, write_dataset  # noqa: E402


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


def run_stage(tmp: Path, inputs: dict[str, Path], **kw: Any) -> tuple[Any, Any]:
    ctx = stage_context(tmp, inputs)
    ctx.outputs = {"candidates": tmp / "candidates", "best": tmp / "best"}
    for folder in ctx.outputs.values():
        folder.mkdir(exist_ok=True)
    fields: dict[str, Any] = {"n": 4, "max_new_tokens": 8, "max_prompts": 16, **kw}
    cfg = best_of_n.Config(
        name="bon",
        kind="best_of_n",
        inputs={k: f"stage-{k}" for k in inputs},
        outputs={"candidates": "dataset:t/candidates", "best": "dataset:t/best"},
        **fields,
    )
    return best_of_n.run(ctx, cfg), ctx


def rows_of(folder: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    return pq.read_table(folder / "data" / "train-00000-of-00001.parquet").to_pylist()


def test_select_best_takes_the_argmax_and_the_first_of_ties():
    assert select_best([0.1, 0.7, 0.3]) == (1, 1)
    assert select_best([0.0, 1.0, 1.0, 0.5]) == (1, 2)
    assert select_best([2.0]) == (0, 1)
    assert kl_estimate(1) == 0.0
    assert kl_estimate(8) == pytest.approx(math.log(8) - 7 / 8)


def test_it_keeps_the_argmax_of_an_ensemble_and_publishes_every_candidate(
    tmp_path, policy_factory, synthetic_tasks
):
    policy = policy_factory()
    ens = tmp_path / "ens"
    for k in range(2):
        reward_model_from(policy, ens / f"member-{k}", seed=k)
    (ens / ENSEMBLE_FILE).write_text(json.dumps({"members": ["member-0", "member-1"]}))
    inputs = {"model": policy, "prompts": synthetic_tasks["prompts"], "reward": ens}
    result, ctx = run_stage(tmp_path / "run", inputs, aggregate="min", max_prompts=12)
    candidates, best = rows_of(ctx.outputs["candidates"]), rows_of(ctx.outputs["best"])
    assert len(candidates) == 12 * 4 and len(best) == 12
    for i in range(12):
        group = [c for c in candidates if c["prompt_index"] == i]
        assert sorted(c["sample"] for c in group) == [0, 1, 2, 3]
        for c in group:
            assert c["score"] == pytest.approx(min(c["member_scores"]))  # aggregate: min
        kept = [c for c in group if c["kept"]]
        top = max(c["score"] for c in group)
        assert len(kept) == 1 and kept[0]["score"] == top
        assert kept[0]["sample"] == min(c["sample"] for c in group if c["score"] == top)
        assert best[i]["completion"] == kept[0]["completion"] and best[i]["prompt"] == group[0]["prompt"]
    m = result.metrics
    assert m["reward_mean_best"] >= m["reward_mean_all"] and "gold_gain" in m  # gold beside the proxy
    assert m["kl_estimate"] == pytest.approx(math.log(4) - 3 / 4, abs=1e-6)
    assert "KL(π_BoN ‖ π)" in result.card_sections["Best-of-N"]


@pytest.mark.slow
def test_best_of_n_raises_the_gold_reward_over_plain_sampling(tmp_path, policy_factory, synthetic_tasks):
    """Gold reward of the kept responses minus the mean over all N (plain sampling), on 3 seeds."""
    gains = []
    for seed in range(3):
        result, ctx = run_stage(
            tmp_path / f"s{seed}",
            {"model": policy_factory(), "prompts": synthetic_tasks["prompts"]},
            reward="synthetic",
            n=8,
            max_prompts=64,
            seed=seed,
        )
        gains.append(result.metrics["gold_gain"])
        assert result.metrics["reward_gain"] == result.metrics["gold_gain"]
    mean, spread = statistics.fmean(gains), statistics.stdev(gains)
    assert mean > 0.1 + 2 * spread, f"gold gains per seed {gains}"


@pytest.mark.slow
def test_an_sft_stage_trains_on_the_best_responses(tmp_path, policy_factory, synthetic_tasks):
    from stages import sft

    _, ctx = run_stage(
        tmp_path / "bon",
        {"model": policy_factory(), "prompts": synthetic_tasks["prompts"]},
        reward="synthetic",
    )
    best = ctx.outputs["best"]
    assert {"prompt", "completion"} <= set(
        read_rows(best, "train", ["prompt", "completion"], input_name="best")[0]
    )
    cfg = sft.Config(
        name="rft",
        kind="sft",
        inputs={"model": "model:t/policy", "data": "bon.best"},
        output="model:t/rft",
        format="prompt_completion",
        max_steps=3,
        per_device_train_batch_size=4,
        logging_steps=1,
        save_steps=None,
        learning_rate=1e-3,
    )
    sft_ctx = stage_context(tmp_path / "sft", {"model": policy_factory(), "data": best})
    result = sft.run(sft_ctx, cfg)
    assert result.metrics["steps"] == 3 and math.isfinite(result.metrics["train_loss_last"])
    assert (sft_ctx.output / "model.safetensors").is_file()


def _no_sampling(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("sampled before the inputs were checked")


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("no_prompt_column", r"lacks column\(s\) \['prompt'\]; it has \['question', 'family'\]"),
        ("no_family", r"reward: synthetic .* row 0 has no `family`"),
        ("long_prompt", r"row 1: the prompt has \d+ tokens, more than the model's 512 positions"),
        ("other_tokenizer", r"'model' and 'reward' do not share a tokenizer"),
        ("adapter_without_base", r"is a lora adapter .* no 'base' input"),
    ],
)
def test_bad_inputs_fail_before_sampling(
    tmp_path, monkeypatch, policy_factory, synthetic_tasks, case, message
):
    import stages.lib.generation

    monkeypatch.setattr(stages.lib.generation, "sample", _no_sampling)
    policy, prompts = policy_factory(), synthetic_tasks["prompts"]
    inputs: dict[str, Path] = {"model": policy, "prompts": prompts}
    kw: dict[str, Any] = {"reward": "synthetic"}
    if case == "no_prompt_column":
        inputs["prompts"] = write_dataset(tmp_path / "q", [{"question": "q", "family": "max"}])
    elif case == "no_family":
        inputs["prompts"] = write_dataset(
            tmp_path / "p", [{"prompt": "What is the largest number in this list: 1, 2?"}]
        )
    elif case == "long_prompt":
        inputs["prompts"] = write_dataset(
            tmp_path / "p",
            [{"prompt": "one two", "family": "max"}, {"prompt": "one two " * 400, "family": "max"}],
        )
    elif case == "other_tokenizer":
        from stages.lib.testing import tiny_tokenizer

        other = reward_model_from(policy, tmp_path / "rm", seed=0)
        tiny_tokenizer(["entirely other words"] * 4, vocab_size=300).save_pretrained(str(other))
        inputs["reward"], kw = other, {}
    else:
        adapter = tmp_path / "adapter"
        adapter.mkdir()
        (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
        inputs["model"] = adapter
    with pytest.raises(StageInputError, match=message):
        run_stage(tmp_path / "run", inputs, **kw)


def test_the_config_names_what_the_reward_needs():
    base = {"name": "b", "kind": "best_of_n", "outputs": {"candidates": "dataset:t/c", "best": "dataset:t/b"}}
    with pytest.raises(ValueError, match="reward: model scores responses with the `reward` input"):
        best_of_n.Config(**base, inputs={"model": "sft", "prompts": "tasks.prompts"})
    with pytest.raises(ValueError, match=r"needs inputs \['prompts'\]"):
        best_of_n.Config(**base, inputs={"model": "sft"}, reward="synthetic")
    with pytest.raises(ValueError, match="this kind needs outputs"):
        best_of_n.Config(
            **{**base, "outputs": {"best": "dataset:t/b"}}, inputs={"model": "a", "prompts": "b"}
        )
    cfg = best_of_n.Config(
        **base, inputs={"model": "sft", "prompts": "tasks.prompts"}, reward="synthetic", n=16
    )
    assert "KL(best-of-N ‖ policy) ≈ 1.835 nats" in best_of_n.describe(cfg)[0]
