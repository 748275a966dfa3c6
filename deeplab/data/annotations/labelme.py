"""labelme (wkentaro/labelme): a folder, searched recursively, of one JSON file per image.

Each file holds `shapes` ([{label, points, shape_type, group_id, mask, ...}]), `imagePath` (relative to the JSON
file), `imageData` (the image as base64, or null), `imageHeight` and `imageWidth`. Shapes are rasterised as
labelme's own `shape_to_mask` does, with PIL's ImageDraw: polygon, rectangle and oriented_rectangle filled with
their outline, circle from its centre and a point on its circumference, line and linestrip 10 pixels wide
(linestrip with rounded joints), point a disc of radius 5, and mask a PNG placed with its top-left corner at the first
of its two points. The image is the file `imagePath` names beside the JSON (or found by name under images=DIR), else
the embedded imageData; labelme shows an image turned by its EXIF orientation, so such an image is written turned.
"""

import base64
import binascii
import io
import math
from collections.abc import Iterator
from pathlib import Path, PureWindowsPath

import numpy as np
from PIL import Image

from deeplab.data.annotations.common import (Export, Layer, Sample, check_finite, check_points, draw_pil,
                                             find_in_index, image_index, not_this_tool, read_json, sample_name)
from deeplab.data.dataset import DataError

TOOL = "labelme"
LINE_WIDTH, POINT_RADIUS = 10, 5  # shape_to_mask's defaults, which labelme's own converters use
POINT_COUNTS = {"rectangle": 2, "circle": 2, "line": 2, "mask": 2, "point": 1, "oriented_rectangle": 4}
SHAPE_TYPES = ("polygon", "rectangle", "circle", "line", "linestrip", "point", "oriented_rectangle", "mask")


def _mask_patch(encoded, *, where: Path, shape: str) -> np.ndarray:
    """A mask shape's base64 PNG as a bool array."""
    try:
        with Image.open(io.BytesIO(base64.b64decode(encoded, validate=True))) as patch:
            return np.asarray(patch.convert("L")) > 0
    except (binascii.Error, OSError, ValueError, TypeError):
        raise DataError(f"{where}: {shape} is a mask whose 'mask' is not a base64 PNG; delete the shape in "
                        f"labelme and draw it again") from None


def _place(patch: np.ndarray, points: np.ndarray, *, height: int,
           width: int) -> tuple[np.ndarray, tuple[int, int]]:
    """A mask shape on the image: labelme's placement (integer corners give the patch's extent, inclusive; else the
    patch's own size), clipped to the image: (pixels, (top, left))."""
    (x1, y1), (x2, y2) = np.round(points).astype(int)
    if np.array_equal(points, np.trunc(points)):
        rows, cols = min(y2 - y1 + 1, patch.shape[0]), min(x2 - x1 + 1, patch.shape[1])
    else:
        rows, cols = patch.shape[:2]
    top, left, bottom, right = max(y1, 0), max(x1, 0), min(y1 + rows, height), min(x1 + cols, width)
    if top >= bottom or left >= right:
        return np.zeros((0, 0), bool), (0, 0)
    return patch[top - y1:bottom - y1, left - x1:right - x1], (top, left)


def _shape_pixels(kind: str, points: np.ndarray, patch: np.ndarray | None, *, height: int,
                  width: int) -> tuple[np.ndarray, tuple[int, int]]:
    """One shape's pixels, drawn as labelme's shape_to_mask draws them: (pixels, (top, left))."""
    size = {"height": height, "width": width}
    if kind == "mask":
        return _place(patch, points, **size)
    if kind in ("circle", "point"):
        (cx, cy), (px, py) = points[0], points[-1]
        r = math.hypot(cx - px, cy - py) if kind == "circle" else POINT_RADIUS
        return draw_pil(points[:1], lambda d, xy: d.ellipse([xy[0][0] - r, xy[0][1] - r, xy[0][0] + r,
                                                              xy[0][1] + r], outline=1, fill=1), pad=r + 1, **size)
    if kind == "rectangle":
        def box(d, xy):
            (x0, y0), (x1, y1) = xy
            d.rectangle([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)], outline=1, fill=1)
        return draw_pil(points, box, pad=1, **size)
    if kind in ("line", "linestrip"):
        joint = "curve" if kind == "linestrip" else None
        return draw_pil(points, lambda d, xy: d.line(xy, fill=1, width=LINE_WIDTH, joint=joint), pad=LINE_WIDTH,
                        **size)
    # polygon, oriented_rectangle; labelme keeps polygons of fewer than 3 points: they draw their outline
    return draw_pil(points, lambda d, xy: d.polygon(xy + [xy[-1]] * (3 - len(xy)), outline=1, fill=1), pad=1,
                    **size)


