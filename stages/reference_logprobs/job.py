"""The reference pass of the ``reference_logprobs`` stage: encode, score with the frozen reference, write."""

from __future__ import annotations

import time
from typing import Any

from hubflow.errors import StageInputError
from hubflow.stage import StageContext, StageResult
from stages.reference_logprobs.config import Config


def run(ctx: StageContext, cfg: Config) -> StageResult:
    from stages.lib.datasets import eval_split_of, input_folder
    from stages.lib.hardware import device_for
    from stages.lib.models import check_vocab, load_model
    from stages.lib.pairs import encode_pairs, read_pairs, read_pointwise
    from stages.lib.preference_data import (
        encode_pointwise,
        kl_completions,
        pair_records,
        pair_reference,
        point_records,
        point_reference,
        write_reference,
    )
    from stages.lib.preference_policy import check_models, peak_memory_mb, policy_tokenizer

    info = check_models(ctx, reference=False)["model"]
    tok = policy_tokenizer(ctx)
    folder = input_folder(ctx, "data")
    eval_split = eval_split_of(folder, cfg.eval_split)
    names = [cfg.split] + ([eval_split] if eval_split and eval_split != cfg.split else [])
    encoded: dict[str, Any] = {}
    dropped: dict[str, int] = {}
    for split in names:
        if cfg.format == "pairs":
            rows = read_pairs(folder, split, input_name="data")
            encoded[split], dropped[split] = encode_pairs(
                tok, rows, max_length=cfg.max_length, max_prompt_length=cfg.max_prompt_length
            )
        else:
            points = read_pointwise(folder, split, input_name="data", both_labels=split == cfg.split)
            rows, dropped[split] = encode_pointwise(
                tok, points, max_length=cfg.max_length, max_prompt_length=cfg.max_prompt_length
            )
            assert cfg.kl_batch_size is not None  # the config requires it for pointwise
            if split == cfg.split and len(rows) < 2:
                raise StageInputError(
                    f"input 'data' ({split}) keeps {len(rows)} row(s) within max_length; KL groups need 2",
                    hint="raise max_length or add rows",
                )
            kl = (
                kl_completions(
                    rows,
                    cfg.kl_batch_size,
                    max_length=cfg.max_length,
                    max_prompt_length=cfg.max_prompt_length,
                )
                if len(rows) > 1
                else [list(r.completion_ids) for r in rows]
            )
            encoded[split] = (rows, kl)
        if not (encoded[split] if cfg.format == "pairs" else encoded[split][0]):
            raise StageInputError(
                f"input 'data' ({split}): no row keeps a completion token within max_length={cfg.max_length}",
                hint="raise max_length (or lower max_prompt_length)",
            )

    model = load_model(
        input_folder(ctx, "model"),
        base=ctx.inputs.get("base"),
        base_ref=ctx.input_refs.get("base"),
        task="causal_lm",
        logger=ctx.logger,
    )
    check_vocab(model, tok, input_name="model")
    device = device_for(ctx.resources)
    model.to(device)
    started = time.perf_counter()
    records: dict[str, list[dict[str, Any]]] = {}
    pad = tok.pad_token_id
    for split, enc in encoded.items():
        if cfg.format == "pairs":
            chosen, rejected = pair_reference(model, enc, pad_id=pad, batch_size=cfg.batch_size)
            records[split] = pair_records(enc, chosen, rejected)
        else:
            rows, kl = enc
            own, kl_logps = point_reference(model, rows, kl, pad_id=pad, batch_size=cfg.batch_size)
            records[split] = point_records(rows, kl, own, kl_logps)
    seconds = time.perf_counter() - started
    description = {
        "format": cfg.format,
        "settings": cfg.settings_record(),
        "inputs": dict(ctx.input_refs),
        "reference": {"input": "model", **info.as_dict()},
        "splits": {s: {"rows": len(r), "dropped": dropped[s]} for s, r in records.items()},
        "log_probs": "sum over the completion's tokens of log softmax(logits), float32, explicit position ids",
    }
    write_reference(ctx.output, description, records)
    metrics = {
        "format": cfg.format,
        "rows": {s: len(r) for s, r in records.items()},
        "dropped_rows": dropped,
        "reference_seconds": round(seconds, 3),
        "reference": ctx.input_refs.get("model"),
        **peak_memory_mb(device),
    }
    lines = [
        f"Reference log-probabilities ({cfg.format}) of input `data` under input `model` "
        f"({ctx.input_refs.get('model', 'model')}), summed over each completion's tokens.",
        f"Settings: {cfg.settings_record()}; rows: {metrics['rows']}; dropped (prompt fills max_length): {dropped}.",
        "Consumers (dpo, kto) check these settings, the revisions and the tokens before using the values.",
    ]
    return StageResult(metrics=metrics, card_sections={"Reference log-probabilities": "\n".join(lines)})
