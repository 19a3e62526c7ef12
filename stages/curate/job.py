"""Running the ``curate`` stage: read the inputs, run the datatrove pipelines, mix, write, report."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from hubflow.errors import StageInputError
from hubflow.stage import StageContext, StageResult
from stages.curate.config import FUNNEL_FILE, REPORT_FILE, Config


def curate(ctx: StageContext, cfg: Config) -> StageResult:
    import pyarrow as pa

    from stages.curate import inputs as inp
    from stages.curate import output, pipeline, report
    from stages.curate.steps import META_FIELDS
    from stages.lib import mixing

    # --- checks before any compute -------------------------------------------------
    names = cfg.dataset_inputs()
    missing = [n for n in [*names, *cfg.model_inputs()] if n not in ctx.inputs]
    if missing:
        raise StageInputError(f"stage {ctx.stage_name!r}: inputs {missing} were not materialised")
    sources = inp.find_sources(ctx.inputs, names, cfg.data_files)
    uses_url = any("url" in f for f in cfg.filters)
    inp.check_sources(sources, cfg.text_column, cfg.url_column if uses_url else None, cfg.source_column)
    model_dir = None
    if cfg.perplexity is not None:
        model_dir = Path(ctx.inputs[cfg.perplexity.model_input])
        inp.check_model_dir(cfg.perplexity.model_input, model_dir)
    resources: dict[int, Any] = dict(inp.resolve_language_models(cfg.filters, ctx.base_dir))
    resources.update(inp.resolve_word_lists(cfg.filters, ctx.base_dir))
    classifier_models, classifier_labels = inp.resolve_classifiers(cfg.filters, ctx.inputs)
    resources.update(classifier_models)
    tokenizer_path = None
    sub = cfg.dedup.substring
    if sub is not None and sub.tokenizer_input():
        tokenizer_path = inp.check_tokenizer_dir(
            sub.tokenizer_input(), Path(ctx.inputs[sub.tokenizer_input()])
        )
    weights = cfg.mix.weights
    if weights == "from_input":
        from stages.lib.datasets import input_folder
        from stages.lib.weights_file import WEIGHTS_INPUT, read_weights

        weights = read_weights(input_folder(ctx, WEIGHTS_INPUT), names, stage=f"stage {ctx.stage_name!r}")

    # --- datatrove pipelines ---------------------------------------------------------
    resume = Path(ctx.resume_dir)
    work, logs_root = resume / "work", resume / "datatrove"
    plans, final_dir = pipeline.build_plans(cfg, sources, work, model_dir, resources, tokenizer_path)
    timings: dict[str, float] = {}

    def on_done(plan: Any, seconds: float) -> None:
        timings[plan.name] = round(seconds, 3)
        ctx.log_metrics(pipeline=plan.name, seconds=round(seconds, 3))
        ctx.logger.info("curate: pipeline %s done in %.1fs", plan.name, seconds)

    start = time.perf_counter()
    job_prefix = getattr(cfg.executor, "job_name", None) or ctx.stage_name
    pipeline.run_plans(plans, cfg.executor, logs_root, job_prefix, on_done)
    timings["datatrove_total"] = round(time.perf_counter() - start, 3)

    # --- mixing ----------------------------------------------------------------------
    files = output.work_files(final_dir)
    available = output.count_sources(files, names)
    if sum(available.values()) == 0:
        raise StageInputError(
            f"stage {ctx.stage_name!r}: curation removed every document (left per input: {available})",
            hint="loosen the filters or the perplexity bounds; curation_report.json is not written for an empty result",
        )
    probs = mixing.mix_proportions(available, weights, cfg.mix.temperature, cfg.mix.cap)
    try:
        counts = mixing.mix_counts(available, probs, cfg.mix.target_docs, cfg.mix.upsample)
    except mixing.MixError as exc:
        raise StageInputError(
            f"stage {ctx.stage_name!r}: cannot mix: {exc} (documents left per input: {available})",
            hint="loosen the filters, lower `mix.target_docs`, set `mix.upsample: true`, or change the weights",
        ) from exc
    meta = {k: META_FIELDS[k] for k in META_FIELDS if _computes(cfg, k)}
    meta.update(dict.fromkeys(cfg.score_columns(classifier_labels), pa.float64()))
    schema = output.output_schema(sources, cfg.text_column, cfg.source_column, meta, cfg.keep_columns)
    mult = output.draw(counts, available, cfg.seed)
    out_dir = Path(ctx.output)
    written = output.write_output(
        files,
        mult,
        sources,
        schema,
        cfg.text_column,
        cfg.source_column,
        meta,
        out_dir,
        int(cfg.shard_size_mb * 1e6),
    )

    # --- report ------------------------------------------------------------------------
    funnel = report.funnel_rows(plans, logs_root)
    if cfg.dedup.substring is not None:
        found = report.merged_stats(logs_root / "substring_find")
        row = next(r for r in funnel if r["kind"] == "substring")
        row["tokens"] = report.count(found[0] if found else None, "tokens")
        row["tokenisation"] = cfg.dedup.substring.tokens.type
        row["suffix_array_s"] = report.count(found[0] if found else None, "suffix_array_ms") / 1000
    funnel.append(
        {
            "step": "mix",
            "kind": "mix",
            "docs_in": sum(available.values()),
            "docs_out": written.rows,
            "removed": max(sum(available.values()) - written.rows, 0),
            "reasons": {},
        }
    )
    bytes_in = funnel[0].get("bytes", 0)
    real = mixing.realised(written.per_source)
    ppl_row = next((r for r in funnel if r["kind"] == "perplexity"), None)
    rep: dict[str, Any] = {
        "stage": ctx.stage_name,
        "fingerprint": ctx.fingerprint,
        "funnel": funnel,
        "documents": {"in": funnel[0]["docs_in"], "out": written.rows},
        "bytes": {"in": bytes_in, "out": written.bytes},
        "tokens_estimate": {
            "in": bytes_in // report.BYTES_PER_TOKEN,
            "out": written.bytes // report.BYTES_PER_TOKEN,
            "method": report.TOKENS_METHOD,
        },
        "inputs": {
            s.name: {"files": len(s.files), "rows": s.rows, "after_curation": available[s.name]}
            for s in sources
        },
        "mix": {
            "rule": cfg.mix_rule(),
            "weights": weights,
            "seed": cfg.seed,
            "target_docs": cfg.mix.target_docs,
            "per_input": {
                n: {
                    "available": available[n],
                    "drawn": written.per_source[n],
                    "target_proportion": probs[n],
                    "realised_proportion": real[n],
                }
                for n in names
            },
        },
        "perplexity": (
            {**ppl_row["perplexity"], "bounds": [cfg.perplexity.min, cfg.perplexity.max]}
            if ppl_row and "perplexity" in ppl_row
            else None
        ),
        "output": {"shards": written.shards, "columns": schema.names},
        "settings": cfg.settings(),
        "timings_s": timings,
    }
    (out_dir / REPORT_FILE).write_text(json.dumps(rep, indent=2, default=str), encoding="utf-8")
    report.plot_funnel(funnel, out_dir / FUNNEL_FILE)

    metrics: dict[str, Any] = {
        "docs_in": rep["documents"]["in"],
        "docs_out": written.rows,
        "kept_fraction": written.rows / max(rep["documents"]["in"], 1),
        "bytes_in": bytes_in,
        "bytes_out": written.bytes,
        "tokens_estimate_out": rep["tokens_estimate"]["out"],
    }
    metrics.update({f"removed/{r['step']}": r["removed"] for r in funnel})
    for r in funnel:
        if r["kind"] == "substring":
            metrics.update(
                {f"substring/{k}": r[k] for k in ("spans_removed", "bytes_removed", "documents_changed")}
            )
    metrics.update({f"mix/{n}": real[n] for n in names})
    return StageResult(
        metrics=metrics,
        card_sections={"Curation": report.card_markdown(rep)},
        images={"Curation funnel": FUNNEL_FILE},
    )


def _computes(cfg: Config, key: str) -> bool:
    """Whether the pipeline computes this per-document value (and so writes its column)."""
    if key == "perplexity":
        return cfg.perplexity is not None
    langs = [f["language"] for f in cfg.filters if "language" in f]
    if key in ("language", "language_score"):
        return bool(langs)
    return key == "language_script" and any(p.get("backend") == "glotlid" for p in langs)
