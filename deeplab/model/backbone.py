"""MobileNetV2 encoder: torchvision's `features`, with the output stride set by dilation."""

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn
from torchvision.models import MobileNet_V2_Weights, mobilenet_v2

from deeplab.errors import ConfigError
from deeplab.torch_files import CheckpointError, read_torch_file

LOW_LEVEL_INDEX = 3  # features[0:4] end at stride 4 with 24 channels (x width_mult)
LAST_INDEX = 17  # features[17] is the 320-channel block; features[18] (the 1280-channel 1x1) is dropped
OUTPUT_STRIDES = (8, 16, 32)
# "imagenet" is the original torchvision weights (71.9 top-1), the ones the peer DeepLab repositories start from.
IMAGENET_WEIGHTS = {"imagenet": "IMAGENET1K_V1", "IMAGENET1K_V1": "IMAGENET1K_V1", "IMAGENET1K_V2": "IMAGENET1K_V2"}


@dataclass(frozen=True)
class FeatureInfo:
    """One feature map the backbone returns: its key, channel count and stride relative to the input."""

    name: str
    channels: int
    stride: int


def _spatial_conv(block: nn.Module) -> nn.Conv2d:
    """The block's 3x3 conv: the stem conv, or the depthwise conv of an inverted residual."""
    return next(m for m in block.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3))


class MobileNetV2Backbone(nn.Module):
    """MobileNetV2 features[0:18] returning {"low": stride-4 features, "out": stride-`output_stride` features}.

    Parameter names are torchvision's (`features.N...`), so its state dicts load unchanged.
    """

    def __init__(self, *, output_stride: int = 16, width_mult: float = 1.0, expand_ratio: int = 6) -> None:
        super().__init__()
        # torchvision's table with the expansion factor t of the t=6 rows made a knob.
        setting = [[1, 16, 1, 1]] + [[expand_ratio, c, n, s] for c, n, s in
                                     [(24, 2, 2), (32, 3, 2), (64, 4, 2), (96, 3, 1), (160, 3, 2), (320, 1, 1)]]
        net = mobilenet_v2(weights=None, width_mult=width_mult, inverted_residual_setting=setting)
        self.features = nn.Sequential(*list(net.features)[: LAST_INDEX + 1])
        self.width_mult = width_mult
        self.expand_ratio = expand_ratio
        self._native_strides = [_spatial_conv(block).stride[0] for block in self.features]
        self.output_stride = 32
        self.set_output_stride(output_stride)

    @property
    def feature_info(self) -> list[FeatureInfo]:
        """Channels and strides of the returned features, read off the layers themselves."""
        return [
            FeatureInfo("low", self.features[LOW_LEVEL_INDEX].out_channels, 4),
            FeatureInfo("out", self.features[LAST_INDEX].out_channels, self.output_stride),
        ]

    def set_output_stride(self, output_stride: int) -> None:
        """Apply the TF DeepLab dilation rule; weights are untouched, so it can change after training.

        Once the running stride reaches the target, the next strided block gets stride 1 (keeping the
        current dilation) and every later 3x3 conv multiplies its dilation by the stride given up.
        """
        if output_stride not in OUTPUT_STRIDES:
            raise ConfigError(f"output_stride={output_stride!r}: must be one of {list(OUTPUT_STRIDES)}")
        stride, dilation = 1, 1
        for block, native in zip(self.features, self._native_strides):
            conv = _spatial_conv(block)
            rate = dilation
            if native > 1 and stride >= output_stride:
                conv.stride, dilation = (1, 1), dilation * native
            else:
                conv.stride, stride = (native, native), stride * native
            conv.dilation, conv.padding = (rate, rate), (rate, rate)
        self.output_stride = output_stride

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        low = x
        for i, block in enumerate(self.features):
            x = block(x)
            if i == LOW_LEVEL_INDEX:
                low = x
        return {"low": low, "out": x}


