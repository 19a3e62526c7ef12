"""``reference_logprobs``: the reference model's log-probabilities of a preference dataset, as a dataset
(seed §4.7 step 2, "PRECOMPUTE": log π_ref(y | x) = Σ_t log π_ref(y_t | y_<t, x)).

Inputs: ``model`` (the reference: a full model, or an adapter with ``base``), ``data`` (preference
pairs, or pointwise KTO rows with ``format: pointwise``), optionally ``tokenizer``. Its fingerprint
covers only the reference's and the dataset's revisions and the tokenisation settings, so a ``dpo``
stage whose β, learning rate or epochs change re-runs while this stage stays up to date: the reference
model is not run again.

Output: ``data/{split}-00000-of-00001.parquet`` (train, and the held-out split when the data has it) with
each row's dataset index (``row``), its token ids and ``ref_chosen_logps`` / ``ref_rejected_logps``
(pointwise: ``ref_logps`` and ``ref_kl_logps``, the log-prob of the row's prompt with its mismatched
completion ``kl_completion_ids``), and ``reference_logprobs.json`` recording the settings, the inputs'
exact refs and the row counts. Consumers check all of these and the tokens before using it.
"""

from __future__ import annotations

from hubflow.stage import StageContext, StageResult
from stages.reference_logprobs.config import Config

__all__ = ["LIBRARIES", "VERSION", "Config", "describe", "run"]

VERSION = "1"
LIBRARIES = ("torch", "transformers", "peft", "tokenizers")


def describe(cfg: Config) -> list[str]:
    kl = f", KL groups of {cfg.kl_batch_size}" if cfg.format == "pointwise" else ""
    return [f"{cfg.format} reference log-probs, max_length={cfg.max_length}{kl}"]


def run(ctx: StageContext, cfg: Config) -> StageResult:
    from stages.reference_logprobs.job import run as run_reference

    return run_reference(ctx, cfg)
