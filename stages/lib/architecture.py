"""The ``architecture:`` block of a decoder / encoder model built from scratch (pydantic only).

Shared by ``pretrain`` (which builds Llama, BERT or T5 from it) and ``domain_weights`` (whose
reference and proxy models are Llama decoders of this shape). Nothing here imports torch.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class RopeScaling(BaseModel):
    """RoPE scaling (transformers' rope types) to run past the positions RoPE was set for."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["linear", "dynamic", "yarn"] = Field(..., description="transformers rope_type.")
    factor: float = Field(..., gt=1.0, description="How many times the original positions are stretched.")
    original_max_position_embeddings: int | None = Field(
        None, ge=1, description="Positions RoPE covers unscaled; default max_position_embeddings."
    )


class Architecture(BaseModel):
    """Model shape. ``causal`` builds a Llama decoder, ``mlm`` a BERT encoder, the denoisers a T5."""

    model_config = ConfigDict(extra="forbid")

    hidden_size: int = Field(256, ge=8, description="Model width d.")
    num_layers: int = Field(
        4, ge=1, description="Transformer blocks (T5: in the encoder and in the decoder)."
    )
    num_heads: int = Field(4, ge=1, description="Attention heads; hidden_size must divide by it.")
    num_kv_heads: int | None = Field(
        None, ge=1, description="Key/value heads for grouped-query attention (Llama only); default num_heads."
    )
    intermediate_size: int | None = Field(
        None, ge=1, description="FFN width; default 8/3·d rounded up to 32 (gated FFNs), 4·d for BERT."
    )
    context_length: int = Field(256, ge=8, description="Tokens per training sequence (chunk length).")
    max_position_embeddings: int | None = Field(
        None,
        ge=8,
        description="Positions the model is built for (RoPE / BERT position table); default context_length.",
    )
    rope_theta: float = Field(10000.0, gt=0, description="RoPE base wavelength (Llama).")
    rope_scaling: RopeScaling | None = Field(None, description="Optional RoPE scaling (Llama).")
    tie_embeddings: bool = Field(True, description="Share the input embedding and the output head.")
    vocab_size: int | None = Field(
        None,
        ge=2,
        description="Vocabulary size; taken from the tokenizer input when unset, an error when it differs.",
    )
    dropout: float = Field(
        0.0, ge=0.0, lt=1.0, description="Dropout (attention and hidden); 0 for pretraining."
    )
    init_std: float = Field(0.02, gt=0, description="Std of the normal initialisation of embeddings.")
    norm_eps: float = Field(1e-5, gt=0, description="Epsilon of RMSNorm / LayerNorm.")

    def position_limit(self) -> int:
        """max_position_embeddings as the model config gets it."""
        if self.max_position_embeddings is not None:
            return self.max_position_embeddings
        if self.rope_scaling is not None and self.rope_scaling.original_max_position_embeddings:
            return int(self.rope_scaling.original_max_position_embeddings * self.rope_scaling.factor)
        return self.context_length
