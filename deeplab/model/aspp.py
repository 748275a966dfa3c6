"""Atrous Spatial Pyramid Pooling: a 1x1 branch, atrous 3x3 branches and image pooling."""

import torch
import torch.nn.functional as F
from torch import nn

from deeplab.model.layers import conv3x3_bn_relu, conv_bn_relu
from deeplab.schema import ranged

# The DeepLab rates are tuned for OS16; they scale with the feature map so the receptive fields stay put.
RATES_BY_OUTPUT_STRIDE = {8: (12, 24, 36), 16: (6, 12, 18), 32: (3, 6, 9)}
AtrousRates = ranged(list[int], lambda v: len(v) >= 1 and all(r >= 1 for r in v),
                     "null (the rates of the output stride) or a list of one or more dilation rates >= 1, "
                     "e.g. [6, 12, 18]")


def default_rates(output_stride: int) -> tuple[int, ...]:
    """The atrous rates that go with an output stride."""
    if output_stride not in RATES_BY_OUTPUT_STRIDE:
        raise ValueError(f"no ASPP rates for output_stride={output_stride}; "
                         f"use one of {sorted(RATES_BY_OUTPUT_STRIDE)}")
    return RATES_BY_OUTPUT_STRIDE[output_stride]


class ImagePooling(nn.Sequential):
    """Global average pool -> 1x1 conv + BN + ReLU -> broadcast back to the feature size (a bilinear resize of a 1x1
    map, the same for either `align_corners`; the option is there so the head's resizes are all alike)."""

    def __init__(self, in_channels: int, out_channels: int, *, align_corners: bool = False) -> None:
        super().__init__(nn.AdaptiveAvgPool2d(1), *conv_bn_relu(in_channels, out_channels, 1))
        self.align_corners = align_corners

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(super().forward(x), size=x.shape[-2:], mode="bilinear", align_corners=self.align_corners)


class ASPP(nn.Module):
    """Parallel 1x1, atrous 3x3 (one per rate) and image-pooling branches, concatenated and projected."""

    def __init__(self, in_channels: int, *, rates: tuple[int, ...], channels: int = 256,
                 separable: bool = False, dropout: float = 0.1, align_corners: bool = False) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            [conv_bn_relu(in_channels, channels, 1)]
            + [conv3x3_bn_relu(in_channels, channels, dilation=r, separable=separable) for r in rates]
            + [ImagePooling(in_channels, channels, align_corners=align_corners)])
        self.project = nn.Sequential(*conv_bn_relu(len(self.branches) * channels, channels, 1), nn.Dropout(dropout))
        self.out_channels = channels
        self.set_rates(rates)

    @property
    def rates(self) -> tuple[int, ...]:
        """The dilation of each atrous branch, read from its 3x3 conv."""
        return tuple(branch[0].dilation[0] for branch in self.branches[1:-1])

    def set_rates(self, rates: tuple[int, ...]) -> None:
        """Change the atrous rates in place (no weights change), e.g. to evaluate at another output stride."""
        atrous = self.branches[1:-1]
        if len(rates) != len(atrous):
            raise ValueError(f"this ASPP has {len(atrous)} atrous branches, got rates {tuple(rates)}")
        for branch, rate in zip(atrous, rates):
            branch[0].dilation, branch[0].padding = (int(rate), int(rate)), (int(rate), int(rate))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([branch(x) for branch in self.branches], dim=1))
