"""Datasets: each format lists (image, mask) paths; SegmentationDataset reads, checks and transforms them."""

import inspect
import logging
from collections.abc import Callable, Mapping, Sequence

from deeplab.data.dataset import DataError, SegmentationDataset, no_samples_problem, read_image, read_mask
from deeplab.data.cityscapes import cityscapes_samples
from deeplab.data.coco import coco_samples
from deeplab.data.demo import demo_samples
from deeplab.data.folder import folder_samples
from deeplab.data.transforms import check_normalisation
from deeplab.data.voc import voc_samples
from deeplab.errors import ConfigError
from deeplab.schema import FOREIGN_KEYS
from deeplab.torch_files import CheckpointError

log = logging.getLogger("deeplab.data")

# format name -> function(*, root, split, **format options) -> [(image path, mask path), ...]
FORMATS: dict[str, Callable] = {"voc": voc_samples, "folder": folder_samples, "coco": coco_samples,
                                "cityscapes": cityscapes_samples, "demo": demo_samples}
# Formats whose masks this project writes itself, so 255 is always a real ignore region: COCO's are rasterised from
# the JSON, and an image whose only selected objects are crowds has a mask of 0 and 255 alone. The default of
# dataset.allow_ignore_only_masks when a config does not set it (a run saved before the key existed).
WRITES_OWN_MASKS = ("coco",)


