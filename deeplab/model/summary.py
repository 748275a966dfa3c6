"""Model size and cost: parameters per part and FLOPs (printed by `python -m deeplab.cli.summary`)."""

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (buffers such as BatchNorm running stats excluded)."""
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, height: int, width: int) -> int:
    """FLOPs of one (1, 3, height, width) forward pass, counted by torch (2 per multiply-add)."""
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, 3, height, width))
    model.train(was_training)
    return counter.get_total_flops()


def summarize(model: nn.Module, height: int, width: int) -> dict[str, float]:
    """Parameters per part (backbone, aspp, decoder) and total, and GFLOPs / GMACs at the given size."""
    parts = {name: count_parameters(child) for name, child in model.named_children()}
    flops = count_flops(model, height, width)
    return {**parts, "total": count_parameters(model), "gflops": flops / 1e9, "gmacs": flops / 2e9}
