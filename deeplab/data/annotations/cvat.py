"""CVAT's two exports that hold masks, unzipped into a folder.

"Segmentation mask 1.1" (Datumaro's VOC segmentation writer): `labelmap.txt` (`# label:color_rgb:parts:actions`,
then one `name:r,g,b:parts:actions` line per label, `background` first, which CVAT adds as 0,0,0 when the task has no
such label), `SegmentationClass/<image>.png` colour masks in which CVAT has already drawn the shapes by their z-order,
`SegmentationObject/` (instances, not read), `ImageSets/Segmentation/<subset>.txt` (the images, without extension)
and `JPEGImages/` only when the export saved the images; otherwise images=DIR names the folder that holds them. CVAT
writes no mask for an image without shapes; such images are left out, with a note. Background-coloured pixels are
unlabelled (they become `unlabelled=`'s value), and a colour labelmap.txt lacks is an error.

"COCO 1.0": `annotations/instances_<subset>.json` and, when saved, `images/`: read as any COCO file (coco.py).
"""

from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from deeplab.data.annotations.coco import read_coco_file
from deeplab.data.annotations.common import Export, Layer, Sample, find_in_index, image_index, sample_name
from deeplab.data.dataset import IMAGE_EXTENSIONS, DataError

BACKGROUND = "background"  # the label CVAT's mask export gives to every pixel no shape covers


