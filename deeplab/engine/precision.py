"""Device and precision: one code path for mixed and full precision (autocast and GradScaler, enabled or not)."""

import contextlib

import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def resolve_device(device: str | torch.device) -> torch.device:
    """'auto' -> the GPU when there is one, else the CPU; anything else as given."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def cpu_has_fast_bf16() -> bool:
    """True where oneDNN runs bf16 natively (AVX-512 BF16 / AMX); elsewhere bf16 is emulated and several x slower."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def resolve_precision(precision: str, device_type: str) -> str:
    """'auto' -> fp16 on CUDA, bf16 on a CPU with native bf16, else fp32."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != "auto":
        if precision == "fp16" and device_type == "cpu":
            raise ValueError("fp16 autocast is for CUDA; use precision=bf16 (or fp32) on CPU")
        return precision
    if device_type == "cuda":
        return "fp16"
    return "bf16" if device_type == "cpu" and cpu_has_fast_bf16() else "fp32"


def autocast(device_type: str, precision: str) -> contextlib.AbstractContextManager:
    """torch.autocast for bf16/fp16, a no-op context for fp32."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    return torch.autocast(device_type, dtype=dtype, enabled=dtype is not None) if dtype else contextlib.nullcontext()


def grad_scaler(device_type: str, precision: str) -> torch.amp.GradScaler:
    """A GradScaler that is active only for fp16 (bf16 has fp32's range and needs none)."""
    return torch.amp.GradScaler(device_type, enabled=precision == "fp16")
