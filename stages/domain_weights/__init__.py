"""``domain_weights``: DoReMi domain weights (Xie et al. 2023; seed §1.5 step 5) -> a dataset.

Inputs: ``tokenizer`` and one dataset input per domain (the input name is the domain's name, as in
``curate``'s mixing and ``pretrain``'s sampling). A small reference Llama trains on the reference
mix α_ref (uniform by default); a proxy of the same shape then trains with Group DRO, its domain
weights following the per-domain excess loss by DoReMi's exponentiated-gradient update. The output
holds ``weights.json`` (ᾱ, the weights averaged over the proxy's steps: the DoReMi output), a parquet
table of α_t and λ_t per step and domain, and a plot. See docs/stages/domain_weights.md.
"""

from __future__ import annotations

from hubflow.stage import StageContext, StageResult
from stages.domain_weights.config import Config

__all__ = ["LIBRARIES", "VERSION", "Config", "describe", "run"]

VERSION = "1"
LIBRARIES = ("torch", "transformers", "tokenizers", "numpy", "pyarrow")


def describe(cfg: Config) -> list[str]:
    """Plan lines: the domains, the two runs and DoReMi's settings (no torch import)."""
    arch = cfg.architecture
    ref = ", ".join(f"{d}={w:.3g}" for d, w in cfg.reference_mix().items())
    return [
        f"domains: {', '.join(cfg.domains())}; reference mix α_ref: {ref}",
        f"reference {cfg.total_reference_steps()} steps, then proxy {cfg.max_steps} steps "
        f"({cfg.per_domain_batch_size} x {arch.context_length}-token sequences per domain per step), "
        f"Llama d={arch.hidden_size} L={arch.num_layers}; η={cfg.eta:g}, c={cfg.smoothing:g}",
    ]


def run(ctx: StageContext, cfg: Config) -> StageResult:
    from stages.domain_weights.train import run as train

    return train(ctx, cfg)
