"""The peers' architectures as mapping tables: for each source, the model config its weights need and how each of its
tensor names becomes ours (renames, conv biases folded into BatchNorm, reordered input channels). The key names are
the peers' own (see the package docstring); `deeplab.convert` reads, checks and writes with them."""

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from deeplab.torch_files import CheckpointError


class ConvertError(CheckpointError):
    """A peer checkpoint that cannot be converted: one sentence naming the file, the key and the fix."""


@dataclass(frozen=True)
class PeerLayout:
    """How one peer architecture's tensors become ours.

    renames: (peer prefix, our prefix) pairs, the first whose peer prefix starts a key renames it (the rest of the key
    is kept); folds: peer conv bias key -> our BatchNorm module whose running mean absorbs it; reorders: our key ->
    the number of leading input channels (the peer's low-level ones) to move behind the others.
    """

    name: str
    model: dict
    renames: tuple[tuple[str, str], ...]
    folds: Mapping[str, str] = field(default_factory=dict)
    reorders: Mapping[str, int] = field(default_factory=dict)


def _model_config(num_classes: int, backbone: dict | str, *, decoder_convs: int, align_corners: bool,
                  output_stride: int) -> dict:
    """Our model section for a peer model: the peers' heads are ours at the defaults (256-channel dense ASPP with
    rates following the output stride, 48 low-level channels, 256-channel decoder) but for these keys."""
    return {"num_classes": num_classes, "backbone": backbone, "output_stride": output_stride, "separable": False,
            "backbone_weights": None, "aspp_rates": None, "aspp_channels": 256, "aspp_dropout": 0.1,
            "low_level_channels": 48, "decoder_channels": 256, "decoder_convs": decoder_convs,
            "align_corners": align_corners}


MOBILENET_V2 = {"name": "mobilenet_v2", "width_mult": 1.0, "expand_ratio": 6}
LOW_LEVEL_CHANNELS = 48

# VainF slices torchvision-style `features` as features[0:4] and features[4:-1]; a sliced nn.Sequential keeps its
# children's names, so the blocks keep their indices: high_level_features.4-17 are features.4-17
VAINF_MOBILENET = (
    *[(f"backbone.low_level_features.{i}.", f"backbone.features.{i}.") for i in range(4)],
    *[(f"backbone.high_level_features.{i}.", f"backbone.features.{i}.") for i in range(4, 18)],
)
VAINF_RESNET = (("backbone.conv1.", "backbone.conv1."), ("backbone.bn1.", "backbone.bn1."),
                *[(f"backbone.layer{i}.", f"backbone.layer{i}.") for i in range(1, 5)])
VAINF_HEAD = (
    ("classifier.project.", "decoder.reduce."),                # low-level 1x1 -> 48 + BN
    ("classifier.aspp.convs.", "aspp.branches."),              # 1x1, three atrous 3x3, pooling (4.1 conv, 4.2 BN)
    ("classifier.aspp.project.", "aspp.project."),
    ("classifier.classifier.0.", "decoder.fuse.0.0."),         # the one 3x3 304 -> 256, inputs [low, ASPP]
    ("classifier.classifier.1.", "decoder.fuse.0.1."),
    ("classifier.classifier.3.", "decoder.classifier."),       # 1x1 classifier with bias
)
VAINF_REORDERS = {"decoder.fuse.0.0.weight": LOW_LEVEL_CHANNELS}

# bubbliiiing's blocks number their layers in one Sequential: conv, BN, ReLU6, conv, BN, ReLU6, conv, BN (expanding
# blocks) or conv, BN, ReLU6, conv, BN (features.1, expansion 1); torchvision nests the conv-BN-ReLU6 pairs
BUBBLIIIING_EXPANDING = {"0": "0.0", "1": "0.1", "3": "1.0", "4": "1.1", "6": "2", "7": "3"}
BUBBLIIIING_FIRST = {"0": "0.0", "1": "0.1", "3": "1", "4": "2"}
BUBBLIIIING_BACKBONE = (
    ("backbone.features.0.", "backbone.features.0."),
    *[(f"backbone.features.1.conv.{k}.", f"backbone.features.1.conv.{v}.") for k, v in BUBBLIIIING_FIRST.items()],
    *[(f"backbone.features.{i}.conv.{k}.", f"backbone.features.{i}.conv.{v}.")
      for i in range(2, 18) for k, v in BUBBLIIIING_EXPANDING.items()],
)
# (its conv, its BN, our conv, our BN): every one of these convs has a bias, folded into the BN after it
BUBBLIIIING_HEAD = (
    *[(f"aspp.branch{i + 1}.0", f"aspp.branch{i + 1}.1", f"aspp.branches.{i}.0", f"aspp.branches.{i}.1")
      for i in range(4)],
    ("aspp.branch5_conv", "aspp.branch5_bn", "aspp.branches.4.1", "aspp.branches.4.2"),
    ("aspp.conv_cat.0", "aspp.conv_cat.1", "aspp.project.0", "aspp.project.1"),
    ("shortcut_conv.0", "shortcut_conv.1", "decoder.reduce.0", "decoder.reduce.1"),
    ("cat_conv.0", "cat_conv.1", "decoder.fuse.0.0", "decoder.fuse.0.1"),
    ("cat_conv.4", "cat_conv.5", "decoder.fuse.1.0", "decoder.fuse.1.1"),
)
BUBBLIIIING_RENAMES = (
    *BUBBLIIIING_BACKBONE,
    *[(f"{theirs}.weight", f"{ours}.weight") for theirs, _, ours, _ in BUBBLIIIING_HEAD],
    *[(f"{theirs}.", f"{ours}.") for _, theirs, _, ours in BUBBLIIIING_HEAD],
    ("cls_conv.", "decoder.classifier."),
)
BUBBLIIIING_FOLDS = {f"{conv}.bias": bn for conv, _, _, bn in BUBBLIIIING_HEAD}