def read_labelmap(path: Path) -> dict[tuple[int, int, int], str]:
    """{(r, g, b): label} from labelmap.txt, in its order; a malformed line or a colour given twice is one sentence."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read CVAT's label map ({exc}); export the task again") from None
    colours: dict[tuple[int, int, int], str] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.rsplit(":", 3)
        try:
            rgb = tuple(int(v) for v in parts[1].split(","))
        except (IndexError, ValueError):
            rgb = ()
        if len(parts) != 4 or len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb):
            raise DataError(f"{path}: line {number} ({line.strip()[:60]!r}) is not 'name:r,g,b:parts:actions'; "
                            f"export the task again, or correct that line")
        if rgb in colours:
            raise DataError(f"{path}: labels {colours[rgb]!r} and {parts[0]!r} share the colour {rgb}, so their "
                            f"pixels cannot be told apart; give one of them another colour in CVAT and export again")
        colours[rgb] = parts[0]
    if not colours:
        raise DataError(f"{path}: lists no label; export the task again")
    return colours


def _listed_images(root: Path) -> list[str]:
    """The image names (paths under the export, no extension) that ImageSets/Segmentation/*.txt list, each once; every
    mask's name when those lists are absent."""
    lists = sorted((root / "ImageSets" / "Segmentation").glob("*.txt"))
    if not lists:
        masks = root / "SegmentationClass"
        return [p.relative_to(masks).with_suffix("").as_posix() for p in sorted(masks.rglob("*.png"))]
    names: dict[str, None] = {}
    for path in lists:
        names.update(dict.fromkeys(line.strip() for line in path.read_text(encoding="utf-8").splitlines()
                                   if line.strip()))  # one image per line, its name as a whole (spaces too)
    return list(names)


def _mask_layers(path: Path, colours: dict, names: list[str]):
    """The sample's `draw`: one layer per label colour in the mask (they do not overlap); a colour the label map
    lacks is one sentence naming the mask and the colour."""
    def draw(height: int, width: int) -> Iterator[Layer]:
        try:
            with Image.open(path) as image:
                rgb = np.asarray(image.convert("RGB"))
        except OSError as exc:
            raise DataError(f"{path}: cannot read the mask ({exc}); export the task again") from None
        codes = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
        found, inverse = np.unique(codes, return_inverse=True)
        inverse = inverse.reshape(codes.shape)
        for number, code in enumerate(found):
            colour = (int(code) >> 16, (int(code) >> 8) & 255, int(code) & 255)
            if colour not in colours:
                count = int((inverse == number).sum())
                raise DataError(f"{path}: {count} pixel(s) have the colour {colour}, which labelmap.txt does not list "
                                f"(its colours: {', '.join(f'{n} {c}' for c, n in list(colours.items())[:6])}); the "
                                f"mask was edited or comes from another export: export the task again")
            if colours[colour] != BACKGROUND:
                yield colours[colour], inverse == number, (0, 0)
    return draw


def _image_of(name: str, root: Path, *, index: dict | None, images: Path | None, where: Path) -> Path:
    """The image of `name` in JPEGImages/ (with any extension), else under images=DIR by its path or file name."""
    folders = [root / "JPEGImages"] + ([images] if images else [])
    for folder in folders:
        base = folder / name
        for extension in IMAGE_EXTENSIONS:
            for candidate in (base.with_name(base.name + extension), base.with_name(base.name + extension.upper())):
                if candidate.is_file():
                    return candidate
    stem = Path(name).name
    found = find_in_index(index, [stem + e for e in IMAGE_EXTENSIONS] + [stem + e.upper() for e in IMAGE_EXTENSIONS],
                          where=where, folder=images) if index else None
    if found:
        return found
    if not (root / "JPEGImages").is_dir() and not images:
        raise DataError(f"{root}: the export holds no images (no JPEGImages/: it was made without 'Save images'), "
                        f"so the image of {where.relative_to(root)} cannot be found; give images=DIR, the folder of the task's "
                        f"images, or export again with 'Save images' on")
    raise DataError(f"{where}: its image {name}.* is not in {' nor in '.join(map(str, folders))}; give images=DIR, the "
                    f"folder of the task's images")


def read_cvat_masks(root: Path, *, images: Path | None = None) -> Export:
    """A "Segmentation mask 1.1" export unzipped into `root`."""
    labelmap = root / "labelmap.txt"
    if not labelmap.is_file():
        raise DataError(f"{root}: no labelmap.txt, which CVAT's Segmentation mask 1.1 export holds beside "
                        f"SegmentationClass/; unzip the whole export there")
    colours = read_labelmap(labelmap)
    index = image_index(images) if images else None
    samples, unmasked = [], []
    for name in _listed_images(root):
        mask = root / "SegmentationClass" / f"{name}.png"
        if not mask.is_file():
            unmasked.append(name)
            continue
        try:
            with Image.open(mask) as opened:
                size = opened.size[::-1]
        except OSError as exc:
            raise DataError(f"{mask}: cannot read the mask ({exc}); export the task again") from None
        samples.append(Sample(name=sample_name(name, where=mask), where=mask, draw=_mask_layers(mask, colours, name),
                              image=_image_of(name, root, index=index, images=images, where=mask), size=size))
    notes = [f"{len(unmasked)} image(s) the export lists have no mask in SegmentationClass/ (CVAT writes none for an "
             f"image without shapes) and were left out, e.g. {unmasked[0]}"] if unmasked else []
    return Export(tool="CVAT Segmentation mask 1.1", source=root, labels=list(colours.values()), samples=samples,
                  notes=notes, unlabelled_labels=(BACKGROUND,))


def read_cvat(source: Path, *, images: Path | None = None, outside: str = "error") -> Export:
    """A CVAT export: Segmentation mask 1.1 (labelmap.txt, SegmentationClass/) or COCO 1.0 (annotations/*.json),
    told apart by what the folder holds; a COCO JSON file given directly is read as COCO 1.0."""
    if source.is_file() and source.suffix.lower() == ".zip":
        raise DataError(f"{source}: a zip archive; unzip it first (unzip {source.name} -d {source.stem}) and give "
                        f"source= that folder")
    if source.is_file():
        return read_coco_file(source, roots=[images] if images else [source.parent.parent / "images", source.parent],
                              images=images, outside=outside, tool="CVAT COCO 1.0")
    if (source / "labelmap.txt").is_file() or (source / "SegmentationClass").is_dir():
        return read_cvat_masks(source, images=images)
    found = sorted((source / "annotations").glob("instances_*.json"))
    if not found:
        raise DataError(f"{source}: not a CVAT export: it holds neither labelmap.txt and SegmentationClass/ "
                        f"(Segmentation mask 1.1) nor annotations/instances_*.json (COCO 1.0); export the task in "
                        f"one of those formats and unzip it there")
    exports = []
    for path in found:
        subset = path.stem.removeprefix("instances_")
        roots = [images] if images else [source / "images" / subset, source / "images"]
        exports.append(read_coco_file(path, roots=roots, images=images, outside=outside, tool="CVAT COCO 1.0",
                                      names_from=f"{subset}/" if len(found) > 1 else ""))
    labels = list(dict.fromkeys(label for e in exports for label in e.labels))
    return Export(tool="CVAT COCO 1.0", source=source, labels=labels, samples=[s for e in exports for s in e.samples])
