"""Where a dpo / kto stage's reference log-probabilities come from (seed §4.7 step 2, "PRECOMPUTE").

In order of preference:

1. a ``reference_logprobs`` input (the artifact of that kind): checked against this stage's format,
   tokenisation settings, dataset and reference revisions and tokens, then used as is: the reference
   model is never loaded (:func:`from_artifact`);
2. a ``reference`` input: loaded alone, its pass computed, then freed before the policy loads;
3. the policy's own starting point, computed at the start on the one model in memory
   (``stages.lib.preference_policy.reference_scope``).

Either way training only reads precomputed values, so no second model is held while training.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from hubflow.stage import StageContext
from stages.lib.preference_config import DATA_INPUT, MODEL_INPUT, REFERENCE_INPUT, REFERENCE_LOGPROBS_INPUT

Pass = Callable[[Any, Sequence[Any]], dict[str, list[float]]]
"""(model, encoded rows) -> column name -> one value per row."""


@dataclass
class References:
    values: dict[str, dict[str, list[float]]]
    """split -> column (``ref_chosen_logps``...) -> one value per encoded row, in order."""
    source: str
    """What computed them, in words (for the log, the metrics and the card)."""
    seconds: float = 0.0
    computed: bool = True


def from_artifact(
    ctx: StageContext,
    *,
    format: str,
    settings: dict[str, Any],
    own: dict[str, list[dict[str, Any]]],
    columns: Sequence[str],
) -> References | None:
    """The ``reference_logprobs`` input's values for this stage's rows (``own``: split -> the encoded
    rows as dicts with ``row`` and token fields), or None without that input."""
    from stages.lib.preference_data import check_reference, match_rows, read_reference

    if REFERENCE_LOGPROBS_INPUT not in ctx.inputs:
        return None
    name = REFERENCE_LOGPROBS_INPUT
    art = read_reference(ctx.inputs[name], input_name=name)
    reference_input = REFERENCE_INPUT if REFERENCE_INPUT in ctx.inputs else MODEL_INPUT
    check_reference(
        art,
        input_name=name,
        format=format,
        settings=settings,
        splits=list(own),
        refs={
            DATA_INPUT: (DATA_INPUT, ctx.input_refs.get(DATA_INPUT)),
            MODEL_INPUT: (reference_input, ctx.input_refs.get(reference_input)),
        },
    )
    values: dict[str, dict[str, list[float]]] = {}
    for split, rows in own.items():
        matched = match_rows(art.splits[split], rows, input_name=name, split=split, format=format)
        values[split] = {c: [float(r[c]) for r in matched] for c in columns}
    made_by = (art.info.get("inputs") or {}).get(MODEL_INPUT, "its model")
    return References(values, f"input {name!r} (computed by {made_by})", computed=False)


def compute(model: Any, rows: dict[str, Sequence[Any]], run_pass: Pass, source: str) -> References:
    """Run the reference pass on every split's rows."""
    started = time.perf_counter()
    values = {split: run_pass(model, part) for split, part in rows.items()}
    return References(values, source, round(time.perf_counter() - started, 3))


def resolve_references(
    ctx: StageContext,
    cfg: Any,
    tok: Any,
    splits: dict[str, Sequence[Any]],
    run_pass: Pass,
    *,
    format: str,
    own: dict[str, list[dict[str, Any]]],
    columns: Sequence[str],
    settings: dict[str, Any] | None = None,
) -> tuple[References, Any, list[str]]:
    """(reference log-probs, the loaded policy, what was held in memory) of a dpo / kto stage, the reference
    from the first of: the ``reference_logprobs`` artifact, a ``reference`` input (loaded alone and freed
    before the policy), the policy's own starting point (the adapter disabled, or before the first update).
    ``settings``: the tokenisation settings the artifact must match (default max_length, max_prompt_length)."""
    import gc

    from stages.lib.preference_policy import is_main_process, load_policy, load_reference, reference_scope

    settings = settings or {"max_length": cfg.max_length, "max_prompt_length": cfg.max_prompt_length}
    refs = from_artifact(ctx, format=format, settings=settings, own=own, columns=columns)
    held: list[str] = []
    if refs is None and REFERENCE_INPUT in ctx.inputs:
        reference = load_reference(ctx, tok)
        refs = compute(
            reference, splits, run_pass, "input 'reference', loaded alone and freed before the policy"
        )
        held.append("the `reference` model, alone, for the reference pass (freed before the policy loaded)")
        del reference
        gc.collect()
    policy = load_policy(ctx, cfg, tok)
    if refs is None:
        with reference_scope(policy) as what:
            refs = compute(policy.model, splits, run_pass, what)
    if is_main_process():
        ctx.logger.info("reference log-probs: %s", refs.source)
    return refs, policy, held
