"""Per-class pixel counts of a split, read from its masks once and cached: what class weights are computed from."""

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np

from deeplab.data.dataset import SegmentationDataset, read_mask
from deeplab.progress import progress_bar
from deeplab.errors import UserError
from deeplab.torch_files import atomic_write

log = logging.getLogger("deeplab.data")

CACHE_VERSION = 1  # part of the key: bump it when the counting rules change


def cache_dir() -> Path:
    """Where split statistics are cached: $DEEPLAB_CACHE_DIR, else $XDG_CACHE_HOME/deeplab (~/.cache/deeplab). Not
    the dataset's own folder, which may be read-only or shared."""
    if os.environ.get("DEEPLAB_CACHE_DIR"):
        return Path(os.environ["DEEPLAB_CACHE_DIR"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "deeplab"


def _key(dataset: SegmentationDataset) -> str:
    """A digest of what the counts depend on: every mask's path, size and modification time, and how labels are
    read (classes, ignore index, palette, label map). An edited, added or removed mask gives a new key."""
    digest = hashlib.sha256(json.dumps([CACHE_VERSION, dataset.num_classes, dataset.ignore_index,
                                        dataset.palette and [list(c) for c in dataset.palette],
                                        dataset.ignore_colour and list(dataset.ignore_colour),
                                        None if dataset.lut is None else dataset.lut.tolist()]).encode())
    for _, mask in dataset.samples:
        stat = mask.stat()
        digest.update(f"{mask.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:32]


def count_pixels(dataset: SegmentationDataset) -> tuple[np.ndarray, np.ndarray]:
    """(pixels of each class, pixels of the masks that hold each class) over the split, the ignore index left out;
    the second is the denominator of median-frequency balancing."""
    pixels = np.zeros(dataset.num_classes, np.int64)
    present = np.zeros(dataset.num_classes, np.int64)
    for _, path in progress_bar(dataset.samples, desc="class pixels", unit=" masks"):
        mask = read_mask(path, num_classes=dataset.num_classes, ignore_index=dataset.ignore_index,
                         palette=dataset.palette, ignore_colour=dataset.ignore_colour, lut=dataset.lut)
        counts = np.bincount(mask.ravel(), minlength=256)[:dataset.num_classes]
        pixels += counts
        present += np.where(counts > 0, counts.sum(), 0)  # the labelled pixels of a mask where the class appears
    return pixels, present


def class_pixels(dataset: SegmentationDataset) -> tuple[np.ndarray, np.ndarray]:
    """`count_pixels` of the split, from the cache when no mask changed since it was written; a cache that cannot be
    written (read-only home) costs only the recount next time."""
    path = cache_dir() / "class_pixels" / f"{_key(dataset)}.json"
    try:
        saved = json.loads(path.read_text())
        return np.array(saved["pixels"], np.int64), np.array(saved["present"], np.int64)
    except (OSError, ValueError, KeyError):  # absent, unreadable or from another version: count again
        pass
    pixels, present = count_pixels(dataset)
    text = json.dumps({"pixels": pixels.tolist(), "present": present.tolist(), "masks": len(dataset)})
    try:
        atomic_write(path, lambda tmp: tmp.write_text(text), durable=False)
    except (OSError, UserError) as exc:  # a full disk is a UserError from atomic_write
        log.warning("class pixel counts not cached (%s): they are counted again next time", exc)
    return pixels, present
