"""What every reader of an annotation tool's export gives the writer, and the pieces they share.

A reader turns an export into an `Export`: the labels it declares or uses, in its own order, and one `Sample` per
image: where its image is, the size the tool drew on, and `draw`, which yields the image's shapes as layers, in the
order the tool draws them, so that the later one wins where shapes overlap: (label, bool pixels, (top, left)), the
pixels of a window of the image whose top-left corner is (top, left) (the whole image at (0, 0)).
"""

import json
import math
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from deeplab.data.coco import instance_mask
from deeplab.data.dataset import IMAGE_EXTENSIONS, DataError

# how far past the image's edges (0..width, 0..height, in pixels) a point may lie before it is refused: the
# rounding of a tool that clamps to the last pixel's centre, or to its far edge
TOLERANCE = 1.0
OUTSIDE = ("error", "clip")

# (label, the pixels of a window of the image, the window's (top, left) corner)
Layer = tuple[str, np.ndarray, tuple[int, int]]
# (height, width) -> the layers of one image, in drawing order
Layers = Callable[[int, int], Iterator[Layer]]


@dataclass
class Sample:
    """One annotated image of an export."""

    name: str  # the stem it gets in output/images and output/masks
    where: Path  # the file that holds its annotation, named in every sentence about it
    draw: Layers
    image: Path | None = None  # the image file; None when only `image_data` holds it
    image_data: bytes | None = None  # the image's bytes embedded in the annotation (labelme's imageData)
    size: tuple[int, int] | None = None  # (height, width) the tool drew on; None: the image's own
    labels: tuple[str, ...] | None = None  # the labels its shapes carry; None: known only once drawn (masks)
    exif_applied: bool = False  # the tool showed the image turned by its EXIF orientation (labelme does)
    item: str = ""  # which entry of `where` it is, when that holds several ("task 7", "image 3")

    @property
    def at(self) -> str:
        """Where its annotation is, in words: the file, and the entry when the file holds several."""
        return f"{self.where} ({self.item})" if self.item else str(self.where)


@dataclass
class Export:
    """An annotation tool's export, read: its labels in its own order and its samples."""

    tool: str  # what was read, in words ("labelme JSON", "CVAT Segmentation mask 1.1", ...)
    source: Path
    labels: list[str]
    samples: list[Sample]
    notes: list[str] = field(default_factory=list)  # what was left out and why, one line each
    unlabelled_labels: tuple[str, ...] = ()  # labels that mean "no label" in this format (CVAT's background)


def read_json(path: Path, *, tool: str):
    """A JSON file's content; an unreadable or invalid one is one sentence naming it."""
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read the {tool} export ({exc.strerror or exc})") from exc
    try:
        return json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc}); export it again from {tool}, or repair the file") from None


def what_json_is(data) -> str | None:
    """Which tool's export a JSON document looks like, in words with the from= that reads it; None if none."""
    if isinstance(data, dict) and {"images", "annotations", "categories"} <= data.keys():
        return "a COCO instances file (read it with from=coco, or from=cvat for CVAT's COCO 1.0 export)"
    if isinstance(data, dict) and "shapes" in data and "imagePath" in data:
        return "a labelme annotation (read a folder of them with from=labelme)"
    if isinstance(data, list) and data and isinstance(data[0], dict) and "data" in data[0] and \
            ("annotations" in data[0] or "completions" in data[0]):
        return "a Label Studio JSON export (read it with from=labelstudio)"
    if isinstance(data, list) and data and isinstance(data[0], dict) and "image" in data[0]:
        return "Label Studio's JSON-MIN export, which drops the image sizes and brush masks (export as JSON instead)"
    return None


def not_this_tool(path: Path, data, *, tool: str, expected: str, needs: str, fix: str = "") -> DataError:
    """The sentence for a JSON file of another tool or shape than `tool`'s (`expected`, which `needs` ...): what it
    is and the from= that reads it, when that can be told; else its top level and `fix` (default: export it
    again)."""
    other = what_json_is(data)
    if other:
        return DataError(f"{path}: not {expected} but {other}")
    shape = f"a {type(data).__name__}" + (f" with the keys {', '.join(sorted(map(str, data))[:6])}"
                                          if isinstance(data, dict) and data else "")
    return DataError(f"{path}: not {expected}, which needs {needs}, but {shape}; "
                     + (fix or f"export it from {tool} again, or give from= the tool that made it"))