def _is_byte(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 255


def _zero_label_map(num_classes: int) -> str:
    """The label_map that does what mmsegmentation's reduce_zero_label does: 0 ignored, the others down by one."""
    shown = ", ".join(f"{k}: {k - 1}" for k in range(1, min(num_classes, 3) + 1))
    return "{0: 255, " + shown + (f", ..., {num_classes}: {num_classes - 1}}}" if num_classes > 3 else "}")


def _is_colour(value) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 3 and all(map(_is_byte, value))


def check_dataset_config(*, format: str, num_classes: int, ignore_index: int, class_names: Sequence[str] | None,
                         palette: Sequence[Sequence[int]] | None, ignore_colour: Sequence[int] | None,
                         label_map: Mapping[int, int] | None, allow_ignore_only_masks: bool | None,
                         options: Mapping, mean: Sequence[float] | None = None,
                         std: Sequence[float] | None = None) -> None:
    """Raise a ConfigError naming the `dataset.*` key whose value cannot work, before any file is read."""
    if format not in FORMATS:
        raise ConfigError(f"dataset.format={format!r}: unknown dataset format; known: {sorted(FORMATS)}")
    # root and split come from build_dataset; voc's `hint` is for the formats built on it (demo), not a user key
    known = [k for k in inspect.signature(FORMATS[format]).parameters if k not in ("root", "split", "hint")]
    unknown = [k for k in options if k not in known]
    if unknown and unknown[0] in FOREIGN_KEYS:
        raise ConfigError(f"dataset.{unknown[0]}: {FOREIGN_KEYS[unknown[0]]}")
    if unknown:
        raise ConfigError(f"dataset.{unknown[0]}: not an option of the {format} dataset format (its options: "
                          f"{', '.join(known) or 'none'}); check the spelling, or drop it")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or not 2 <= num_classes <= 255:
        raise ConfigError(f"dataset.num_classes={num_classes!r}: must be an integer in 2-255 (masks are 8-bit; "
                          f"binary segmentation, an object on background, is num_classes=2 with masks of 0 and 1)")
    if not _is_byte(ignore_index) or ignore_index < num_classes:
        other = ""
        if isinstance(ignore_index, int) and ignore_index < 0:  # -1 or torch's -100 ignore a target in code
            other = "; the ignore value is the one the masks hold, not a loss's (-1, -100)"
        elif ignore_index == 0:  # mmsegmentation's unlabelled value (reduce_zero_label)
            other = (f"; if 0 marks unlabelled pixels in the masks, keep 255 and shift the classes down: "
                     f"dataset.label_map='{_zero_label_map(num_classes)}'")
        raise ConfigError(f"dataset.ignore_index={ignore_index!r}: must be an integer in {num_classes}-255 (masks are "
                          f"8-bit, and it must not be one of the dataset.num_classes={num_classes} class indices); "
                          f"usually 255{other}")
    if class_names is not None and len(class_names) != num_classes:
        raise ConfigError(f"dataset.class_names lists {len(class_names)} names but dataset.num_classes="
                          f"{num_classes}; give one name per class")
    if class_names is not None and len(set(map(str, class_names))) != len(class_names):
        twice = next(n for n in class_names if list(map(str, class_names)).count(str(n)) > 1)
        raise ConfigError(f"dataset.class_names names {twice!r} more than once; per-class metrics and logs are "
                          "keyed by name, so give each class its own name")
    check_normalisation(mean, std)  # the transforms' rule, which they check themselves as well
    if palette is not None:
        if palette and all(_is_byte(v) for v in palette) and len(palette) % 3 == 0:  # PIL's flat putpalette form
            triples = [list(palette[i:i + 3]) for i in range(0, min(len(palette), 9), 3)]
            raise ConfigError(f"dataset.palette is a flat list of {len(palette)} numbers; give one [r, g, b] per "
                              f"class instead: [{', '.join(map(str, triples))}{', ...' if len(palette) > 9 else ''}]")
        if len(palette) < num_classes:
            raise ConfigError(f"dataset.palette has {len(palette)} colours for dataset.num_classes={num_classes}; "
                              "give one [r, g, b] per class, or set dataset.palette=null")
        bad = next((i for i, colour in enumerate(palette) if not _is_colour(colour)), None)
        if bad is not None:
            raise ConfigError(f"dataset.palette entry {bad} is {palette[bad]!r}; each colour must be [r, g, b] "
                              "with values 0-255")
    if ignore_colour is not None and not _is_colour(ignore_colour):
        raise ConfigError(f"dataset.ignore_colour={ignore_colour!r}: must be null or [r, g, b] with values 0-255")
    if allow_ignore_only_masks not in (None, True, False):
        raise ConfigError(f"dataset.allow_ignore_only_masks={allow_ignore_only_masks!r}: must be true or false")
    bad_map = [(k, v) for k, v in (label_map or {}).items() if not (_is_byte(k) and _is_byte(v))]
    if bad_map:
        raise ConfigError(f"dataset.label_map maps {bad_map[0][0]!r} to {bad_map[0][1]!r}; both the raw mask value "
                          "and the class index it becomes must be integers in 0-255")


def _class_names(saved: Mapping, given: Mapping) -> tuple[list[str], list[str], str]:
    """The checkpoint's and the given config's class names (indices where none), and where they first differ."""
    ours, theirs = [list(map(str, names or range(saved["num_classes"])))
                    for names in (saved.get("class_names"), given.get("class_names"))]
    i = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), 0)
    return ours, theirs, f"its class {i} is {theirs[i] if i < len(theirs) else None!r}, the checkpoint's {ours[i]!r}"


def fine_tuning_notes(saved: Mapping, given: Mapping, *, checkpoint: str) -> None:
    """Log how a run started from a checkpoint's weights (train.py init_from=) differs in its dataset config from the
    checkpoint's own: it trains with its own normalisation and classes, and with as many classes keeps the
    classifier's rows by index (another count starts the classifier fresh, which the trainer says)."""
    for key in ("mean", "std"):
        if given.get(key) != saved.get(key):
            log.warning("init_from=%s: dataset.%s=%s differs from the checkpoint's %s, which its weights were trained "
                        "with; this run normalises with its own %s", checkpoint, key, given.get(key), saved.get(key),
                        given.get(key))
    ours, theirs, first = _class_names(saved, given)
    if ours != theirs and len(ours) == len(theirs):
        log.warning("init_from=%s: dataset.class_names differs from the checkpoint's (%s); the classifier keeps its "
                    "rows by index, so each class starts from the checkpoint's class of its index", checkpoint, first)


