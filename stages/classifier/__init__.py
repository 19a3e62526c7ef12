"""``classifier``: train a fastText text classifier -> a model repo (seed §1.5 step 3, and toxicity).

Positive rows (curated / reference text) against negative rows (raw web-like
text), or one dataset with a label column (toxicity: rows the user labelled).
A seeded, stratified held-out split measures accuracy and per-label precision /
recall; fastText trains with one thread and the seed, so a run repeats exactly.
The repo holds ``model.bin`` and ``classifier.json`` (labels, held-out metrics);
``curate`` reads it with a ``classifier`` filter. See docs/stages/classifier.md.
"""

from __future__ import annotations

from hubflow.stage import StageContext, StageResult
from stages.classifier.config import Config

__all__ = ["LIBRARIES", "VERSION", "Config", "describe", "run"]

VERSION = "1"
LIBRARIES = ("fasttext",)


def describe(cfg: Config) -> list[str]:
    """`hubflow plan` line: what is trained against what."""
    d = cfg.data
    if d.type == "contrast":
        what = f"{d.positive} ({d.positive_label}) vs {d.negative} ({d.negative_label})"
    else:
        what = f"{d.input}, labels from column {d.label_column}"
    return [f"fastText classifier: {what}; {cfg.heldout_fraction:.0%} held out, seed {cfg.seed}"]


def run(ctx: StageContext, cfg: Config) -> StageResult:
    from stages.classifier.train import train

    return train(ctx, cfg)
