"""The kto stage: its first-step loss is stages.lib.preference.kto_loss by hand (mismatched KL pairs built
here independently) and TRL's KTOTrainer loss on the same batch; the weight warning; batch 1 refused;
KTO raises held-out preference accuracy and orders held-out implicit rewards (3 seeds)."""

from __future__ import annotations

import statistics

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("trl")

from hubflow.errors import StageInputError  # noqa: E402
from stages import kto  # noqa: E402
from stages.lib.chat import split_prompt_completion  # noqa: E402
from stages.lib.datasets import read_rows  # noqa: E402
from stages.lib.models import load_model  # noqa: E402
from stages.lib.pairs import completion_logps  # noqa: E402
from stages.lib.preference import kto_loss  # noqa: E402
from stages.lib.testing import write_dataset  # noqa: E402
from stages.lib.tokenizers import load_tokenizer  # noqa: E402

BETA, W_D, W_U = 0.3, 1.2, 0.9


def trl_kto_loss(policy, reference, rows: list[dict], tmp) -> float:
    from datasets import Dataset
    from trl import KTOConfig, KTOTrainer

    from stages.lib.hardware import trl_precision_kwargs

    class PreTokenized(KTOTrainer):  # our tokens and mismatched pairs, not TRL's re-rendering
        def _prepare_dataset(self, dataset, *args, **kwargs):
            return dataset

    args = KTOConfig(
        output_dir=str(tmp / "trl"),
        beta=BETA,
        desirable_weight=W_D,
        undesirable_weight=W_U,
        per_device_train_batch_size=len(rows),
        report_to="none",
        use_cpu=True,
        max_length=1024,
        **trl_precision_kwargs("no"),
    )
    trainer = PreTokenized(
        model=load_model(policy),
        ref_model=load_model(reference),
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=load_tokenizer(policy),
    )
    trainer.model.train()
    with torch.no_grad():
        return float(trainer.compute_loss(trainer.model, trainer.data_collator(rows)))


def test_first_step_loss_equals_the_lib_formula_and_trl(tmp_path, run, policy, weak_policy, small_feedback):
    # the weaker model as the policy: it gives the mismatched (wrong) answers more mass than its reference
    # does, so the KL estimate is positive and z_ref takes part
    policy, reference = weak_policy, policy
    result, _ = run(
        kto,
        tmp_path / "stage",
        {"model": policy, "data": small_feedback, "reference": reference},
        beta=BETA,
        desirable_weight=W_D,
        undesirable_weight=W_U,
        max_steps=1,
        per_device_train_batch_size=13,  # one KL group: every training row, in dataset order
        learning_rate=1e-3,
    )
    tok = load_tokenizer(policy)
    data = read_rows(small_feedback, "train", ["prompt", "completion", "label"], input_name="data")
    enc = [split_prompt_completion(tok, r["prompt"], r["completion"]) for r in data]
    prompts = [p for p, _ in enc]
    completions = [c for _, c in enc]
    mismatched = [completions[i - 1] for i in range(len(enc))]  # (x_1, y_n), (x_2, y_1), ...
    labels = torch.tensor([r["label"] for r in data])
    pi, ref = load_model(policy), load_model(reference)
    pad = tok.pad_token_id
    with torch.no_grad():
        lp, rp, klp, klr = (
            completion_logps(m, prompts, c, pad_id=pad)
            for m, c in ((pi, completions), (ref, completions), (pi, mismatched), (ref, mismatched))
        )
    terms = kto_loss(
        lp,
        rp,
        labels,
        kl_policy_logps=klp,
        kl_ref_logps=klr,
        beta=BETA,
        desirable_weight=W_D,
        undesirable_weight=W_U,
    )
    rows = [
        {"prompt_ids": p, "completion_ids": c, "KL_completion_ids": k, "label": bool(b)}
        for p, c, k, b in zip(prompts, completions, mismatched, labels.tolist(), strict=True)
    ]
    trl = trl_kto_loss(policy, reference, rows, tmp_path)
    ours = result.metrics["train_loss_first"]
    assert ours == pytest.approx(float(terms.loss), abs=2e-5) and ours == pytest.approx(trl, abs=2e-5)
    assert result.metrics["first_step"]["kl"] == pytest.approx(float(terms.z_ref), abs=2e-5)
    assert float(terms.z_ref) > 0  # the KL baseline is active in this check, not clamped away


def test_the_weight_balance_warning_and_a_batch_of_one(tmp_path, run, policy, small_feedback):
    result, _ = run(
        kto,
        tmp_path / "stage",
        {"model": policy, "data": small_feedback},
        desirable_weight=3.0,
        max_steps=1,
        per_device_train_batch_size=4,
    )
    warning = result.metrics["warnings"][0]
    assert "we recommend EITHER desirable_weight in" in warning and warning in result.card_sections["KTO"]
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="per_device_train_batch_size must be at least 2 for kto"):
        kto.Config(
            name="k",
            kind="kto",
            inputs={"model": "m", "data": "d"},
            output="model:a/k",
            per_device_train_batch_size=1,
        )
    one = write_dataset(tmp_path / "one", [{"prompt": "x", "completion": "y", "label": True}] * 4)
    with pytest.raises(StageInputError, match="has only desirable rows .* KTO needs both labels"):
        run(
            kto,
            tmp_path / "one-label",
            {"model": policy, "data": one},
            max_steps=1,
            per_device_train_batch_size=2,
        )


def preference_accuracy(model_dir, prefs, tok) -> float:
    from stages.lib.pairs import encode_pairs, read_pairs

    encoded, _ = encode_pairs(tok, read_pairs(prefs, "test", input_name="data"), max_length=1024)
    model = load_model(model_dir)
    prompts = [e.prompt_ids for e in encoded]
    with torch.no_grad():
        c = completion_logps(model, prompts, [e.chosen_ids for e in encoded], pad_id=tok.pad_token_id)
        r = completion_logps(model, prompts, [e.rejected_ids for e in encoded], pad_id=tok.pad_token_id)
    return float((c > r).float().mean())


@pytest.mark.slow
def test_kto_raises_held_out_preference_accuracy_and_orders_rewards(tmp_path, run, policy, synthetic_tasks):
    tok = load_tokenizer(policy)
    prefs = synthetic_tasks["preferences"]
    start = preference_accuracy(policy, prefs, tok)
    gains, aucs = [], []
    for seed in range(3):
        result, ctx = run(
            kto,
            tmp_path / f"s{seed}",
            {"model": policy, "data": synthetic_tasks["feedback"]},
            seed=seed,
            max_steps=80,
            per_device_train_batch_size=16,
            learning_rate=5e-4,
            beta=0.5,
            logging_steps=20,
            eval_examples=120,
        )
        gains.append(preference_accuracy(ctx.output, prefs, tok) - start)
        assert result.metrics["eval_reward_auc_before"] == 0.5  # every implicit reward is 0 at the start
        aucs.append(result.metrics["eval_reward_auc"] - 0.5)
    print(f"KTO preference accuracy {start:.4f}, gains {gains}; held-out reward AUC - 0.5 {aucs}")
    for values in (gains, aucs):
        assert statistics.mean(values) > 0.05 and statistics.mean(values) > 2 * statistics.stdev(values)
