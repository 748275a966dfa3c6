"""The backbones DeepLabV3+ can use, chosen by name (`BACKBONES`), and how their pretrained weights load.

What every backbone provides (features, strides, dilation, weights) is written down in `deeplab.model.contract`.
"""

import inspect
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from deeplab.errors import ConfigError
from deeplab.model.contract import OUTPUT_STRIDES, FeatureInfo
from deeplab.model.mobilenet import MobileNetV2Backbone
from deeplab.model.resnet import ResNet50Backbone, ResNet101Backbone
from deeplab.schema import checked, keyword_hints
from deeplab.torch_files import CheckpointError, read_torch_file

__all__ = ["BACKBONES", "OUTPUT_STRIDES", "FeatureInfo", "MobileNetV2Backbone", "backbone_architecture",
           "build_backbone", "imagenet_cache_path", "load_backbone_weights", "split_backbone", "typed_backbone"]

# model.backbone.name -> the class; its keyword arguments besides output_stride are that backbone's own options.
# The names are torchvision's model builders, whose state dicts each one loads.
BACKBONES: dict[str, type[nn.Module]] = {
    "mobilenet_v2": MobileNetV2Backbone, "resnet50": ResNet50Backbone, "resnet101": ResNet101Backbone}
# "imagenet" is the original torchvision weights (MobileNetV2 71.9, ResNet-101 77.4 top-1), the ones the peer
# DeepLab repositories start from.
IMAGENET_WEIGHTS = {"imagenet": "IMAGENET1K_V1", "IMAGENET1K_V1": "IMAGENET1K_V1", "IMAGENET1K_V2": "IMAGENET1K_V2"}


def split_backbone(backbone: str | Mapping) -> tuple[str, dict]:
    """The name and own options of a `model.backbone` value: a name, or a mapping {name: ..., **options}."""
    if isinstance(backbone, str):
        name, options = backbone, {}
    elif isinstance(backbone, Mapping):
        options = dict(backbone)
        name = options.pop("name", None)
    else:
        raise ConfigError(f"model.backbone={backbone!r}: must be a backbone name ({', '.join(BACKBONES)}) or a "
                          f"mapping with its name and options, e.g. {{name: mobilenet_v2, width_mult: 1.0}}")
    if name not in BACKBONES:
        raise ConfigError(f"model.backbone.name={name!r}: no such backbone; use one of {', '.join(BACKBONES)} "
                          f"(on the command line: model/backbone=resnet101)")
    return name, options


def backbone_options(name: str) -> dict[str, inspect.Parameter]:
    """The keyword options of backbone `name` besides output_stride (which is the model's)."""
    params = inspect.signature(BACKBONES[name]).parameters
    return {k: p for k, p in params.items() if k != "output_stride" and p.kind is p.KEYWORD_ONLY}


def check_backbone_options(name: str, options: Mapping) -> None:
    """A ConfigError naming `model.backbone.<key>` for an option backbone `name` does not take."""
    known = backbone_options(name)
    for key in options:
        if key in known:
            continue
        listed = f"its options: {', '.join(sorted(known))}" if known else "it takes no options"
        owners = [other for other in BACKBONES if key in backbone_options(other)]
        fix = (f"it is an option of {' and '.join(owners)}, set by a config written for that backbone (a recipe "
               f"or an experiment): drop it with ~model.backbone.{key}" if owners else
               "check the spelling, or drop it")
        raise ConfigError(f"model.backbone.{key}: the {name} backbone has no such option ({listed}); {fix}")


def typed_backbone(backbone: str | Mapping) -> str | dict:
    """`model.backbone` checked: a name in BACKBONES, or a mapping of one and that backbone's own options, typed and
    range-checked by their hints (`deeplab.schema.checked`); otherwise a ConfigError naming model.backbone.<key>."""
    name, options = split_backbone(backbone)
    check_backbone_options(name, options)
    typed = checked("model.backbone", options, keyword_hints(BACKBONES[name], ("output_stride",)))
    return backbone if isinstance(backbone, str) else {"name": name, **typed}


def build_backbone(backbone: str | Mapping, *, output_stride: int) -> nn.Module:
    """The backbone a `model.backbone` value names, with its options (checked: `typed_backbone`), at `output_stride`."""
    name, options = split_backbone(typed_backbone(backbone))
    return BACKBONES[name](output_stride=output_stride, **options)


def backbone_architecture(backbone: str | Mapping) -> dict:
    """{"name": ..., every option with its default filled in}: equal for two values that build the same weights."""
    name, options = split_backbone(backbone)
    return {"name": name, **{k: p.default for k, p in backbone_options(name).items()}, **options}


def load_backbone_weights(backbone: nn.Module, weights: str | Path) -> str:
    """Load ImageNet or local torchvision-format weights of the backbone's family into it; return their source."""
    if isinstance(weights, str) and weights in IMAGENET_WEIGHTS:
        backbone.check_imagenet()
        state, source = _imagenet_state_dict(backbone, IMAGENET_WEIGHTS[weights])
    else:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise ConfigError(
                f"model.backbone_weights: file not found: {path}; pass the path of a torchvision {backbone.family} "
                f"state dict (torch.save(torchvision.models.{_name_of(backbone)}(...).state_dict(), PATH)), or one "
                f"of {sorted(IMAGENET_WEIGHTS)}, or null for random init")
        state, source = _segmentation_backbone(_read_state_dict(path), str(path))
    _load_torchvision_state(backbone, state, source)
    return source


