"""DeepLabV3+ with a MobileNetV2 encoder: training, evaluation and inference."""

__version__ = "0.1.0"
