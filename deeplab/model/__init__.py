"""The DeepLabV3+ model: a backbone of `BACKBONES` (contract in `deeplab.model.contract`), ASPP and decoder."""

from deeplab.model.aspp import ASPP, default_rates
from deeplab.model.backbone import BACKBONES, build_backbone, imagenet_cache_path, load_backbone_weights
from deeplab.model.contract import OUTPUT_STRIDES, Backbone, FeatureInfo
from deeplab.model.decoder import Decoder
from deeplab.model.deeplabv3plus import DeepLabV3Plus, build_model, rebuild_model, upgrade_model_config
from deeplab.model.mobilenet import MobileNetV2Backbone
from deeplab.model.resnet import ResNet50Backbone, ResNet101Backbone, ResNetBackbone

__all__ = ["ASPP", "BACKBONES", "Backbone", "Decoder", "DeepLabV3Plus", "FeatureInfo", "MobileNetV2Backbone",
           "OUTPUT_STRIDES", "ResNet101Backbone", "ResNet50Backbone", "ResNetBackbone", "build_backbone", "build_model",
           "default_rates", "imagenet_cache_path", "load_backbone_weights", "rebuild_model", "upgrade_model_config"]
