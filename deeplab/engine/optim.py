"""Optimizers with an optional lower backbone LR, and LR schedules (poly, cosine) with linear warmup, each chosen by
name from a table."""

import math
from collections.abc import Callable

import torch
from torch import nn

from deeplab.schema import BelowOne, NonNegativeInt, Positive, Ratio, ranged

OPTIMIZERS = {"sgd": torch.optim.SGD, "adamw": torch.optim.AdamW}


LearningRate = ranged(float, lambda v: v > 0 and math.isfinite(v), "a number > 0, e.g. 0.01")
BackboneLrMult = ranged(float, lambda v: v >= 0, "a number >= 0 (0 freezes the backbone's updates)")


def build_optimizer(model: nn.Module, *, name: str, lr: LearningRate, backbone_lr_mult: BackboneLrMult = 1.0,
                    **kwargs) -> torch.optim.Optimizer:
    """SGD or AdamW over two groups: the backbone (at lr * backbone_lr_mult) and the head (at lr).

    `kwargs` go to the torch optimizer (momentum, weight_decay, nesterov, betas...), so a misspelt key fails there;
    keys set to None are left out, so a config can cancel a key, and configs saved by older runs, which list the
    other optimizer's options as null, still load.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; known: {sorted(OPTIMIZERS)}")
    backbone = [p for n, p in model.named_parameters() if n.startswith("backbone.")]
    head = [p for n, p in model.named_parameters() if not n.startswith("backbone.")]
    groups = [{"params": backbone, "lr": lr * backbone_lr_mult, "name": "backbone"},
              {"params": head, "lr": lr, "name": "head"}]
    return OPTIMIZERS[name](groups, lr=lr, **{k: v for k, v in kwargs.items() if v is not None})


def poly_factor(iteration: int, *, total: int, power: Positive = 0.9, warmup_iters: NonNegativeInt = 0,
                warmup_ratio: Ratio = 0.1, min_lr_ratio: BelowOne = 0.0) -> float:
    """LR multiplier at `iteration`: linear warmup from warmup_ratio, then (1 - t/T)^power down to min_lr_ratio."""
    if iteration < warmup_iters:
        return warmup_ratio + (1 - warmup_ratio) * iteration / warmup_iters
    decay = (1 - min(iteration, total) / total) ** power
    return min_lr_ratio + (1 - min_lr_ratio) * decay


def cosine_factor(iteration: int, *, total: int, warmup_iters: NonNegativeInt = 0, warmup_ratio: Ratio = 0.1,
                  min_lr_ratio: BelowOne = 0.0) -> float:
    """LR multiplier at `iteration`: linear warmup from warmup_ratio, then half a cosine from 1 to min_lr_ratio."""
    if warmup_iters >= total:
        raise ValueError(f"warmup_iters={warmup_iters} must be below the total of {total} iterations")
    if iteration < warmup_iters:
        return warmup_ratio + (1 - warmup_ratio) * iteration / warmup_iters
    progress = (min(iteration, total) - warmup_iters) / (total - warmup_iters)
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


# name -> the LR multiplier at an iteration; each takes (iteration, *, total, its own keywords)
SCHEDULES: dict[str, Callable[..., float]] = {"poly": poly_factor, "cosine": cosine_factor}


def build_scheduler(optimizer: torch.optim.Optimizer, *, total_iters: int, name: str = "poly",
                    **options) -> torch.optim.lr_scheduler.LambdaLR:
    """The schedule `name` from SCHEDULES with its own `options`, stepped every iteration.

    A misspelt option fails at once with a TypeError naming it. The multiplier is a plain function of the iteration
    and `total_iters` that the scheduler's saved state leaves out, so a resumed run with another total re-plans.
    """
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; known: {sorted(SCHEDULES)}")
    factor = SCHEDULES[name]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: factor(it, total=total_iters, **options))
