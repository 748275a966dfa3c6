"""Optimizers with an optional lower backbone LR, and the poly schedule with linear warmup."""

import torch
from torch import nn

OPTIMIZERS = {"sgd": torch.optim.SGD, "adamw": torch.optim.AdamW}


def build_optimizer(model: nn.Module, *, name: str, lr: float, backbone_lr_mult: float = 1.0,
                    **kwargs) -> torch.optim.Optimizer:
    """SGD or AdamW over two groups: the backbone (at lr * backbone_lr_mult) and the head (at lr).

    `kwargs` go to the torch optimizer (momentum, weight_decay, nesterov, betas...), so a misspelt key fails there;
    keys set to None are left out, so one config schema can list every optimizer's options.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; known: {sorted(OPTIMIZERS)}")
    backbone = [p for n, p in model.named_parameters() if n.startswith("backbone.")]
    head = [p for n, p in model.named_parameters() if not n.startswith("backbone.")]
    groups = [{"params": backbone, "lr": lr * backbone_lr_mult, "name": "backbone"},
              {"params": head, "lr": lr, "name": "head"}]
    return OPTIMIZERS[name](groups, lr=lr, **{k: v for k, v in kwargs.items() if v is not None})


def poly_factor(iteration: int, *, total: int, power: float = 0.9, warmup_iters: int = 0,
                warmup_ratio: float = 0.1, min_lr_ratio: float = 0.0) -> float:
    """LR multiplier at `iteration`: linear warmup from warmup_ratio, then (1 - t/T)^power down to min_lr_ratio."""
    if iteration < warmup_iters:
        return warmup_ratio + (1 - warmup_ratio) * iteration / warmup_iters
    decay = (1 - min(iteration, total) / total) ** power
    return min_lr_ratio + (1 - min_lr_ratio) * decay


def build_scheduler(optimizer: torch.optim.Optimizer, *, total_iters: int, name: str = "poly", power: float = 0.9,
                    warmup_iters: int = 0, warmup_ratio: float = 0.1,
                    min_lr_ratio: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """Poly schedule stepped every iteration; its state (the step count) is checkpointed for exact resume."""
    if name != "poly":
        raise ValueError(f"unknown schedule {name!r}; known: ['poly']")
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda it: poly_factor(it, total=total_iters, power=power, warmup_iters=warmup_iters,
                                          warmup_ratio=warmup_ratio, min_lr_ratio=min_lr_ratio))
