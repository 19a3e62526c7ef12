"""``curate``: datatrove curation declared in the manifest (seed §1.5, mixing per §3.5).

Order: read every dataset input -> the manifest's ``filters`` in order (heuristics,
PII, language, a trained ``classifier``, a ``wordlist``) -> exact dedup on
normalised text -> MinHash-LSH near-dedup -> exact-substring dedup with a suffix
array (all three over all inputs together) -> perplexity gating under a reference LM -> domain mixing per input
-> ``data/train-0000K-of-0000N.parquet`` + ``curation_report.json`` + ``funnel.png``.

The datatrove work (pipelines, completions, stats) lives in ``ctx.resume_dir``,
which is keyed by the stage fingerprint: an interrupted run resumes its
finished tasks, a changed config starts clean. See docs/stages/curate.md.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from hubflow.stage import StageContext, StageResult
from stages.curate.config import FUNNEL_FILE, REPORT_FILE, Config

__all__ = [
    "FUNNEL_FILE",
    "LIBRARIES",
    "REPORT_FILE",
    "VERSION",
    "Config",
    "describe",
    "fingerprint_extra",
    "run",
]

VERSION = "1"  # unchanged: a config without the new filters / substring dedup computes what it did
LIBRARIES = ("datatrove", "torch", "transformers")


def fingerprint_extra(cfg: Config, base_dir: Any) -> dict[str, Any]:
    """Content hash of each local file a filter reads: a `language` filter's fastText model, a `wordlist`
    filter's list (a classifier model is an input: its commit is in the fingerprint already)."""
    extra = {}
    for i, item in enumerate(cfg.filters):
        for name, key, field in (
            ("language", "language_model", "model_path"),
            ("wordlist", "word_list", "path"),
        ):
            if name not in item:
                continue
            path = Path(item[name][field])
            path = path if path.is_absolute() else Path(base_dir) / path
            if not path.is_file():
                extra[f"{key}[{i}]"] = "missing"
                continue
            digest = hashlib.sha256()
            with open(path, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
            extra[f"{key}[{i}]"] = digest.hexdigest()
    return extra


def describe(cfg: Config) -> list[str]:
    """`hubflow plan` lines: the funnel the stage will run and how it mixes."""
    from stages.curate.config import filter_labels

    steps = filter_labels(cfg.filters)
    if cfg.dedup.exact:
        steps.append("exact dedup")
    if cfg.dedup.minhash is not None:
        mh = cfg.dedup.minhash
        steps.append(f"minhash {mh.num_buckets}x{mh.hashes_per_bucket} {mh.n_grams}-grams")
    if cfg.dedup.substring is not None:
        sub = cfg.dedup.substring
        steps.append(f"substring dedup >= {sub.min_tokens} {sub.tokens.type} (keep {sub.keep})")
    if cfg.perplexity is not None:
        steps.append(f"perplexity in [{cfg.perplexity.min}, {cfg.perplexity.max}]")
    ex = cfg.executor
    return [
        f"curate {', '.join(cfg.dataset_inputs())}: {' -> '.join(steps) or 'no filters'}",
        f"mix: {cfg.mix_rule()}; executor: {ex.type}, {ex.tasks} task(s)",
    ]


def run(ctx: StageContext, cfg: Config) -> StageResult:
    from stages.curate.job import curate

    return curate(ctx, cfg)
