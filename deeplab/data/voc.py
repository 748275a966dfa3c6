"""PASCAL VOC layout: JPEGImages/, SegmentationClass*/ and ImageSets/Segmentation/<split>.txt."""

from pathlib import Path

from deeplab.data.dataset import DataError, find_by_stem, pair_ids


def read_split_file(path: Path) -> list[str]:
    """Ids listed one per line (blank lines and surrounding spaces ignored); an empty file is an error."""
    ids = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not ids:
        raise DataError(f"{path}: split file is empty")
    return ids


def voc_samples(*, root: str | Path, split: str, image_dir: str = "JPEGImages",
                mask_dir: str = "SegmentationClass", split_dir: str = "ImageSets/Segmentation",
                hint: str = "python datasets/prepare_voc.py --download") -> list[tuple[Path, Path]]:
    """(image, mask) paths of one split of a VOC-layout root, every file checked to exist."""
    root = Path(root).expanduser()
    images_path, masks_path, splits_path = root / image_dir, root / mask_dir, root / split_dir
    for folder in (images_path, masks_path, splits_path):
        if not folder.is_dir():
            raise DataError(f"dataset not found: looked for {folder} under dataset.root={root}. "
                            f"Get the data with `{hint}`, or point dataset.root at a folder holding "
                            f"{image_dir}/, {mask_dir}/ and {split_dir}/.")
    split_file = splits_path / f"{split}.txt"
    if not split_file.is_file():
        available = sorted(p.stem for p in splits_path.glob("*.txt"))
        raise DataError(f"{split_file}: no such split file; splits available: {available}")
    return pair_ids(read_split_file(split_file), find_by_stem(images_path), find_by_stem(masks_path, (".png",)),
                    where=str(split_file), image_dir=images_path, mask_dir=masks_path)
