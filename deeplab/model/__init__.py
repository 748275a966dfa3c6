"""The DeepLabV3+ / MobileNetV2 model."""

from deeplab.model.aspp import ASPP, default_rates
from deeplab.model.backbone import FeatureInfo, MobileNetV2Backbone, imagenet_cache_path, load_backbone_weights
from deeplab.model.decoder import Decoder
from deeplab.model.deeplabv3plus import DeepLabV3Plus, build_model

__all__ = ["ASPP", "Decoder", "DeepLabV3Plus", "FeatureInfo", "MobileNetV2Backbone", "build_model", "default_rates",
           "imagenet_cache_path", "load_backbone_weights"]
