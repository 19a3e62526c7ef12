"""``synthetic``: instruction and preference data with a gold judge -> up to four dataset repos.

Task families of graded difficulty (copy, uppercase, successor, reverse, arithmetic,
count, max, min, sort, sort_words, json_format), each phrased by several templates
(seed §3.3-3.4), optionally with chain of thought (seed §3.6: reasoning, then
``Answer: X``). Families named in ``heldout_families`` appear only in the test split,
for zero-shot evaluation (seed §3.7 step 3.4).

Outputs, chosen by the manifest's ``outputs:`` (any non-empty subset):
``instructions`` (SFT), ``preferences`` (DPO/IPO/ORPO/reward model, seed §4.3),
``feedback`` (KTO) and ``prompts`` (RL, best-of-N). Each is a dataset with
``data/train-00000-of-00001.parquet`` and ``data/test-00000-of-00001.parquet``.

The judge grades any completion from the prompt alone::

    from stages.lib.judge import score        # also importable as stages.synthetic.score
    score("arithmetic", "What is 3 + 4?", "Answer: 7")  # 1.0
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hubflow.errors import StageInputError
from hubflow.stage import StageContext, StageResult
from stages.lib.judge import extract_answer, gold_answer, parse_prompt, score
from stages.lib.tasks import FAMILIES, families
from stages.synthetic.config import OUTPUT_KINDS, Config

VERSION = "1"
LIBRARIES = ("pyarrow",)

__all__ = [
    "FAMILIES",
    "LIBRARIES",
    "OUTPUT_KINDS",
    "VERSION",
    "Config",
    "extract_answer",
    "families",
    "gold_answer",
    "parse_prompt",
    "run",
    "score",
]


def run(ctx: StageContext, cfg: Config) -> StageResult:
    from stages.synthetic.generate import generate_family, shuffled, split_family
    from stages.synthetic.write import write_output

    unknown = sorted(set(ctx.outputs) - set(OUTPUT_KINDS))
    if unknown:  # the config validator rejects these already; this guards a hand-built context
        raise StageInputError(
            f"synthetic has no output named {unknown}", hint=f"name outputs among {', '.join(OUTPUT_KINDS)}"
        )
    train, test, duplicates = [], [], 0
    metrics: dict[str, Any] = {}
    order = [f for f in families() if f in cfg.families]
    for name in order:
        n = cfg.family_examples.get(name, cfg.num_examples)
        examples, dups = generate_family(
            name,
            n,
            seed=cfg.seed,
            knobs=cfg.knobs(),
            cot_ratio=cfg.cot_ratio,
            desirable_ratio=cfg.desirable_ratio,
        )
        tr, te = split_family(
            examples, heldout=name in cfg.heldout_families, test_fraction=cfg.test_fraction, seed=cfg.seed
        )
        train += tr
        test += te
        duplicates += dups
        metrics[f"train/{name}"] = len(tr)
        metrics[f"test/{name}"] = len(te)
    splits = {"train": shuffled(train, cfg.seed, "train"), "test": shuffled(test, cfg.seed, "test")}
    for out_name, folder in sorted(ctx.outputs.items()):
        write_output(Path(folder), out_name, splits, cfg)
    everything = train + test
    metrics.update(
        {
            "train_examples": len(train),
            "test_examples": len(test),
            "cot_fraction": round(sum(e.cot for e in everything) / len(everything), 4),
            "duplicate_prompts": duplicates,
            "families": len(order),
            "heldout_families": list(cfg.heldout_families),
            "outputs": sorted(ctx.outputs),
        }
    )
    ctx.logger.info(
        "generated %d train / %d test examples over %d families", len(train), len(test), len(order)
    )
    return StageResult(metrics=metrics, card_sections={"Synthetic tasks": _card(cfg, order, metrics)})


def _card(cfg: Config, order: list[str], m: dict[str, Any]) -> str:
    rows = [
        f"| `{n}` | {FAMILIES[n].difficulty} | {FAMILIES[n].description} | {m[f'train/{n}']} | {m[f'test/{n}']} | "
        f"{'yes' if n in cfg.heldout_families else ''} |"
        for n in order
    ]
    return (
        f"{m['train_examples']} train and {m['test_examples']} test examples; chain of thought in "
        f"{m['cot_fraction']:.0%} of them; seed {cfg.seed}. Held-out families appear only in test "
        "(zero-shot evaluation).\n\n"
        "| family | difficulty | task | train | test | held out |\n|---|---|---|---|---|---|\n"
        + "\n".join(rows)
        + "\n\nGrade any completion with the gold judge (1.0 correct, 0.0 otherwise; a CoT completion is "
        "graded on the text after its last `Answer:`):\n\n"
        "```python\nfrom stages.synthetic import score\nscore(row['family'], row['prompt'], completion)\n```\n"
    )
