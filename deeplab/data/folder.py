"""Your own data as two folders, images/ and masks/, matched by file stem."""

from pathlib import Path

import numpy as np

from deeplab.data.dataset import (IMAGE_EXTENSIONS, MASK_EXTENSIONS, DataError, find_by_stem, named_root,
                                  pair_ids, unread_files_hint)
from deeplab.data.voc import split_ids
from deeplab.errors import ConfigError


def ratio_split(ids: list[str], *, split: str, val_ratio: float, seed: int) -> list[str]:
    """A seeded, stable train/val split of `ids`: the same ids land in val for the same seed and ratio."""
    if split not in ("train", "val"):
        raise DataError(f"split {split!r}: without split files only 'train' and 'val' exist (from val_ratio)")
    if isinstance(val_ratio, bool) or not isinstance(val_ratio, (int, float)) or not 0 < val_ratio < 1:
        raise ConfigError(f"dataset.val_ratio={val_ratio!r}: must be a number between 0 and 1 (the share of images "
                          "held out for validation, e.g. 0.1)")
    order = np.random.default_rng(seed).permutation(len(ids))
    # at least one image on each side, so neither split is empty whatever the ratio
    n_val = min(max(1, round(len(ids) * val_ratio)), len(ids) - 1)
    chosen = order[:n_val] if split == "val" else order[n_val:]
    return [ids[i] for i in sorted(chosen)]


def folder_samples(*, root: str | Path, split: str, image_dir: str = "images", mask_dir: str = "masks",
                   split_dir: str = "splits", val_ratio: float = 0.1, seed: int = 0,
                   prepare: str | None = None) -> list[tuple[Path, Path]]:
    """(image, mask) pairs: ids from `root/split_dir/<split>.txt` if that folder exists, else a seeded ratio split.

    `prepare`: the command that makes this dataset (a prepared public one, such as CamVid), named when it is absent.
    """
    root = Path(root).expanduser()
    images_path, masks_path, splits_path = root / image_dir, root / mask_dir, root / split_dir
    for folder in (images_path, masks_path):
        if not folder.is_dir():
            raise DataError(f"dataset not found: looked for {folder} under {named_root(root)}. A folder dataset is "
                            f"{image_dir}/ (images) and {mask_dir}/ (PNG masks of class indices, same file stems)."
                            + (f" Make it with `{prepare}`, or point dataset.root at a prepared copy." if prepare
                               else ""))
    images, masks = find_by_stem(images_path), find_by_stem(masks_path, MASK_EXTENSIONS)
    if splits_path.is_dir():
        split_file = splits_path / f"{split}.txt"
        ids, where = split_ids(split_file, images), str(split_file)
    else:
        no_mask, no_image = sorted(set(images) - set(masks)), sorted(set(masks) - set(images))
        if no_mask or no_image:
            raise DataError(f"{root}: {len(no_mask) + len(no_image)} file stem(s) have an image but no mask or a mask "
                            f"but no image (e.g. {(no_mask + no_image)[:3]}); add them, remove them, or list the ids "
                            f"in {split_dir}/<split>.txt"
                            + unread_files_hint(masks_path, no_mask, MASK_EXTENSIONS, "mask")
                            + unread_files_hint(images_path, no_image, IMAGE_EXTENSIONS, "image"))
        if len(images) < 2:
            raise DataError(f"{images_path}: {len(images)} image(s) found, but a dataset.val_ratio split needs at "
                            f"least 2 (one for train, one for val), so split {split!r} cannot be made; add images, or "
                            f"list the ids in {split_dir}/train.txt and {split_dir}/val.txt")
        ids, where = ratio_split(sorted(images), split=split, val_ratio=val_ratio, seed=seed), str(root)
    return pair_ids(ids, images, masks, where=where, image_dir=images_path, mask_dir=masks_path)