def checkpoint_dataset(saved: Mapping, given: Mapping, *, checkpoint: str) -> dict:
    """The dataset config to score a checkpoint with when the command gives one (`given`, evaluate.py dataset=...)
    besides the one saved in it (`saved`): the given one, which says where the data is and how its masks read, with
    the checkpoint's mean and std (its model's input) and class names (its outputs). Masks that name the same classes
    in another order are read in the checkpoint's order (a label_map by name). Each difference is logged with the
    value used; another class count is a CheckpointError."""
    n, shown = saved["num_classes"], f"{checkpoint}: dataset"
    if given["num_classes"] != n:
        raise CheckpointError(f"{checkpoint}: checkpoint is for {n} classes but the dataset ({given['format']}) has "
                              f"{given['num_classes']}; evaluate it on the data it was trained for")
    used = {"mean": "the checkpoint's, which its model was trained with", "std": "the checkpoint's, which its model "
            "was trained with", "palette": "the dataset's, in which its RGB masks are drawn", "ignore_index":
            "the dataset's, which its masks mark"}
    for key, which in used.items():
        if given.get(key) != saved.get(key):
            log.warning("%s.%s=%s differs from the checkpoint's %s; using %s", shown, key, given.get(key),
                        saved.get(key), which)
    data = {**given, "mean": saved["mean"], "std": saved["std"], "class_names": saved.get("class_names")}
    ours, theirs, first = _class_names(saved, given)
    if ours != theirs and sorted(ours) == sorted(theirs):  # the same classes in another order: remap by name
        order = [ours.index(name) for name in theirs]  # the dataset's class j is the checkpoint's class order[j]
        raw = {int(k): int(v) for k, v in (given.get("label_map") or {}).items()}
        read = {value: raw.get(value, value) for value in range(256)}  # what the dataset's label_map makes of it
        data["label_map"] = {value: final for value, target in read.items()
                             if (final := order[target] if target < n else target) != value}
        log.warning("%s.class_names lists the checkpoint's classes in another order (%s); its masks are read in "
                    "the checkpoint's order, by name (dataset.label_map=%s)", shown, first, data["label_map"])
    elif ours != theirs:
        log.warning("%s.class_names differs from the checkpoint's (%s); reporting the checkpoint's, which name its "
                    "outputs: class i of the masks is scored as its class i", shown, first)
    return data


def build_dataset(*, split: str, format: str, root: str, num_classes: int, transform: Callable | None = None,
                  ignore_index: int = 255, palette: Sequence[Sequence[int]] | None = None,
                  ignore_colour: Sequence[int] | None = None, label_map: Mapping[int, int] | None = None,
                  class_names: Sequence[str] | None = None, mean: Sequence[float] | None = None,
                  std: Sequence[float] | None = None, train_split: str | None = None, val_split: str | None = None,
                  allow_ignore_only_masks: bool | None = None, **options) -> SegmentationDataset:
    """A dataset from a `dataset` config section; `options` go to the format (a misspelt one is a ConfigError).

    class_names, mean, std and the split names are read by the trainer and evaluator, not here.
    allow_ignore_only_masks: None takes the format's default (true for COCO's generated masks, else false).
    """
    check_dataset_config(format=format, num_classes=num_classes, ignore_index=ignore_index, class_names=class_names,
                         palette=palette, ignore_colour=ignore_colour, label_map=label_map,
                         allow_ignore_only_masks=allow_ignore_only_masks, options=options, mean=mean, std=std)
    samples = FORMATS[format](root=root, split=split, **options)
    where = f"split {split!r} of dataset.root={root}"
    if not samples:  # the formats name the usual causes; this is the last guard, so no split trains on nothing
        raise DataError(no_samples_problem(where))
    if allow_ignore_only_masks is None:
        allow_ignore_only_masks = format in WRITES_OWN_MASKS
    return SegmentationDataset(samples, num_classes=num_classes, ignore_index=ignore_index, palette=palette,
                               ignore_colour=ignore_colour, label_map=label_map, transform=transform,
                               allow_ignore_only_masks=allow_ignore_only_masks, where=where)


__all__ = ["FORMATS", "DataError", "SegmentationDataset", "build_dataset", "read_image", "read_mask"]