def imagenet_cache_path(name: str = "IMAGENET1K_V1", *, backbone: str = "mobilenet_v2") -> Path:
    """Where torchvision's weights API keeps the downloaded file (under $TORCH_HOME/hub/checkpoints)."""
    url = BACKBONES[backbone].torchvision_weights[name].url
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name


def _name_of(backbone: nn.Module) -> str:
    return next(name for name, cls in BACKBONES.items() if type(backbone) is cls)


def _imagenet_state_dict(backbone: nn.Module, name: str) -> tuple[dict, str]:
    cached = imagenet_cache_path(name, backbone=_name_of(backbone))
    if cached.is_file():
        return _read_state_dict(cached), str(cached)
    weights = backbone.torchvision_weights[name]
    try:
        return weights.get_state_dict(progress=True, check_hash=True, weights_only=True), str(cached)
    except OSError as exc:  # URLError (offline, DNS, proxy) is an OSError
        raise ConfigError(
            f"model.backbone_weights=imagenet: could not download the ImageNet {backbone.family} weights from "
            f"{weights.url} ({exc}); offline, copy that file to {cached} (set TORCH_HOME to move the cache), pass "
            f"model.backbone_weights=/path/to/{cached.name}, or set model.backbone_weights=null to start from "
            f"random weights on purpose") from exc


def _read_state_dict(path: Path) -> dict:
    try:
        state = read_torch_file(path)  # weights_only, and one sentence for a file that is not a usable torch file
    except CheckpointError as exc:
        raise ConfigError(f"model.backbone_weights: {exc}") from exc
    if not isinstance(state, dict):
        raise ConfigError(f"model.backbone_weights: {path} holds a {type(state).__name__}, not a state dict")
    return state


def _segmentation_backbone(state: dict, source: str) -> tuple[dict, str]:
    """The backbone.* tensors of a torchvision segmentation model's state dict (deeplabv3_resnet50's, fcn_resnet101's:
    backbone.*, classifier.*, aux_classifier.*), named as its backbone network's own; any other state dict as it is."""
    keys = [str(k) for k in state]
    if not any(k.startswith("classifier.") for k in keys) or not all(
            k.startswith(("backbone.", "classifier.", "aux_classifier.")) for k in keys):
        return state, source
    part = {k.removeprefix("backbone."): v for k, v in state.items() if str(k).startswith("backbone.")}
    return part, f"{source} (the backbone of a torchvision segmentation model)"


def _holds_backbone_keys(cls: type[nn.Module], keys: set, state: Mapping) -> bool:
    """Whether `state` holds exactly the backbone keys `keys` of `cls`, besides its classifier's."""
    return keys <= set(state) and all(k in keys or str(k).startswith(cls.ignored_prefixes) for k in state)


def _family_of(state: Mapping) -> str | None:
    """The BACKBONES name whose torchvision state dicts have exactly the keys of `state`, if any."""
    for name, cls in BACKBONES.items():
        with torch.device("meta"):  # key names only: nothing is allocated or initialised
            keys = set(cls().state_dict())
        if _holds_backbone_keys(cls, keys, state):
            return name
    return None


def _what_it_is(state: Mapping) -> str:
    """A hint for a state dict that does not fit: another backbone's torchvision weights, or a deeplab model's."""
    family = _family_of(state)
    if family:
        return f"; it holds torchvision {BACKBONES[family].family} weights: use them with model/backbone={family}"
    if {"model", "config"} <= set(state) or any(str(k).startswith(("aspp.", "decoder.")) for k in state):
        return "; it holds a deeplab model's weights: start from it with init_from=FILE instead"
    return ""


def _load_torchvision_state(backbone: nn.Module, state: dict, source: str) -> None:
    """Load the backbone's tensors from a torchvision state dict, with one clear error if it does not fit."""
    own = backbone.state_dict()
    if not _holds_backbone_keys(type(backbone), set(own), state):
        missing = [k for k in own if k not in state]
        extra = [k for k in state if k not in own and not str(k).startswith(backbone.ignored_prefixes)]
        raise ConfigError(
            f"model.backbone_weights: {source} is not a torchvision {backbone.family} state dict: {len(missing)} of "
            f"{len(own)} backbone tensors are missing and {len(extra)} others are there (first: "
            f"{(missing or extra)[0]!r}); expected keys like {backbone.example_key!r}{_what_it_is(state)}")
    for key, tensor in own.items():
        if state[key].shape != tensor.shape:
            options = "".join(f", {k}={v}" for k, v in backbone.options.items())
            raise ConfigError(
                f"model.backbone_weights: {source} does not fit this backbone ({backbone.family}{options}): {key} "
                f"has shape {tuple(state[key].shape)}, expected {tuple(tensor.shape)}")
    backbone.load_state_dict({k: state[k] for k in own})
