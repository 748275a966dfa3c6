"""Reading images and label masks, checked, and the dataset every format shares."""

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from deeplab.errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class DataError(UserError):
    """A problem with the user's data: the message names the file and what is wrong."""


def read_image(path: str | Path) -> np.ndarray:
    """Any image (JPEG/PNG, greyscale, RGBA, 16-bit, EXIF-rotated) as an RGB uint8 (H, W, 3) array."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise DataError(f"{path}: cannot read image file ({exc.strerror or exc})") from exc
    # IMREAD_COLOR applies the EXIF orientation, drops alpha, expands grey and scales 16-bit to 8-bit.
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise DataError(f"{path}: not a readable image (empty, truncated or not an image format OpenCV decodes)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _colour_to_index(path: Path, rgb: np.ndarray, palette: Sequence[Sequence[int]], ignore_colour,
                     ignore_index: int) -> np.ndarray:
    """Map an RGB mask through the palette; a colour not in it is an error naming the file and colour."""
    codes = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    table = {(r << 16) | (g << 8) | b: i for i, (r, g, b) in enumerate(palette)}
    if ignore_colour is not None:
        r, g, b = ignore_colour
        table[(r << 16) | (g << 8) | b] = ignore_index
    uniques, inverse = np.unique(codes, return_inverse=True)
    unknown = [int(c) for c in uniques if int(c) not in table]
    if unknown:
        shown = ", ".join(f"({c >> 16}, {(c >> 8) & 255}, {c & 255})" for c in unknown[:5])
        raise DataError(f"{path}: RGB mask has {len(unknown)} colour(s) not in the dataset palette, e.g. {shown}. "
                        "Save masks as class indices (palette or greyscale PNG), or set dataset.palette to match.")
    return np.array([table[int(c)] for c in uniques], dtype=np.uint8)[inverse.reshape(codes.shape)]


def read_mask(path: str | Path, *, num_classes: int, ignore_index: int = 255,
              palette: Sequence[Sequence[int]] | None = None, ignore_colour: Sequence[int] | None = None,
              lut: np.ndarray | None = None) -> np.ndarray:
    """A label mask as a uint8 (H, W) array of class indices and `ignore_index`, checked against the classes.

    Palette and greyscale PNGs hold indices directly; an RGB mask is mapped through `palette` (unless its three
    channels are equal, which is a greyscale mask saved as RGB). `lut` (256 entries) remaps raw values first.
    """
    path = Path(path)
    try:
        with Image.open(path) as img:
            mode, raw = img.mode, np.array(img)  # a writable copy: torch warns on read-only arrays
    except (OSError, SyntaxError) as exc:  # PIL raises SyntaxError for some corrupt PNG chunks
        raise DataError(f"{path}: not a readable mask image ({exc})") from exc
    if raw.ndim == 3:
        rgb = raw[..., :3]
        if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
            raw = rgb[..., 0]
        elif palette is None:
            raise DataError(f"{path}: mask is a colour ({mode}) image but the dataset has no palette to map colours "
                            "to classes; save class indices as a palette or greyscale PNG, or set dataset.palette.")
        else:
            raw = _colour_to_index(path, rgb, palette, ignore_colour, ignore_index)
    if raw.dtype != np.uint8:
        if raw.size and (raw.min() < 0 or raw.max() > 255):
            raise DataError(f"{path}: {mode} mask holds values up to {raw.max()}; class indices must be 0-255.")
        raw = raw.astype(np.uint8)
    mask = lut[raw] if lut is not None else raw
    check_labels(path, mask, num_classes=num_classes, ignore_index=ignore_index)
    return mask


def check_labels(path: Path, mask: np.ndarray, *, num_classes: int, ignore_index: int = 255) -> None:
    """Raise if the mask holds values that are neither a class index nor the ignore index."""
    present = np.flatnonzero(np.bincount(mask.ravel(), minlength=256))
    bad = [int(v) for v in present if v >= num_classes and v != ignore_index]
    if bad:
        raise DataError(f"{path}: label values {bad[:10]} are outside the {num_classes} classes (0-{num_classes - 1}) "
                        f"and the ignore index {ignore_index}. If these are colours or another id scheme, "
                        "set dataset.palette or dataset.label_map.")


def build_lut(label_map: Mapping[int, int] | None) -> np.ndarray | None:
    """A 256-entry uint8 table from {raw value: class index}; values not listed keep their value."""
    if not label_map:
        return None
    lut = np.arange(256, dtype=np.uint8)
    for raw, target in label_map.items():
        lut[int(raw)] = int(target)
    return lut


class SegmentationDataset(torch.utils.data.Dataset):
    """(image, mask) pairs from (image path, mask path) samples, read, checked and transformed together."""

    def __init__(self, samples: Sequence[tuple[Path, Path]], *, num_classes: int, ignore_index: int = 255,
                 palette: Sequence[Sequence[int]] | None = None, ignore_colour: Sequence[int] | None = None,
                 label_map: Mapping[int, int] | None = None, transform: Callable | None = None) -> None:
        self.samples = [(Path(i), Path(m)) for i, m in samples]
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.palette = palette
        self.ignore_colour = ignore_colour
        self.lut = build_lut(label_map)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The untransformed RGB image and label mask of one sample, with their sizes checked."""
        image_path, mask_path = self.samples[index]
        image = read_image(image_path)
        mask = read_mask(mask_path, num_classes=self.num_classes, ignore_index=self.ignore_index,
                         palette=self.palette, ignore_colour=self.ignore_colour, lut=self.lut)
        if image.shape[:2] != mask.shape:
            raise DataError(f"{mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} (WxH) but its image "
                            f"{image_path} is {image.shape[1]}x{image.shape[0]}; they must be the same size.")
        return image, mask

    def __getitem__(self, index: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample `index`, or `(index, seed)` to make its random augmentation a function of the seed."""
        index, seed = index if isinstance(index, tuple) else (index, None)
        image, mask = self.load(index)
        if self.transform is None:
            return torch.from_numpy(image).permute(2, 0, 1), torch.from_numpy(mask).long()
        return self.transform(image, mask, seed=seed) if seed is not None else self.transform(image, mask)


def find_by_stem(folder: Path, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> dict[str, Path]:
    """{stem: path} for the image files directly in `folder` (one directory listing, not one stat per id)."""
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in extensions}


def pair_ids(ids: Sequence[str], images: Mapping[str, Path], masks: Mapping[str, Path], *, where: str,
             image_dir: Path, mask_dir: Path) -> list[tuple[Path, Path]]:
    """Pair ids with their image and mask, or raise one error listing what is missing."""
    missing_images = [i for i in ids if i not in images]
    missing_masks = [i for i in ids if i not in masks]
    if missing_images or missing_masks:
        parts = []
        if missing_images:
            parts.append(f"{len(missing_images)} image(s) missing from {image_dir} (e.g. {missing_images[:3]})")
        if missing_masks:
            parts.append(f"{len(missing_masks)} mask(s) missing from {mask_dir} (e.g. {missing_masks[:3]})")
        raise DataError(f"{where}: " + "; ".join(parts))
    return [(images[i], masks[i]) for i in ids]
