"""BatchNorm folding for inference: each eval-mode BN after a conv becomes that conv's scale and bias."""

import copy

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def _conv_bn_pairs(module: nn.Module) -> list[tuple[str, str]]:
    """(conv name, BN name) of the children of `module` where the BN follows the conv: neighbours in a Sequential,
    and torchvision's named pairs convN -> bnN (ResNet's stem and bottleneck blocks call them in that order)."""
    children = dict(module.named_children())
    if isinstance(module, nn.Sequential):
        names = list(children)
        return list(zip(names, names[1:]))
    return [(name, "bn" + name[len("conv"):]) for name in children
            if name.startswith("conv") and "bn" + name[len("conv"):] in children]


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of `model` (in eval mode) where every Conv2d -> BatchNorm2d pair (`_conv_bn_pairs`) is one conv.

    Exact up to float rounding (it uses the BN running statistics, as eval mode does); the folded BN becomes an
    Identity, so module names, set_output_stride and the forward pass stay as they were. The input is untouched.
    """
    folded = copy.deepcopy(model).eval()
    for module in folded.modules():
        for name, bn_name in _conv_bn_pairs(module):
            conv, bn = getattr(module, name), getattr(module, bn_name)
            if isinstance(conv, nn.Conv2d) and type(bn) is nn.BatchNorm2d and bn.track_running_stats:
                setattr(module, name, fuse_conv_bn_eval(conv, bn))
                setattr(module, bn_name, nn.Identity())
    return folded
