"""``kto``: Kahneman–Tversky optimisation of an SFT policy on pointwise feedback (seed §4.8.2).

Inputs: ``model`` (full, or an adapter with ``base``), ``data`` (``prompt`` / ``completion`` / ``label``
rows with both labels: the ``synthetic`` stage's ``feedback``), optionally ``reference``,
``reference_logprobs`` (a pointwise ``reference_logprobs`` output) and ``tokenizer``.

Loss per row, r = log π_θ(y|x) − log π_ref(y|x) (a sum over the completion's tokens):
w_D·(1 − σ(β(r − z_ref))) for a desirable row, w_U·(1 − σ(β(z_ref − r))) for an undesirable one, averaged
over the batch (``stages.lib.preference.kto_loss``). z_ref = max(0, mean(log π_θ(y'|x) − log π_ref(y'|x)))
over the batch's *mismatched* pairs (each prompt with the previous row's completion, as TRL), detached.
A batch is a fixed group of per_device_train_batch_size consecutive rows (so z_ref's pairs are those the
reference pass scored); the groups' order is shuffled every epoch. The weights are checked against the
label balance as TRL does (a warning in the log and the card).

Output: the trained policy and its tokenizer; metrics.json with the monitoring and the held-out share of
(desirable, undesirable) pairs whose implicit rewards are ordered right.
"""

from __future__ import annotations

from hubflow.stage import StageContext, StageResult
from stages.kto.config import Config, reference_stage
from stages.lib.preference_config import auxiliary_reference

__all__ = ["LIBRARIES", "VERSION", "Config", "auxiliary_stages", "describe", "reference_stage", "run"]

VERSION = "1"
LIBRARIES = ("torch", "transformers", "peft", "accelerate", "tokenizers")


def describe(cfg: Config) -> list[str]:
    steps = f"{cfg.max_steps} steps" if cfg.max_steps else f"{cfg.num_train_epochs:g} epoch(s)"
    ref = "from input reference_logprobs" if "reference_logprobs" in cfg.inputs else "computed at the start"
    return [
        f"KTO beta={cfg.beta:g}, weights desirable {cfg.desirable_weight:g} / undesirable "
        f"{cfg.undesirable_weight:g}, {cfg.peft.method}, {steps}; reference log-probs {ref}"
    ]


def run(ctx: StageContext, cfg: Config) -> StageResult:
    from stages.kto.job import run as run_kto

    return run_kto(ctx, cfg)


def auxiliary_stages(cfg: Config) -> list[tuple[str, dict]]:
    """The reference_logprobs stage this stage implies (see ``precompute_reference``)."""
    return auxiliary_reference(cfg, reference_stage(cfg))
