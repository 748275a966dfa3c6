"""The training config as one checked whole: every key and value is checked before any data is read or any file is
written, and a resumed run takes the command line's safe overrides and refuses the others, naming the key.
"""

import inspect
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
from deeplab.losses import CLASS_WEIGHTINGS, LOSSES, build_loss
from deeplab.model import build_model, upgrade_model_config
from deeplab.model.backbone import typed_backbone
from deeplab.model.deeplabv3plus import LEGACY_BACKBONE_KEYS
from deeplab.schema import Count, NonNegativeInt, Positive, checked, keyword_hints, ranged

EmaDecay = ranged(float, lambda v: 0 < v < 1, "null or a number in (0, 1), e.g. 0.9999")


@dataclass(frozen=True)
class TrainerSettings:
    """The `trainer` config section: its schema (keys, types, range rules) and the trainer's typed settings."""

    iterations: Count = 30000
    batch_size: Count = 16  # the global batch per optimizer step, over all processes and accumulation steps
    grad_accum: Count = 1
    val_every: Count = 1000
    checkpoint_every: Count = 1000
    log_every: Count = 20
    num_workers: NonNegativeInt = 4
    device: str = "auto"
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    channels_last: bool = True
    fast_convs: bool = True  # the dense decoder's 3x3 convs with fewer multiplications where they run in fp32 on CPU
    compile: bool = False
    grad_clip: Positive | None = None
    ema_decay: EmaDecay | None = None  # None: no weight EMA; e.g. 0.9999 (deeplab.engine.ema)
    freeze_backbone_iters: NonNegativeInt = 0
    sync_bn: bool | None = None  # None: on when more than one process trains on GPUs
    deterministic: bool = False
    grid_images: NonNegativeInt = 4
    log_figures: bool = True  # TensorBoard's confusion matrix, per-class IoU and worst images at each validation
    preflight_samples: NonNegativeInt = 8


# section -> the callable that takes its keys as keyword arguments, and those the trainer passes it itself
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


def _section_hints(name: str, section: Mapping) -> tuple[dict, str | None]:
    """{key: type hint} a section may hold (its builder's keywords, and those of the table entry its `name` picks:
    absent, its builder's default, so a config saved before the table had that name keeps its meaning), and that
    name; an unknown name is a ConfigError."""
    fn, passed = SECTIONS[name]
    hints = keyword_hints(fn, passed)
    if name not in CHOICES:
        return hints, None
    table, given = CHOICES[name]
    default = inspect.signature(fn).parameters["name"].default
    chosen = section.get("name", None if default is inspect.Parameter.empty else default)
    if not isinstance(chosen, str) or chosen not in table:
        raise ConfigError(f"{name}.name={chosen!r}: must be one of {sorted(table)}")
    own = keyword_hints(table[chosen], given)
    if name == "optim":  # torch checks its optimizers' values itself (_check_optimizer), better than its hints can
        own = dict.fromkeys(own, typing.Any)
    return {**hints, **own}, chosen


def validate_config(config: Mapping) -> dict:
    """The composed training config checked before anything is read or written (keys, types, ranges, consistency),
    with its sections' values typed as their schemas say (e.g. "8" read as 8)."""
    config = dict(config)
    for name in SECTIONS:
        section = config.get(name)
        if not isinstance(section, Mapping):
            raise ConfigError(f"{name}: the config has no {name} section; do not delete config groups")
        for key in LEGACY_BACKBONE_KEYS if name == "model" else ():  # model keys before backbones had names
            if key in section:
                raise ConfigError(f"model.{key}: now an option of the backbone, model.backbone.{key} (e.g. model."
                                  f"backbone.{key}={section[key]}, with model/backbone=mobilenet_v2, the default)")
        hints, chosen = _section_hints(name, section)
        # a null optim key is left out (build_optimizer): how configs saved by older runs list the other optimizer's
        values = {k: v for k, v in section.items() if v is not None} if name == "optim" else section
        where = f" for {name}.name={chosen}" if chosen else ""
        unknown = ("check the spelling, or drop it" + (f" (switch with {name}={chosen}, which brings only its own "
                                                       f"keys)" if chosen else ""))
        typed = checked(name, values, hints, where=where, unknown=unknown)
        config[name] = {**section, **typed}
    if "backbone" in config["model"]:
        config["model"]["backbone"] = typed_backbone(config["model"]["backbone"])
    _check_consistency(config)
    return config


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
    config, notes = OmegaConf.create(saved), []
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
        OmegaConf.update(config, key, new[key], merge=False)
    return OmegaConf.to_container(config), notes
