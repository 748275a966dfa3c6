"""Annotation tools' exports as a `dataset=folder` dataset (`python -m deeplab.data.annotations from=FORMAT
source=PATH output=DIR`, the command `deeplab.cli.annotations`).

Readers (one module each): labelme (labelme.py), CVAT's Segmentation mask 1.1 and COCO 1.0 (cvat.py), Label Studio's
JSON export (labelstudio.py) and any COCO instances JSON (coco.py). Each gives an `Export` (common.py): its labels
in its own order and, per image, its shapes as layers drawn in the file's order, so that where shapes overlap **the
later one wins**, as the tools draw them. `import_annotations` maps the labels to classes and writes:

    output/images/<stem>.<ext>   each image copied as it is (or turned upright, where the tool showed it turned by
                                 its EXIF orientation), never converted otherwise
    output/masks/<stem>.png      palette PNG of class indices (255: ignore)
    output/splits/train.txt, val.txt   a seeded split: val_ratio of the images (at least one) in val, the rest
                                 (at least one) in train; with a single image, both list it

Classes: class_names=None takes the export's labels in its order, `background` first (added when the export has no
label of that name; labelme's `_background_` is read as it); a list fixes the classes and their order. merge={label: class} draws a label as another class
(several labels may merge into one), drop=[label, ...] leaves a label's shapes out (what lies beneath shows), and
ignore=[label, ...] draws a label as 255 (default: labelme's `__ignore__`). A label that is none of these and not a
class is an error. Pixels no shape covers are class 0 (unlabelled="background") or 255 (unlabelled="ignore").

A point more than 1 pixel outside its image is an error (outside="clip" keeps the part inside). The source is only
read; the output is written into a temporary folder and put in place whole once every image is done, so a refused
import leaves nothing behind.
"""

import difflib
import io
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from deeplab.data.annotations.common import OUTSIDE, Export, Sample
from deeplab.data.annotations.coco import read_coco
from deeplab.data.annotations.cvat import read_cvat
from deeplab.data.annotations.labelme import read_labelme
from deeplab.data.annotations.labelstudio import decode_brush_rle, read_labelstudio
from deeplab.data.dataset import IMAGE_EXTENSIONS, DataError
from deeplab.data.folder import ratio_split
from deeplab.errors import ConfigError
from deeplab.progress import progress_bar
from deeplab.visualization import palette_array

# from= -> reader(source, *, images, outside) -> Export
READERS = {"labelme": read_labelme, "cvat": read_cvat, "labelstudio": read_labelstudio, "coco": read_coco}
IGNORE_INDEX = 255
UNLABELLED = {"background": 0, "ignore": IGNORE_INDEX}
BACKGROUND = "background"
LABELME_BACKGROUND = "_background_"  # labelme's name for class 0 (its labels.txt and converters): read as BACKGROUND
FOLDERS = ("images", "masks", "splits")  # what an import writes into output/, and replaces with overwrite=true
TURNED = (5, 6, 7, 8)  # EXIF orientations that swap width and height


@dataclass
class ImportResult:
    """What an import wrote."""

    output: Path
    tool: str
    class_names: list[str]
    pixels: np.ndarray  # (256,) pixels of each mask value over every image
    train: list[str]
    val: list[str]
    notes: list[str] = field(default_factory=list)

    @property
    def allow_ignore_only_masks(self) -> bool:
        """Whether a mask may hold only 0 and 255: the masks hold 255 only where the import drew it."""
        return bool(self.pixels[IGNORE_INDEX])


def check_format(name) -> str:
    """`from=`: one of READERS, else one sentence with the closest."""
    if name in READERS:
        return name
    close = difflib.get_close_matches(str(name), READERS, n=1)
    raise ConfigError(f"from={name}: " + ("not set" if name is None else "not a known tool") + f"; "
                      + (f"did you mean from={close[0]}? " if close else "") + f"(known: {', '.join(READERS)})")


