"""BatchNorm folding for inference: each eval-mode BN after a conv becomes that conv's scale and bias."""

import copy

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of `model` (in eval mode) where every Conv2d -> BatchNorm2d pair inside a Sequential is one conv.

    Exact up to float rounding (it uses the BN running statistics, as eval mode does); the folded BN becomes an
    Identity, so module names, set_output_stride and the forward pass stay as they were. The input is untouched.
    """
    folded = copy.deepcopy(model).eval()
    for module in folded.modules():
        if not isinstance(module, nn.Sequential):
            continue
        children = list(module.named_children())
        for (name, conv), (bn_name, bn) in zip(children, children[1:]):
            if isinstance(conv, nn.Conv2d) and type(bn) is nn.BatchNorm2d and bn.track_running_stats:
                setattr(module, name, fuse_conv_bn_eval(conv, bn))
                setattr(module, bn_name, nn.Identity())
    return folded


def count_batchnorms(model: nn.Module) -> int:
    """How many BatchNorm layers are left (0 after folding a DeepLabV3+)."""
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