CLASSIFIER_KEYS = {"vainf": "classifier.classifier.3.weight", "bubbliiiing": "cls_conv.weight"}
EXAMPLE_KEYS = {"vainf": "classifier.aspp.convs.0.0.weight", "bubbliiiing": "aspp.branch1.0.weight"}


def vainf_layout(state: Mapping, *, output_stride: int = 16) -> PeerLayout:
    """VainF's DeepLabV3+ on MobileNetV2 or ResNet-50/101 (`deeplabv3plus_mobilenet`, `_resnet50`, `_resnet101`)."""
    keys = list(state)
    if any(".body." in k for k in keys):
        raise ConvertError("was trained with --separable_conv: VainF's separable convs (a depthwise conv straight into "
                           "the pointwise one, no BatchNorm between) have no exact counterpart here; convert one of "
                           "its dense checkpoints (all of its released ones are)")
    if "classifier.project.0.weight" not in state and any(k.startswith("classifier.classifier.0.convs.") for k in keys):
        raise ConvertError("is a VainF DeepLabV3 checkpoint (no decoder, e.g. deeplabv3_mobilenet); deeplab is "
                           "DeepLabV3+: convert one of its deeplabv3plus_* checkpoints")
    num_classes = _classes(state, "vainf")
    if any(k.startswith("backbone.low_level_features.") for k in keys):
        backbone, renames, name = {**MOBILENET_V2, "padding": "input"}, VAINF_MOBILENET, "MobileNetV2"
    elif any(k.startswith("backbone.layer4.") for k in keys):
        blocks = len({k.split(".")[2] for k in keys if k.startswith("backbone.layer3.")})
        depth = {6: "resnet50", 23: "resnet101"}.get(blocks)
        if depth is None:
            raise ConvertError(f"holds a ResNet with {blocks} blocks in layer3 (ResNet-50 has 6, ResNet-101 23); "
                               "deeplab has the ResNet-50 and ResNet-101 backbones only")
        backbone, renames, name = {"name": depth}, VAINF_RESNET, {"resnet50": "ResNet-50", "resnet101": "ResNet-101"}[
            depth]
    else:
        other = next((b for p, b in (("backbone.stage", "HRNetV2"), ("backbone.transition", "HRNetV2"),
                                     ("backbone.block1.", "Xception"), ("backbone.conv4.", "Xception"))
                      if any(k.startswith(p) for k in keys)), None)
        raise ConvertError(f"holds VainF's {other} backbone, which deeplab does not have; convert a "
                           f"deeplabv3plus_mobilenet, _resnet50 or _resnet101 checkpoint" if other else
                           "has none of the backbone keys of VainF's MobileNetV2 (backbone.low_level_features.*) "
                           "or ResNet (backbone.layer1-4.*); is it a VainF DeepLabV3+ checkpoint?")
    model = _model_config(num_classes, backbone, decoder_convs=1, align_corners=False, output_stride=output_stride)
    return PeerLayout(f"VainF DeepLabV3+ {name}", model, (*renames, *VAINF_HEAD), reorders=VAINF_REORDERS)


def bubbliiiing_layout(state: Mapping, *, output_stride: int = 16) -> PeerLayout:
    """bubbliiiing's DeepLab on its MobileNetV2 (`DeepLab(backbone="mobilenet")`, deeplab_mobilenetv2.pth)."""
    keys = list(state)
    if not any(k.startswith("backbone.features.") for k in keys):
        xception = any(k.startswith(("backbone.block", "backbone.conv1.", "backbone.entry")) for k in keys)
        raise ConvertError("holds bubbliiiing's Xception backbone, which deeplab does not have; convert its "
                           "MobileNetV2 checkpoint (deeplab_mobilenetv2.pth)" if xception else
                           "has none of the backbone keys of bubbliiiing's MobileNetV2 (backbone.features.*); is it a "
                           "bubbliiiing DeepLabV3+ checkpoint?")
    model = _model_config(_classes(state, "bubbliiiing"), {**MOBILENET_V2, "padding": "conv"}, decoder_convs=2,
                          align_corners=True, output_stride=output_stride)
    return PeerLayout("bubbliiiing DeepLabV3+ MobileNetV2", model, BUBBLIIIING_RENAMES, folds=BUBBLIIIING_FOLDS)


LAYOUTS = {"vainf": vainf_layout, "bubbliiiing": bubbliiiing_layout}


def _classes(state: Mapping, source: str) -> int:
    key = CLASSIFIER_KEYS[source]
    tensor = state.get(key)
    if not isinstance(tensor, torch.Tensor) or tensor.dim() != 4:
        raise ConvertError(f"has no {key} (the classifier, num_classes x 256 x 1 x 1), which every {source} "
                           "DeepLabV3+ checkpoint has")
    return tensor.shape[0]
