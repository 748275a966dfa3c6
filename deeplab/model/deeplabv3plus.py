"""DeepLabV3+ = backbone (MobileNetV2, ResNet-50/101) + ASPP + decoder, its keyword-only builder, and the upgrade of
saved model configs of the MobileNetV2-only layout."""

import difflib
import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from deeplab.model.aspp import ASPP, AtrousRates, default_rates
from deeplab.model.backbone import build_backbone, load_backbone_weights
from deeplab.model.contract import OutputStride
from deeplab.model.decoder import Decoder
from deeplab.model.layers import init_head
from deeplab.schema import BelowOne, Count, checked, keyword_hints, ranged

log = logging.getLogger(__name__)

# model keys of the MobileNetV2-only layout (checkpoints saved before backbones had names), now model.backbone's
LEGACY_BACKBONE_KEYS = ("width_mult", "expand_ratio")
# keys added to the model section (and to a backbone's options) after checkpoints were first saved, with the value
# those checkpoints were built with: a saved section without one gets it (`upgrade_model_config`), so an older run
# resumes, is compared (init_from) and is described as it was built
ADDED_DEFAULTS = {"decoder_convs": 2, "align_corners": False}
ADDED_BACKBONE_DEFAULTS = {"mobilenet_v2": {"padding": "conv"}}


class DeepLabV3Plus(nn.Module):
    """Maps a float (N, 3, H, W) image batch to (N, num_classes, H, W) logits, for any H, W >= 32."""

    def __init__(self, backbone: nn.Module, aspp: ASPP, decoder: Decoder, *, align_corners: bool = False) -> None:
        super().__init__()
        self.backbone = backbone
        self.aspp = aspp
        self.decoder = decoder
        self.align_corners = align_corners  # of the final resize of the logits to the input size

    @property
    def num_classes(self) -> int:
        return self.decoder.classifier.out_channels

    @property
    def output_stride(self) -> int:
        return self.backbone.output_stride

    def set_output_stride(self, output_stride: int) -> None:
        """Re-dilate for another output stride (e.g. train at 16, evaluate at 8); no weights change.

        The ASPP rates scale with the feature map (OS16 (6,12,18) becomes OS8 (12,24,36)), custom rates included.
        """
        scale = self.backbone.output_stride / output_stride
        self.backbone.set_output_stride(output_stride)
        self.aspp.set_rates(tuple(max(1, round(r * scale)) for r in self.aspp.rates))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != 3 or not x.is_floating_point():
            got = f"a {x.dtype} tensor of shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"images: the model takes a normalised float (N, 3, H, W) batch, got {got}; "
                             "Predictor(model, mean=..., std=..., class_names=...).predict(image) takes an image as "
                             "it is")
        features = self.backbone(x)
        logits = self.decoder(self.aspp(features["out"]), features["low"])
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=self.align_corners)


DecoderConvs = ranged(int, lambda v: v in (1, 2), "1 or 2 (2: the paper's decoder; 1: VainF's)")
BackboneWeights = ranged(str | Path, lambda v: isinstance(v, (str, Path)) and str(v).strip() != "",
                         "imagenet (torchvision's ImageNet weights), the path of a torchvision state dict of the "
                         "backbone, or null (None) for random init")
# keywords of torchvision's segmentation builders (deeplabv3_resnet50(weights=..., weights_backbone=..., aux_loss=...))
# that people bring from it, and what they are here
TRAINED = ("a trained model comes with its checkpoint: Predictor.from_checkpoint(path) or model_from_checkpoint(path) "
           "rebuilds it, and train.py init_from=FILE fine-tunes from it")
TORCHVISION_KEYWORDS = {
    "weights": TRAINED, "pretrained": TRAINED,
    "weights_backbone": "use backbone_weights='imagenet' (or a state dict's path, or None)",
    "pretrained_backbone": "use backbone_weights='imagenet' (or None for random init)",
    "aux_loss": "this DeepLabV3+ has no auxiliary FCN head: drop it",
    "progress": "drop it (the ImageNet download shows its progress anyway)",
}


