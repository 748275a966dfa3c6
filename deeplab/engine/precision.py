"""Device and precision: one code path for mixed and full precision (autocast and GradScaler, enabled or not)."""

import contextlib

import torch

from deeplab.errors import ConfigError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def resolve_device(device: str | torch.device, *, key: str = "device") -> torch.device:
    """'auto' -> the GPU when there is one, else the CPU; anything else as given, if this machine has it."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"{key}={device!r}: not a device; use auto, cpu, cuda or cuda:N") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{key}={device}: torch sees no CUDA GPU on this machine (a CPU-only torch build, or no "
                          f"driver); use {key}=cpu or {key}=auto")
    if resolved.type == "cuda" and resolved.index is not None and resolved.index >= torch.cuda.device_count():
        raise ConfigError(f"{key}={device}: this machine has {torch.cuda.device_count()} CUDA GPU(s); "
                          f"use cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    if resolved.type not in ("cpu", "cuda"):
        raise ConfigError(f"{key}={device}: only cpu and cuda devices are supported; use auto, cpu or cuda")
    return resolved


def cpu_has_fast_bf16() -> bool:
    """True where oneDNN runs bf16 natively (AVX-512 BF16 / AMX); elsewhere bf16 is emulated and several x slower."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def resolve_precision(precision: str, device_type: str, *, key: str = "precision") -> str:
    """'auto' -> fp16 on CUDA, bf16 on a CPU with native bf16, else fp32."""
    if precision not in PRECISIONS:
        raise ConfigError(f"{key}={precision!r}: must be one of {list(PRECISIONS)}")
    if precision != "auto":
        if precision == "fp16" and device_type == "cpu":
            raise ConfigError(f"{key}=fp16: fp16 autocast is for CUDA GPUs; use {key}=bf16 (or fp32) on the CPU")
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
