"""Your own data as two folders, images/ and masks/, matched by file stem."""

from pathlib import Path

import numpy as np

from deeplab.data.dataset import DataError, find_by_stem, pair_ids
from deeplab.data.voc import read_split_file


def ratio_split(ids: list[str], *, split: str, val_ratio: float, seed: int) -> list[str]:
    """A seeded, stable train/val split of `ids`: the same ids land in val for the same seed and ratio."""
    if split not in ("train", "val"):
        raise DataError(f"split {split!r}: without split files only 'train' and 'val' exist (from val_ratio)")
    if not 0 < val_ratio < 1:
        raise ValueError(f"val_ratio must be between 0 and 1, got {val_ratio}")
    order = np.random.default_rng(seed).permutation(len(ids))
    n_val = max(1, round(len(ids) * val_ratio)) if len(ids) > 1 else 0
    chosen = order[:n_val] if split == "val" else order[n_val:]
    return [ids[i] for i in sorted(chosen)]


def folder_samples(*, root: str | Path, split: str, image_dir: str = "images", mask_dir: str = "masks",
                   split_dir: str = "splits", val_ratio: float = 0.1, seed: int = 0) -> list[tuple[Path, Path]]:
    """(image, mask) pairs: ids from `root/split_dir/<split>.txt` if that folder exists, else a seeded ratio split."""
    root = Path(root).expanduser()
    images_path, masks_path, splits_path = root / image_dir, root / mask_dir, root / split_dir
    for folder in (images_path, masks_path):
        if not folder.is_dir():
            raise DataError(f"dataset not found: looked for {folder} under dataset.root={root}. A folder dataset is "
                            f"{image_dir}/ (images) and {mask_dir}/ (PNG masks of class indices, same file stems).")
    images, masks = find_by_stem(images_path), find_by_stem(masks_path, (".png",))
    if splits_path.is_dir():
        split_file = splits_path / f"{split}.txt"
        if not split_file.is_file():
            raise DataError(f"{split_file}: no such split file; splits available: "
                            f"{sorted(p.stem for p in splits_path.glob('*.txt'))}")
        ids, where = read_split_file(split_file), str(split_file)
    else:
        unmatched = sorted(set(images) ^ set(masks))
        if unmatched:
            raise DataError(f"{root}: {len(unmatched)} file stem(s) have an image but no mask or a mask but no image "
                            f"(e.g. {unmatched[:3]}); add them, remove them, or list the ids in {split_dir}/<split>.txt")
        if not images:
            raise DataError(f"{images_path}: no images found")
        ids, where = ratio_split(sorted(images), split=split, val_ratio=val_ratio, seed=seed), str(root)
    return pair_ids(ids, images, masks, where=where, image_dir=images_path, mask_dir=masks_path)
