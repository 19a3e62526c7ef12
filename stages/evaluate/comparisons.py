"""The ``evaluate`` stage's preference scores: a policy's log-prob preferences, the DPO implicit reward
against a ``reference``, and a ``reward`` model's (or ensemble's) pair accuracy, calibration and the reward
of the policy's generations.

On a preference split (prompt x, chosen y_w, rejected y_l), with log π(y|x) the sum of the completion's
token log-probs (:func:`stages.lib.pairs.completion_logps` on the tokens of
:func:`stages.lib.pairs.encode_pairs`: what a policy samples, ending at the end-of-turn token):

- **log-prob preference accuracy**: the share of pairs with log π(y_w|x) > log π(y_l|x);
- **DPO implicit reward** (seed §4.6: r̂(x, y) = β·log π(y|x)/π_ref(y|x)): the margin
  Δ = (log π(y_w) − log π_ref(y_w)) − (log π(y_l) − log π_ref(y_l)) in nats, i.e. without β (β only
  scales it; the DPO stage's reward margin is β·Δ); its accuracy is the share with Δ > 0;
- **reward model** (seed §4.4 diagnostics): the share with r(y_w) > r(y_l) and the expected calibration
  error of σ(r_w − r_l) (:func:`stages.lib.preference.expected_calibration_error`).

Ties count half in every accuracy (:func:`stages.lib.preference.pair_accuracy`). Every check runs before a
weight is read: a ``reward`` input must be a reward model (:func:`stages.lib.rewards.check_reward_folder`),
a ``reference`` a causal LM (or an adapter with ``reference_base``, else ``base``) sharing the policy's
tokenizer (:func:`stages.lib.rewards.check_same_tokenizer`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hubflow.errors import StageInputError
from hubflow.stage import StageContext
from stages.evaluate.config import REFERENCE_BASE_INPUT, REFERENCE_INPUT, REWARD_INPUT, Config

PAIR_COLUMNS = (
    "logp_chosen",
    "logp_rejected",
    "ref_logp_chosen",
    "ref_logp_rejected",
    "implicit_margin",
    "reward_chosen",
    "reward_rejected",
)


@dataclass
class Checked:
    """What the cheap checks found about the ``reference`` and ``reward`` inputs."""

    reference: Any = None
    """The reference's ModelInfo, or None."""
    reference_base_input: str | None = None
    reward_members: int = 0


def _reference_base(ctx: StageContext) -> str | None:
    if REFERENCE_BASE_INPUT in ctx.inputs:
        return REFERENCE_BASE_INPUT
    return "base" if "base" in ctx.inputs else None


def check_inputs(
    ctx: StageContext, cfg: Config, tok: Any, tok_input: str, model_vocab: int | None
) -> Checked:
    """The reward and reference checks that need no weights (run before anything loads)."""
    from stages.lib.models import inspect_model, vocab_size_of
    from stages.lib.rewards import check_reward_folder, check_same_tokenizer
    from stages.lib.tokenizers import load_tokenizer, tokenizer_folder

    out = Checked()
    if REWARD_INPUT in ctx.inputs:
        out.reward_members = len(check_reward_folder(ctx.inputs[REWARD_INPUT], input_name=REWARD_INPUT))
    if REFERENCE_INPUT not in ctx.inputs:
        return out
    base_input = _reference_base(ctx)
    ref_dir = Path(ctx.inputs[REFERENCE_INPUT])
    base_dir = Path(ctx.inputs[base_input]) if base_input else None
    info = inspect_model(
        ref_dir,
        base=base_dir,
        input_name=REFERENCE_INPUT,
        base_input=base_input or REFERENCE_BASE_INPUT,
        base_ref=ctx.input_refs.get(base_input) if base_input else None,
        check_base=cfg.check_base,
    )
    if info.task != "causal_lm":
        raise StageInputError(
            f"input {REFERENCE_INPUT!r} is a {info.task} model; the reference of the DPO implicit reward is a "
            "policy (a causal language model)",
            hint="feed it the model the evaluated policy was trained from (the SFT model of a DPO stage)",
        )
    found = tokenizer_folder((REFERENCE_INPUT, ref_dir), (base_input or "", base_dir))
    if found is not None:
        try:
            check_same_tokenizer(
                tok, load_tokenizer(found[1]), policy_input=tok_input, reward_input=REFERENCE_INPUT
            )
        except StageInputError as exc:
            raise StageInputError(
                exc.message,
                hint="the reference must share the policy's tokens: use the model the policy was trained from",
            ) from exc
    else:
        rows = vocab_size_of(base_dir if info.is_adapter and base_dir else ref_dir)
        if rows is not None and model_vocab is not None and rows != model_vocab:
            raise StageInputError(
                f"input {REFERENCE_INPUT!r} embeds {rows} tokens and input 'model' {model_vocab}: they do not "
                "share a tokenizer",
                hint="the reference must share the policy's tokens: use the model the policy was trained from",
            )
    out.reference, out.reference_base_input = info, base_input
    return out


