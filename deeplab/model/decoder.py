"""DeepLabV3+ decoder: fuse the ASPP output with stride-4 low-level features, then classify."""

import torch
import torch.nn.functional as F
from torch import nn

from deeplab.model.layers import conv3x3_bn_relu, conv_bn_relu


class Decoder(nn.Module):
    """Low-level 1x1 -> `low_level_channels`, concat with the upsampled ASPP output, two 3x3 convs, 1x1 classifier.

    Two 3x3 256-channel convs is the best decoder in the DeepLabV3+ paper's ablation.
    """

    def __init__(self, *, in_channels: int, low_in_channels: int, num_classes: int, low_level_channels: int = 48,
                 channels: int = 256, separable: bool = False) -> None:
        super().__init__()
        self.reduce = conv_bn_relu(low_in_channels, low_level_channels, 1)
        self.fuse = nn.Sequential(
            conv3x3_bn_relu(in_channels + low_level_channels, channels, separable=separable),
            conv3x3_bn_relu(channels, channels, separable=separable))
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def reset_classifier(self) -> None:
        """Small initial logits: the loss starts near log(num_classes) and early gradients stay moderate."""
        nn.init.normal_(self.classifier.weight, std=0.01)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, x: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
        low = self.reduce(low)
        x = F.interpolate(x, size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.classifier(self.fuse(torch.cat([x, low], dim=1)))
