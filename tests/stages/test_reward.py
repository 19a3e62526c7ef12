"""The reward stage: its first-step loss is the Bradley–Terry formula on the same batch, a reward model
from a tiny SFT policy beats chance on held-out synthetic pairs (3 seeds), an ensemble publishes members
that differ, every published model loads with AutoModelForSequenceClassification, and bad inputs fail
before any training."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from hubflow.errors import StageInputError

torch = pytest.importorskip("torch")
pytest.importorskip("trl")

from stages import reward  # noqa: E402
from stages.lib.testing import save_lora, stage_context, write_dataset  # noqa: E402

SFT_REF = "model:demo/sft@" + "a" * 40


def rcfg(extra_inputs: tuple[str, ...] = (), **kw: Any) -> reward.Config:
    inputs = {"model": "sft", "prefs": "prefs", **{e: e for e in extra_inputs}}
    settings: dict[str, Any] = {
        "max_steps": 40,
        "learning_rate": 1e-3,
        "per_device_train_batch_size": 16,
        "logging_steps": 10,
        "save_steps": None,
        **kw,
    }
    return reward.Config(name="rm", kind="reward", inputs=inputs, output="model:demo/rm", **settings)


def ctx_for(tmp: Path, inputs: dict[str, Path], refs: dict[str, str] | None = None) -> Any:
    return stage_context(tmp, inputs, {"model": SFT_REF, **(refs or {})})


def rows_of(folder: Path, split: str) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    return pq.read_table(folder / "data" / f"{split}-00000-of-00001.parquet").to_pylist()


@pytest.fixture(scope="module")
def small_prefs(tmp_path_factory, synthetic_tasks) -> Path:
    """32 training and 16 held-out pairs of the synthetic preferences."""
    src = synthetic_tasks["preferences"]
    return write_dataset(
        tmp_path_factory.mktemp("small-prefs"), rows_of(src, "train")[:32], rows_of(src, "test")[:16]
    )


def test_reward_head_initialisation():
    from torch import nn

    from stages.reward.train import init_reward_head

    class Holder(nn.Module):
        def __init__(self, d: int, bias: bool) -> None:
            super().__init__()
            self.score = nn.Linear(d, 1, bias=bias)

    torch.manual_seed(0)
    model = Holder(4095, bias=True)
    nn.init.constant_(model.score.bias, 3.0)
    init_reward_head(model)
    assert float(model.score.weight.std()) == pytest.approx(1 / math.sqrt(4096), rel=0.05)
    assert abs(float(model.score.weight.mean())) < 4 / 4096  # 4 standard errors
    assert float(model.score.bias) == 0.0
    with pytest.raises(StageInputError, match="no linear `score` head with one output"):
        init_reward_head(nn.Module())


def test_first_step_loss_is_bradley_terry_on_the_same_batch(tmp_path, policy_factory, small_prefs):
    """One step with the whole training set as the batch: TRL's logged loss equals
    stages.lib.preference.bradley_terry_loss of the initial model's last-token scores of the
    encode_pairs tokens (the order of a batch does not change its mean)."""
    from stages.lib.generation import right_pad
    from stages.lib.logprobs import last_token_scores
    from stages.lib.preference import bradley_terry_loss, pair_accuracy
    from stages.reward.inputs import prepare
    from stages.reward.train import build_model

    policy = policy_factory()
    cfg = rcfg(max_steps=1, per_device_train_batch_size=32, seed=5)
    ctx = ctx_for(tmp_path, {"model": policy, "prefs": small_prefs})
    prep = prepare(ctx, cfg)
    assert len(prep.train) == 32 and prep.train[0].chosen_ids[-1] == prep.tok.convert_tokens_to_ids("<|end|>")
    model = build_model(ctx, cfg, prep.tok, prep.model_info, seed=5).eval()
    pad = prep.tok.pad_token_id
    with torch.no_grad():
        scores = {
            side: last_token_scores(
                model, *right_pad([p.prompt_ids + getattr(p, f"{side}_ids") for p in prep.train], pad)
            )
            for side in ("chosen", "rejected")
        }
    expected = float(bradley_terry_loss(scores["chosen"], scores["rejected"]))

    m = reward.run(ctx, cfg).metrics
    assert m["steps"] == 1 and m["train_pairs"] == 32
    assert m["train_loss_first"] == pytest.approx(expected, abs=1e-5)
    first = json.loads((ctx.log_dir / "metrics.jsonl").read_text().splitlines()[0])
    assert first["accuracy"] == pytest.approx(pair_accuracy(scores["chosen"], scores["rejected"]), abs=1e-6)


@pytest.mark.slow
def test_a_reward_model_beats_chance_on_held_out_pairs(tmp_path, policy_factory, synthetic_tasks):
    """3 seeds of the stage (head initialisation and data order) from policy_factory(): held-out accuracy
    − 0.5 above 0.1 and above 2 standard deviations of the seeds."""
    from transformers import AutoModelForSequenceClassification

    from stages.lib.rewards import load_reward_model

    gains, before = [], []
    for seed in range(3):
        ctx = ctx_for(
            tmp_path / f"s{seed}",
            {"model": policy_factory(), "prefs": synthetic_tasks["preferences"]},
        )
        result = reward.run(ctx, rcfg(seed=seed, eval_steps=20))
        m = result.metrics
        gains.append(m["eval_accuracy"] - 0.5)
        before.append(m["eval_accuracy_before"])
        assert m["eval_pairs"] == 120 and m["train_pairs"] == 480 and m["steps"] == 40
        assert 0 <= m["eval_ece"] <= 1 and sum(b["count"] for b in m["eval_calibration"]) == 120
    logged = [json.loads(line) for line in (ctx.log_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if "eval_accuracy" in r] == [20, 40]  # TRL's periodic held-out pass
    print(f"held-out accuracy per seed: {[round(g + 0.5, 4) for g in gains]}, at init {before}")
    mean, spread = statistics.mean(gains), statistics.stdev(gains)
    assert mean > 0.1 and mean > 2 * spread, (gains, before)

    # the last seed's output: a full one-label sequence-classification model and its tokenizer
    out = ctx.output
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    assert not list(out.glob("adapter_*")) and (out / "reliability.png").is_file()
    plain = AutoModelForSequenceClassification.from_pretrained(str(out)).eval()
    assert plain.config.num_labels == 1 and plain.config.pad_token_id != plain.config.eos_token_id
    rm = load_reward_model(out)
    prefs = rows_of(synthetic_tasks["preferences"], "test")[:4]
    ours, _ = rm.score_texts([r["prompt"] for r in prefs], [r["chosen"] for r in prefs])
    from stages.lib.chat import split_prompt_completion

    with torch.no_grad():
        for row, score in zip(prefs, ours, strict=True):
            ids = sum(split_prompt_completion(rm.tokenizer, row["prompt"], row["chosen"]), [])
            assert float(plain(input_ids=torch.tensor([ids])).logits[0, 0]) == pytest.approx(score, abs=1e-5)
    assert result.card_metadata == {
        "base_model": "demo/sft",
        "base_model_relation": "finetune",
        "library_name": "transformers",
        "pipeline_tag": "text-classification",
    }
    card = result.card_sections["Reward model"]
    assert "| confidence bin | pairs | mean confidence | accuracy |" in card and "Bradley–Terry" in card
    assert result.images == {"Held-out reliability diagram": "reliability.png"}


@pytest.mark.slow
def test_a_lora_ensemble_from_an_adapter_policy(tmp_path, policy_factory, synthetic_tasks, monkeypatch):
    """K=2 LoRA members on disjoint halves, from an SFT LoRA adapter + its base: members differ, ensemble.json
    as stages.lib.rewards reads it, min ≤ mean; a crash in member 1 resumes with member 0 kept."""
    from transformers import AutoModelForSequenceClassification
    from trl import RewardTrainer

    from stages.lib.rewards import ENSEMBLE_FILE, load_reward_model

    policy = policy_factory()
    adapter = save_lora(tmp_path / "sft-lora", policy, seed=1)
    ctx = ctx_for(
        tmp_path / "run", {"model": adapter, "base": policy, "prefs": synthetic_tasks["preferences"]}
    )
    cfg = rcfg(("base",), ensemble=2, ensemble_data="disjoint", peft={"method": "lora", "r": 8, "alpha": 16})

    calls = {"n": 0}
    real_train = RewardTrainer.train

    def crash_on_second(self: Any, *a: Any, **kw: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("killed")
        return real_train(self, *a, **kw)

    monkeypatch.setattr(RewardTrainer, "train", crash_on_second)
    with pytest.raises(RuntimeError, match="killed"):
        reward.run(ctx, cfg)
    m = reward.run(ctx, cfg).metrics  # member 0 is reused, member 1 trains
    assert calls["n"] == 3

    out = ctx.output
    info = json.loads((out / ENSEMBLE_FILE).read_text())
    assert info["members"] == ["member-0", "member-1"] and info["seeds"] == [0, 1]
    members = m["members"]
    assert [x["train_pairs"] for x in members] == [240, 240] and m["ensemble_data"] == "disjoint"
    assert all(x["eval_accuracy"] > 0.5 for x in members), members
    assert m["ensemble_min_accuracy"] > 0.5 and m["ensemble_mean_accuracy"] > 0.5
    print(
        "ensemble held-out accuracy: members",
        [x["eval_accuracy"] for x in members],
        "min",
        m["ensemble_min_accuracy"],
        "mean",
        m["ensemble_mean_accuracy"],
    )
    for name in info["members"]:
        plain = AutoModelForSequenceClassification.from_pretrained(str(out / name))
        assert plain.config.num_labels == 1 and not list((out / name).glob("adapter_*"))
    prefs = rows_of(synthetic_tasks["preferences"], "test")[:16]
    low, each = load_reward_model(out, aggregate="min").score_texts(
        [r["prompt"] for r in prefs], [r["chosen"] for r in prefs]
    )
    mean, _ = load_reward_model(out, aggregate="mean").score_texts(
        [r["prompt"] for r in prefs], [r["chosen"] for r in prefs]
    )
    assert max(abs(a - b) for a, b in zip(*each, strict=True)) > 1e-3  # the members differ
    assert all(lo <= me + 1e-6 for lo, me in zip(low, mean, strict=True))


def test_config_checks():
    with pytest.raises(ValidationError, match="must merge into it; use one of"):
        rcfg(peft={"method": "qlora"})
    with pytest.raises(ValidationError, match="reads one preference dataset"):
        rcfg(("more",))
    with pytest.raises(ValidationError, match="needs ensemble: K with K ≥ 2"):
        rcfg(ensemble_data="bootstrap")
    with pytest.raises(ValidationError, match="needs `inputs: {model:"):
        reward.Config(name="r", kind="reward", inputs={"prefs": "p"}, output="model:demo/rm")
    with pytest.raises(ValidationError, match="`lr` is now `learning_rate`"):
        rcfg(lr=1e-3)
    assert reward.describe(rcfg(ensemble=3, ensemble_data="bootstrap")) == [
        "full Bradley–Terry training of an ensemble of 3 (bootstrap data) on prefs, 40 steps"
    ]


def test_ensemble_data_splits():
    from stages.reward.inputs import member_pairs

    pairs = list(range(10))
    halves = member_pairs(pairs, rcfg(ensemble=2, ensemble_data="disjoint"))
    assert sorted(halves[0] + halves[1]) == pairs and not set(halves[0]) & set(halves[1])
    boot = member_pairs(pairs, rcfg(ensemble=2, ensemble_data="bootstrap"))
    assert [len(b) for b in boot] == [10, 10] and boot[0] != boot[1] and len(set(boot[0])) < 10
    assert member_pairs(pairs, rcfg(ensemble=2)) == [pairs, pairs]


def test_bad_inputs_fail_before_training(tmp_path, policy_factory, small_prefs, monkeypatch):
    from stages.lib import models
    from stages.lib.testing import save_base

    def no_loading(*args: Any, **kw: Any) -> None:
        raise AssertionError("a model was loaded before the inputs were checked")

    policy = policy_factory()
    missing = write_dataset(tmp_path / "missing", [{"prompt": "p", "chosen": "c"}])
    no_test = write_dataset(tmp_path / "no-test", rows_of(small_prefs, "train"))
    # a reward model (classification) as `model`
    from transformers import AutoModelForSequenceClassification

    cls_dir = tmp_path / "cls"
    AutoModelForSequenceClassification.from_pretrained(str(policy), num_labels=1).save_pretrained(
        str(cls_dir)
    )
    # a tokenizer that pads with eos
    from transformers import AutoTokenizer

    eos_pad = tmp_path / "eos-pad"
    tok = AutoTokenizer.from_pretrained(str(policy))
    tok.pad_token = tok.eos_token
    tok.save_pretrained(str(eos_pad))
    no_template = save_base(tmp_path / "no-template", chat_template=False, hidden=16, layers=1, heads=2)
    from stages.lib.testing import tiny_tokenizer

    big = tmp_path / "big-tok"
    tiny_tokenizer([" ".join(str(i) for i in range(2000))] * 4, vocab_size=800).save_pretrained(str(big))
    monkeypatch.setattr(models, "_from_pretrained", no_loading)

    cases = [
        (
            {"model": policy, "prefs": missing},
            (),
            r"input 'prefs' lacks column\(s\) \['rejected'\]; it has \['prompt', 'chosen'\]",
        ),
        ({"model": policy, "prefs": no_test}, (), "(?s)has no 'test' split .* `eval_split: null`"),
        (
            {"model": cls_dir, "prefs": small_prefs},
            (),
            "input 'model' is a classification model; a reward model starts",
        ),
        (
            {"model": save_lora(tmp_path / "lora", policy), "prefs": small_prefs},
            (),
            "lora adapter .* no 'base' input",
        ),
        (
            {"model": policy, "tokenizer": eos_pad, "prefs": small_prefs},
            ("tokenizer",),
            "pads with its eos token '</s>'",
        ),
        ({"model": no_template, "prefs": small_prefs}, (), "has no chat template"),
        (
            {"model": policy, "tokenizer": big, "prefs": small_prefs},
            ("tokenizer",),
            r"\(input 'tokenizer'\) has \d+ tokens but the model of input 'model' embeds only \d+",
        ),
    ]
    for inputs, extra, message in cases:
        with pytest.raises(StageInputError, match=message):
            reward.run(ctx_for(tmp_path / "ctx", inputs), rcfg(extra))

    from peft import PrefixTuningConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    monkeypatch.undo()
    prefix = tmp_path / "prefix"
    get_peft_model(
        AutoModelForCausalLM.from_pretrained(str(policy)),
        PrefixTuningConfig(num_virtual_tokens=2, task_type="CAUSAL_LM"),
    ).save_pretrained(str(prefix))
    monkeypatch.setattr(models, "_from_pretrained", no_loading)
    with pytest.raises(StageInputError, match="prefix_tuning adapter, which cannot be merged"):
        reward.run(
            ctx_for(tmp_path / "ctx", {"model": prefix, "base": policy, "prefs": small_prefs}),
            rcfg(("base",)),
        )
