"""``merge``: an adapter + its base -> one full safetensors model (seed §2.5 step 4).

For every adapted weight ``W_merged = W0 + (alpha/r) * B @ A`` (peft's
``merge_and_unload``; LoRA and the other peft methods that change weights: LoHa,
LoKr, IA3, OFT, BOFT, AdaLoRA, VeRA...). Prompt-learning methods (prefix tuning,
prompt tuning, p-tuning) add virtual tokens instead of weight deltas, and a
hubflow bottleneck adapter with a nonlinearity (``h + f(h W_down) W_up``) is not
a linear map: neither can be written into the base's linear weights, so the stage
refuses them (keep them as adapters: ``evaluate`` takes an adapter plus its base).

Before any compute the stage checks that the adapter was trained on the model
given as ``base`` (its lineage.json: repo id and revision). After merging it saves
the model, loads the saved files back and compares their logits with the adapter
model's on random token sequences: the largest absolute difference is a metric
and must stay within ``tolerance``. The output holds the tokenizer files too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from hubflow.errors import HubflowError, StageInputError
from hubflow.stage import StageConfig, StageContext, StageResult

VERSION = "1"
LIBRARIES = ("torch", "transformers", "peft", "safetensors")

LINEAR_ACTIVATIONS = (None, "", "identity", "linear", "none")
_INPUTS = ("base", "adapter", "tokenizer")


class MergeMismatch(HubflowError):
    """The merged model does not reproduce the adapter model's logits."""


class Config(StageConfig):
    OUTPUT_TYPES: ClassVar[dict[str, str]] = {"output": "model"}
    POLICY_OUTPUT: ClassVar[str | None] = "output"

    kind: Literal["merge"] = Field(..., description="Merge an adapter into its base model.")
    tolerance: float = Field(
        1e-4,
        gt=0,
        description="Largest allowed absolute difference between merged-model and adapter-model logits.",
    )
    check_samples: int = Field(
        4, ge=1, le=256, description="Random token sequences used for the logit check."
    )
    check_length: int = Field(32, ge=2, le=4096, description="Tokens per check sequence.")
    seed: int = Field(0, description="Seed of the random check sequences.")
    check_base: bool = Field(
        True,
        description="Refuse an adapter whose recorded base (lineage.json: repo id and revision) is not `base`.",
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32",
        description="dtype of the saved weights; half precision needs a looser `tolerance` (about 1e-2).",
    )

    @model_validator(mode="after")
    def _check_kind_inputs(self) -> Config:
        missing = [k for k in ("base", "adapter") if k not in self.inputs]
        extra = sorted(set(self.inputs) - set(_INPUTS))
        if missing or extra:
            raise ValueError(
                "a merge stage reads `inputs: {base: MODEL, adapter: ADAPTER}` (and optionally `tokenizer`); "
                + (f"missing {missing}" if missing else f"unknown input(s) {extra}")
            )
        return self


def refuse_unmergeable(config: dict[str, Any], *, input_name: str) -> None:
    """Raise for adapters whose function is not a change of linear weights."""
    from stages.lib.models import PROMPT_LEARNING, adapter_kind

    kind = adapter_kind(config)
    keep = "keep it as an adapter: `evaluate` and later stages take the adapter plus `base`"
    if kind == "bottleneck":
        act = config.get("activation", config.get("nonlinearity", config.get("act_fn")))
        act_name = act.lower() if isinstance(act, str) else act
        if act_name not in LINEAR_ACTIVATIONS:
            raise StageInputError(
                f"input {input_name!r} is a bottleneck adapter with nonlinearity {act!r}: it computes "
                f"h + {act}(h W_down) W_up, which is not linear in h, so no change of the base's linear "
                "weights reproduces it and it cannot be merged",
                hint=keep,
            )
        raise StageInputError(
            f"input {input_name!r} is a bottleneck adapter without nonlinearity; merging it needs the layer "
            "it is attached to and is not supported",
            hint=keep,
        )
    if kind in PROMPT_LEARNING:
        raise StageInputError(
            f"input {input_name!r} is a {kind} adapter: it prepends learned virtual tokens to the attention "
            "keys/values instead of changing weights, so there is nothing to merge",
            hint=keep,
        )


