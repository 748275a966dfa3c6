"""Dataset checker (`python -m deeplab.data.check dataset=<name> [overrides]`, the command `deeplab.cli.check`)
reads every sample of each split.

It reports missing files, unreadable images, image/mask size mismatches, label values outside the classes and the
ignore index, RGB mask colours outside the palette, masks saved as 0/255, empty splits and split files, and a
per-class pixel histogram; it exits non-zero on any problem. Notes (images with an EXIF orientation) are not
problems. `preflight` is the cheap part the trainer runs before it starts.
"""

from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import partial

import numpy as np

from deeplab.data import DataError, SegmentationDataset, build_dataset
from deeplab.data.dataset import exif_orientation, no_samples_problem
from deeplab.errors import ConfigError
from deeplab.progress import progress_bar


@dataclass
class SplitReport:
    """What scanning one split found."""

    split: str
    samples: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    pixels: np.ndarray = field(default_factory=lambda: np.zeros(256, np.int64))


def _scan(dataset: SegmentationDataset, index: int) -> tuple[str | None, np.ndarray | None, int]:
    """One sample: its problem or its mask's pixel counts, and its image's EXIF orientation."""
    orientation = exif_orientation(dataset.samples[index][0])
    try:
        _, mask = dataset.load(index)
    except DataError as exc:
        return str(exc), None, orientation
    return None, np.bincount(mask.ravel(), minlength=256), orientation


def zero_255_problem(pixels: np.ndarray, *, num_classes: int, ignore_index: int, where: str) -> str | None:
    """Masks holding only 0 and the ignore index, all together: binary masks saved as 0/255 (thin objects too)."""
    if ignore_index < 256 and pixels[ignore_index] > 0 and pixels[1:num_classes].sum() == 0:
        share = pixels[ignore_index] / pixels.sum()
        return (f"{where}: masks hold only 0 and {ignore_index} ({share:.0%} of pixels are {ignore_index}), and "
                f"{ignore_index} means 'ignore', so no object class would ever be learned. This is the usual sign "
                f"of a binary mask saved as 0/255: re-save it with 1 for the object (mask // 255), or set "
                f"dataset.label_map='{{{ignore_index}: 1}}' (or dataset.allow_ignore_only_masks=true if "
                f"{ignore_index} really marks regions to ignore).")
    return None


def exif_note(rotated: Sequence[tuple[str, int]]) -> str:
    """The note for images whose EXIF orientation is not 1: they are read as stored, as their masks are."""
    shown = ", ".join(f"{path} (orientation {tag})" for path, tag in rotated[:3])
    return (f"{len(rotated)} image(s) carry an EXIF orientation other than 1, e.g. {shown}: they are read in raw pixel "
            "order, like their masks, not turned as an image viewer shows them; their masks must be drawn on the "
            "stored pixels too (as annotation tools do)")


def check_split(dataset: SegmentationDataset, split: str, *, workers: int = 0,
                progress: bool | None = None) -> SplitReport:
    """Read every sample of one split; collect every problem instead of stopping at the first.

    `progress`: a bar `check <split> i/N` with samples/s and ETA (True/False; None follows DEEPLAB_PROGRESS, see
    deeplab.progress)."""
    report = SplitReport(split, samples=len(dataset))
    if not len(dataset):
        report.problems.append(no_samples_problem(dataset.where))
        return report
    scan = partial(_scan, dataset)

    def ticked(scanned):  # the bar closes when the last sample is in, or when a worker fails
        return list(progress_bar(scanned, desc=f"check {split}", total=len(dataset), unit=" samples",
                                 progress=progress))

    if workers > 0:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = ticked(pool.map(scan, range(len(dataset)), chunksize=8))
    else:
        results = ticked(map(scan, range(len(dataset))))
    rotated, unlabelled = [], []
    for (image_path, mask_path), (problem, pixels, orientation) in zip(dataset.samples, results):
        if problem:
            report.problems.append(problem)
        else:
            report.pixels += pixels
            if not pixels[:dataset.num_classes].any():
                unlabelled.append(str(mask_path))
        if orientation != 1:
            rotated.append((str(image_path), orientation))
    if rotated:
        report.notes.append(exif_note(rotated))
    readable = len(dataset) - len(report.problems)
    if unlabelled and len(unlabelled) == readable:
        report.problems.append(f"split {split!r}: every one of its {readable} masks is entirely the ignore index "
                               f"{dataset.ignore_index}, e.g. {unlabelled[0]}: nothing to learn or score; check how "
                               f"the masks were saved (dataset.label_map, dataset.palette)")
        return report
    if unlabelled:
        report.notes.append(f"{len(unlabelled)} of the {readable} masks are entirely the ignore index "
                            f"{dataset.ignore_index} (no labelled pixel), e.g. {unlabelled[0]}: they add nothing to "
                            f"training or to the score")
    zero_255 = None if dataset.allow_ignore_only_masks else zero_255_problem(
        report.pixels, num_classes=dataset.num_classes, ignore_index=dataset.ignore_index, where=f"split {split!r}")
    if zero_255:
        report.problems.append(zero_255)
    return report