def _check_options(*, unlabelled, outside, val_ratio, class_names, merge, drop, ignore) -> None:
    """The import's own keys, checked before any file is read: one ConfigError naming the key."""
    if unlabelled not in UNLABELLED:
        raise ConfigError(f"unlabelled={unlabelled}: must be background (class 0) or ignore ({IGNORE_INDEX})")
    if outside not in OUTSIDE:
        raise ConfigError(f"outside={outside}: must be error (refuse a shape with a point outside its image) or "
                          f"clip (keep the part inside)")
    if isinstance(val_ratio, bool) or not isinstance(val_ratio, (int, float)) or not 0 < val_ratio < 1:
        raise ConfigError(f"val_ratio={val_ratio}: must be a number between 0 and 1 (the share of images held out "
                          f"for validation, e.g. 0.1)")
    if class_names is not None:
        if isinstance(class_names, str) or not all(isinstance(n, str) and n for n in class_names):
            raise ConfigError(f"class_names={class_names}: must be a list of names, e.g. class_names=[background,car]")
        if not 2 <= len(class_names) <= IGNORE_INDEX:
            raise ConfigError(f"class_names lists {len(class_names)} names; a dataset has 2 to {IGNORE_INDEX} classes "
                              f"(masks are 8-bit, {IGNORE_INDEX} is ignore)")
        twice = next((n for n in class_names if list(class_names).count(n) > 1), None)
        if twice is not None:
            raise ConfigError(f"class_names names {twice!r} twice; give each class once (merge={{label: class}} "
                              f"draws several labels as one class)")
    if merge is not None and (not isinstance(merge, Mapping) or
                              not all(isinstance(k, str) and isinstance(v, str) for k, v in merge.items())):
        raise ConfigError(f"merge={merge}: must map labels to class names, e.g. merge='{{car: vehicle, truck: "
                          f"vehicle}}'")
    for key, value in (("drop", drop), ("ignore", ignore)):
        if isinstance(value, str) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{key}={value}: must be a list of labels, e.g. {key}=[tree,sky]")
    named = {"drop": set(drop), "ignore": set(ignore), "merge": set(merge or {})}
    for first, second in (("drop", "ignore"), ("drop", "merge"), ("ignore", "merge")):
        both = sorted(named[first] & named[second])
        if both:
            raise ConfigError(f"{first} and {second} both name {both[0]!r}; a label is dropped, ignored or merged, "
                              f"one of them")


def plan_classes(export: Export, *, class_names: Sequence[str] | None, merge: Mapping[str, str] | None,
                 drop: Sequence[str], ignore: Sequence[str]) -> tuple[list[str], dict[str, int | None]]:
    """The class names and {label: the mask value it is drawn with (a class index or 255), or None (not drawn)};
    a label that maps to no class is left out of the map (an error once a sample draws it)."""
    merge = dict(merge or {})
    for key, named in (("merge", list(merge)), ("drop", list(drop))):
        unknown = [label for label in named if label not in export.labels]
        if unknown:
            raise ConfigError(f"{key} names {unknown[0]!r}, which is not a label of {export.source} (its labels: "
                              f"{', '.join(export.labels) or 'none'}); check the spelling")
    classes = list(class_names) if class_names is not None else [BACKGROUND]
    if class_names is not None:
        missing = [target for target in dict.fromkeys(merge.values()) if target not in classes]
        if missing:
            raise ConfigError(f"merge draws labels as {missing[0]!r}, which class_names lacks ({', '.join(classes)}); "
                              f"add it to class_names")
    values: dict[str, int | None] = {}
    for label in export.labels:
        if label in export.unlabelled_labels or label in drop:
            values[label] = None
        elif label in ignore:
            values[label] = IGNORE_INDEX
        else:
            target = merge.get(label, label)
            if target == LABELME_BACKGROUND and target not in classes and BACKGROUND in classes:
                target = BACKGROUND  # labelme's name for it (its labels.txt, labelme2voc.py, labelme2coco.py)
            if class_names is None and target not in classes:
                classes.append(target)
            if target in classes:
                values[label] = classes.index(target)
    if len(classes) > IGNORE_INDEX:
        raise DataError(f"{export.source}: {len(classes)} classes; at most {IGNORE_INDEX} fit in an 8-bit mask with "
                        f"{IGNORE_INDEX} for ignore: merge or drop some labels")
    if len(classes) < 2:
        raise DataError(f"{export.source}: no label to train on (every label is dropped, ignored or background); "
                        f"a dataset needs at least one class besides background")
    return classes, values


def _unknown_label(label: str, sample: Sample, classes: Sequence[str]) -> DataError:
    return DataError(f"{sample.at}: label {label!r} is not one of class_names ({', '.join(classes)}); add it to "
                     f"class_names, draw it as a class with merge='{{{label}: CLASS}}', or leave its shapes out with "
                     f"drop=[{label}]")


def _overlap(a: Path, b: Path) -> bool:
    a, b = a.resolve(), b.resolve()
    return a == b or a in b.parents or b in a.parents


