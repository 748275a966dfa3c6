"""Test-time prediction on normalised image batches: scales, flips and sliding windows averaged as probabilities.

Shared by validation (`engine.evaluator`) and `inference.Predictor`; `check_tta` refuses settings that cannot work.
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from deeplab.engine.precision import autocast, inference_precision
from deeplab.errors import ConfigError
from deeplab.onnx_model import OnnxModel
from deeplab.schema import checked


def check_tta(*, scales: Sequence[float], window: Sequence[int] | None, stride: Sequence[int] | None,
              flip: bool = False) -> None:
    """Test-time settings that cannot work, as one ConfigError naming the key (before any model is loaded)."""
    checked("", {"flip": flip}, {"flip": bool})
    if isinstance(scales, str) or not isinstance(scales, Sequence):
        raise ConfigError(f"scales={scales!r}: give a list of image scales, e.g. scales=[1.0] or scales=[0.75,1.0] "
                          f"(brackets even for one scale)")
    if not scales or any(isinstance(s, bool) or not isinstance(s, (int, float)) or s <= 0 for s in scales):
        raise ConfigError(f"scales={list(scales) if scales else scales}: give one or more positive image scales, "
                          "e.g. scales=[1.0] or scales=[0.75,1.0,1.25]")
    for key, value in (("window", window), ("stride", stride)):
        if value is None:
            continue
        if isinstance(value, str) or not isinstance(value, Sequence):
            raise ConfigError(f"{key}={value!r}: give a height and a width in pixels as a list, e.g. "
                              f"{key}=[512,512]")
        if len(value) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in value):
            raise ConfigError(f"{key}={list(value)}: give a height and a width in pixels, e.g. {key}=[512,512]")
    if stride is not None and window is None:
        raise ConfigError(f"stride={list(stride)} has no effect without window: set window=[H,W] as well, or "
                          "stride=null")
    if stride is not None and any(s > w for s, w in zip(stride, window)):
        example = ",".join(str(max(1, w * 3 // 4)) for w in window)
        raise ConfigError(f"stride={list(stride)} is larger than window={list(window)}: windows that far apart leave "
                          f"strips of the image that no window covers; each stride side must be at most the window "
                          f"side (e.g. stride=[{example}]), or stride=null for the window size")


def is_channels_last(model: nn.Module) -> bool:
    """Whether the model's first conv holds channels_last weights (then inputs should be channels_last too)."""
    weight = next((m.weight for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return weight is not None and weight.dim() == 4 and weight.is_contiguous(memory_format=torch.channels_last) \
        and not weight.is_contiguous()


def _windows(length: int, window: int, stride: int) -> list[int]:
    """Window starts covering [0, length): regular steps, the last one flush with the end."""
    return [0] if length <= window else [*range(0, length - window, stride), length - window]


def sliding_logits(model: nn.Module, images: torch.Tensor, *, window: Sequence[int],
                   stride: Sequence[int]) -> torch.Tensor:
    """Logits of an image larger than `window`, averaged over overlapping tiles (e.g. Cityscapes at 1024x2048)."""
    n, _, height, width = images.shape
    logits = counts = None
    for top in _windows(height, window[0], stride[0]):
        for left in _windows(width, window[1], stride[1]):
            tile = images[:, :, top:top + window[0], left:left + window[1]]
            out = model(tile).float()
            if logits is None:
                logits = out.new_zeros(n, out.shape[1], height, width)
                counts = out.new_zeros(1, 1, height, width)
            logits[:, :, top:top + tile.shape[2], left:left + tile.shape[3]] += out
            counts[:, :, top:top + tile.shape[2], left:left + tile.shape[3]] += 1
    return logits / counts


@torch.inference_mode()
def predict_probs(model: nn.Module, images: torch.Tensor, *, scales: Sequence[float] = (1.0,), flip: bool = False,
                  window: Sequence[int] | None = None, stride: Sequence[int] | None = None,
                  precision: str = "fp32") -> torch.Tensor:
    """Class probabilities (N, C, H, W) of normalised images, averaged over scales and (optionally) flips."""
    height, width = images.shape[-2:]
    if is_channels_last(model):
        images = images.contiguous(memory_format=torch.channels_last)
    precision = "fp32" if isinstance(model, OnnxModel) else inference_precision(model, images, precision)
    total, count = None, 0
    for scale in scales:
        scaled = images if scale == 1.0 else F.interpolate(
            images, scale_factor=scale, mode="bilinear", align_corners=False, recompute_scale_factor=False)
        for flipped in ((False, True) if flip else (False,)):
            batch = scaled.flip(-1) if flipped else scaled
            with autocast(images.device.type, precision):
                logits = sliding_logits(model, batch, window=window, stride=stride or window) if window \
                    else model(batch)
            logits = logits.float().flip(-1) if flipped else logits.float()
            if logits.shape[-2:] != (height, width):
                logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
            probs = logits.softmax(1)
            total, count = (probs if total is None else total + probs), count + 1
    return total / count