def _tokenizer_source(ctx: StageContext) -> tuple[str, Path]:
    from stages.lib.tokenizers import tokenizer_folder

    found = tokenizer_folder(
        ("tokenizer", ctx.inputs.get("tokenizer")),
        ("adapter", ctx.inputs["adapter"]),
        ("base", ctx.inputs["base"]),
    )
    if found is None:
        raise StageInputError(
            "neither input 'adapter' nor input 'base' holds tokenizer files (tokenizer.json / tokenizer_config.json)",
            hint="add `tokenizer: STAGE_OR_REF` (e.g. a tokenizer stage) to the merge stage's inputs",
        )
    return found


def _logits(model: Any, ids: Any) -> Any:
    import torch

    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def run(ctx: StageContext, cfg: Config) -> StageResult:
    from stages.lib.lineage import adapter_config, given_base
    from stages.lib.models import inspect_model, load_model
    from stages.lib.tokenizers import copy_tokenizer_files

    base_dir, adapter_dir = ctx.inputs["base"], ctx.inputs["adapter"]
    config = adapter_config(adapter_dir)
    if config is None:
        raise StageInputError(
            "input 'adapter' holds no adapter_config.json: it is a full model, there is nothing to merge",
            hint="point `adapter` at an sft stage's adapter output (peft LoRA or similar)",
        )
    refuse_unmergeable(config, input_name="adapter")
    base_ref = ctx.input_refs.get("base")
    info = inspect_model(
        adapter_dir, base=base_dir, input_name="adapter", base_ref=base_ref, check_base=cfg.check_base
    )
    note = info.base_check
    ctx.logger.info(note)
    tok_input, tok_dir = _tokenizer_source(ctx)

    import torch  # after the checks: refusing an input stays cheap

    model = load_model(adapter_dir, base=base_dir, input_name="adapter", base_ref=base_ref, check_base=False)
    if not hasattr(model, "merge_and_unload"):
        raise StageInputError(
            f"input 'adapter' ({config.get('peft_type')}) has no merge: peft cannot fold it into the weights",
            hint="keep it as an adapter: `evaluate` and later stages take the adapter plus `base`",
        )
    vocab = int(model.get_input_embeddings().weight.shape[0])
    gen = torch.Generator().manual_seed(cfg.seed)
    ids = torch.randint(0, vocab, (cfg.check_samples, cfg.check_length), generator=gen)
    reference = _logits(model, ids)

    merged = model.merge_and_unload()
    merged = merged.to(getattr(torch, cfg.dtype))
    merged.save_pretrained(str(ctx.output))
    del merged, model
    copied = copy_tokenizer_files(tok_dir, ctx.output)

    reloaded = load_model(ctx.output, task="causal_lm", input_name="merged output")
    diff = float((reference - _logits(reloaded, ids)).abs().max())
    n_params = sum(p.numel() for p in reloaded.parameters())
    ctx.logger.info(
        "merged model: max |logit difference| vs adapter = %.3g (tolerance %g)", diff, cfg.tolerance
    )
    if not diff <= cfg.tolerance:
        raise MergeMismatch(
            f"the merged model's logits differ from the adapter model's by up to {diff:.3g}, more than "
            f"tolerance {cfg.tolerance:g}; nothing was published",
            hint="a half-precision dtype needs tolerance about 1e-2; otherwise the adapter does not merge "
            "exactly (keep it as an adapter)",
        )
    metrics: dict[str, Any] = {
        "max_abs_logit_diff": diff,
        "tolerance": cfg.tolerance,
        "adapter_kind": str(config.get("peft_type", "")).lower(),
        "parameters": n_params,
        "check_tokens": cfg.check_samples * cfg.check_length,
        "dtype": cfg.dtype,
    }
    meta: dict[str, Any] = {"base_model_relation": "merge"}
    base_claim = given_base(base_dir, ctx.input_refs.get("base"))
    if base_claim is not None:
        meta["base_model"] = base_claim.repo_id
    section = (
        f"The {metrics['adapter_kind']} adapter was merged into the base weights "
        "(W = W0 + (alpha/r)·B·A, peft `merge_and_unload`) and saved as safetensors "
        f"({n_params:,} parameters, {cfg.dtype}).\n\n"
        f"- Equivalence check: on {cfg.check_samples} random sequences of {cfg.check_length} tokens the saved "
        f"model's logits differ from the adapter model's by at most **{diff:.3g}** (tolerance {cfg.tolerance:g}).\n"
        f"- Base check: {note}.\n"
        f"- Tokenizer files from input `{tok_input}`: {', '.join(copied)}.\n"
    )
    return StageResult(metrics=metrics, card_sections={"Merge": section}, card_metadata=meta)