def build_model(*, num_classes: Count, backbone: str | Mapping = "mobilenet_v2", output_stride: OutputStride = 16,
                separable: bool = False, backbone_weights: BackboneWeights | None = None,
                aspp_rates: AtrousRates | None = None, aspp_channels: Count = 256, aspp_dropout: BelowOne = 0.1,
                low_level_channels: Count = 48, decoder_channels: Count = 256, decoder_convs: DecoderConvs = 2,
                align_corners: bool = False, **unknown) -> DeepLabV3Plus:
    """Build DeepLabV3+ on a backbone of `deeplab.model.backbone.BACKBONES`.

    backbone: a name ("mobilenet_v2", "resnet50", "resnet101") or a mapping {name: ..., **that backbone's options}
    (MobileNetV2: width_mult, expand_ratio, padding). backbone_weights: None (random init), "imagenet"
    (torchvision's weights API, cached in the torch hub dir), or the path of a torchvision-format state dict of that
    backbone. separable: depthwise-separable 3x3 convs in the ASPP and decoder. aspp_rates: atrous rates instead of
    those that follow the output stride. decoder_convs: the decoder's 3x3 convs, 2 (the paper's best) or 1
    (VainF/DeepLabV3Plus-Pytorch's). align_corners: that of every bilinear resize of the head (ASPP pooling, decoder
    upsampling, the logits to the input size): False (torchvision, VainF) or True (bubbliiiing/deeplabv3-plus-pytorch).

    Every value is checked as the `model` config section is (`deeplab.schema.checked`: the same types, range rules
    and sentences), so a wrong one is a ConfigError naming model.<key>; an unknown keyword is a TypeError.
    """
    arguments = dict(locals())  # first, before any other local name: the keyword arguments as given
    if arguments.pop("unknown"):
        raise TypeError(_unknown_keyword(next(iter(unknown))))
    numbers = {key: value.item() if isinstance(value, np.generic) else value  # a numpy scalar is a plain number
               for key, value in arguments.items()}
    return _assemble(**checked("model", numbers, build_model))


def _unknown_keyword(key: str) -> str:
    """The TypeError's sentence for a keyword build_model does not take: what it means here, or the nearest one."""
    if key in TORCHVISION_KEYWORDS:
        return (f"build_model() got an unexpected keyword argument {key!r}, torchvision's; "
                f"{TORCHVISION_KEYWORDS[key]}")
    near = difflib.get_close_matches(key, keyword_hints(build_model), n=1)
    return f"build_model() got an unexpected keyword argument {key!r}" + (f"; did you mean {near[0]}?" if near else "")


def _assemble(*, num_classes: int, backbone: str | Mapping, output_stride: int, separable: bool,
              backbone_weights: str | Path | None, aspp_rates: list[int] | None, aspp_channels: int,
              aspp_dropout: float, low_level_channels: int, decoder_channels: int, decoder_convs: int,
              align_corners: bool) -> DeepLabV3Plus:
    """The model of checked settings (`build_model`)."""
    encoder = build_backbone(backbone, output_stride=output_stride)
    low, out = encoder.feature_info
    rates = tuple(aspp_rates) if aspp_rates is not None else default_rates(output_stride)
    aspp = ASPP(out.channels, rates=rates, channels=aspp_channels, separable=separable, dropout=aspp_dropout,
                align_corners=align_corners)
    decoder = Decoder(in_channels=aspp.out_channels, low_in_channels=low.channels, num_classes=num_classes,
                      low_level_channels=low_level_channels, channels=decoder_channels, separable=separable,
                      convs=decoder_convs, align_corners=align_corners)
    init_head(aspp)
    init_head(decoder)
    decoder.reset_classifier()
    if backbone_weights is not None:
        source = load_backbone_weights(encoder, backbone_weights)
        log.info("backbone weights loaded from %s", source)
    return DeepLabV3Plus(encoder, aspp, decoder, align_corners=align_corners)


def upgrade_model_config(model_cfg: Mapping) -> dict:
    """A saved model config in today's layout, for build_model: the MobileNetV2-only layout's top-level width_mult
    and expand_ratio (and no backbone key) become backbone={name: mobilenet_v2, width_mult, expand_ratio}, and keys
    added since (`ADDED_DEFAULTS`, `ADDED_BACKBONE_DEFAULTS`) get the values older checkpoints were built with. A
    config already in today's layout comes back as an equal copy."""
    config = dict(model_cfg)
    if "backbone" in config:
        backbone = config["backbone"]
        backbone = dict(backbone) if isinstance(backbone, Mapping) else backbone
    else:
        backbone = {"name": "mobilenet_v2", **{key: config.pop(key) for key in LEGACY_BACKBONE_KEYS if key in config}}
    if isinstance(backbone, dict):
        added = ADDED_BACKBONE_DEFAULTS.get(backbone.get("name"), {})
        backbone = {**backbone, **{k: v for k, v in added.items() if k not in backbone}}
    return {**config, "backbone": backbone, **{k: v for k, v in ADDED_DEFAULTS.items() if k not in config}}


def rebuild_model(model_cfg: Mapping, **changes) -> DeepLabV3Plus:
    """The architecture a saved (or composed) model section describes, of any layout, without fetching backbone
    weights: the one way a model is rebuilt for a checkpoint's own weights (inference, resume, init_from, bench).
    `changes` replace keys, e.g. separable=True for a twin with another head."""
    return build_model(**{**upgrade_model_config(model_cfg), "backbone_weights": None, **changes})
