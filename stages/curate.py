"""``curate``: datatrove curation declared in the manifest (seed §1.5, mixing per §3.5).

Order: read every dataset input -> the manifest's ``filters`` in order -> exact
dedup on normalised text -> MinHash-LSH near-dedup (both over all inputs
together) -> perplexity gating under a reference LM -> domain mixing per input
-> ``data/train-0000K-of-0000N.parquet`` + ``curation_report.json`` + ``funnel.png``.

The datatrove work (pipelines, completions, stats) lives in ``ctx.resume_dir``,
which is keyed by the stage fingerprint: an interrupted run resumes its
finished tasks, a changed config starts clean. See docs/stages/curate.md.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from hubflow.errors import StageInputError
from hubflow.stage import StageConfig, StageContext, StageResult
from stages._curate.spec import (
    DedupSpec,
    ExecutorSpec,
    LocalExecutorSpec,
    MixSpec,
    PerplexitySpec,
    normalize_filters,
)

VERSION = "1"
LIBRARIES = ("datatrove", "torch", "transformers")

REPORT_FILE = "curation_report.json"
FUNNEL_FILE = "funnel.png"


class Config(StageConfig):
    """Filter, deduplicate, perplexity-gate and mix text datasets with datatrove."""

    OUTPUT_TYPES: ClassVar[dict[str, str]] = {"output": "dataset"}

    kind: Literal["curate"] = Field(..., description="Curation with datatrove.")
    text_column: str = Field("text", description="Column holding the document text in every dataset input.")
    data_files: str = Field(
        "data/**/*.parquet",
        description="Glob (relative to each dataset input's snapshot) of the parquet shards to read.",
    )
    filters: list[str | dict[str, dict[str, Any] | None]] = Field(
        default_factory=list,
        description=(
            "Filters in the order they apply: a name, or a one-key mapping name -> datatrove parameters. "
            "Names: gopher_repetition, gopher_quality, c4_quality, fineweb_quality, url, regex, length, pii, language."
        ),
    )
    url_column: str = Field(
        "url", description="Column holding each document's URL (read only by the `url` filter)."
    )
    dedup: DedupSpec = Field(default_factory=DedupSpec, description="Exact and MinHash deduplication.")
    perplexity: PerplexitySpec | None = Field(
        None, description="Perplexity gating under a reference LM given as an input; off when unset."
    )
    mix: MixSpec = Field(
        default_factory=MixSpec,
        description="How the dataset inputs are mixed (default: every document kept).",
    )
    seed: int = Field(0, description="Seed of the mixing draw.")
    keep_columns: bool = Field(
        True,
        description="Carry the inputs' other columns into the output (false: text, source and computed columns).",
    )
    source_column: str | None = Field(
        "source", description="Output column naming the input each row came from (null to omit)."
    )
    shard_size_mb: float = Field(
        500, gt=0, description="Target size of an output parquet shard (Arrow MB, before compression)."
    )
    executor: Annotated[ExecutorSpec, Field(discriminator="type")] = Field(
        default_factory=LocalExecutorSpec,
        description="datatrove executor: {type: local, tasks, workers} | {type: ray, ...} | {type: slurm, partition, time, ...}.",
    )

    @field_validator("filters", mode="after")
    @classmethod
    def _filters(cls, value: Any) -> list[dict[str, dict[str, Any]]]:
        return normalize_filters(value)

    @field_validator("executor", mode="before")
    @classmethod
    def _default_executor_type(cls, value: Any) -> Any:
        if isinstance(value, dict) and "type" not in value:
            return {"type": "local", **value}
        return value

    @model_validator(mode="after")
    def _cross_checks(self) -> Config:
        datasets = self.dataset_inputs()
        if self.perplexity is not None and self.perplexity.model_input not in self.inputs:
            raise ValueError(
                f"perplexity.model_input {self.perplexity.model_input!r} is not one of the stage's inputs "
                f"({', '.join(self.inputs) or 'none'}); add it, e.g. `inputs: {{ref_lm: model:NS/NAME}}`"
            )
        if not datasets:
            raise ValueError("the stage needs at least one dataset input in `inputs`")
        if self.mix.weights is not None and set(self.mix.weights) != set(datasets):
            raise ValueError(
                f"mix.weights must give a weight to each dataset input: inputs {sorted(datasets)}, "
                f"weights for {sorted(self.mix.weights)}"
            )
        if self.source_column is not None and self.source_column == self.text_column:
            raise ValueError("`source_column` must differ from `text_column`")
        return self

    def dataset_inputs(self) -> list[str]:
        """Input names that are datasets to curate (all inputs but the perplexity model)."""
        model = self.perplexity.model_input if self.perplexity is not None else None
        return [name for name in self.inputs if name != model]

    def settings(self) -> dict[str, Any]:
        """Fingerprinted settings: of the executor only `tasks` changes results (how work is sharded)."""
        data = super().settings()
        data["executor"] = {"tasks": self.executor.tasks}
        return data


def fingerprint_extra(cfg: Config, base_dir: Any) -> dict[str, Any]:
    """Content hash of each local fastText model a `language` filter reads."""
    extra = {}
    for i, item in enumerate(cfg.filters):
        if "language" not in item:
            continue
        path = Path(item["language"]["model_path"])
        path = path if path.is_absolute() else Path(base_dir) / path
        if not path.is_file():
            extra[f"language_model[{i}]"] = "missing"
            continue
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        extra[f"language_model[{i}]"] = digest.hexdigest()
    return extra


def describe(cfg: Config) -> list[str]:
    """`hubflow plan` lines: the funnel the stage will run and how it mixes."""
    from stages._curate.spec import filter_labels

    steps = filter_labels(cfg.filters)
    if cfg.dedup.exact:
        steps.append("exact dedup")
    if cfg.dedup.minhash is not None:
        mh = cfg.dedup.minhash
        steps.append(f"minhash {mh.num_buckets}x{mh.hashes_per_bucket} {mh.n_grams}-grams")
    if cfg.perplexity is not None:
        steps.append(f"perplexity in [{cfg.perplexity.min}, {cfg.perplexity.max}]")
    ex = cfg.executor
    return [
        f"curate {', '.join(cfg.dataset_inputs())}: {' -> '.join(steps) or 'no filters'}",
        f"mix: {_rule(cfg)}; executor: {ex.type}, {ex.tasks} task(s)",
    ]


def run(ctx: StageContext, cfg: Config) -> StageResult:
    from stages._curate import inputs as inp
    from stages._curate import mixing, output, pipeline, report
    from stages._curate.steps import META_FIELDS

    # --- checks before any compute -------------------------------------------------
    names = cfg.dataset_inputs()
    missing = [
        n for n in [*names, *([cfg.perplexity.model_input] if cfg.perplexity else [])] if n not in ctx.inputs
    ]
    if missing:
        raise StageInputError(f"stage {ctx.stage_name!r}: inputs {missing} were not materialised")
    sources = inp.find_sources(ctx.inputs, names, cfg.data_files)
    uses_url = any("url" in f for f in cfg.filters)
    inp.check_sources(sources, cfg.text_column, cfg.url_column if uses_url else None, cfg.source_column)
    model_dir = None
    if cfg.perplexity is not None:
        model_dir = Path(ctx.inputs[cfg.perplexity.model_input])
        inp.check_model_dir(cfg.perplexity.model_input, model_dir)
    language_models = inp.resolve_language_models(cfg.filters, ctx.base_dir)

    # --- datatrove pipelines ---------------------------------------------------------
    resume = Path(ctx.resume_dir)
    work, logs_root = resume / "work", resume / "datatrove"
    plans, final_dir = pipeline.build_plans(cfg, sources, work, model_dir, language_models)
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
    probs = mixing.mix_proportions(available, cfg.mix.weights, cfg.mix.temperature, cfg.mix.cap)
    try:
        counts = mixing.mix_counts(available, probs, cfg.mix.target_docs, cfg.mix.upsample)
    except mixing.MixError as exc:
        raise StageInputError(
            f"stage {ctx.stage_name!r}: cannot mix: {exc} (documents left per input: {available})",
            hint="loosen the filters, lower `mix.target_docs`, set `mix.upsample: true`, or change the weights",
        ) from exc
    meta = [k for k in META_FIELDS if _computes(cfg, k)]
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
            "rule": _rule(cfg),
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


def _rule(cfg: Config) -> str:
    if cfg.mix.weights is not None:
        return "weights " + ", ".join(f"{k}={v:g}" for k, v in cfg.mix.weights.items())
    tau = cfg.mix.temperature if cfg.mix.temperature is not None else 1.0
    return f"temperature τ={tau:g}" + (f", cap M={cfg.mix.cap}" if cfg.mix.cap else "")
