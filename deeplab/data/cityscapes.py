"""Cityscapes layout: leftImg8bit/<split>/<city>/*_leftImg8bit.png with gtFine/<split>/<city>/*_gtFine_labelIds.png.

The masks hold the 34 label ids; the dataset config's label_map turns them into the 19 train ids (others 255).
"""

from pathlib import Path

from deeplab.data.dataset import DataError, find_by_stem, named_root, pair_ids

IMAGE_SUFFIX = "_leftImg8bit"
MASK_SUFFIX = "_gtFine_labelIds"
DOWNLOAD_HINT = ("Register at https://www.cityscapes-dataset.com, download leftImg8bit_trainvaltest.zip and "
                 "gtFine_trainvaltest.zip, and unzip both into the root (giving leftImg8bit/ and gtFine/)")


def files_by_id(folder: Path, suffix: str) -> dict[str, Path]:
    """{id: path} for `<id><suffix>.png` in each city folder of `folder`; ids keep the city prefix, so are unique."""
    found = {}
    for city in sorted(p for p in folder.iterdir() if p.is_dir()):
        found.update({stem.removesuffix(suffix): path for stem, path in find_by_stem(city, (".png",)).items()
                      if stem.endswith(suffix)})
    return found


def cityscapes_samples(*, root: str | Path, split: str) -> list[tuple[Path, Path]]:
    """(image, labelIds mask) pairs of one split (train, val or test), every image's mask checked to exist."""
    root = Path(root).expanduser()
    for top in (root / "leftImg8bit", root / "gtFine"):
        if not top.is_dir():
            raise DataError(f"dataset not found: looked for {top} under {named_root(root)}. {DOWNLOAD_HINT}.")
    images_path, masks_path = root / "leftImg8bit" / split, root / "gtFine" / split
    if not images_path.is_dir():
        available = sorted(p.name for p in (root / "leftImg8bit").iterdir() if p.is_dir())
        raise DataError(f"{images_path}: no such split folder; splits available: {available}")
    images = files_by_id(images_path, IMAGE_SUFFIX)
    if not images:
        raise DataError(f"{images_path}: no <city>/*{IMAGE_SUFFIX}.png images found")
    masks = files_by_id(masks_path, MASK_SUFFIX) if masks_path.is_dir() else {}
    return pair_ids(sorted(images), images, masks, where=f"Cityscapes {split} split",
                    image_dir=images_path, mask_dir=masks_path)