def check_points(points: np.ndarray, *, height: int, width: int, outside: str, where: Path, shape: str) -> None:
    """Refuse a shape with a point more than TOLERANCE pixels outside the image, unless outside=clip."""
    if outside == "clip" or not len(points):
        return
    x, y = points[:, 0], points[:, 1]
    bad = (x < -TOLERANCE) | (x > width + TOLERANCE) | (y < -TOLERANCE) | (y > height + TOLERANCE)
    if bad.any():
        px, py = points[np.flatnonzero(bad)[0]]
        raise DataError(f"{where}: {shape} has the point ({px:g}, {py:g}) outside the {width}x{height} image (more "
                        f"than {TOLERANCE:g} pixel past its edges): the annotation belongs to another image or "
                        f"size; fix the shape in the tool, or set outside=clip to keep only its part inside the image")


def check_finite(values, *, where: Path, shape: str) -> np.ndarray:
    """Points as an (N, 2) float array; anything else is one sentence naming the shape."""
    try:
        points = np.asarray(values, dtype=float).reshape(-1, 2)
    except (TypeError, ValueError):
        points = None
    if points is None or not np.isfinite(points).all():
        raise DataError(f"{where}: {shape} has points that are not [x, y] number pairs ({str(values)[:80]}); "
                        f"fix or delete the shape in the tool")
    return points


def window(points: np.ndarray, *, height: int, width: int, pad: float) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) of the image part that `points`, widened by `pad` pixels, can cover; empty when
    they lie outside the image."""
    (left, top), (right, bottom) = points.min(axis=0) - pad, points.max(axis=0) + pad
    return (max(math.floor(top), 0), max(math.floor(left), 0), min(math.ceil(bottom) + 1, height),
            min(math.ceil(right) + 1, width))


def draw_pil(points: np.ndarray, paint: Callable[[ImageDraw.ImageDraw, list], None], *, height: int, width: int,
             pad: float) -> tuple[np.ndarray, tuple[int, int]]:
    """What `paint(draw, xy)` draws with PIL's ImageDraw in colour 1 (labelme's rasteriser), `xy` being `points` in
    the window they cover (an integer shift, which PIL's rounding keeps exact): (pixels, (top, left))."""
    top, left, bottom, right = window(points, height=height, width=width, pad=pad)
    if bottom <= top or right <= left:
        return np.zeros((0, 0), bool), (0, 0)
    canvas = Image.new("L", (right - left, bottom - top), 0)
    paint(ImageDraw.Draw(canvas), [(float(x) - left, float(y) - top) for x, y in points])
    return np.asarray(canvas, dtype=bool), (top, left)


def polygon_pixels(polygons: Sequence[np.ndarray], *, height: int, width: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Polygons ((N, 2) points each) filled as COCO's pycocotools fills them (coordinates on pixel edges: (0, 0) is
    the top-left corner of the top-left pixel), through deeplab.data.coco's reader, their union in the window they
    cover: (pixels, (top, left)). A polygon of fewer than 3 points fills nothing there, so its last point is
    repeated."""
    polygons = [p for p in polygons if len(p)]
    if not polygons:
        return np.zeros((0, 0), bool), (0, 0)
    top, left, bottom, right = window(np.concatenate(polygons), height=height, width=width, pad=1)
    if bottom <= top or right <= left:
        return np.zeros((0, 0), bool), (0, 0)
    flat = [[float(v) for v in (points - [left, top]).ravel()] for points in polygons]
    flat = [p + p[-2:] * ((6 - len(p)) // 2) if len(p) < 6 else p for p in flat]
    return instance_mask(flat, height=bottom - top, width=right - left), (top, left)


def image_index(folder: Path) -> dict[str, list[Path]]:
    """{file name: [paths]} of every image file under `folder` (recursive)."""
    index: dict[str, list[Path]] = {}
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file():
            index.setdefault(path.name, []).append(path)
    return index


def find_in_index(index: dict[str, list[Path]], names: Sequence[str], *, where: Path, folder: Path) -> Path | None:
    """The one image of the first of `names` found in `index`; two images of that name are one sentence."""
    for name in names:
        found = index.get(name, [])
        if len(found) > 1:
            raise DataError(f"{where}: the image {name} is found {len(found)} times under {folder} ({found[0]}, "
                            f"{found[1]}), so which one was annotated is a guess; give images= a folder that "
                            f"holds one of them")
        if found:
            return found[0]
    return None


def sample_name(relative: str, *, where: Path) -> str:
    """The output stem of an image at `relative` (a path inside the export, '/' separated): its path without the
    extension, with any folders joined by '__' (a flat images/ folder needs distinct stems)."""
    stem = re.sub(r"\.[^./]*$", "", relative.replace("\\", "/").strip("/"))
    name = "__".join(part for part in stem.split("/") if part not in ("", ".", ".."))
    if not name or name != name.strip() or "\n" in name:
        raise DataError(f"{where}: the image name {relative!r} gives no usable file stem (empty, or with spaces at "
                        f"its ends); rename the image")
    return name