def require_use(ctx: StageContext, formats: dict[str, str], generate: bool) -> None:
    """A ``reference`` needs a preference split; a ``reward`` needs one, or generations to score."""
    has_pairs = "preference" in formats.values()
    if REFERENCE_INPUT in ctx.inputs and not has_pairs:
        raise StageInputError(
            f"input {REFERENCE_INPUT!r} is only used on a preference split (prompt/chosen/rejected), and the "
            f"datasets are {formats}",
            hint="add a preference dataset (the synthetic stage's `preferences`), or remove the reference",
        )
    scored = has_pairs or (generate and any(f != "text" for f in formats.values()))
    if REWARD_INPUT in ctx.inputs and not scored:
        raise StageInputError(
            f"input {REWARD_INPUT!r} has nothing to score: no preference split and no generations",
            hint="add a preference or prompt dataset, or set generate: true",
        )


def load_reference(ctx: StageContext, cfg: Config, checked: Checked, device: str) -> Any:
    from stages.lib.models import load_model

    if checked.reference is None:
        return None
    base = checked.reference_base_input
    return load_model(
        ctx.inputs[REFERENCE_INPUT],
        base=ctx.inputs.get(base) if base else None,
        base_ref=ctx.input_refs.get(base) if base else None,
        check_base=cfg.check_base,
        input_name=REFERENCE_INPUT,
        base_input=base or REFERENCE_BASE_INPUT,
        device=device,
        logger=ctx.logger,
    )


def load_reward(ctx: StageContext, cfg: Config, device: str) -> Any:
    from stages.lib.rewards import load_reward_model

    if REWARD_INPUT not in ctx.inputs:
        return None
    return load_reward_model(
        ctx.inputs[REWARD_INPUT], aggregate=cfg.reward_aggregate, device=device, input_name=REWARD_INPUT
    )


def _logps(
    model: Any, prompts: list[list[int]], completions: list[list[int]], pad_id: int, batch: int
) -> list:
    import torch

    from stages.lib.pairs import completion_logps

    out: list[float] = []
    with torch.no_grad():
        for start in range(0, len(prompts), batch):
            lp = completion_logps(
                model, prompts[start : start + batch], completions[start : start + batch], pad_id=pad_id
            )
            out += [float(x) for x in lp.cpu()]
    return out


def pair_scores(
    examples: Sequence[Any], *, model: Any, reference: Any, rm: Any, tok: Any, cfg: Config, pad_id: int
) -> list[dict[str, Any]]:
    """Per example: the policy's (and the reference's) completion log-probs, the implicit margin, the reward
    model's scores; None where a pair did not fit ``max_length`` (its prompt alone fills it)."""
    from stages.lib.pairs import Pair, encode_pairs

    pairs = [Pair(ex.prompt, ex.completion, ex.rejected, ex.family, i) for i, ex in enumerate(examples)]
    encoded, _ = encode_pairs(tok, pairs, max_length=cfg.max_length)
    rows: list[dict[str, Any]] = [dict.fromkeys(PAIR_COLUMNS) for _ in examples]
    prompts = [e.prompt_ids for e in encoded] * 2
    completions = [e.chosen_ids for e in encoded] + [e.rejected_ids for e in encoded]
    n = len(encoded)
    policy = _logps(model, prompts, completions, pad_id, cfg.batch_size)
    ref = _logps(reference, prompts, completions, pad_id, cfg.batch_size) if reference is not None else None
    for k, e in enumerate(encoded):
        row = rows[e.row]
        row["logp_chosen"], row["logp_rejected"] = policy[k], policy[n + k]
        if ref is not None:
            row["ref_logp_chosen"], row["ref_logp_rejected"] = ref[k], ref[n + k]
            row["implicit_margin"] = (policy[k] - ref[k]) - (policy[n + k] - ref[n + k])
    if rm is not None:
        chosen, per_c = rm.score_texts(
            [ex.prompt for ex in examples], [ex.completion for ex in examples], batch_size=cfg.batch_size
        )
        rejected, per_r = rm.score_texts(
            [ex.prompt for ex in examples], [ex.rejected for ex in examples], batch_size=cfg.batch_size
        )
        for i, row in enumerate(rows):
            row["reward_chosen"], row["reward_rejected"] = chosen[i], rejected[i]
            if len(per_c) > 1:
                row["member_rewards"] = [(c[i], r[i]) for c, r in zip(per_c, per_r, strict=True)]
    return rows


