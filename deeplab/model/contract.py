"""The backbone contract: what DeepLabV3+ asks of an encoder, and the dilation rule every backbone follows.

A backbone is an `nn.Module` (an entry of `deeplab.model.backbone.BACKBONES`, built with keyword arguments only:
`output_stride` plus its own options) that

- returns `{"low": stride-4 features, "out": stride-`output_stride` features}` from `forward(images)`;
- lists both in `feature_info`: `[FeatureInfo("low", channels, 4), FeatureInfo("out", channels, output_stride)]`,
  read off its layers, so the ASPP and the decoder take their input channels from it;
- has an `output_stride` attribute and `set_output_stride(os)`, os in OUTPUT_STRIDES = (8, 16, 32), which
  re-dilates its convs with no weight change (`dilation_plan`: the TF DeepLab rule), before or after training;
- names its parameters as torchvision's model of that family does, so torchvision's state dicts load unchanged;
- says where its weights come from through class attributes: `family` (the name in messages, e.g. "ResNet-101"),
  `torchvision_weights` (torchvision's weights enum, e.g. `ResNet101_Weights`), `example_key` (a parameter name
  every state dict of the family has) and `ignored_prefixes` (the keys of torchvision's model it leaves out, e.g.
  "fc."); `options`, its own keyword options and their values (for messages); and `check_imagenet()`, a
  ConfigError when those options have no published ImageNet weights.

Weights (`deeplab.model.backbone.load_backbone_weights`, from `build_model(backbone_weights=...)`): "imagenet" is
torchvision's IMAGENET1K_V1 through its weights API, cached in the torch hub dir (`$TORCH_HOME/hub/checkpoints`);
offline, one ConfigError names the file to copy there. A path is a torchvision-format state dict of the family
(`torch.save(torchvision.models.resnet101().state_dict(), PATH)`), read weights_only; a missing file, a missing key or
a tensor of another shape is one ConfigError sentence. The classifier (`fc`, `classifier`) is ignored.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol

import torch

from deeplab.schema import ranged, require

OUTPUT_STRIDES = (8, 16, 32)
OutputStride = ranged(int, lambda v: v in OUTPUT_STRIDES, f"one of {list(OUTPUT_STRIDES)}")


@dataclass(frozen=True)
class FeatureInfo:
    """One feature map the backbone returns: its key, channel count and stride relative to the input."""

    name: str
    channels: int
    stride: int


class Backbone(Protocol):
    """What `build_model` needs of a backbone (see the module docstring); nn.Module supplies the rest."""

    family: ClassVar[str]
    torchvision_weights: ClassVar[type]
    example_key: ClassVar[str]
    ignored_prefixes: ClassVar[tuple[str, ...]]
    output_stride: int

    @property
    def options(self) -> dict: ...

    @property
    def feature_info(self) -> list[FeatureInfo]: ...

    def set_output_stride(self, output_stride: int) -> None: ...

    def check_imagenet(self) -> None: ...

    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]: ...


def dilation_plan(native_strides: Sequence[int], output_stride: int, *, stride: int = 1) -> list[tuple[int, int]]:
    """(stride, dilation) of each unit of a network, in order, for `output_stride`: the TF DeepLab rule.

    `native_strides` are the units' strides without dilation and `stride` the running stride before the first.
    Once the running stride reaches the target, the next strided unit gets stride 1 (keeping the current dilation)
    and every later unit multiplies its dilation by the stride given up. torchvision's
    `replace_stride_with_dilation` does the same for a ResNet stage.
    """
    require(OutputStride, "output_stride", output_stride)  # a ConfigError unless one of OUTPUT_STRIDES
    plan, dilation = [], 1
    for native in native_strides:
        if native > 1 and stride >= output_stride:
            plan.append((1, dilation))
            dilation *= native
        else:
            plan.append((native, dilation))
            stride *= native
    return plan
