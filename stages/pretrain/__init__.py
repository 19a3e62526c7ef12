"""``pretrain``: train a model from scratch on a tokenized corpus (seed §1.2–1.6) -> a model repo.

Inputs: ``tokenizer`` (a folder AutoTokenizer loads) and one or more dataset inputs
(any other name) whose ``text_column`` holds the documents; a ``test`` split, if
any, gives a held-out loss. Objectives: ``causal`` (Llama-style decoder),
``mlm`` (BERT-style encoder), ``span_corruption`` (T5) and ``ul2`` (T5 with R/S/X
denoisers). The loop runs on accelerate (DDP under ``resources.num_processes``),
checkpoints into the resume folder and resumes bit-for-bit after a crash. The
output holds the final model (safetensors), its config and generation config, the
tokenizer (with any token the objective added), ``metrics.jsonl`` and a loss curve.

``hubflow plan`` prints N (counted from the architecture), tokens D, 6·N·D, the
tokens-per-parameter ratio against Chinchilla's ≈20 and, once a run of the same
shape has measured its tokens/s on this machine (or ``throughput_tokens_per_s`` is
set), a time estimate. See docs/stages/pretrain.md.
"""

from __future__ import annotations

from hubflow.stage import StageContext, StageResult
from stages.pretrain import scaling
from stages.pretrain.config import Config

__all__ = ["LIBRARIES", "VERSION", "Config", "describe", "run"]

VERSION = "1"
LIBRARIES = ("torch", "transformers", "accelerate", "tokenizers", "numpy", "pyarrow")


def describe(cfg: Config) -> list[str]:
    """Plan lines: N, D, 6·N·D, tokens per parameter, a time estimate (no torch import)."""
    return scaling.describe_lines(cfg)


def run(ctx: StageContext, cfg: Config) -> StageResult:
    from stages.pretrain.loop import train

    return train(ctx, cfg)
