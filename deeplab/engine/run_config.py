"""The training config as one checked whole: every key and value is checked before any data is read or any file is
written, and a resumed run takes the command line's safe overrides and refuses the others, naming the key.
"""

import inspect
import math
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from deeplab.data import check_dataset_config
from deeplab.data.transforms import train_transform
from deeplab.engine.loaders import check_batch_split
from deeplab.engine.optim import OPTIMIZERS, SCHEDULES, build_optimizer, build_scheduler
from deeplab.engine.precision import resolve_device, resolve_precision
from deeplab.errors import ConfigError, one_line
from deeplab.losses import CLASS_WEIGHTINGS, LOSSES, build_loss, check_ohem_fraction
from deeplab.model import BACKBONES, OUTPUT_STRIDES, build_model, upgrade_model_config
from deeplab.model.backbone import check_backbone_options, split_backbone
from deeplab.model.deeplabv3plus import LEGACY_BACKBONE_KEYS
from deeplab.model.mobilenet import PADDINGS


@dataclass(frozen=True)
class TrainerSettings:
    """The `trainer` config section; a misspelt key is a ConfigError naming it."""

    iterations: int = 30000
    batch_size: int = 16  # the global batch per optimizer step, over all processes and accumulation steps
    grad_accum: int = 1
    val_every: int = 1000
    checkpoint_every: int = 1000
    log_every: int = 20
    num_workers: int = 4
    device: str = "auto"
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    channels_last: bool = True
    fast_convs: bool = True  # the dense decoder's 3x3 convs with fewer multiplications where they run in fp32 on CPU
    compile: bool = False
    grad_clip: float | None = None
    ema_decay: float | None = None  # None: no weight EMA; e.g. 0.9999 (deeplab.engine.ema)
    freeze_backbone_iters: int = 0
    sync_bn: bool | None = None  # None: on when more than one process trains on GPUs
    deterministic: bool = False
    grid_images: int = 4
    log_figures: bool = True  # TensorBoard's confusion matrix and per-class IoU images at each validation
    preflight_samples: int = 8


# section -> the callable that takes its keys as keyword arguments (besides those the trainer passes itself)
SECTIONS: dict[str, tuple[Callable, tuple[str, ...]]] = {
    "trainer": (TrainerSettings, ()), "model": (build_model, ()), "optim": (build_optimizer, ("model",)),
    "schedule": (build_scheduler, ("optimizer", "total_iters")), "loss": (build_loss, ("ignore_index",)),
    "augment": (train_transform, ("mean", "std", "ignore_index")),
}

# section -> the table its `name` picks from, and the arguments its builder gives the chosen entry itself; the
# section's other keys are that entry's own keywords
CHOICES: dict[str, tuple[Mapping[str, Callable], tuple[str, ...]]] = {
    "optim": (OPTIMIZERS, ("params", "lr")), "schedule": (SCHEDULES, ("iteration", "total")),
    "loss": (LOSSES, ("ignore_index",)),
}

# (key, test, what is allowed): plain range checks that read better than a builder's own error
RANGES: list[tuple[str, Callable[[typing.Any], bool], str]] = [
    *[(f"trainer.{k}", lambda v: v >= 1, "an integer >= 1") for k in
      ("iterations", "batch_size", "grad_accum", "val_every", "checkpoint_every", "log_every")],
    *[(f"trainer.{k}", lambda v: v >= 0, "an integer >= 0") for k in
      ("num_workers", "freeze_backbone_iters", "grid_images", "preflight_samples")],
    ("trainer.grad_clip", lambda v: v is None or v > 0, "null or a number > 0"),
    ("trainer.ema_decay", lambda v: v is None or 0 < v < 1, "null or a number in (0, 1), e.g. 0.9999"),
    ("model.output_stride", lambda v: v in OUTPUT_STRIDES, f"one of {list(OUTPUT_STRIDES)}"),
    ("model.backbone.width_mult", lambda v: v > 0, "a number > 0 (0.5, 0.75, 1.0, 1.4)"),
    ("model.backbone.expand_ratio", lambda v: v >= 1, "an integer >= 1"),
    ("model.backbone.padding", lambda v: v in PADDINGS, f"one of {', '.join(PADDINGS)} (conv: torchvision's; input: "
                                                        "VainF's, for its converted checkpoints)"),
    ("model.decoder_convs", lambda v: v in (1, 2), "1 or 2 (2: the paper's decoder; 1: VainF's)"),
    *[(f"model.{k}", lambda v: v >= 1, "an integer >= 1") for k in
      ("aspp_channels", "low_level_channels", "decoder_channels")],
    ("model.aspp_dropout", lambda v: 0 <= v < 1, "a number in [0, 1)"),
    ("optim.lr", lambda v: v > 0 and math.isfinite(v), "a number > 0, e.g. 0.01"),
    ("optim.backbone_lr_mult", lambda v: v >= 0, "a number >= 0 (0 freezes the backbone's updates)"),
    ("optim.weight_decay", lambda v: v is None or v >= 0, "null or a number >= 0"),
    ("optim.momentum", lambda v: v is None or 0 <= v < 1, "null or a number in [0, 1)"),
    ("schedule.power", lambda v: v > 0, "a number > 0"),
    ("schedule.warmup_iters", lambda v: v >= 0, "an integer >= 0"),
    ("schedule.warmup_ratio", lambda v: 0 <= v <= 1, "a number in [0, 1]"),
    ("schedule.min_lr_ratio", lambda v: 0 <= v < 1, "a number in [0, 1)"),
    ("loss.dice_weight", lambda v: v >= 0, "a number >= 0"),
    ("loss.gamma", lambda v: v >= 0, "a number >= 0 (0 is plain cross-entropy)"),
    ("loss.ohem_min_pixels", lambda v: v >= 0, "an integer >= 0"),
    ("augment.hflip", lambda v: 0 <= v <= 1, "a probability in [0, 1]"),
    ("augment.color_jitter", lambda v: v >= 0, "a number >= 0"),
]


