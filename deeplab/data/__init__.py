"""Datasets: each format lists (image, mask) paths; SegmentationDataset reads, checks and transforms them."""

from collections.abc import Callable, Mapping, Sequence

from deeplab.data.dataset import DataError, SegmentationDataset, read_image, read_mask
from deeplab.data.cityscapes import cityscapes_samples
from deeplab.data.coco import coco_samples
from deeplab.data.demo import demo_samples
from deeplab.data.folder import folder_samples
from deeplab.data.voc import voc_samples

# format name -> function(*, root, split, **format options) -> [(image path, mask path), ...]
FORMATS: dict[str, Callable] = {"voc": voc_samples, "folder": folder_samples, "coco": coco_samples,
                                "cityscapes": cityscapes_samples, "demo": demo_samples}


def build_dataset(*, split: str, format: str, root: str, num_classes: int, transform: Callable | None = None,
                  ignore_index: int = 255, palette: Sequence[Sequence[int]] | None = None,
                  ignore_colour: Sequence[int] | None = None, label_map: Mapping[int, int] | None = None,
                  class_names: Sequence[str] | None = None, mean: Sequence[float] | None = None,
                  std: Sequence[float] | None = None, train_split: str | None = None, val_split: str | None = None,
                  **options) -> SegmentationDataset:
    """A dataset from a `dataset` config section; `options` go to the format (a misspelt one is a TypeError).

    class_names, mean, std and the split names are read by the trainer and evaluator, not here.
    """
    if format not in FORMATS:
        raise ValueError(f"unknown dataset format {format!r}; known: {sorted(FORMATS)}")
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(f"dataset has {len(class_names)} class_names but num_classes={num_classes}")
    if palette is not None and len(palette) < num_classes:
        raise ValueError(f"dataset palette has {len(palette)} colours for {num_classes} classes")
    samples = FORMATS[format](root=root, split=split, **options)
    return SegmentationDataset(samples, num_classes=num_classes, ignore_index=ignore_index, palette=palette,
                               ignore_colour=ignore_colour, label_map=label_map, transform=transform)


__all__ = ["FORMATS", "DataError", "SegmentationDataset", "build_dataset", "read_image", "read_mask"]
