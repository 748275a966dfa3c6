"""COCO instances JSON (any tool's, CVAT's "COCO 1.0" export among them): `images`, `annotations`, `categories`.

Each annotation's polygons or RLE (compressed or not) are read by deeplab.data.coco's reader (pycocotools, as
`dataset=coco` reads them). Unlike `dataset=coco`, which trains on COCO itself and ignores crowd regions and pixels
two classes claim, an import draws every annotation as its category, crowd ones too (CVAT exports its brush masks as
crowd RLE), in the file's order, the later one winning where they overlap. Categories are taken in id order.
"""

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from deeplab.data.annotations.common import (Export, Layer, Sample, check_finite, check_points, find_in_index,
                                             image_index, not_this_tool, polygon_pixels, read_json, sample_name)
from deeplab.data.coco import instance_mask
from deeplab.data.dataset import DataError

TOOL = "COCO"


def _annotation_layer(ann: dict, label: str, *, height: int, width: int, outside: str,
                      where: Path) -> tuple[np.ndarray, tuple[int, int]]:
    """One annotation's pixels, (pixels, (top, left)); points outside the image or an RLE of another size are one
    sentence."""
    what = f"annotation {ann.get('id', '?')} ({label!r})"
    segmentation = ann["segmentation"]
    if isinstance(segmentation, list):
        polygons = [check_finite(p, where=where, shape=what) for p in segmentation]
        for points in polygons:
            check_points(points, height=height, width=width, outside=outside, where=where, shape=what)
        return polygon_pixels(polygons, height=height, width=width)
    if not isinstance(segmentation, dict) or "counts" not in segmentation or "size" not in segmentation:
        raise DataError(f"{where}: {what} has a segmentation that is neither polygons nor RLE "
                        f"({str(segmentation)[:80]}); export it again")
    if list(segmentation["size"]) != [height, width]:
        raise DataError(f"{where}: {what} is an RLE of size {segmentation['size']} on an image of {height}x{width} "
                        f"(height x width); the annotation belongs to another image or size: export it again")
    return instance_mask(segmentation, height=height, width=width), (0, 0)


def _layers(anns: list[dict], names: dict, *, outside: str, where: Path):
    def draw(height: int, width: int) -> Iterator[Layer]:
        for ann in anns:
            label = names[ann["category_id"]]
            yield label, *_annotation_layer(ann, label, height=height, width=width, outside=outside, where=where)
    return draw


def _check_file(data, path: Path) -> None:
    """A COCO instances document whose every part this reader uses is there; else one sentence."""
    if not isinstance(data, dict) or not {"images", "annotations", "categories"} <= data.keys():
        raise not_this_tool(path, data, tool="its tool", expected="a COCO instances file",
                            needs="images, annotations and categories")
    images = data["images"]
    bad = next((im for im in images if not isinstance(im, dict)
                or not {"id", "file_name", "height", "width"} <= im.keys()), None)
    if bad is not None:
        raise DataError(f"{path}: an image entry lacks id, file_name, height or width ({str(bad)[:80]}); export "
                        f"the COCO file again")
    bad = next((c for c in data["categories"] if not isinstance(c, dict) or not {"id", "name"} <= c.keys()), None)
    if bad is not None:
        raise DataError(f"{path}: a category lacks its id or name ({str(bad)[:80]}); export the COCO file again")
    ids = {c["id"] for c in data["categories"]}
    for ann in data["annotations"]:
        if not isinstance(ann, dict) or "image_id" not in ann or ann.get("category_id") not in ids:
            raise DataError(f"{path}: annotation {ann.get('id', '?') if isinstance(ann, dict) else ann!r} names "
                            f"category_id {ann.get('category_id') if isinstance(ann, dict) else None!r}, which "
                            f"'categories' lacks (or no image_id); export the COCO file again")
        if "segmentation" not in ann:
            raise DataError(f"{path}: annotation {ann.get('id', '?')} has no segmentation, only a box: a detection "
                            f"file, which holds no masks; export the annotations with their polygons or masks")


def find_image(file_name: str, roots: list[Path], *, index: dict | None, where: Path,
               images: Path | None) -> Path:
    """`file_name` under the first of `roots` that holds it (as given, then by its name alone)."""
    for root in roots:
        for candidate in (root / file_name, root / Path(file_name).name):
            if candidate.is_file():
                return candidate
    found = find_in_index(index, [Path(file_name).name], where=where, folder=images) if index else None
    if found:
        return found
    raise DataError(f"{where}: the image {file_name} it lists is not there (looked under "
                    f"{', '.join(map(str, roots))}); give images=DIR, the folder that holds the images")


def read_coco_file(path: Path, *, roots: list[Path], images: Path | None, outside: str, tool: str = "COCO JSON",
                   names_from: str = "") -> Export:
    """One COCO instances file; its images are looked for under `roots` (images=DIR's folder alone, when given)."""
    data = read_json(path, tool=TOOL)
    _check_file(data, path)
    categories = sorted(data["categories"], key=lambda c: c["id"])
    names = {c["id"]: str(c["name"]) for c in categories}
    by_image: dict = {}
    for ann in data["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    index = image_index(images) if images else None
    samples = []
    for image in data["images"]:
        anns = by_image.get(image["id"], [])
        file_name = str(image["file_name"])
        samples.append(Sample(
            name=sample_name(f"{names_from}{file_name}", where=path), where=path,
            draw=_layers(anns, names, outside=outside, where=path),
            image=find_image(file_name, roots, index=index, where=path, images=images),
            size=(int(image["height"]), int(image["width"])),
            labels=tuple(dict.fromkeys(names[a["category_id"]] for a in anns)), item=f"image {image['id']}"))
    return Export(tool=tool, source=path, labels=list(dict.fromkeys(names.values())), samples=samples)


def read_coco(source: Path, *, images: Path | None = None, outside: str = "error") -> Export:
    """A COCO instances JSON file; its images under images=DIR, or beside it, above it, or in images/ there."""
    if source.is_dir():
        found = sorted(source.glob("*.json")) or sorted(source.glob("annotations/*.json"))
        if len(found) != 1:
            raise DataError(f"{source}: a folder; from=coco reads one COCO JSON file, and "
                            + (f"{len(found)} are there ({', '.join(p.name for p in found[:4])})" if found else
                               "none is there") + "; give source= the JSON file itself")
        source = found[0]
    roots = [images] if images else [source.parent, source.parent.parent, source.parent / "images",
                                     source.parent.parent / "images"]
    return read_coco_file(source, roots=roots, images=images, outside=outside)