def _describe(annotation) -> str:
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    if annotation in names:
        return names[annotation]
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args) + (" or null" if type(None) in typing.get_args(annotation)
                                                          else "")
    if typing.get_origin(annotation) in (list, tuple, Sequence):
        return "a list"
    return "a mapping" if typing.get_origin(annotation) in (dict, Mapping) else str(annotation)


def _matches_type(value, annotation) -> bool:
    """Whether a config value fits a parameter's type hint (the hints this project uses; others pass)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if origin in (typing.Union, types.UnionType):
        return any(_matches_type(value, a) for a in args)
    if origin in (list, tuple, Sequence):
        if not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(_matches_type(v, a) for v, a in zip(value, args))
        return not args or all(_matches_type(v, args[0]) for v in value)
    if origin in (dict, Mapping):
        return isinstance(value, dict)
    return True


def check_section(name: str, values: Mapping, fn: Callable, *, passed: Sequence[str] = (),
                  extra: Mapping[str, inspect.Parameter] | None = None, chosen: str | None = None) -> None:
    """Every key of a section is a keyword `fn` takes (or one of `extra`, the keywords of the `chosen` name's table
    entry), with a value of its type; else one sentence naming it."""
    params = {**{k: p for k, p in inspect.signature(fn).parameters.items() if k not in passed
                 and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}, **(extra or {})}
    hints = typing.get_type_hints(fn.__init__ if inspect.isclass(fn) and not hasattr(fn, "__dataclass_fields__")
                                  else fn)
    for key, value in values.items():
        if key not in params:
            where = f" for {name}.name={chosen}" if chosen else ""
            switch = f" (switch with {name}={chosen}, which brings only its own keys)" if chosen else ""
            raise ConfigError(f"{name}.{key}: no such key in the {name} section{where} (known: "
                              f"{', '.join(sorted(params))}); check the spelling, or drop it{switch}")
        hint = hints.get(key, params[key].annotation)
        if hint is not inspect.Parameter.empty and not _matches_type(value, hint):
            raise ConfigError(f"{name}.{key}={value!r}: must be {_describe(hint)}")


def _select(config: Mapping, key: str, default=None):
    node = config
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node


def _chosen_entry(name: str, section: Mapping) -> tuple[str, dict[str, inspect.Parameter]]:
    """The name a section picks from its table in CHOICES (absent: its builder's default, so a config saved before
    the table had that name keeps its meaning), and that entry's own keywords; an unknown name is a ConfigError."""
    table, passed = CHOICES[name]
    default = inspect.signature(SECTIONS[name][0]).parameters["name"].default
    chosen = section.get("name", None if default is inspect.Parameter.empty else default)
    if not isinstance(chosen, str) or chosen not in table:
        raise ConfigError(f"{name}.name={chosen!r}: must be one of {sorted(table)}")
    own = {k: p for k, p in inspect.signature(table[chosen]).parameters.items()
           if k not in passed and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
    if name == "optim":  # torch checks its optimizers' values itself (_check_optimizer), better than its hints can
        own = {k: p.replace(annotation=inspect.Parameter.empty) for k, p in own.items()}
    return chosen, own


def validate_config(config: Mapping) -> None:
    """Check the composed training config before anything is read or written: keys, types, ranges, consistency."""
    for name, (fn, passed) in SECTIONS.items():
        section = config.get(name)
        if not isinstance(section, Mapping):
            raise ConfigError(f"{name}: the config has no {name} section; do not delete config groups")
        values, extra, chosen = section, None, None
        if name in CHOICES:
            chosen, extra = _chosen_entry(name, section)
        if name == "optim":  # optim keys set to null are left out (build_optimizer): a recipe's way to cancel one
            values = {k: v for k, v in section.items() if v is not None}
        if name == "model":
            _check_legacy_keys(section)
        check_section(name, values, fn, passed=passed, extra=extra, chosen=chosen)
    _check_backbone(config["model"].get("backbone", "mobilenet_v2"))
    for key, test, allowed in RANGES:
        value = _select(config, key)
        if value is None and key.split(".")[-1] not in ("grad_clip", "weight_decay", "momentum"):
            continue
        try:
            ok = test(value)
        except TypeError:
            ok = False
        if not ok:
            raise ConfigError(f"{key}={value!r}: must be {allowed}")
    _check_consistency(config)


def _check_legacy_keys(model: Mapping) -> None:
    """The MobileNetV2 options that were model keys before backbones had names: say where they went."""
    for key in LEGACY_BACKBONE_KEYS:
        if key in model:
            raise ConfigError(f"model.{key}: now an option of the backbone, model.backbone.{key} (e.g. "
                              f"model.backbone.{key}={model[key]}, with model/backbone=mobilenet_v2, the default)")


def _check_backbone(backbone) -> None:
    """`model.backbone`: a name in BACKBONES, or a mapping of one and that backbone's own options, of their types."""
    name, options = split_backbone(backbone)
    check_backbone_options(name, options)
    check_section("model.backbone", options, BACKBONES[name], passed=("output_stride",))


def _check_consistency(config: Mapping) -> None:
    """Keys that must agree with each other, and what the dataset and optimizer builders would refuse."""
    data, trainer = config["dataset"], config["trainer"]
    check_dataset_config(**{k: data.get(k) for k in ("format", "num_classes", "ignore_index", "class_names",
                                                     "palette", "ignore_colour", "label_map",
                                                     "allow_ignore_only_masks", "mean", "std")},
                         options={k: v for k, v in data.items() if k not in DATASET_KEYS})
    if isinstance(config.get("seed"), bool) or not isinstance(config.get("seed"), int):
        raise ConfigError(f"seed={config.get('seed')!r}: must be an integer")
    if config["schedule"].get("warmup_iters", 0) >= trainer["iterations"]:
        raise ConfigError(f"schedule.warmup_iters={config['schedule']['warmup_iters']} is not below "
                          f"trainer.iterations={trainer['iterations']}: the learning rate would never leave its "
                          f"warmup; lower schedule.warmup_iters")
    _check_optimizer(config["optim"])
    device = resolve_device(trainer["device"], key="trainer.device")
    resolve_precision(trainer["precision"], device.type, key="trainer.precision")
    names = data.get("class_names")
    if names is not None and len(names) != data["num_classes"]:
        raise ConfigError(f"dataset.num_classes={data['num_classes']} but dataset.class_names lists {len(names)} "
                          f"names; give one name per class")
    if config["model"].get("num_classes") != data["num_classes"]:
        raise ConfigError(f"model.num_classes={config['model'].get('num_classes')} differs from dataset.num_classes="
                          f"{data['num_classes']}; leave model.num_classes at ${{dataset.num_classes}}")
    for key in ("class_weights", "alpha"):  # cross-entropy's and focal loss's per-class weights
        weights = config["loss"].get(key)
        if isinstance(weights, str):
            if weights not in CLASS_WEIGHTINGS:
                raise ConfigError(f"loss.{key}={weights!r}: must be one of {', '.join(CLASS_WEIGHTINGS)} (computed "
                                  f"from the training split) or a list of one weight per class")
        elif weights is not None and len(weights) != data["num_classes"]:
            raise ConfigError(f"loss.{key} has {len(weights)} values for dataset.num_classes="
                              f"{data['num_classes']}; give one weight per class")
    check_batch_split(trainer["batch_size"], accum=trainer["grad_accum"])  # and again with the process count
    check_ohem_fraction(config["loss"].get("ohem_fraction"))
    crop = config["augment"].get("crop_size")
    if crop is not None and any(int(c) < 1 for c in ([crop] if isinstance(crop, int) else crop)):
        raise ConfigError(f"augment.crop_size={crop!r}: must be a size >= 1, e.g. [513, 513]")
    scale = config["augment"].get("scale_range")
    if scale is not None and (len(scale) != 2 or not 0 < scale[0] <= scale[1]):
        raise ConfigError(f"augment.scale_range={scale!r}: must be [low, high] with 0 < low <= high")


# dataset keys build_dataset takes itself; the others are options of the dataset's format
DATASET_KEYS = ("format", "root", "num_classes", "ignore_index", "class_names", "palette", "ignore_colour",
                "label_map", "allow_ignore_only_masks", "mean", "std", "train_split", "val_split")


def _check_optimizer(optim: Mapping) -> None:
    """Build the optimizer on one stand-in parameter: torch's own range checks (betas, eps...) as a ConfigError."""
    options = {k: v for k, v in optim.items() if v is not None and k not in ("name", "lr", "backbone_lr_mult")}
    try:
        OPTIMIZERS[optim["name"]]([torch.zeros(1, requires_grad=True)], lr=optim["lr"], **options)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"optim ({optim['name']}): {one_line(exc)}; fix the optim.* key it names") from exc


