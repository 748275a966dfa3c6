"""Annotation tools' exports made from class-index masks, as each tool writes them: what the importer
(`deeplab.data.annotations`) is tested on, and what measures its round trip on real masks (CamVid's):

    kwargs = write_export("labelme", [(image_path, mask), ...], class_names, folder)
    result = import_annotations("labelme", output=out, class_names=class_names, **kwargs)
    agreement(masks, out)   # {stem: share of pixels whose class came back}

A mask's pixels of class `background` (0 by default) are left unlabelled, as an annotator leaves them, and drawn
only where they lie inside another region; 255 is drawn with the label IGNORE_LABEL (which the importer reads as
255). Polygons come from OpenCV's outer contours of each connected region; a region inside another's hole is drawn
after it (the regions are drawn largest outline first), so that "the later shape wins" gives the mask back. labelme
polygons run through the boundary pixels' centres (labelme fills with PIL, edges included); COCO and Label Studio
polygons run along the pixels' outer edges (pycocotools fills the inside), traced at twice the resolution.

Nothing here comes from the tools' own files: the formats are written from their documentation and code.
"""

import base64
import io
import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from deeplab.visualization import default_palette

IGNORE_LABEL = "__ignore__"
FORMATS = {"labelme": ("polygon", "imagedata", "mask"), "cvat": ("mask", "mask_noimages", "coco", "coco_noimages"),
           "labelstudio": ("polygon", "brush"), "coco": ("polygon", "rle")}


# --- regions ---------------------------------------------------------------------------------------------------------

def regions(mask: np.ndarray, *, background: int | None = 0) -> list[tuple[int, np.ndarray, tuple]]:
    """(value, outer contour (N, 1, 2) at pixel centres, bounding box (x, y, w, h)) of every 8-connected region of
    every value (its holes filled), in drawing order: the largest filled outline first, so a region lying in another's
    hole comes after it. Regions of `background` are kept only where something drawn before covers them."""
    found = []
    for value in np.unique(mask):
        # RETR_CCOMP: every region's outer boundary on the top level, a region inside another's hole too
        contours, hierarchy = cv2.findContours((mask == value).astype(np.uint8), cv2.RETR_CCOMP,
                                               cv2.CHAIN_APPROX_SIMPLE)
        for contour in (c for c, links in zip(contours, hierarchy[0]) if links[3] == -1):
            box = cv2.boundingRect(contour)
            found.append((int(value), contour, box, int(filled(contour, box).sum())))
    found.sort(key=lambda r: -r[3])
    painted = np.zeros(mask.shape, bool)
    kept = []
    for value, contour, (x, y, w, h), _ in found:
        inside = filled(contour, (x, y, w, h))
        if value == background and not (painted[y:y + h, x:x + w] & inside).any():
            continue
        painted[y:y + h, x:x + w] |= inside
        kept.append((value, contour, (x, y, w, h)))
    return kept


def filled(contour: np.ndarray, box: tuple) -> np.ndarray:
    """The filled outline of `contour` inside its bounding box, as a bool (h, w) array."""
    x, y, w, h = box
    canvas = np.zeros((h, w), np.uint8)
    cv2.drawContours(canvas, [contour], -1, 1, thickness=-1, offset=(-x, -y))
    return canvas.astype(bool)


def exact(mask: np.ndarray, value: int, contour: np.ndarray, box: tuple) -> np.ndarray:
    """The region's own pixels (its value, inside its outline) in its bounding box: what a mask-based export (labelme's
    mask shapes, COCO RLE) carries, so none is lost where 8-connected regions of two classes cross on a diagonal and
    their filled outlines overlap (what the polygon formats lose: 0.08% of CamVid's pixels)."""
    x, y, w, h = box
    return filled(contour, box) & (mask[y:y + h, x:x + w] == value)


