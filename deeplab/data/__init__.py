"""Datasets: each format lists (image, mask) paths; SegmentationDataset reads, checks and transforms them."""

import inspect
from collections.abc import Callable, Mapping, Sequence

from deeplab.data.dataset import DataError, SegmentationDataset, no_samples_problem, read_image, read_mask
from deeplab.data.cityscapes import cityscapes_samples
from deeplab.data.coco import coco_samples
from deeplab.data.demo import demo_samples
from deeplab.data.folder import folder_samples
from deeplab.data.transforms import check_normalisation
from deeplab.data.voc import voc_samples
from deeplab.errors import ConfigError

# format name -> function(*, root, split, **format options) -> [(image path, mask path), ...]
FORMATS: dict[str, Callable] = {"voc": voc_samples, "folder": folder_samples, "coco": coco_samples,
                                "cityscapes": cityscapes_samples, "demo": demo_samples}
# Formats whose masks this project writes itself, so 255 is always a real ignore region: COCO's are rasterised from
# the JSON, and an image whose only selected objects are crowds has a mask of 0 and 255 alone. The default of
# dataset.allow_ignore_only_masks when a config does not set it (a run saved before the key existed).
WRITES_OWN_MASKS = ("coco",)


def _is_byte(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 255


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
    if unknown:
        raise ConfigError(f"dataset.{unknown[0]}: not an option of the {format} dataset format (its options: "
                          f"{', '.join(known) or 'none'}); check the spelling, or drop it")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or not 2 <= num_classes <= 255:
        raise ConfigError(f"dataset.num_classes={num_classes!r}: must be an integer in 2-255 (masks are 8-bit; "
                          f"binary segmentation, an object on background, is num_classes=2 with masks of 0 and 1)")
    if not _is_byte(ignore_index) or ignore_index < num_classes:
        raise ConfigError(f"dataset.ignore_index={ignore_index!r}: must be an integer in {num_classes}-255 (masks are "
                          f"8-bit, and it must not be one of the dataset.num_classes={num_classes} class indices); "
                          "usually 255")
    if class_names is not None and len(class_names) != num_classes:
        raise ConfigError(f"dataset.class_names lists {len(class_names)} names but dataset.num_classes="
                          f"{num_classes}; give one name per class")
    if class_names is not None and len(set(map(str, class_names))) != len(class_names):
        twice = next(n for n in class_names if list(map(str, class_names)).count(str(n)) > 1)
        raise ConfigError(f"dataset.class_names names {twice!r} more than once; per-class metrics and logs are "
                          "keyed by name, so give each class its own name")
    check_normalisation(mean, std)  # the transforms' rule, which they check themselves as well
    if palette is not None:
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
