"""The ``peft:`` block every training kind takes (pydantic only): one of :class:`FullSpec`,
:class:`LoraSpec`, :class:`QloraSpec`, :class:`AdapterSpec`, :class:`PrefixSpec` (seed §2.4), chosen by
``method``. :func:`stages.lib.peft_methods.apply_method` applies it to a loaded model.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FullSpec(_Spec):
    """Full fine-tuning: every weight trains; the output is a whole model."""

    method: Literal["full"] = Field("full", description="Train every parameter; publish a full model.")


class LoraSpec(_Spec):
    """LoRA (seed §2.4.1): h = W0 x + (alpha/r) B A x, A ~ N(0, s^2), B = 0."""

    method: Literal["lora"] = Field(..., description="Low-rank adapters on chosen Linear layers (peft LoRA).")
    r: int = Field(16, ge=1, description="Rank r of B (d_out x r) and A (r x d_in).")
    alpha: float = Field(32.0, gt=0, description="Scaling alpha: the update is (alpha / r) B A.")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the LoRA branch's input.")
    target_modules: list[str] | Literal["all-linear"] | None = Field(
        None,
        description="Linear layer names to adapt (e.g. [q_proj, v_proj]), `all-linear`, or null for peft's "
        "default for the architecture (W_Q and W_V in Llama).",
    )
    bias: Literal["none", "all", "lora_only"] = Field("none", description="Which biases train (peft `bias`).")


class QloraSpec(LoraSpec):
    """QLoRA (seed §2.4.2): the frozen base in 4-bit NF4 with double quantisation, LoRA on top."""

    method: Literal["qlora"] = Field(..., description="LoRA over a 4-bit quantised base (bitsandbytes).")
    quant_type: Literal["nf4", "fp4"] = Field("nf4", description="4-bit data type of the frozen weights.")
    double_quant: bool = Field(
        True, description="Quantise the quantisation constants too (double quantisation)."
    )


class AdapterSpec(_Spec):
    """Bottleneck adapters (seed §2.4.3): Adapter(h) = h + f(h W_down) W_up, after attention and feed-forward."""

    method: Literal["adapter"] = Field(..., description="Houlsby-style bottleneck adapters (hubflow's own).")
    bottleneck: int = Field(16, ge=1, description="Bottleneck width r: W_down is d x r, W_up is r x d.")
    activation: Literal["relu", "gelu", "silu"] = Field("gelu", description="The nonlinearity f.")
    positions: list[Literal["attention", "mlp"]] = Field(
        default_factory=lambda: ["attention", "mlp"],
        min_length=1,
        description="Sub-layers whose output goes through an adapter (before the residual add).",
    )

    @field_validator("positions")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"positions must not repeat, got {value}")
        return value


class PrefixSpec(_Spec):
    """Prefix tuning (seed §2.4.4): learned key/value vectors prepended at every attention layer."""

    method: Literal["prefix"] = Field(..., description="Prefix tuning (peft PrefixTuningConfig).")
    num_virtual_tokens: int = Field(16, ge=1, description="L_p: prefix vectors per layer.")
    prefix_projection: bool = Field(
        False,
        description="Reparameterise the prefix through an MLP while training (peft `prefix_projection`).",
    )
    encoder_hidden_size: int | None = Field(
        None, ge=1, description="Hidden size of that MLP (default: the model's hidden size)."
    )


PeftSpec = Annotated[
    FullSpec | LoraSpec | QloraSpec | AdapterSpec | PrefixSpec, Field(discriminator="method")
]
