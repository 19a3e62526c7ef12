"""``dpo``: direct preference optimisation of an SFT policy (seed §4.6–4.7), or IPO (§4.8.1).

Inputs: ``model`` (the SFT policy: a full model, or an adapter with ``base``), ``data`` (preference pairs
``prompt`` / ``chosen`` / ``rejected``, chat message lists or strings: the ``synthetic`` stage's
``preferences``), optionally ``reference`` (default: the policy's starting point), ``reference_logprobs``
(a ``reference_logprobs`` stage's output: the reference pass done once and reused) and ``tokenizer``.

Loss, per pair, with Δ = (log π_θ(y_w|x) − log π_ref(y_w|x)) − (log π_θ(y_l|x) − log π_ref(y_l|x)):
``sigmoid`` ℓ = −log σ(β·Δ) (§4.6.3); ``ipo`` ℓ = (Δ − 1/(2β))² (§4.8.1). A completion's log-ratio is
the sum over its tokens (``log_ratio: sum``, the default for sigmoid) or their mean (``mean``, the
default for ipo, as TRL 1.16). Our own loop on accelerate (``stages.lib.preference_loop``) trains on
precomputed reference log-probs, so no second model is held while training.

Output: the trained policy (a full model, or the adapter: a fresh one, or the input adapter continued)
with its tokenizer; metrics.json with the §4.7 step 3.5 monitoring and held-out preference accuracy.
"""

from __future__ import annotations

from hubflow.stage import StageContext, StageResult
from stages.dpo.config import Config, reference_stage
from stages.lib.preference_config import auxiliary_reference

__all__ = ["LIBRARIES", "VERSION", "Config", "auxiliary_stages", "describe", "reference_stage", "run"]

VERSION = "1"
LIBRARIES = ("torch", "transformers", "peft", "accelerate", "tokenizers")


def describe(cfg: Config) -> list[str]:
    steps = f"{cfg.max_steps} steps" if cfg.max_steps else f"{cfg.num_train_epochs:g} epoch(s)"
    if "reference_logprobs" in cfg.inputs:
        ref = f"reference log-probs from input reference_logprobs ({cfg.inputs['reference_logprobs']})"
    elif "reference" in cfg.inputs:
        ref = "reference log-probs computed at the start from input reference"
    else:
        ref = "reference log-probs computed at the start from the policy's starting point"
    return [
        f"{cfg.loss} loss, beta={cfg.beta:g}, {cfg.ratio()} log-ratios, {cfg.peft.method}, {steps}; {ref}"
    ]


def run(ctx: StageContext, cfg: Config) -> StageResult:
    from stages.dpo.job import run as run_dpo

    return run_dpo(ctx, cfg)


def auxiliary_stages(cfg: Config) -> list[tuple[str, dict]]:
    """The reference_logprobs stage this stage implies (see ``precompute_reference``)."""
    return auxiliary_reference(cfg, reference_stage(cfg))