# What a resumed run may change: paths, cadence, length, workers and the speed settings that leave its result
# as it is. Everything else (the model, the data it learns, the optimisation) would make it another run.
SAFE_ON_RESUME = ("trainer.iterations", "trainer.val_every", "trainer.checkpoint_every", "trainer.log_every",
                  "trainer.num_workers", "trainer.device", "trainer.precision", "trainer.channels_last",
                  "trainer.fast_convs", "trainer.compile", "trainer.grad_accum", "trainer.deterministic",
                  "trainer.grid_images", "trainer.log_figures", "trainer.preflight_samples", "output_root",
                  "resume")
# dataset keys that define what is learned; its other keys are where the data lives (root, folders, cache)
DATASET_IDENTITY = ("format", "num_classes", "class_names", "ignore_index", "label_map", "palette", "ignore_colour",
                    "mean", "std", "train_split", "val_ratio", "seed", "categories")


def safe_on_resume(key: str) -> bool:
    """Whether a resumed run may take a new value for `key` (a dotted config key)."""
    if key.startswith("dataset."):
        return key.split(".")[1] not in DATASET_IDENTITY
    return key in SAFE_ON_RESUME


def _refuse(key: str, shown: str) -> ConfigError:
    return ConfigError(f"{shown}: a resumed run keeps its {key.split('.')[0]} settings as saved, and {key} would "
                       f"change the model or what it learns; drop it, or start a new run from these weights with "
                       f"init_from=<its last.pt>")


