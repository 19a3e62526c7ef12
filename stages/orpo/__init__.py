"""``orpo``: odds-ratio preference optimisation (seed §4.8.3): one loss for SFT and alignment, no reference.

Inputs: ``model`` (full, or an adapter with ``base``), ``data`` (preference pairs), optionally
``tokenizer``. L = L_SFT(y_w) + λ·L_OR with L_OR = −mean log σ(log odds(y_w|x) − log odds(y_l|x)),
odds(y|x) = p/(1 − p) of the length-normalised p = exp((1/|y|) Σ_t log p(y_t | y_<t, x))
(``stages.lib.preference.orpo_loss``). L_SFT is the token-mean NLL of the chosen completions' tokens
(``nll_tokens: completion``, the default: the tokens a policy produces) or, as TRL's experimental
ORPOTrainer, of prompt ⊕ chosen (``nll_tokens: prompt_and_completion``).

Output: the trained policy and its tokenizer; metrics.json with the monitoring and held-out preference
accuracy before and after.
"""

from __future__ import annotations

from hubflow.stage import StageContext, StageResult
from stages.orpo.config import Config

__all__ = ["LIBRARIES", "VERSION", "Config", "describe", "run"]

VERSION = "1"
LIBRARIES = ("torch", "transformers", "peft", "accelerate", "tokenizers")


def describe(cfg: Config) -> list[str]:
    steps = f"{cfg.max_steps} steps" if cfg.max_steps else f"{cfg.num_train_epochs:g} epoch(s)"
    return [
        f"ORPO lambda={cfg.lambda_:g}, NLL on {cfg.nll_tokens}, {cfg.peft.method}, {steps}; no reference model"
    ]


def run(ctx: StageContext, cfg: Config) -> StageResult:
    from stages.orpo.job import run as run_orpo

    return run_orpo(ctx, cfg)