def load_backbone_weights(backbone: MobileNetV2Backbone, weights: str | Path) -> str:
    """Load ImageNet or local torchvision-format MobileNetV2 weights into `backbone`; return their source."""
    if isinstance(weights, str) and weights in IMAGENET_WEIGHTS:
        if backbone.width_mult != 1.0 or backbone.expand_ratio != 6:
            raise ConfigError(
                f"model.backbone_weights={weights}: ImageNet MobileNetV2 weights exist only for width_mult=1.0 and "
                f"expand_ratio=6, not model.width_mult={backbone.width_mult}, model.expand_ratio="
                f"{backbone.expand_ratio}; set model.backbone_weights=null (random init) or a state dict of your own")
        state, source = _imagenet_state_dict(IMAGENET_WEIGHTS[weights])
    else:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise ConfigError(
                f"model.backbone_weights: file not found: {path}; pass the path of a torchvision MobileNetV2 state "
                f"dict (torch.save(torchvision.models.mobilenet_v2(...).state_dict(), PATH)), or one of "
                f"{sorted(IMAGENET_WEIGHTS)}, or null for random init")
        state, source = _read_state_dict(path), str(path)
    _load_features(backbone, state, source)
    return source


def imagenet_cache_path(name: str = "IMAGENET1K_V1") -> Path:
    """Where torchvision's weights API keeps the downloaded file (under $TORCH_HOME/hub/checkpoints)."""
    url = MobileNet_V2_Weights[name].url
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name


def _imagenet_state_dict(name: str) -> tuple[dict, str]:
    cached = imagenet_cache_path(name)
    if cached.is_file():
        return _read_state_dict(cached), str(cached)
    weights = MobileNet_V2_Weights[name]
    try:
        return weights.get_state_dict(progress=True, check_hash=True, weights_only=True), str(cached)
    except OSError as exc:  # URLError (offline, DNS, proxy) is an OSError
        raise ConfigError(
            f"model.backbone_weights=imagenet: could not download the ImageNet MobileNetV2 weights from "
            f"{weights.url} ({exc}); offline, copy that file to {cached} (set TORCH_HOME to move the cache), pass "
            f"model.backbone_weights=/path/to/mobilenet_v2.pth, or set model.backbone_weights=null to start from "
            f"random weights on purpose") from exc


def _read_state_dict(path: Path) -> dict:
    try:
        state = read_torch_file(path)  # weights_only, and one sentence for a file that is not a usable torch file
    except CheckpointError as exc:
        raise ConfigError(f"model.backbone_weights: {exc}") from exc
    if not isinstance(state, dict):
        raise ConfigError(f"model.backbone_weights: {path} holds a {type(state).__name__}, not a state dict")
    return state


def _load_features(backbone: MobileNetV2Backbone, state: dict, source: str) -> None:
    """Load the features[0:18] tensors of a torchvision state dict, with one clear error if it does not fit."""
    own = backbone.state_dict()
    missing = [k for k in own if k not in state]
    if missing:
        ours = {"model", "config"} <= set(state) or any(str(k).startswith("backbone.features.") for k in state)
        raise ConfigError(
            f"model.backbone_weights: {source} is not a torchvision MobileNetV2 state dict: {len(missing)} of "
            f"{len(own)} backbone tensors are missing (first: {missing[0]!r}); expected keys like "
            f"'features.0.0.weight'" + ("; it holds a deeplab model's weights: start from it with init_from=FILE "
                                        "instead" if ours else ""))
    for key, tensor in own.items():
        if state[key].shape != tensor.shape:
            raise ConfigError(
                f"model.backbone_weights: {source} does not fit this backbone (width_mult={backbone.width_mult}, "
                f"expand_ratio={backbone.expand_ratio}): {key} has shape {tuple(state[key].shape)}, expected "
                f"{tuple(tensor.shape)}")
    backbone.load_state_dict({k: state[k] for k in own})
