"""Peak FLOP/s of one process's device, for MFU.

``resources.peak_flops`` wins. On a known GPU a table of dense peak throughput
(bf16/fp16 tensor cores for mixed precision, plain fp32 otherwise) is used; on a
CPU or an unknown GPU a square matmul in the training dtype is timed once per
process (about a quarter of a second).
"""

from __future__ import annotations

import time
from typing import Any

# Dense (no sparsity) peak FLOP/s from vendor data sheets: (16-bit tensor core, fp32).
GPU_PEAKS: tuple[tuple[str, float, float], ...] = (
    ("H200", 989e12, 67e12),
    ("H100", 989e12, 67e12),
    ("H800", 989e12, 67e12),
    ("A100", 312e12, 19.5e12),
    ("A800", 312e12, 19.5e12),
    ("L40S", 362e12, 91.6e12),
    ("L4", 121e12, 30.3e12),
    ("A10G", 125e12, 31.2e12),
    ("A10", 125e12, 31.2e12),
    ("RTX 4090", 165e12, 82.6e12),
    ("RTX 3090", 71e12, 35.6e12),
    ("V100", 125e12, 15.7e12),
    ("T4", 65e12, 8.1e12),
)


def table_peak(device_name: str, mixed_precision: str) -> float | None:
    name = device_name.upper()
    for key, half, single in GPU_PEAKS:
        if key in name:
            return half if mixed_precision in ("bf16", "fp16") else single
    return None


_MEASURED: dict[tuple[str, str], float] = {}


def measure_matmul(device: Any, dtype: Any, size: int = 1024, seconds: float = 0.25) -> float:
    """FLOP/s of a ``size``-square matmul on ``device`` (best of a short burst)."""
    import torch

    gen = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(size, size, generator=gen).to(device=device, dtype=dtype)
    b = torch.randn(size, size, generator=gen).to(device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    a @ b
    sync()
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        a @ b
        sync()
        best = max(best, 2 * size**3 / max(time.perf_counter() - t0, 1e-9))
    return best


def peak_flops(device: Any, mixed_precision: str, override: float | None = None) -> tuple[float, str]:
    """(peak FLOP/s of one process, where the number comes from)."""
    if override:
        return float(override), "resources.peak_flops"
    import torch

    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = table_peak(name, mixed_precision)
        if peak:
            return peak, f"data sheet ({name}, {'16-bit' if mixed_precision != 'no' else 'fp32'})"
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed_precision, torch.float32)
    key = (str(device), str(dtype))
    if key not in _MEASURED:
        _MEASURED[key] = measure_matmul(device, dtype)
    return _MEASURED[key], f"measured {str(dtype).removeprefix('torch.')} matmul on {device.type}"