def check_dataset(*, splits: Sequence[str] | None = None, workers: int = 0, progress: bool | None = None,
                  **dataset_cfg) -> list[SplitReport]:
    """Scan the given splits (default: the dataset's train and val splits); a bare name is one split. `progress`:
    one bar per split, as in `check_split`."""
    if isinstance(splits, bool) or not isinstance(splits, (str, int, Sequence, type(None))):
        raise ConfigError(f"splits={splits!r}: give split names, e.g. splits=[train,val] or splits=val (null: the "
                          "dataset's train and val splits)")
    if isinstance(splits, (str, int)):
        splits = [str(splits)]  # splits=val, or a numeric name such as splits=2012
    elif splits:
        splits = [str(split) for split in splits]
    splits = splits or [dataset_cfg.get("train_split", "train"), dataset_cfg.get("val_split", "val")]
    reports = []
    for split in dict.fromkeys(splits):
        try:
            dataset = build_dataset(split=split, **dataset_cfg)
        except DataError as exc:  # missing files, empty split, missing root: nothing further to read
            reports.append(SplitReport(split, problems=[str(exc)]))
            continue
        reports.append(check_split(dataset, split, workers=workers, progress=progress))
    return reports


def preflight(dataset: SegmentationDataset, *, samples: int = 8) -> None:
    """The cheap check the trainer runs first: the split has samples, the first read, sizes match, labels fit."""
    if len(dataset) == 0:
        raise DataError(no_samples_problem(dataset.where))
    pixels = np.zeros(256, np.int64)
    for index in range(min(samples, len(dataset))):
        pixels += np.bincount(dataset.load(index)[1].ravel(), minlength=256)
    if dataset.allow_ignore_only_masks:
        return
    problem = zero_255_problem(pixels, num_classes=dataset.num_classes, ignore_index=dataset.ignore_index,
                               where=f"the first {min(samples, len(dataset))} masks of {dataset.where} "
                                     f"({dataset.samples[0][1].parent})")
    if problem:
        raise DataError(problem)


def format_report(reports: Sequence[SplitReport], class_names: Sequence[str], ignore_index: int = 255) -> str:
    """A readable summary: problems first, then notes, then the per-class pixel histogram of each split."""
    lines = []
    for report in reports:
        lines.append(f"split {report.split}: {report.samples} samples, {len(report.problems)} problem(s)")
        lines += [f"  PROBLEM {p}" for p in report.problems]
        lines += [f"  NOTE {n}" for n in report.notes]
        total = report.pixels.sum()
        if total:
            lines.append(f"  {'class':<20}{'pixels':>14}{'share':>9}")
            for index, name in [*enumerate(class_names), (ignore_index, "(ignore)")]:
                count = int(report.pixels[index])
                lines.append(f"  {index:>3} {name:<16}{count:>14,}{count / total:>9.2%}")
    return "\n".join(lines)
