"""One optimizer step of training, the same for `train.py` (the trainer) and the benchmark's training modes."""

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from deeplab.engine.distributed import all_reduce_mean
from deeplab.engine.precision import autocast
from deeplab.errors import UserError


class TrainingDiverged(UserError):
    """The loss became NaN or infinite; the run stopped before overwriting any checkpoint."""


def _layers(model: nn.Module) -> Iterator[nn.Module]:
    """`model`, then each module it wraps (DDP's .module, torch.compile's ._orig_mod), in either order."""
    while isinstance(model, nn.Module):
        yield model
        model = model.module if isinstance(model, DistributedDataParallel) else getattr(model, "_orig_mod", None)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside DDP and torch.compile wrappers, in either order (what checkpoints hold)."""
    *_, plain = _layers(model)
    return plain


def ddp_of(model: nn.Module) -> DistributedDataParallel | None:
    """The DDP wrapper in `model`'s wrappers (torch.compile(DDP(model)) hides it), or None."""
    return next((m for m in _layers(model) if isinstance(m, DistributedDataParallel)), None)


def optimizer_step(model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                   criterion: nn.Module, micro_batches: Sequence[tuple[torch.Tensor, torch.Tensor]], *,
                   device: torch.device, precision: str = "fp32", channels_last: bool = False,
                   grad_clip: float | None = None, frozen: nn.Module | None = None) -> torch.Tensor:
    """One optimizer step over the micro-batches of a global batch; returns the mean loss over all processes.

    Each micro-batch's mean loss is weighted by its share of the global batch's labelled pixels, so that DDP's
    gradient average over processes and accumulation steps equals the mean over the whole batch; DDP all-reduces
    gradients on the last micro-batch only. `frozen` (e.g. the backbone) gets no update this step. A NaN or
    infinite loss raises TrainingDiverged before the optimizer steps.
    """
    optimizer.zero_grad(set_to_none=True)
    total = torch.zeros((), device=device)
    ignore = getattr(criterion, "ignore_index", -100)
    valid = torch.stack([(masks != ignore).sum() for _, masks in micro_batches]).float()
    share = valid * len(valid) / all_reduce_mean(valid.sum().to(device)).cpu().clamp(min=1)
    ddp = ddp_of(model)
    for i, (images, masks) in enumerate(micro_batches):
        images = images.to(device, non_blocking=True)
        masks = masks.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        last = i == len(micro_batches) - 1
        sync = ddp.no_sync() if ddp is not None and not last else contextlib.nullcontext()  # reduce once, at the end
        with sync:
            with autocast(device.type, precision):
                logits = model(images)
            loss = criterion(logits, masks) * share[i] / len(micro_batches)
            scaler.scale(loss).backward()
        total += loss.detach()
    total = all_reduce_mean(total)
    if not torch.isfinite(total):
        raise TrainingDiverged(f"loss is {total.item()}")
    if frozen is not None:
        for p in frozen.parameters():
            p.grad = None  # SGD/AdamW skip parameters without a gradient
    if grad_clip:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    return total
