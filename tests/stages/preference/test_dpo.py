"""The dpo stage: its first-step loss is TRL's DPOTrainer loss and the seed's formula on the same batch and
model; LoRA and continued-adapter policies take the right reference on one base; bad inputs fail before
training; DPO raises held-out preference accuracy over its SFT start (3 seeds); IPO stops at its target."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("trl")

from hubflow.errors import StageInputError  # noqa: E402
from stages import dpo  # noqa: E402
from stages.lib.models import load_model  # noqa: E402
from stages.lib.pairs import completion_logps, encode_pairs, read_pairs  # noqa: E402
from stages.lib.preference import dpo_loss  # noqa: E402
from stages.lib.testing import write_dataset  # noqa: E402
from stages.lib.tokenizers import load_tokenizer  # noqa: E402

BETA = 0.3


def trl_first_loss(policy: Path, reference: Path, encoded: list, loss: str, tmp: Path) -> float:
    """TRL 1.16's DPOTrainer loss on one batch of our token ids, its reference computed by TRL itself."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from stages.lib.hardware import trl_precision_kwargs

    class PreTokenized(DPOTrainer):  # our tokens (stages.lib.pairs.encode_pairs), not TRL's re-rendering
        def _prepare_dataset(self, dataset, *args, **kwargs):
            return dataset

    rows = [
        {"prompt_ids": e.prompt_ids, "chosen_ids": e.chosen_ids, "rejected_ids": e.rejected_ids}
        for e in encoded
    ]
    args = DPOConfig(
        output_dir=str(tmp / "trl"),
        beta=BETA,
        loss_type=[loss],
        report_to="none",
        use_cpu=True,
        max_length=1024,
        **trl_precision_kwargs("no"),
    )
    dataset = Dataset.from_list(rows)
    trainer = PreTokenized(
        model=load_model(policy),
        ref_model=load_model(reference),
        args=args,
        train_dataset=dataset,
        processing_class=load_tokenizer(policy),
    )
    trainer.model.train()
    with torch.no_grad():
        return float(trainer.compute_loss(trainer.model, trainer.data_collator(rows)))


@pytest.mark.parametrize("loss", ["sigmoid", "ipo"])
def test_first_step_loss_equals_trl_and_the_seed_formula(
    tmp_path, run, policy, weak_policy, small_prefs, loss
):
    result, ctx = run(
        dpo,
        tmp_path / "stage",
        {"model": policy, "data": small_prefs, "reference": weak_policy},
        loss=loss,
        beta=BETA,
        max_steps=1,
        per_device_train_batch_size=8,  # the whole training split: the first batch is every pair
        learning_rate=1e-3,
    )
    ours = result.metrics["train_loss_first"]

    tok = load_tokenizer(policy)
    encoded, _ = encode_pairs(tok, read_pairs(small_prefs, input_name="data"), max_length=1024)
    prompts = [e.prompt_ids for e in encoded]
    chosen, rejected = [e.chosen_ids for e in encoded], [e.rejected_ids for e in encoded]
    pi, ref = load_model(policy), load_model(weak_policy)
    with torch.no_grad():
        pc, pr, rc, rr = (
            completion_logps(m, prompts, c, pad_id=tok.pad_token_id)
            for m, c in ((pi, chosen), (pi, rejected), (ref, chosen), (ref, rejected))
        )
    if loss == "ipo":  # per-token means (log_ratio: mean, the default for ipo, as TRL)
        lc = torch.tensor([len(c) for c in chosen], dtype=torch.float32)
        lr = torch.tensor([len(c) for c in rejected], dtype=torch.float32)
        pc, pr, rc, rr = pc / lc, pr / lr, rc / lc, rr / lr
    by_hand = float(dpo_loss(pc, pr, rc, rr, beta=BETA, loss_type=loss).loss)
    trl = trl_first_loss(policy, weak_policy, encoded, loss, tmp_path)
    assert abs(by_hand - 0.6931) > 0.01  # a reference unlike the policy: Δ ≠ 0, the check is not trivial
    assert ours == pytest.approx(by_hand, abs=2e-5) and ours == pytest.approx(trl, abs=2e-5)
    log = [json.loads(line) for line in (ctx.log_dir / "metrics.jsonl").read_text().splitlines()]
    assert log[0]["step"] == 1 and log[0]["loss"] == ours
    for key in ("rewards/margins", "rewards/accuracies", "rewards/chosen", "rewards/rejected", "kl_proxy"):
        assert key in log[0]
    assert result.metrics["models_held"][0].startswith("the `reference` model, alone")


