"""Reading images and label masks, checked, and the dataset every format shares."""

import errno
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from deeplab.errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
MASK_EXTENSIONS = (".png",)  # lossless and holds palette/greyscale indices; JPEG compression changes label values


MIN_SIDE = 4  # pixels: random rescaling (down to 0.5x, or less) would shrink a smaller image to nothing


class DataError(UserError):
    """A problem with the user's data: the message names the file and what is wrong."""


def read_image(path: str | Path) -> np.ndarray:
    """Any image (JPEG/PNG, greyscale, RGBA, 16-bit) as an RGB uint8 (H, W, 3) array, in its stored pixel order."""
    path = Path(path)
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        if path.is_dir():  # checked only here: no extra stat per image read
            raise DataError(f"{path}: is a folder, not an image file; rename or move it out of the image "
                            "folder") from exc
        raise DataError(f"{path}: cannot read image file ({exc.strerror or exc})") from exc
    if not data.size:
        raise DataError(f"{path}: image file is empty (0 bytes); copy the image again, or remove it from the data")
    # IMREAD_COLOR drops alpha, expands grey and scales 16-bit to 8-bit. IGNORE_ORIENTATION keeps the stored pixel
    # order, as for masks (PIL does not rotate) and as annotation tools label them: applying the EXIF rotation to
    # the image alone would misalign every label (silently when the image is square).
    image = cv2.imdecode(data, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if image is None:
        raise DataError(f"{path}: not a readable image (truncated, or not an image format OpenCV decodes); "
                        "save it again as JPEG or PNG, or remove it from the data")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def exif_orientation(path: str | Path) -> int:
    """The EXIF orientation tag of an image file: 1 (as stored) when it has none or cannot be read."""
    try:
        with Image.open(path) as img:
            return int(img.getexif().get(0x0112, 1))
    except (OSError, SyntaxError, ValueError, TypeError):  # unreadable files are reported by read_image
        return 1


def _colour_to_index(path: Path, rgb: np.ndarray, palette: Sequence[Sequence[int]], ignore_colour,
                     ignore_index: int) -> np.ndarray:
    """Map an RGB mask through the palette; a colour not in it, or given to two classes, is an error naming both."""
    codes = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    owners: dict[int, list[int]] = {}
    for i, (r, g, b) in [*enumerate(palette), *([(ignore_index, ignore_colour)] if ignore_colour is not None else [])]:
        owners.setdefault((r << 16) | (g << 8) | b, []).append(i)
    uniques, inverse = np.unique(codes, return_inverse=True)
    unknown = [int(c) for c in uniques if int(c) not in owners]
    if unknown and lossy_pattern(codes, ~np.isin(codes, list(owners))):
        raise DataError(f"{path}: RGB mask has {len(unknown)} colours not in the dataset palette, in the pattern "
                        f"lossy compression leaves along the edges between classes; {LOSSLESS_FIX}")
    if unknown:
        shown = ", ".join(f"({c >> 16}, {(c >> 8) & 255}, {c & 255})" for c in unknown[:5])
        raise DataError(f"{path}: RGB mask has {len(unknown)} colour(s) not in the dataset palette, e.g. {shown}. "
                        "Save masks as class indices (palette or greyscale PNG), or set dataset.palette to match.")
    shared = [int(c) for c in uniques if len(set(owners[int(c)])) > 1]
    if shared:  # which class such a pixel is would depend on the palette's order: refuse rather than guess
        c = shared[0]
        raise DataError(f"{path}: RGB mask colour ({c >> 16}, {(c >> 8) & 255}, {c & 255}) is given to classes "
                        f"{owners[c]} by dataset.palette (and dataset.ignore_colour), so its pixels' class is "
                        "ambiguous; give each class its own colour.")
    return np.array([owners[int(c)][0] for c in uniques], dtype=np.uint8)[inverse.reshape(codes.shape)]


# Formats whose compression changes pixel values (MPO: a camera's multi-picture JPEG), and what a mask so saved needs.
LOSSY_FORMATS = ("JPEG", "MPO")
LOSSLESS_FIX = ("the masks were saved lossy: export them again losslessly, as PNG, from their source (converting "
                "these files to PNG keeps the changed values)")


def lossy_pattern(values: np.ndarray, stray: np.ndarray) -> bool:
    """Whether the `stray` pixels of a mask (those whose value is no class, no ignore index, no palette colour) are
    what lossy saving leaves: JPEG (or a resize that blends pixels) smears the edges between classes into many
    values, in specks and thin bands that fill no region of their own.

    The test: at least 3 distinct stray values; at most half the pixels stray; and at most half of the stray pixels
    with a 3x3 neighbourhood all of their own value. Measured on masks saved as JPEG at quality 50-100 (greyscale
    and colour): 9-250+ stray values, under a third of them inside such a neighbourhood (0 for greyscale). Masks of
    another id scheme, colours that the palette lacks, or class indices scaled to 0-255 hold few stray values, each
    filling regions (over 70% inside); a photo saved as a mask strays almost everywhere.
    """
    if not stray.any() or len(np.unique(values[stray])) < 3 or stray.mean() > 0.5:
        return False
    padded = np.pad(values, 1, mode="edge")
    height, width = values.shape
    uniform = np.ones(values.shape, bool)
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            uniform &= padded[dy:dy + height, dx:dx + width] == values
    return (uniform & stray).sum() <= 0.5 * stray.sum()


# PIL modes whose pixels are one value each; "LA" and "PA" carry an alpha channel besides, which is dropped.
INDEX_MODES = ("1", "L", "P", "I", "F", "I;16", "I;16L", "I;16B", "I;16N")
COLOUR_MODES = ("RGB", "RGBA", "RGBX")


def _mask_pixels(path: Path) -> tuple[str, np.ndarray]:
    """The mask's PIL mode and its pixels: (H, W) values, or (H, W, 3+) colours for a colour mode."""
    try:
        with Image.open(path) as img:
            mode = img.mode
            if img.format in LOSSY_FORMATS:  # read from its bytes, whatever its extension says
                raise DataError(f"{path}: this mask file holds JPEG data, and JPEG compression changes label values "
                                f"along the edges between classes; {LOSSLESS_FIX}")
            if mode in COLOUR_MODES + ("LA",) and any(_raw_mode(tile).endswith(";16B") for tile in img.tile):
                # PIL keeps only the high byte of 16-bit colour: small values would all read as 0
                raise DataError(f"{path}: 16-bit {mode} mask; save it as an 8-bit PNG (palette or greyscale class "
                                "indices, or 8-bit RGB colours from dataset.palette)")
            if mode in ("LA", "PA"):
                img = img.getchannel(0)  # the class is in the first channel; the alpha says nothing about it
            elif mode not in INDEX_MODES + COLOUR_MODES:
                raise DataError(f"{path}: {mode} mask; a mask must be a palette (P) or greyscale (L) PNG of class "
                                "indices, or an RGB PNG of dataset.palette colours: save it as one of those")
            return mode, np.array(img)  # a writable copy: torch warns on read-only arrays
    except (OSError, SyntaxError) as exc:  # PIL raises SyntaxError for some corrupt PNG chunks
        if path.is_dir():
            raise DataError(f"{path}: is a folder, not a mask file; rename or move it out of the mask folder") from exc
        raise DataError(f"{path}: not a readable mask image ({exc}); save it again as PNG, or remove it from the "
                        "data") from exc


def _raw_mode(tile) -> str:
    """The raw (file) mode of a PIL tile: its args are a string, or a tuple starting with it in older Pillow."""
    args = tile[3] if len(tile) > 3 else None
    return args if isinstance(args, str) else str(args[0]) if isinstance(args, tuple) and args else ""


def read_mask(path: str | Path, *, num_classes: int, ignore_index: int = 255,
              palette: Sequence[Sequence[int]] | None = None, ignore_colour: Sequence[int] | None = None,
              lut: np.ndarray | None = None) -> np.ndarray:
    """A label mask as a uint8 (H, W) array of class indices and `ignore_index`, checked against the classes.

    Palette and greyscale PNGs hold indices directly; an RGB mask is mapped through `palette` (unless its three
    channels are equal, which is a greyscale mask saved as RGB). `lut` (256 entries) remaps raw values first.
    """
    path = Path(path)
    mode, raw = _mask_pixels(path)
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
        if raw.dtype.kind == "f" and not np.array_equal(raw, np.round(raw)):
            raise DataError(f"{path}: {mode} mask holds fractional values (e.g. {raw[raw != np.round(raw)][0]:g}); "
                            "class indices are whole numbers: save them as an 8-bit PNG")
        if raw.size and (raw.min() < 0 or raw.max() > 255):
            found = f"values up to {raw.max():g}" if raw.max() > 255 else f"negative values ({raw.min():g})"
            raise DataError(f"{path}: {mode} mask holds {found}; class indices must be 0-255: save the class index "
                            "of each pixel as an 8-bit PNG (an instance-id mask is not a class mask)")
        raw = raw.astype(np.uint8)
    mask = lut[raw] if lut is not None else raw
    check_labels(path, mask, num_classes=num_classes, ignore_index=ignore_index)
    return mask


def check_labels(path: Path, mask: np.ndarray, *, num_classes: int, ignore_index: int = 255) -> None:
    """Raise if the mask holds values that are neither a class index nor the ignore index."""
    present = np.flatnonzero(np.bincount(mask.ravel(), minlength=256))
    bad = [int(v) for v in present if v >= num_classes and v != ignore_index]
    if bad and lossy_pattern(mask, (mask >= num_classes) & (mask != ignore_index)):
        raise DataError(f"{path}: {len(bad)} label values outside the {num_classes} classes (e.g. {bad[:5]}) lie "
                        f"along the edges between classes, the pattern lossy compression (JPEG) leaves; "
                        f"{LOSSLESS_FIX}")
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


def ignore_only_problem(path: Path, mask: np.ndarray, *, ignore_index: int) -> str | None:
    """Why a mask looks like a binary mask saved as 0/255, whose object would train as 'ignore'; None if it does not.

    Such a mask holds only 0 and the ignore index, in filled regions. VOC-style masks ring their objects with thin
    ignore borders, and Cityscapes and COCO masks have ignore regions, but those masks hold object classes too. A
    mask that is all ignore is left alone: it trains on nothing, which is not wrong data.
    """
    ignored = mask == ignore_index
    if not ignored.any() or ignored.all() or not (ignored | (mask == 0)).all():
        return None
    share = ignored.mean()
    # A border a few pixels wide vanishes under a 5x5 erosion; a filled object of 5x5 pixels or more survives it.
    # Outside the image counts as not ignored, so a band along the image's edge erodes like any other.
    eroded = cv2.erode(ignored.view(np.uint8), np.ones((5, 5), np.uint8), borderType=cv2.BORDER_CONSTANT,
                       borderValue=0)
    if share < 0.25 and not eroded.any():  # not filled regions
        return None
    return (f"{path}: mask holds only 0 and {ignore_index} ({share:.0%} of its pixels are {ignore_index}, in filled "
            f"regions), and {ignore_index} is the ignore index, so its object would silently train as 'ignore': "
            f"the usual sign of a binary mask saved as 0/255. Re-save it with 1 for the object (mask // 255), or set "
            f"dataset.label_map='{{{ignore_index}: 1}}' to read {ignore_index} as the object in every mask, or "
            f"dataset.allow_ignore_only_masks=true if {ignore_index} really marks regions to ignore there.")


def _rotated_view_hint(image_path: Path, image_size: tuple[int, int], mask_size: tuple[int, int]) -> str:
    """A hint when a mask has its image's size turned a quarter: drawn on the view of an EXIF-rotated image."""
    orientation = exif_orientation(image_path) if image_size == mask_size[::-1] else 1
    if orientation < 5:  # orientations 5-8 swap width and height; 2-4 only mirror or turn by 180 degrees
        return ""
    return (f" (the image's EXIF orientation is {orientation}: the mask looks drawn on the rotated view an image "
            "viewer shows, but images are read in stored pixel order; save the image with its pixels rotated and "
            "no orientation tag, e.g. with PIL's ImageOps.exif_transpose)")


class SegmentationDataset(torch.utils.data.Dataset):
    """(image, mask) pairs from (image path, mask path) samples, read, checked and transformed together.

    `where` says where the samples come from (e.g. "split 'val' of dataset.root=..."), for messages about the split.
    """

    def __init__(self, samples: Sequence[tuple[Path, Path]], *, num_classes: int, ignore_index: int = 255,
                 palette: Sequence[Sequence[int]] | None = None, ignore_colour: Sequence[int] | None = None,
                 label_map: Mapping[int, int] | None = None, transform: Callable | None = None,
                 allow_ignore_only_masks: bool = False, where: str = "the dataset") -> None:
        self.samples = [(Path(i), Path(m)) for i, m in samples]
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.palette = palette
        self.ignore_colour = ignore_colour
        self.lut = build_lut(label_map)
        self.transform = transform
        self.allow_ignore_only_masks = allow_ignore_only_masks
        self.where = where

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The untransformed RGB image and label mask of one sample, with their sizes and labels checked."""
        image_path, mask_path = self.samples[index]
        image = read_image(image_path)
        if min(image.shape[:2]) < MIN_SIDE:  # random rescaling would shrink it to nothing; too small to label anyway
            raise DataError(f"{image_path}: image is {image.shape[1]}x{image.shape[0]} (WxH), smaller than "
                            f"{MIN_SIDE} px a side; remove it from the split or replace it with the real image")
        mask = read_mask(mask_path, num_classes=self.num_classes, ignore_index=self.ignore_index,
                         palette=self.palette, ignore_colour=self.ignore_colour, lut=self.lut)
        if image.shape[:2] != mask.shape:
            raise DataError(f"{mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} (WxH) but its image "
                            f"{image_path} is {image.shape[1]}x{image.shape[0]}; they must be the same size"
                            + _rotated_view_hint(image_path, image.shape[:2], mask.shape) + ".")
        # Every mask, not only the first few the preflight reads: one 0/255 mask among 0/1 ones is the usual case.
        problem = None if self.allow_ignore_only_masks else ignore_only_problem(mask_path, mask,
                                                                               ignore_index=self.ignore_index)
        if problem:
            raise DataError(problem)
        return image, mask

    def __getitem__(self, index: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample `index`, or `(index, seed)` to make its random augmentation a function of the seed."""
        index, seed = index if isinstance(index, tuple) else (index, None)
        image, mask = self.load(index)
        if self.transform is None:
            return torch.from_numpy(image).permute(2, 0, 1), torch.from_numpy(mask).long()
        return self.transform(image, mask, seed=seed) if seed is not None else self.transform(image, mask)


def named_root(root: str | Path) -> str:
    """`dataset.root=ROOT` as the data's sentences name it: a relative root also says which folder it was read from
    (it moves with the current folder: a run's saved root is relative to where it trained) and how to give another."""
    if Path(root).expanduser().is_absolute():
        return f"dataset.root={root}"
    return (f"dataset.root={root} (relative: read from the current folder {Path.cwd()}; a full path reads the same "
            f"from any folder, e.g. evaluate.py data_root=/full/path)")


def make_generated_folder(folder: Path, *, key: str, what: str, example: str | Path) -> None:
    """Make `folder`, where a dataset writes what it generates on first use (`what`: the demo's images, COCO's mask
    cache); one this user cannot make (no permission, a read-only file system, a name too long) is a DataError
    naming `key` (`named_root` for the root), the setting that moves it, with an `example`."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENAMETOOLONG):
            raise  # a full disk: the commands' own sentence
        name = key.partition("=")[0]
        raise DataError(f"{key}: {what} is written there on first use, but {exc.filename} cannot be made "
                        f"({exc.strerror}); set {name}= to a folder you can write, e.g. {name}={example}") from None


def no_samples_problem(where: str) -> str:
    """The sentence for a split that lists no samples, naming the split and its root."""
    return (f"{where}: the split has no samples; add images and masks to it, or choose another split with "
            "dataset.train_split / dataset.val_split")


def find_by_stem(folder: Path, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> dict[str, Path]:
    """{stem: path} for the image files directly in `folder` (one directory listing, not one stat per id).

    Two files with one stem (s000.jpg and s000.png) are an error: which one is the sample would be a guess.
    """
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in extensions:
            continue
        if path.stem in found:
            raise DataError(f"{folder}: {found[path.stem].name} and {path.name} share the stem {path.stem!r}, so "
                            f"which one belongs to sample {path.stem!r} is ambiguous; keep one of them and move or "
                            f"rename the other")
        found[path.stem] = path
    return found


def unread_files_hint(folder: Path, stems: Sequence[str], extensions: Sequence[str], kind: str) -> str:
    """'; found s000.jpg in <folder> instead: ...' when missing files exist with an extension the dataset skips."""
    wanted = set(stems)
    if not wanted or not folder.is_dir():
        return ""
    found = sorted(p for p in folder.iterdir() if p.suffix and p.stem in wanted and p.suffix.lower() not in extensions
                   and p.is_file())
    if not found:
        return ""
    more = f" (and {len(found) - 1} more like it)" if len(found) > 1 else ""
    if kind == "mask":
        jpeg = found[0].suffix.lower() in (".jpg", ".jpeg")
        fix = ("JPEG compression changes label values, so export the masks as PNG again from their source "
               "(converting the JPEG keeps the changed values)" if jpeg else "save them as PNG")
        return f"; found {found[0].name}{more} in {folder} instead: masks must be PNG, and {fix}"
    return (f"; found {found[0].name}{more} in {folder} instead: images must be one of {', '.join(extensions)}, so "
            f"convert them")


def pair_ids(ids: Sequence[str], images: Mapping[str, Path], masks: Mapping[str, Path], *, where: str,
             image_dir: Path, mask_dir: Path) -> list[tuple[Path, Path]]:
    """Pair ids with their image and mask, or raise one error listing what is missing (and what is there instead)."""
    parts = [f"{len(missing)} {kind}(s) missing from {folder} (e.g. {missing[:3]})"
             + unread_files_hint(folder, missing, extensions, kind)
             for kind, folder, found, extensions in (("image", image_dir, images, IMAGE_EXTENSIONS),
                                                     ("mask", mask_dir, masks, MASK_EXTENSIONS))
             if (missing := [i for i in ids if i not in found])]
    if parts:
        raise DataError(f"{where}: " + "; ".join(parts))
    return [(images[i], masks[i]) for i in ids]