def check_paths(source: Path, output: Path, *, images: Path | None, overwrite: bool) -> None:
    """The source (and images=) exist and the output can take an import: not inside either, not holding files
    unless overwrite=true. One sentence naming the key otherwise."""
    if not source.exists():
        raise DataError(f"source={source}: no such file or folder; give the export's folder or file")
    if images is not None and not images.is_dir():
        raise DataError(f"images={images}: no such folder; give the folder that holds the export's images")
    for key, read in (("source", source), ("images", images)):
        if read is not None and (read.is_dir() or read == output) and _overlap(read, output):
            raise DataError(f"output={output}: it holds or lies inside {key}={read}, and an import never writes "
                            f"into what it reads; choose an output folder outside it")
    if output.is_file():
        raise DataError(f"output={output}: a file; give the folder to write the dataset into")
    held = next((p for p in output.rglob("*") if not p.is_dir()), None) if output.is_dir() else None
    if held is not None and not overwrite:
        raise DataError(f"output={output}: already holds files (e.g. {held}); choose a new or empty folder, or set "
                        f"overwrite=true to replace its images/, masks/ and splits/ (other files stay)")


@contextmanager
def staged(output: Path) -> Iterator[Path]:
    """A folder to write the dataset into, put in place as output/images, masks and splits when the block ends
    without an error (replacing those of an earlier import), removed with everything in it otherwise."""
    if output.is_dir():
        made, folder = None, output / f".import-{os.getpid()}"
    else:
        made = next((p for p in [output, *output.parents] if p.parent.exists()), output)
        folder = output
    folder.mkdir(parents=True)
    try:
        yield folder
    except BaseException:
        shutil.rmtree(made or folder, ignore_errors=True)
        raise
    if made is None:
        for name in FOLDERS:
            old = output / name
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old)
            elif old.exists() or old.is_symlink():
                old.unlink()
            if (folder / name).exists():
                (folder / name).rename(old)
        folder.rmdir()


def _copy_image(sample: Sample, images: Path) -> tuple[int, int]:
    """Write the sample's image into `images` as <name>.<ext>; its (height, width) as written."""
    if sample.image is None:  # embedded bytes: written as they are if JPEG or PNG, else as PNG
        try:
            with Image.open(io.BytesIO(sample.image_data)) as image:
                kind, size = image.format, image.size
                if kind not in ("JPEG", "PNG"):
                    image.save(images / f"{sample.name}.png")
        except (OSError, ValueError) as exc:
            raise DataError(f"{sample.at}: its embedded image cannot be read ({exc}); save the file in the tool "
                            f"again with its image open") from None
        if kind in ("JPEG", "PNG"):
            (images / f"{sample.name}.{'jpg' if kind == 'JPEG' else 'png'}").write_bytes(sample.image_data)
        return size[::-1]
    path = sample.image
    try:
        with Image.open(path) as image:
            (width, height), orientation = image.size, int(image.getexif().get(0x0112, 1) or 1)
            shown = (width, height) if orientation in TURNED else (height, width)
            turn = orientation != 1 and (sample.exif_applied or (sample.size not in (None, (height, width))
                                                                 and sample.size == shown))
            if turn:  # drawn on the image as viewers show it: written that way, so the mask fits its pixels
                ImageOps.exif_transpose(image).save(images / f"{sample.name}.png")
                return shown
    except (OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"{path}: cannot read the image ({exc}); replace it with a readable JPEG or PNG") from None
    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        raise DataError(f"{path}: a {path.suffix or 'nameless'} file, which datasets do not read (they read "
                        f"{', '.join(IMAGE_EXTENSIONS)}); convert it to PNG or JPEG")
    shutil.copyfile(path, images / f"{sample.name}{path.suffix}")
    return height, width


def _rasterise(sample: Sample, *, height: int, width: int, values: Mapping[str, int | None], fill: int,
               classes: Sequence[str]) -> np.ndarray:
    """The sample's mask: `fill` where no shape is, each shape's value where it is, the later one winning."""
    mask = np.full((height, width), fill, np.uint8)
    for label, pixels, (top, left) in sample.draw(height, width):
        if label not in values:
            raise _unknown_label(label, sample, classes)
        if values[label] is not None:
            rows, cols = pixels.shape
            mask[top:top + rows, left:left + cols][pixels] = values[label]
    return mask


def write_mask(path: Path, mask: np.ndarray) -> None:
    """A palette PNG of class indices: VOC's colour map, 255 in cream."""
    image = Image.frombytes("P", mask.shape[::-1], np.ascontiguousarray(mask).tobytes())
    image.putpalette(palette_array(None).ravel().tolist())
    image.save(path)


