"""DeepLabV3+ decoder: fuse the ASPP output with stride-4 low-level features, then classify."""

import torch
import torch.nn.functional as F
from torch import nn

from deeplab.model import fast_convs
from deeplab.model.layers import conv3x3_bn_relu, conv_and_rest, conv_bn_relu


class Decoder(nn.Module):
    """Low-level 1x1 -> `low_level_channels`, concat with the upsampled ASPP output, `convs` 3x3 convs, 1x1
    classifier.

    Two 3x3 256-channel convs (the default) is the best decoder in the DeepLabV3+ paper's ablation; convs=1 is
    VainF/DeepLabV3Plus-Pytorch's. `align_corners` is that of the bilinear upsampling of the ASPP output (False, as
    torchvision and VainF; bubbliiiing/deeplabv3-plus-pytorch uses True). With `fast_convs` set (`use_fast_convs`),
    a dense decoder does its 3x3 convs with fewer multiplications where they are exact and faster (fp32 on the
    CPU), in training and inference alike.
    """

    def __init__(self, *, in_channels: int, low_in_channels: int, num_classes: int, low_level_channels: int = 48,
                 channels: int = 256, separable: bool = False, convs: int = 2, align_corners: bool = False) -> None:
        super().__init__()
        if isinstance(convs, bool) or not isinstance(convs, int) or convs < 1:
            raise ValueError(f"the decoder needs a whole number of 3x3 convs, 1 or more; got convs={convs!r}")
        self.reduce = conv_bn_relu(low_in_channels, low_level_channels, 1)
        self.fuse = nn.Sequential(
            conv3x3_bn_relu(in_channels + low_level_channels, channels, separable=separable),
            *[conv3x3_bn_relu(channels, channels, separable=separable) for _ in range(convs - 1)])
        self.classifier = nn.Conv2d(channels, num_classes, 1)
        self.dense = not separable
        self.align_corners = align_corners
        self.fast_convs = False

    def reset_classifier(self) -> None:
        """Small initial logits: the loss starts near log(num_classes) and early gradients stay moderate."""
        nn.init.normal_(self.classifier.weight, std=0.01)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, x: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
        low = self.reduce(low)
        if self.fast_convs and self.dense and fast_convs.applicable(low):
            (first, after_first), *rest = map(conv_and_rest, self.fuse)
            y = after_first(fast_convs.upsample_concat_conv3x3(x, low, first.weight, first.bias,
                                                               align_corners=self.align_corners))
            for conv, after in rest:
                y = after(fast_convs.winograd_conv3x3(y, conv.weight, conv.bias))
            return self.classifier(y)
        x = F.interpolate(x, size=low.shape[-2:], mode="bilinear", align_corners=self.align_corners)
        return self.classifier(self.fuse(torch.cat([x, low], dim=1)))


def use_fast_convs(model: nn.Module, enabled: bool = True) -> int:
    """Have every dense DeepLabV3+ decoder in `model` run its 3x3 convs with fewer multiplications where
    `applicable` (or stop, enabled=False). Returns how many convs that covers (0 for a separable head). The weights
    and their names do not change, so checkpoints and BN folding are unaffected; training and inference both use it.
    """
    changed = 0
    for decoder in model.modules():
        if isinstance(decoder, Decoder) and decoder.dense:
            decoder.fast_convs = enabled
            changed += len(decoder.fuse) if enabled else 0
    return changed
