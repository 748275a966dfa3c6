"""ResNet-50 / ResNet-101 encoders: torchvision's ResNet without its pooling and classifier, dilated to the output
stride (the DeepLabV3+ paper's ResNet-101 backbone)."""

from collections.abc import Callable
from typing import ClassVar

import torch
from torch import nn
from torchvision.models import ResNet50_Weights, ResNet101_Weights, resnet50, resnet101

from deeplab.model.contract import FeatureInfo, dilation_plan

STEM_STRIDE = 4  # conv1 (stride 2) and maxpool (stride 2): layer1 runs at stride 4


class ResNetBackbone(nn.Module):
    """A torchvision ResNet up to layer4 returning {"low": layer1 output (stride 4), "out": layer4 output}.

    Parameter names are torchvision's (`conv1.weight`, `layer3.5.conv2.weight`...), so its state dicts load
    unchanged (its `fc` is ignored). Subclasses name the depth: `ResNet50Backbone`, `ResNet101Backbone`.
    """

    family: ClassVar[str]
    torchvision_weights: ClassVar[type]
    example_key: ClassVar[str] = "conv1.weight"
    ignored_prefixes: ClassVar[tuple[str, ...]] = ("fc.",)  # the ImageNet classifier
    network: ClassVar[Callable[..., nn.Module]]

    def __init__(self, *, output_stride: int = 16) -> None:
        super().__init__()
        net = type(self).network(weights=None)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self._native_strides = [block.conv2.stride[0] for block in self.blocks]
        self.output_stride = 32
        self.set_output_stride(output_stride)

    @property
    def options(self) -> dict:
        """This backbone's own keyword options: none besides the output stride."""
        return {}

    @property
    def blocks(self) -> list[nn.Module]:
        """The bottleneck blocks of layer1-4, in order."""
        return [*self.layer1, *self.layer2, *self.layer3, *self.layer4]

    @property
    def feature_info(self) -> list[FeatureInfo]:
        """Channels and strides of the returned features, read off the layers themselves."""
        return [FeatureInfo("low", self.layer1[-1].conv3.out_channels, STEM_STRIDE),
                FeatureInfo("out", self.layer4[-1].conv3.out_channels, self.output_stride)]

    def set_output_stride(self, output_stride: int) -> None:
        """Apply the TF DeepLab dilation rule (`dilation_plan`) to each block's 3x3 conv and its shortcut's stride;
        weights are untouched. OS16 and OS8 equal torchvision's replace_stride_with_dilation [False, False, True]
        and [False, True, True]."""
        plan = dilation_plan(self._native_strides, output_stride, stride=STEM_STRIDE)
        for block, (stride, rate) in zip(self.blocks, plan):
            block.conv2.stride, block.conv2.dilation, block.conv2.padding = (stride, stride), (rate, rate), (rate, rate)
            if block.downsample is not None:
                block.downsample[0].stride = (stride, stride)
        self.output_stride = output_stride

    def check_imagenet(self) -> None:
        """torchvision publishes ImageNet weights for this network: nothing to refuse."""

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        low = self.layer1(self.maxpool(self.relu(self.bn1(self.conv1(x)))))
        return {"low": low, "out": self.layer4(self.layer3(self.layer2(low)))}


class ResNet50Backbone(ResNetBackbone):
    """ResNet-50: 3, 4, 6, 3 bottlenecks; 23.5M parameters without `fc`."""

    family = "ResNet-50"
    torchvision_weights = ResNet50_Weights
    network = staticmethod(resnet50)


class ResNet101Backbone(ResNetBackbone):
    """ResNet-101: 3, 4, 23, 3 bottlenecks; 42.5M parameters without `fc` (the DeepLabV3+ paper's backbone)."""

    family = "ResNet-101"
    torchvision_weights = ResNet101_Weights
    network = staticmethod(resnet101)
