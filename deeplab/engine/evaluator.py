"""Validation over a full split: logits at full resolution, one confusion matrix, metrics reduced across ranks."""

from collections.abc import Iterable

import torch
from torch import nn

from deeplab.engine.precision import autocast, inference_precision
from deeplab.inference import predict_probs
from deeplab.metrics import ConfusionMatrix


@torch.inference_mode()
def evaluate(model: nn.Module, batches: Iterable, *, num_classes: int, device: torch.device,
             ignore_index: int = 255, precision: str = "fp32", channels_last: bool = False,
             keep: int = 0, tta: dict | None = None) -> tuple[ConfusionMatrix, list]:
    """Score every (image, mask) batch; returns the reduced confusion matrix and the first `keep` samples.

    `tta` (scales, flip, window, stride) switches to test-time augmentation / sliding windows. Kept samples are
    (image tensor, mask, prediction) on the CPU, for the TensorBoard comparison grid.
    """
    was_training = model.training
    model.eval()
    matrix = ConfusionMatrix(num_classes, ignore_index=ignore_index, device=device)
    kept = []
    for images, masks in batches:
        images = images.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        if precision == "auto":  # measured on the first image, once per process (see inference_precision)
            precision = inference_precision(model, images)
        if tta:
            pred = predict_probs(model, images, precision=precision, **tta).argmax(1)
        else:
            with autocast(device.type, precision):
                pred = model(images).argmax(1)
        matrix.update(pred, masks.to(device, non_blocking=True))
        for i in range(min(keep - len(kept), len(images))):
            kept.append((images[i].cpu(), masks[i].cpu().numpy(), pred[i].cpu().numpy()))
    matrix.reduce_from_all_processes()
    model.train(was_training)
    return matrix, kept