def edge_polygon(contour: np.ndarray, box: tuple) -> list[float]:
    """The region's outline along its pixels' outer edges ((0, 0) the top-left pixel's top-left corner), traced at
    twice the resolution: flat [x0, y0, x1, y1, ...], what pycocotools fills back to the same pixels."""
    x, y, w, h = box
    big = cv2.resize(filled(contour, box).astype(np.uint8), (2 * w, 2 * h), interpolation=cv2.INTER_NEAREST)
    outlines, _ = cv2.findContours(big, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    points = max(outlines, key=len)[:, 0].astype(float)
    points = (points + 0.5) / 2 + [x, y]
    flat = points.ravel().tolist()
    return flat + flat[-2:] * max(0, (6 - len(flat)) // 2)


def label_of(value: int, class_names: Sequence[str]) -> str:
    return IGNORE_LABEL if value == 255 else class_names[value]


# --- Label Studio's brush RLE: the encoder of label-studio-converter's brush.py, written again -------------------

def encode_brush_rle(values: np.ndarray) -> list[int]:
    """Label Studio's brush RLE of a flat array of bytes (RGBA, row by row): 8-bit words, run-length widths 3, 4, 8
    and 16 bits; a value seen once is a literal of one, a repeat a run (runs over 65,536 split)."""
    values = np.asarray(values, np.uint8).ravel()
    bits = [f"{len(values):032b}", f"{8 - 1:05b}", "".join(f"{w - 1:04b}" for w in (3, 4, 8, 16))]
    if len(values):
        starts = np.flatnonzero(np.r_[True, values[1:] != values[:-1]])
        lengths = np.diff(np.r_[starts, len(values)])
        for start, length in zip(starts.tolist(), lengths.tolist()):
            value = f"{int(values[start]):08b}"
            if length == 1:
                bits.append("0" + "00" + "000" + value)
                continue
            while length > 2 ** 16:
                bits.append("1" + "11" + f"{2 ** 16 - 1:016b}" + value)
                length -= 2 ** 16
            width, code = next((w, c) for w, c in ((3, "00"), (4, "01"), (8, "10"), (16, "11")) if length <= 2 ** w)
            bits.append("1" + code + f"{length - 1:0{width}b}" + value)
    stream = "".join(bits)
    stream += "0" * (8 - len(stream) % 8)  # as the converter pads: a whole zero byte when already aligned
    return [int(stream[i:i + 8], 2) for i in range(0, len(stream), 8)]


# --- the tools' exports ------------------------------------------------------------------------------------------

def _labelme(samples, class_names, folder: Path, variant: str, background) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    for image_path, mask in samples:
        image_path = Path(image_path)
        shapes = []
        for value, contour, box in regions(mask, background=background):
            shape = {"label": label_of(value, class_names), "group_id": None, "description": "", "flags": {},
                     "mask": None}
            if variant == "mask":
                x, y, w, h = box
                buffer = io.BytesIO()
                Image.fromarray(exact(mask, value, contour, box).astype(np.uint8)).save(buffer, format="PNG")
                shape.update(shape_type="mask", points=[[float(x), float(y)], [float(x + w - 1), float(y + h - 1)]],
                             mask=base64.b64encode(buffer.getvalue()).decode())
            else:
                points = contour[:, 0].astype(float).tolist()
                shape.update(shape_type="polygon", points=points + points[-1:] * (3 - len(points)))
            shapes.append(shape)
        document = {"version": "5.5.0", "flags": {}, "shapes": shapes, "imagePath": image_path.name,
                    "imageData": None, "imageHeight": int(mask.shape[0]), "imageWidth": int(mask.shape[1])}
        if variant == "imagedata":
            document["imageData"] = base64.b64encode(image_path.read_bytes()).decode()
        else:
            shutil.copyfile(image_path, folder / image_path.name)
        (folder / f"{image_path.stem}.json").write_text(json.dumps(document, indent=2))
    return {"source": folder, "images": None}


def _colours(class_names) -> tuple[list[tuple[str, tuple]], dict[int, tuple]]:
    """CVAT's label map ([(label, colour)]: background 0,0,0 first, which CVAT adds when the task has no such label,
    then one colour per class and IGNORE_LABEL's) and {mask value: colour}."""
    palette = [tuple(c) for c in default_palette(256)]
    by_value = {value: (0, 0, 0) if value == 0 and name == "background" else palette[value] if value else
                (255, 255, 255) for value, name in enumerate(class_names)}  # VOC's colour map has no 255
    by_value[255] = palette[255]
    entries = [] if class_names[0] == "background" else [("background", (0, 0, 0))]
    entries += [(label_of(value, class_names), rgb) for value, rgb in by_value.items()]
    return entries, by_value


def _cvat_masks(samples, class_names, folder: Path, variant: str, background) -> dict:
    entries, by_value = _colours(class_names)
    for sub in ("SegmentationClass", "SegmentationObject", "ImageSets/Segmentation", "JPEGImages"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    (folder / "labelmap.txt").write_text("# label:color_rgb:parts:actions\n" + "".join(
        f"{name}:{','.join(map(str, rgb))}::\n" for name, rgb in entries))
    images = folder / "JPEGImages" if variant == "mask" else folder.parent / f"{folder.name}_images"
    images.mkdir(parents=True, exist_ok=True)
    names = []
    for image_path, mask in samples:
        image_path = Path(image_path)
        table = np.zeros((256, 3), np.uint8)
        for value, rgb in by_value.items():
            table[value] = rgb
        if background is not None:  # pixels left unlabelled: CVAT paints them with its background colour
            table[background] = (0, 0, 0)
        Image.fromarray(table[mask]).save(folder / "SegmentationClass" / f"{image_path.stem}.png")
        count, instances = cv2.connectedComponents((mask != 0).astype(np.uint8))
        colours = np.array(default_palette(max(count, 1)), np.uint8)
        Image.fromarray(colours[instances]).save(folder / "SegmentationObject" / f"{image_path.stem}.png")
        shutil.copyfile(image_path, images / image_path.name)
        names.append(image_path.stem)
    (folder / "ImageSets/Segmentation/default.txt").write_text("".join(f"{n}\n" for n in names))
    return {"source": folder, "images": None if variant == "mask" else images}


def _coco_document(samples, class_names, *, rle: bool, background) -> dict:
    categories = [{"id": i + 1, "name": n, "supercategory": ""} for i, n in enumerate(class_names)]
    categories.append({"id": 256, "name": IGNORE_LABEL, "supercategory": ""})
    images, annotations = [], []
    for number, (image_path, mask) in enumerate(samples, start=1):
        height, width = mask.shape
        images.append({"id": number, "file_name": Path(image_path).name, "height": int(height), "width": int(width)})
        for value, contour, box in regions(mask, background=background):
            x, y, w, h = box
            if rle:
                pixels = np.zeros((height, width), np.uint8)
                pixels[y:y + h, x:x + w] = exact(mask, value, contour, box)
                encoded = mask_utils.encode(np.asfortranarray(pixels))
                segmentation = {"size": [int(height), int(width)], "counts": encoded["counts"].decode()}
            else:
                segmentation = [edge_polygon(contour, box)]
            annotations.append({"id": len(annotations) + 1, "image_id": number,
                                "category_id": 256 if value == 255 else value + 1, "segmentation": segmentation,
                                "area": float(w * h), "bbox": [x, y, w, h], "iscrowd": int(rle), "attributes": {}})
    return {"licenses": [], "info": {}, "categories": categories, "images": images, "annotations": annotations}


def _coco(samples, class_names, folder: Path, variant: str, background) -> dict:
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for image_path, _ in samples:
        shutil.copyfile(image_path, folder / "images" / Path(image_path).name)
    document = _coco_document(samples, class_names, rle=variant == "rle", background=background)
    (folder / "annotations.json").write_text(json.dumps(document))
    return {"source": folder / "annotations.json", "images": None}


def _cvat_coco(samples, class_names, folder: Path, variant: str, background) -> dict:
    (folder / "annotations").mkdir(parents=True, exist_ok=True)
    images = folder / "images" if variant == "coco" else folder.parent / f"{folder.name}_images"
    images.mkdir(parents=True, exist_ok=True)
    for image_path, _ in samples:
        shutil.copyfile(image_path, images / Path(image_path).name)
    document = _coco_document(samples, class_names, rle=False, background=background)
    (folder / "annotations" / "instances_default.json").write_text(json.dumps(document))
    return {"source": folder, "images": None if variant == "coco" else images}


def _labelstudio(samples, class_names, folder: Path, variant: str, background) -> dict:
    uploads = folder / "media" / "upload" / "1"
    uploads.mkdir(parents=True, exist_ok=True)
    tasks = []
    for number, (image_path, mask) in enumerate(samples, start=1):
        image_path = Path(image_path)
        upload = f"{number:08x}-{image_path.name}"
        shutil.copyfile(image_path, uploads / upload)
        height, width = mask.shape
        common = {"from_name": "label", "to_name": "image", "original_width": int(width),
                  "original_height": int(height), "image_rotation": 0, "origin": "manual"}
        results = []
        if variant == "brush":
            for value in np.unique(mask):
                if value == background:
                    continue
                alpha = np.repeat((mask == value).ravel().astype(np.uint8) * 255, 4)  # mask2rle's layout
                label = label_of(int(value), class_names)
                results.append({"id": f"b{value}", "type": "brushlabels", **common,
                                "value": {"format": "rle", "rle": encode_brush_rle(alpha), "brushlabels": [label]}})
        else:
            for index, (value, contour, box) in enumerate(regions(mask, background=background)):
                flat = np.array(edge_polygon(contour, box)).reshape(-1, 2) / [width, height] * 100
                results.append({"id": f"p{index}", "type": "polygonlabels", **common,
                                "value": {"points": flat.tolist(), "closed": True,
                                          "polygonlabels": [label_of(value, class_names)]}})
        tasks.append({"id": number, "data": {"image": f"/data/upload/1/{upload}"}, "file_upload": upload,
                      "annotations": [{"id": number, "completed_by": 1, "result": results, "was_cancelled": False,
                                       "ground_truth": False, "created_at": "2026-01-01T00:00:00.000000Z",
                                       "updated_at": "2026-01-01T00:00:00.000000Z", "lead_time": 1.0}],
                      "drafts": [], "predictions": [], "meta": {}, "inner_id": number, "total_annotations": 1,
                      "cancelled_annotations": 0})
    (folder / "project.json").write_text(json.dumps(tasks))
    return {"source": folder / "project.json", "images": folder / "media"}


WRITERS = {"labelme": _labelme, "labelstudio": _labelstudio, "coco": _coco}


def write_export(fmt: str, samples: Sequence[tuple[str | Path, np.ndarray]], class_names: Sequence[str],
                 folder: str | Path, *, variant: str | None = None, background: int | None = 0) -> dict:
    """Write `samples` ((image path, class-index mask) pairs; 255 = ignore) as tool `fmt`'s export in `folder`.

    variant: labelme: polygon (default), imagedata (the image embedded, not beside the JSON), mask (labelme's mask
    shapes); cvat: mask (Segmentation mask 1.1 with JPEGImages/, default), mask_noimages (the images in a folder
    beside it), coco, coco_noimages (COCO 1.0); labelstudio: polygon (default), brush; coco: polygon (default), rle.
    background: the class left unlabelled (None: every class drawn). Returns the importer's keywords for it:
    {"source": ..., "images": ...}."""
    variant = variant or FORMATS[fmt][0]
    if variant not in FORMATS[fmt]:
        raise ValueError(f"{fmt} has the variants {FORMATS[fmt]}, not {variant!r}")
    folder = Path(folder)
    if fmt == "cvat":
        writer = _cvat_masks if variant.startswith("mask") else _cvat_coco
    else:
        writer = WRITERS[fmt]
    return writer(list(samples), list(class_names), folder, variant, background)


def agreement(masks: dict[str, np.ndarray], output: str | Path) -> dict[str, float]:
    """{stem: the share of pixels of masks[stem] that output/masks/<stem>.png gives back}."""
    return {stem: float((np.asarray(Image.open(Path(output) / "masks" / f"{stem}.png")) == mask).mean())
            for stem, mask in masks.items()}
