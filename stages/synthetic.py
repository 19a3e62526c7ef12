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

    from stages.synthetic import score, families
    score("arithmetic", "What is 3 + 4?", "Answer: 7")  # 1.0
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from hubflow.errors import StageInputError
from hubflow.stage import StageConfig, StageContext, StageResult
from stages._synthetic.judge import extract_answer, gold_answer, parse_prompt, score
from stages._synthetic.tasks import FAMILIES, Knobs, families

VERSION = "1"
LIBRARIES = ("pyarrow",)

__all__ = ["Config", "extract_answer", "families", "gold_answer", "parse_prompt", "run", "score"]

OUTPUT_KINDS = ("instructions", "preferences", "feedback", "prompts")


class Config(StageConfig):
    OUTPUT_TYPES: ClassVar[dict[str, str]] = dict.fromkeys(OUTPUT_KINDS, "dataset")
    REQUIRED_OUTPUTS: ClassVar[frozenset[str] | None] = frozenset()  # any non-empty subset
    """Every output this kind can publish; a manifest names any non-empty subset of them."""

    kind: Literal["synthetic"] = Field(..., description="Generate task data that a program can grade.")
    families: list[str] = Field(
        default_factory=families, min_length=1, description="Task families to generate (default: all)."
    )
    heldout_families: list[str] = Field(
        default_factory=list,
        description="Families that appear only in the test split (zero-shot evaluation); must be in `families`.",
    )
    num_examples: int = Field(200, ge=1, le=1_000_000, description="Examples per family (before the split).")
    family_examples: dict[str, int] = Field(
        default_factory=dict, description="Per-family overrides of num_examples, e.g. {sort: 500}."
    )
    test_fraction: float = Field(
        0.1, ge=0.0, lt=1.0, description="Share of each (non-held-out) family's examples that go to test."
    )
    cot_ratio: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="Share of examples in chain-of-thought form (prompt asks for reasoning; output ends "
        "with 'Answer: X'). The seed suggests about 0.5 for reasoning-heavy mixtures.",
    )
    seed: int = Field(1234, description="Seed: the same config and seed give byte-identical files.")
    format: Literal["conversational", "standard"] = Field(
        "conversational",
        description="`conversational`: prompt/completion/chosen/rejected are chat message lists (TRL applies "
        "the chat template); `standard`: plain strings (and instructions carry no prompt/completion columns).",
    )
    system_prompt: str | None = Field(
        None, description="If set, a system message starting every conversation (messages, chat prompts)."
    )
    max_number: int = Field(20, ge=2, le=1_000_000, description="Numbers are drawn from 0..max_number.")
    max_length: int = Field(
        6, ge=2, le=40, description="Random letter strings have at most this many letters."
    )
    max_items: int = Field(
        5, ge=2, le=30, description="Lists (numbers, words, JSON fields) have 2..max_items items."
    )
    desirable_ratio: float = Field(
        0.5, gt=0.0, lt=1.0, description="feedback output: share of rows whose completion is the gold one."
    )

    @model_validator(mode="after")
    def _check_families(self) -> Config:
        if self.inputs:
            raise ValueError(f"kind 'synthetic' reads no inputs; remove `inputs:` ({sorted(self.inputs)})")
        known = families()
        for field, names in (("families", self.families), ("heldout_families", self.heldout_families)):
            unknown = [f for f in names if f not in FAMILIES]
            if unknown:
                raise ValueError(
                    f"{field}: unknown task famil{'y' if len(unknown) == 1 else 'ies'} {unknown}; known: {known}"
                )
            if len(set(names)) != len(names):
                raise ValueError(f"{field} lists a family twice: {names}")
        stray = [f for f in self.heldout_families if f not in self.families]
        if stray:
            raise ValueError(
                f"heldout_families {stray} are not in families {self.families}; add them there too"
            )
        if set(self.heldout_families) >= set(self.families):
            raise ValueError("every family is held out, so the train split would be empty; keep at least one")
        stray = [f for f in self.family_examples if f not in self.families]
        if stray:
            raise ValueError(f"family_examples names {stray}, which are not in families {self.families}")
        if any(v < 1 for v in self.family_examples.values()):
            raise ValueError("family_examples counts must be at least 1")
        return self

    def knobs(self) -> Knobs:
        return Knobs(max_number=self.max_number, max_length=self.max_length, max_items=self.max_items)


def run(ctx: StageContext, cfg: Config) -> StageResult:
    from stages._synthetic.generate import generate_family, shuffled, split_family
    from stages._synthetic.write import write_output

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