def _parse_shapes(data: dict, path: Path) -> list[tuple[str, str, np.ndarray, object]]:
    """(label, shape_type, points, base64 mask) of every shape, checked; a malformed one is one sentence."""
    shapes = data["shapes"]
    if not isinstance(shapes, list):
        raise DataError(f"{path}: 'shapes' is a {type(shapes).__name__}, where labelme writes a list of shapes; save "
                        f"the file in labelme again")
    parsed = []
    for number, shape in enumerate(shapes):
        what = f"shape {number}"
        if not isinstance(shape, dict) or not isinstance(shape.get("label"), str) or "points" not in shape:
            raise DataError(f"{path}: {what} has no label or no points ({str(shape)[:80]}); fix or delete it in "
                            f"labelme")
        what = f"shape {number} ({shape['label']!r})"
        kind = shape.get("shape_type") or "polygon"  # labelme before 3.x saved polygons without a type
        if kind not in SHAPE_TYPES:
            raise DataError(f"{path}: {what} has shape_type {kind!r}, which labelme's converters do not draw (known: "
                            f"{', '.join(SHAPE_TYPES)}); convert or delete it in labelme")
        points = check_finite(shape["points"], where=path, shape=what)
        if not len(points) or (kind in POINT_COUNTS and len(points) != POINT_COUNTS[kind]):
            raise DataError(f"{path}: {what} is a {kind} with {len(points)} points where labelme gives "
                            f"{POINT_COUNTS.get(kind, 'at least 1')}; fix or delete it in labelme")
        if kind == "mask" and not shape.get("mask"):
            raise DataError(f"{path}: {what} is a mask shape without its 'mask' PNG; delete it in labelme")
        parsed.append((shape["label"], kind, points, shape.get("mask")))
    return parsed


def _declared_size(data: dict, path: Path) -> tuple[int, int] | None:
    height, width = data.get("imageHeight"), data.get("imageWidth")
    if height is None and width is None:
        return None
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (height, width)):
        raise DataError(f"{path}: imageHeight={height!r} and imageWidth={width!r} are not image sizes; open and save "
                        f"the file in labelme again")
    return height, width


def _layers(path: Path, shapes, outside: str):
    """The sample's `draw`: its shapes as (label, pixels) layers, in the file's order (the later one wins)."""
    def draw(height: int, width: int) -> Iterator[Layer]:
        for number, (label, kind, points, encoded) in enumerate(shapes):
            what = f"shape {number} ({label!r}, {kind})"
            check_points(points, height=height, width=width, outside=outside, where=path, shape=what)
            patch = _mask_patch(encoded, where=path, shape=what) if kind == "mask" else None
            yield label, *_shape_pixels(kind, points, patch, height=height, width=width)
    return draw


def _image(data: dict, path: Path, *, index: dict | None, images: Path | None) -> tuple[Path | None, bytes | None]:
    """The image file the JSON names beside itself (or by name under images=DIR), else its embedded bytes."""
    named = data.get("imagePath")
    relative = PureWindowsPath(named).as_posix() if isinstance(named, str) and named else None
    if relative and (path.parent / relative).resolve() == path.resolve():
        relative = None  # older labelme saved with the image embedded named the JSON itself (its apc2016_obj3.json)
    if relative:
        beside = path.parent / relative
        if beside.is_file():
            return beside, None
        if index is not None:
            found = find_in_index(index, [Path(relative).name], where=path, folder=images)
            if found:
                return found, None
    if isinstance(data.get("imageData"), str) and data["imageData"]:
        try:
            return None, base64.b64decode(data["imageData"], validate=True)
        except (binascii.Error, ValueError):
            raise DataError(f"{path}: imageData is not base64; open and save the file in labelme again") from None
    if not relative:
        raise DataError(f"{path}: names no image (imagePath is empty) and holds no imageData; open its image in "
                        f"labelme and save it again")
    looked = f"{path.parent / relative}" + (f" and under images={images}" if images else "")
    raise DataError(f"{path}: the image it names, {relative}, is not there (looked for {looked}) and the file holds "
                    f"no imageData; put the image there, or give images=DIR, the folder that holds it")


def read_labelme(source: Path, *, images: Path | None = None, outside: str = "error") -> Export:
    """Every labelme JSON file under `source` (a folder, searched recursively, or one JSON file), in path order."""
    files = [source] if source.is_file() else sorted(p for p in source.rglob("*.json") if p.is_file())
    index = image_index(images) if images else None
    labels: dict[str, None] = {}
    samples = []
    for path in files:
        data = read_json(path, tool=TOOL)
        if not isinstance(data, dict) or "shapes" not in data or "imagePath" not in data:
            raise not_this_tool(path, data, tool=TOOL, expected="a labelme annotation", needs="shapes and imagePath",
                                fix=f"move it out of {source}" if source.is_dir() else "give source= labelme's file")
        shapes = _parse_shapes(data, path)
        image, image_data = _image(data, path, index=index, images=images)
        relative = path.name if source.is_file() else path.relative_to(source).as_posix()
        labels.update(dict.fromkeys(label for label, *_ in shapes))
        samples.append(Sample(name=sample_name(relative, where=path), where=path, draw=_layers(path, shapes, outside),
                              image=image, image_data=image_data, size=_declared_size(data, path),
                              labels=tuple(dict.fromkeys(label for label, *_ in shapes)),
                              exif_applied=image is not None))
    return Export(tool="labelme JSON", source=source, labels=list(labels), samples=samples)