def write_dataset(export: Export, folder: Path, *, classes: Sequence[str], values: Mapping[str, int | None],
                  unlabelled: str, val_ratio: float, seed: int, progress: bool | None = None) -> ImportResult:
    """Every sample's image, mask and the splits into `folder` (images/, masks/, splits/)."""
    seen: dict[str, str] = {}
    for sample in export.samples:  # what can be told before any image is read
        if sample.name in seen:
            raise DataError(f"{sample.at}: its image gets the stem {sample.name!r}, as does that of "
                            f"{seen[sample.name]}, and a dataset needs one image per stem; rename one of the images")
        seen[sample.name] = sample.at
        unknown = next((label for label in sample.labels or () if label not in values), None)
        if unknown is not None:
            raise _unknown_label(unknown, sample, classes)
    for sub in FOLDERS:
        (folder / sub).mkdir()
    pixels = np.zeros(256, np.int64)
    for sample in progress_bar(export.samples, desc="import", unit=" images", progress=progress):
        height, width = _copy_image(sample, folder / "images")
        if sample.size is not None and sample.size != (height, width):
            raise DataError(f"{sample.at}: the annotation is for a {sample.size[1]}x{sample.size[0]} image "
                            f"(width x height), but its image {sample.image or '(embedded)'} is {width}x{height}; "
                            f"the annotation belongs to another image or size: pair them again in the tool")
        mask = _rasterise(sample, height=height, width=width, values=values, fill=UNLABELLED[unlabelled],
                          classes=classes)
        write_mask(folder / "masks" / f"{sample.name}.png", mask)
        pixels += np.bincount(mask.ravel(), minlength=256)
    names = sorted(seen)
    if len(names) == 1:
        train = val = names
    else:
        train, val = (ratio_split(names, split=s, val_ratio=val_ratio, seed=seed) for s in ("train", "val"))
    for split, ids in (("train", train), ("val", val)):
        (folder / "splits" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids), encoding="utf-8")
    notes = list(export.notes)
    if len(names) == 1:
        notes.append("1 image: splits/train.txt and splits/val.txt both list it, so validation scores the image "
                     "training learns from; add images for a score that means something")
    return ImportResult(output=folder, tool=export.tool, class_names=list(classes), pixels=pixels, train=list(train),
                        val=list(val), notes=notes)


def import_annotations(fmt: str, source: str | Path, output: str | Path, *, images: str | Path | None = None,
                       class_names: Sequence[str] | None = None, merge: Mapping[str, str] | None = None,
                       drop: Sequence[str] = (), ignore: Sequence[str] = ("__ignore__",),
                       unlabelled: str = "background", val_ratio: float = 0.1, seed: int = 0,
                       overwrite: bool = False, outside: str = "error", progress: bool | None = None) -> ImportResult:
    """Read the `fmt` export at `source` and write it as a folder dataset at `output` (see the module's docstring).
    A mistake ends in one DataError or ConfigError naming the file or key, with nothing written."""
    reader = READERS[check_format(fmt)]
    _check_options(unlabelled=unlabelled, outside=outside, val_ratio=val_ratio, class_names=class_names,
                   merge=merge, drop=drop, ignore=ignore)
    source, output = Path(source).expanduser(), Path(output).expanduser()
    images = Path(images).expanduser() if images is not None else None
    check_paths(source, output, images=images, overwrite=overwrite)
    export = reader(source, images=images, outside=outside)
    if not export.samples:
        raise DataError(f"{source}: the {export.tool} export holds no annotated image"
                        + (f" ({export.notes[0]})" if export.notes else "") + "; export the annotated images again")
    inside = next((s.image for s in export.samples if s.image is not None and _overlap(s.image, output)), None)
    if inside is not None:
        raise DataError(f"output={output}: it holds the export's image {inside}, and an import never writes into what "
                        f"it reads; choose an output folder outside it")
    classes, values = plan_classes(export, class_names=class_names, merge=merge, drop=drop, ignore=ignore)
    with staged(output) as folder:
        result = write_dataset(export, folder, classes=classes, values=values, unlabelled=unlabelled,
                               val_ratio=val_ratio, seed=seed, progress=progress)
    result.output = output
    return result


__all__ = ["READERS", "Export", "ImportResult", "Sample", "check_format", "decode_brush_rle", "import_annotations",
           "plan_classes", "write_mask"]
