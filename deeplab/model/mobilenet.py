"""MobileNetV2 encoder: torchvision's `features`, with the output stride set by dilation."""

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import MobileNet_V2_Weights, mobilenet_v2

from deeplab.errors import ConfigError
from deeplab.model.contract import FeatureInfo, dilation_plan
from deeplab.schema import Count, ranged, require

LOW_LEVEL_INDEX = 3  # features[0:4] end at stride 4 with 24 channels (x width_mult)
LAST_INDEX = 17  # features[17] is the 320-channel block; features[18] (the 1280-channel 1x1) is dropped
# Where the zeros of a 3x3 conv's padding go. "conv": each 3x3 conv pads its own input (torchvision, TF).
# "input": the stem conv is not padded and each inverted-residual block zero-pads its input before its 1x1
# expansion, so its depthwise conv sees the expansion's response to zeros at the border (VainF/DeepLabV3Plus-Pytorch's
# MobileNetV2 and its `fixed_padding`; what converting its checkpoints exactly needs).
PADDINGS = ("conv", "input")
Padding = ranged(str, lambda v: v in PADDINGS, f"one of {', '.join(PADDINGS)} (conv: torchvision's; input: VainF's, "
                                               f"for its converted checkpoints)")
WidthMult = ranged(float, lambda v: v > 0, "a number > 0 (0.5, 0.75, 1.0, 1.4)")


def _spatial_conv(block: nn.Module) -> nn.Conv2d:
    """The block's 3x3 conv: the stem conv, or the depthwise conv of an inverted residual."""
    return next(m for m in block.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3))


class MobileNetV2Backbone(nn.Module):
    """MobileNetV2 features[0:18] returning {"low": stride-4 features, "out": stride-`output_stride` features}.

    Parameter names are torchvision's (`features.N...`), so its state dicts load unchanged.
    """

    family: ClassVar[str] = "MobileNetV2"
    torchvision_weights: ClassVar[type] = MobileNet_V2_Weights
    example_key: ClassVar[str] = "features.0.0.weight"
    ignored_prefixes: ClassVar[tuple[str, ...]] = ("features.18.", "classifier.")  # the 1280-ch conv, classifier

    def __init__(self, *, output_stride: int = 16, width_mult: WidthMult = 1.0, expand_ratio: Count = 6,
                 padding: Padding = "conv") -> None:
        super().__init__()
        require(Padding, "model.backbone.padding", padding)
        # torchvision's table with the expansion factor t of the t=6 rows made a knob.
        setting = [[1, 16, 1, 1]] + [[expand_ratio, c, n, s] for c, n, s in
                                     [(24, 2, 2), (32, 3, 2), (64, 4, 2), (96, 3, 1), (160, 3, 2), (320, 1, 1)]]
        net = mobilenet_v2(weights=None, width_mult=width_mult, inverted_residual_setting=setting)
        self.features = nn.Sequential(*list(net.features)[: LAST_INDEX + 1])
        self.width_mult = width_mult
        self.expand_ratio = expand_ratio
        self.padding = padding
        self._native_strides = [_spatial_conv(block).stride[0] for block in self.features]
        self.output_stride = 32
        self.set_output_stride(output_stride)

    @property
    def options(self) -> dict:
        """This backbone's own keyword options (what `model.backbone` holds besides its name)."""
        return {"width_mult": self.width_mult, "expand_ratio": self.expand_ratio, "padding": self.padding}

    @property
    def feature_info(self) -> list[FeatureInfo]:
        """Channels and strides of the returned features, read off the layers themselves."""
        return [
            FeatureInfo("low", self.features[LOW_LEVEL_INDEX].out_channels, 4),
            FeatureInfo("out", self.features[LAST_INDEX].out_channels, self.output_stride),
        ]

    def set_output_stride(self, output_stride: int) -> None:
        """Apply the TF DeepLab dilation rule (`dilation_plan`) to each block's 3x3 conv; weights are untouched, so
        it can change after training."""
        pad = self.padding == "conv"  # "input": no conv pads; the blocks pad their inputs (`forward`)
        for block, (stride, rate) in zip(self.features, dilation_plan(self._native_strides, output_stride)):
            conv = _spatial_conv(block)
            conv.stride, conv.dilation, conv.padding = (stride, stride), (rate, rate), (rate * pad, rate * pad)
        self.output_stride = output_stride

    def check_imagenet(self) -> None:
        """ImageNet weights exist for the standard network only."""
        if self.width_mult != 1.0 or self.expand_ratio != 6:
            raise ConfigError(
                f"model.backbone_weights=imagenet: ImageNet MobileNetV2 weights exist only for width_mult=1.0 and "
                f"expand_ratio=6, not model.backbone.width_mult={self.width_mult}, model.backbone.expand_ratio="
                f"{self.expand_ratio}; set model.backbone_weights=null (random init) or a state dict of your own")

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        low = x
        for i, block in enumerate(self.features):
            x = block(x) if self.padding == "conv" or i == 0 else _input_padded(block, x)
            if i == LOW_LEVEL_INDEX:
                low = x
        return {"low": low, "out": x}


def _input_padded(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """An inverted-residual block run with padding="input": its input zero-padded by its depthwise conv's dilation
    on every side before the whole block (the 1x1 expansion included), the residual added to the unpadded input."""
    rate = _spatial_conv(block).dilation[0]
    y = block.conv(F.pad(x, (rate, rate, rate, rate)))
    return x + y if block.use_res_connect else y