def test_a_lora_policy_is_judged_against_its_base_with_the_adapter_disabled(
    tmp_path, run, policy, small_prefs
):
    result, ctx = run(
        dpo,
        tmp_path / "stage",
        {"model": policy, "data": small_prefs},
        peft={"method": "lora", "r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
        max_steps=2,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
    )
    m = result.metrics
    assert "adapter disabled" in m["reference"] and m["first_step"]["kl_proxy"] == pytest.approx(0, abs=1e-5)
    assert "peak_memory_mb" in m and m["models_held"] == ["the SFT model + a fresh lora adapter (training)"]
    assert (ctx.output / "adapter_model.safetensors").is_file()
    assert result.card_metadata["base_model_relation"] == "adapter"
    from peft import PeftModel

    PeftModel.from_pretrained(load_model(policy), str(ctx.output))  # loads on its base


def test_a_continued_adapter_is_judged_against_a_frozen_copy_of_itself(
    tmp_path, run, policy, sft_adapter, small_prefs
):
    lora = {"method": "lora", "r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}
    result, ctx = run(
        dpo,
        tmp_path / "stage",
        {"model": sft_adapter, "base": policy, "data": small_prefs},
        peft=lora,
        max_steps=2,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
    )
    m = result.metrics
    assert "frozen copy" in m["reference"] and any("adapter 'reference'" in h for h in m["models_held"])
    # the reference is the adapter's start (Δ = 0 at step 1), not the bare base, which scores differently
    assert m["first_step"]["kl_proxy"] == pytest.approx(0, abs=1e-5)
    tok = load_tokenizer(policy)
    encoded, _ = encode_pairs(tok, read_pairs(small_prefs, input_name="data"), max_length=1024)
    from peft import PeftModel

    adapter = PeftModel.from_pretrained(load_model(policy), str(sft_adapter))
    pad = tok.pad_token_id
    with torch.no_grad():
        args = ([e.prompt_ids for e in encoded], [e.chosen_ids for e in encoded])
        gap = (
            completion_logps(adapter, *args, pad_id=pad)
            - completion_logps(load_model(policy), *args, pad_id=pad)
        ).abs()
    assert float(gap.mean()) > 0.05
    config = json.loads((ctx.output / "adapter_config.json").read_text())
    assert config["r"] == 4 and not (ctx.output / "reference").exists()  # the copy is gone before saving
    trained = PeftModel.from_pretrained(load_model(policy), str(ctx.output))
    with torch.no_grad():
        moved = completion_logps(trained, *args, pad_id=pad) - completion_logps(adapter, *args, pad_id=pad)
    assert float(moved.abs().max()) > 0  # the input adapter itself trained on


def test_bad_inputs_fail_before_training(tmp_path, run, policy, sft_adapter, small_prefs, synthetic_tasks):
    from stages.lib.testing import save_base

    no_rejected = write_dataset(tmp_path / "bad", [{"prompt": "x", "chosen": "y", "score": 1}])
    with pytest.raises(
        StageInputError, match=r"lacks column\(s\) \['rejected'\]; it has \['prompt', 'chosen', 'score'\]"
    ):
        run(dpo, tmp_path / "a", {"model": policy, "data": no_rejected}, max_steps=1)

    other = save_base(tmp_path / "other", corpus=["a completely different corpus of words"])
    with pytest.raises(StageInputError, match="inputs 'model' and 'reference' do not share a tokenizer"):
        run(dpo, tmp_path / "b", {"model": policy, "data": small_prefs, "reference": other}, max_steps=1)

    with pytest.raises(StageInputError, match="lora adapter .* no 'base' input"):
        run(dpo, tmp_path / "c", {"model": sft_adapter, "data": small_prefs}, max_steps=1)

    claimed = tmp_path / "claimed"
    claimed.mkdir()
    for f in sft_adapter.iterdir():
        (claimed / f.name).write_bytes(f.read_bytes())
    config = json.loads((claimed / "adapter_config.json").read_text())
    config.update(base_model_name_or_path="demo/sft", revision="b" * 40)
    (claimed / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(
        StageInputError, match="is an adapter of model:demo/sft.* but input 'base' is model:demo/base"
    ):
        run(dpo, tmp_path / "d", {"model": claimed, "base": policy, "data": small_prefs}, max_steps=1)

    with pytest.raises(StageInputError, match="a lora adapter, but this stage's peft method is adapter"):
        run(
            dpo,
            tmp_path / "e",
            {"model": sft_adapter, "base": policy, "data": small_prefs},
            peft={"method": "adapter"},
            max_steps=1,
        )
    for sub in "abcde":
        assert _no_training_dir(tmp_path / sub)


def _no_training_dir(folder: Path) -> bool:
    return not (folder / "logs" / "metrics.jsonl").exists() and not any((folder / "out").iterdir())


def test_config_errors_name_the_field():
    from pydantic import ValidationError

    base = {"name": "d", "kind": "dpo", "output": "model:demo/d"}
    with pytest.raises(ValidationError, match="needs a `data` input"):
        dpo.Config(**base, inputs={"model": "sft"})
    with pytest.raises(ValidationError, match="`reference` and `reference_logprobs` both name the reference"):
        dpo.Config(**base, inputs={"model": "sft", "data": "p", "reference": "x", "reference_logprobs": "r"})
    with pytest.raises(ValidationError, match=r"unknown input\(s\) \['reward'\]"):
        dpo.Config(**base, inputs={"model": "sft", "data": "p", "reward": "rm"})
    with pytest.raises(ValidationError, match="`lr` is now `learning_rate`"):
        dpo.Config(**base, inputs={"model": "sft", "data": "p"}, lr=1e-3)
    cfg = dpo.Config(**base, inputs={"model": "sft", "data": "p"}, loss="ipo")
    assert cfg.ratio() == "mean" and dpo.Config(**base, inputs={"model": "sft", "data": "p"}).ratio() == "sum"


# -- learning on the synthetic task families (3 seeds each) -----------------------------------------

LEARN = {
    "max_steps": 80,
    "per_device_train_batch_size": 16,
    "learning_rate": 3e-3,
    "beta": 0.2,
    "logging_steps": 20,
    "eval_examples": 120,
}


def held_out_accuracy(model_dir: Path, prefs: Path, tok) -> float:
    """Share of held-out pairs with log π(chosen) > log π(rejected), from the published model."""
    encoded, _ = encode_pairs(tok, read_pairs(prefs, "test", input_name="data"), max_length=1024)
    model = load_model(model_dir)
    prompts = [e.prompt_ids for e in encoded]
    with torch.no_grad():
        c = completion_logps(model, prompts, [e.chosen_ids for e in encoded], pad_id=tok.pad_token_id)
        r = completion_logps(model, prompts, [e.rejected_ids for e in encoded], pad_id=tok.pad_token_id)
    return float((c > r).float().mean())


@pytest.mark.slow
def test_dpo_raises_held_out_preference_accuracy_over_its_sft_start(tmp_path, run, policy, synthetic_tasks):
    prefs = synthetic_tasks["preferences"]
    tok = load_tokenizer(policy)
    start = held_out_accuracy(policy, prefs, tok)
    gains = []
    for seed in range(3):
        result, ctx = run(dpo, tmp_path / f"s{seed}", {"model": policy, "data": prefs}, seed=seed, **LEARN)
        after = held_out_accuracy(ctx.output, prefs, tok)
        assert result.metrics["eval_preference_accuracy"] == pytest.approx(after, abs=1e-6)
        assert result.metrics["eval_preference_accuracy_before"] == pytest.approx(start, abs=1e-6)
        gains.append(after - start)
    print(f"DPO held-out preference accuracy {start:.4f} -> gains per seed {gains}")
    mean, spread = statistics.mean(gains), statistics.stdev(gains)
    assert mean > 0.05 and mean > 2 * spread, (start, gains)


@pytest.mark.slow
def test_ipo_converges_to_its_target_margin_where_dpo_runs_past_it(tmp_path, run, policy, synthetic_tasks):
    prefs = synthetic_tasks["preferences"]
    beta = 2.0  # target Δ = 1/(2β) = 0.25 nats per token
    common = {
        **LEARN,
        "beta": beta,
        "log_ratio": "mean",
        "max_steps": 100,
        "logging_steps": 25,
        "eval_split": None,
    }
    deltas = {}
    for loss in ("ipo", "sigmoid"):
        result, ctx = run(dpo, tmp_path / loss, {"model": policy, "data": prefs}, loss=loss, **common)
        log = [json.loads(line) for line in (ctx.log_dir / "metrics.jsonl").read_text().splitlines()]
        deltas[loss] = [row["delta"] for row in log]
    target = 1 / (2 * beta)
    print(f"IPO Δ per window {deltas['ipo']}, sigmoid {deltas['sigmoid']}, target {target}")
    assert 0.6 * target < deltas["ipo"][-1] < 1.2 * target and max(deltas["ipo"]) < 1.2 * target
    assert deltas["sigmoid"][-1] > 3 * target  # the log-sigmoid loss keeps pushing the margin out


def test_an_sft_term_adds_the_token_mean_nll_of_the_chosen(tmp_path, run, policy, weak_policy, small_prefs):
    """sft_weight α: L = L_DPO + α·(−Σ log π(y_w) / Σ|y_w|) (TRL's loss_type [sigmoid, sft])."""
    kw = {"beta": BETA, "max_steps": 1, "per_device_train_batch_size": 8, "learning_rate": 1e-3}
    plain, _ = run(
        dpo, tmp_path / "plain", {"model": policy, "data": small_prefs, "reference": weak_policy}, **kw
    )
    result, ctx = run(
        dpo,
        tmp_path / "sft",
        {"model": policy, "data": small_prefs, "reference": weak_policy},
        sft_weight=0.5,
        **kw,
    )
    tok = load_tokenizer(policy)
    encoded, _ = encode_pairs(tok, read_pairs(small_prefs, input_name="data"), max_length=1024)
    with torch.no_grad():
        pc = completion_logps(
            load_model(policy),
            [e.prompt_ids for e in encoded],
            [e.chosen_ids for e in encoded],
            pad_id=tok.pad_token_id,
        )
    nll = -float(pc.sum()) / sum(len(e.chosen_ids) for e in encoded)
    assert result.metrics["train_loss_first"] == pytest.approx(
        plain.metrics["train_loss_first"] + 0.5 * nll, abs=2e-5
    )
    log = json.loads((ctx.log_dir / "metrics.jsonl").read_text().splitlines()[0])
    assert log["sft_loss"] == pytest.approx(nll, abs=2e-5)
