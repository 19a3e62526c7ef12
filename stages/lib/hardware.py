"""Where a stage process computes and in which precision.

One answer for every kind: ``device_for`` gives this process's device (``cuda:LOCAL_RANK``
under ``accelerate launch``), ``pick_mixed_precision`` resolves ``resources.mixed_precision:
auto``. Heavy imports stay inside the functions.
"""

from __future__ import annotations

import os
from typing import Any


def device_for(resources: Any = None, *, cpu: bool | None = None) -> str:
    """``cpu`` or ``cuda:LOCAL_RANK`` for this process (``resources.cpu`` or ``cpu=True`` forces the CPU)."""
    import torch

    force = cpu if cpu is not None else bool(getattr(resources, "cpu", False))
    if force or not torch.cuda.is_available():
        return "cpu"
    return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"


def pick_mixed_precision(requested: str = "auto", *, cpu: bool = False) -> str:
    """``no`` | ``fp16`` | ``bf16``. ``auto`` uses bf16 only on a GPU that runs it
    natively: on CPUs here bf16 matmul is ~300x slower than fp32."""
    if requested != "auto":
        return requested
    import torch

    if cpu or not torch.cuda.is_available():
        return "no"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def trl_precision_kwargs(mixed_precision: str) -> dict[str, Any]:
    """TRL configs default to bf16=True and gradient checkpointing: set both explicitly."""
    return {
        "bf16": mixed_precision == "bf16",
        "fp16": mixed_precision == "fp16",
        "gradient_checkpointing": False,
    }