def generation_rewards(
    rm: Any, examples: Sequence[Any], generations: Sequence[str | None], batch: int
) -> list:
    """The reward of each generation (None where there is none), chat prompts answered by one assistant turn."""
    keep = [i for i, g in enumerate(generations) if g is not None]
    out: list[float | None] = [None] * len(examples)
    if rm is None or not keep:
        return out
    completions = [
        [{"role": "assistant", "content": generations[i]}] if examples[i].conversational else generations[i]
        for i in keep
    ]
    scores, _ = rm.score_texts([examples[i].prompt for i in keep], completions, batch_size=batch)
    for i, s in zip(keep, scores, strict=True):
        out[i] = s
    return out


def summarize(rows: Sequence[dict[str, Any]], *, n_bins: int, bins: bool = True) -> dict[str, Any]:
    """The preference and reward scores of result rows (empty when the rows carry none)."""
    import torch

    from stages.lib.preference import expected_calibration_error, pair_accuracy

    out: dict[str, Any] = {}
    scored = [r for r in rows if r.get("logp_chosen") is not None]
    if scored:
        c = torch.tensor([r["logp_chosen"] for r in scored], dtype=torch.float64)
        rj = torch.tensor([r["logp_rejected"] for r in scored], dtype=torch.float64)
        out.update(
            pairs=len(scored),
            pairs_dropped=sum(1 for r in rows if r.get("format") == "preference") - len(scored),
            logp_accuracy=round(pair_accuracy(c, rj), 6),
            logp_margin_mean=round(float((c - rj).mean()), 6),
        )
    margins = [r["implicit_margin"] for r in scored if r.get("implicit_margin") is not None]
    if margins:
        m = torch.tensor(margins, dtype=torch.float64)
        out.update(
            implicit_reward_accuracy=round(pair_accuracy(m, torch.zeros_like(m)), 6),
            implicit_margin_mean=round(float(m.mean()), 6),
        )
    rewarded = [r for r in rows if r.get("reward_chosen") is not None]
    if rewarded:
        c = torch.tensor([r["reward_chosen"] for r in rewarded], dtype=torch.float64)
        rj = torch.tensor([r["reward_rejected"] for r in rewarded], dtype=torch.float64)
        calibration = expected_calibration_error(c, rj, n_bins=n_bins)
        out.update(
            reward_pairs=len(rewarded),
            reward_accuracy=round(pair_accuracy(c, rj), 6),
            reward_ece=round(calibration["ece"], 6),
            reward_margin_mean=round(float((c - rj).mean()), 6),
        )
        if bins:
            out["reward_calibration"] = calibration["bins"]
        if rewarded[0].get("member_rewards"):
            members = list(zip(*(r["member_rewards"] for r in rewarded), strict=True))
            out["reward_member_accuracy"] = [
                round(pair_accuracy(*(torch.tensor(x, dtype=torch.float64) for x in zip(*m, strict=True))), 6)
                for m in members
            ]
    generated = [r["reward_generation"] for r in rows if r.get("reward_generation") is not None]
    if generated:
        out.update(reward_mean=round(sum(generated) / len(generated), 6), rewarded_generations=len(generated))
    return out