def _set(config: dict, key: str, value) -> None:
    *parents, last = key.split(".")
    node = config
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value


def _flat(config: Mapping, prefix: str = "") -> dict:
    """{dotted key: value} of every leaf."""
    out = {}
    for key, value in config.items():
        if isinstance(value, Mapping) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def resume_config(saved: dict, cfg: DictConfig, overrides: Sequence[str]) -> tuple[dict, list[str]]:
    """The saved config with the command line's safe overrides applied, and a note for each change.

    `overrides` are the command line's (Hydra's `overrides.task`); their values are read from the composed `cfg`,
    so interpolations and types are as Hydra made them. A config group chosen again as it was (dataset=voc,
    experiment=voc_os16) is fine; one that would change the model or the optimisation is refused, naming a key.
    A saved model section of the MobileNetV2-only layout is read in today's (`upgrade_model_config`).
    """
    saved = {**saved, "model": upgrade_model_config(saved["model"])}
    new, old = _flat(OmegaConf.to_container(cfg, resolve=True)), _flat(saved)
    config, notes = OmegaConf.to_container(OmegaConf.create(saved)), []
    for override in OverridesParser.create().parse_overrides(list(overrides)):
        key, shown = override.key_or_group, override.input_line or override.key_or_group
        if key.split(".")[0] in ("hydra", "resume"):
            continue
        if override.is_delete():
            raise _refuse(key, shown)
        if key not in new:  # a config group: compare every key it may have set
            changed = [k for k in new if (k.startswith(f"{key}.") or key not in saved) and not safe_on_resume(k)
                       and old.get(k) != new[k]]
            if changed:
                raise _refuse(changed[0], shown)
            continue
        if key not in old:
            raise ConfigError(f"{shown}: this run's saved config has no key {key}; check the spelling")
        if new[key] == old[key]:
            continue
        if not safe_on_resume(key):
            raise _refuse(key, shown)
        notes.append(f"{key}: {old[key]!r} -> {new[key]!r}")
        _set(config, key, new[key])
    return config, notes
