"""Label Studio's JSON export: a list of tasks, each with `data` (the image: `/data/upload/<project>/<8 hex>-<name>`,
`/data/local-files/?d=<path>` or a URL) and `annotations` ([{result: [...], was_cancelled, created_at, ...}]).

A task's annotation is its newest one by `created_at` that was not cancelled or skipped (the later in the list when
the times are equal or absent); a task with none is left out, with a note. Its results are drawn in their order, the
later one winning where they overlap: `polygonlabels` (value.points in percent of original_width and
original_height, filled as COCO's polygons are: coordinates on pixel edges) and `brushlabels` (value.format "rle":
the brush layer as an RGBA image, run-length encoded; a pixel belongs to the region where its alpha is above 0, as
label-studio-sdk's brush-to-COCO export reads it). A region's label comes from value.<type> or value.labels, or from
a `labels` result of the same id. Other result types (rectangles, key points, choices, text) are not regions of a
mask and are left out, with a note.

Images are found by file name under images=DIR (searched recursively), else beside the JSON file: the name the URL
ends with, then that name without the `xxxxxxxx-` prefix (8 hex digits) Label Studio gives uploaded files.

The RLE decoder is written here from the format's description in label-studio-converter's brush.py (itself a port
of thi.ng/rle-pack): label-studio-converter, deprecated for label-studio-sdk, pulls pandas, nltk and requests, and
label-studio-sdk pins opencv-python-headless<4.13, pyjwt, requests-mock and more: too heavy to depend on for one
decoder.
"""

import re
import urllib.parse
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from deeplab.data.annotations.common import (Export, Layer, Sample, check_finite, check_points, find_in_index,
                                             image_index, not_this_tool, polygon_pixels, read_json, sample_name)
from deeplab.data.dataset import IMAGE_EXTENSIONS, DataError

TOOL = "Label Studio"
UPLOAD_PREFIX = re.compile(r"^[0-9a-f]{8}-")
POLYGON, BRUSH = ("polygonlabels", "polygon"), ("brushlabels", "brush")


def decode_brush_rle(rle: Sequence[int]) -> np.ndarray:
    """Label Studio's brush RLE (a list of byte values) as the flat array it encodes (RGBA, row by row).

    The bit stream: 32 bits for the number of values, 5 for the word size less one, four 4-bit run-length widths
    (less one); then runs: 1 bit (1: one value repeated, 0: values given one by one), 2 bits choosing a width, that many
    bits for the run's length less one, then the value(s), each word-size bits. Raises ValueError on a truncated or
    inconsistent stream."""
    data = np.asarray(rle, dtype=np.int64)
    if data.ndim != 1 or (data.size and (data.min() < 0 or data.max() > 255)):
        raise ValueError("not a list of byte values")
    bits = (np.unpackbits(data.astype(np.uint8)) + ord("0")).tobytes().decode()
    position = 0

    def read(width: int) -> int:
        nonlocal position
        if position + width > len(bits):
            raise ValueError("the stream ends early")
        value = int(bits[position:position + width], 2)
        position += width
        return value

    count, word = read(32), read(5) + 1
    widths = [read(4) + 1 for _ in range(4)]
    out = np.zeros(count, np.uint32)
    powers = 1 << np.arange(word - 1, -1, -1, dtype=np.uint64)
    index = 0
    while index < count:
        repeated = read(1)
        run = read(widths[read(2)]) + 1
        if index + run > count:
            raise ValueError(f"a run passes the {count} values the stream declares")
        if repeated:
            out[index:index + run] = read(word)
        else:
            end = position + run * word
            if end > len(bits):
                raise ValueError("the stream ends early")
            words = np.frombuffer(bits[position:end].encode(), np.uint8).reshape(run, word) - ord("0")
            out[index:index + run] = words.astype(np.uint64) @ powers
            position = end
        index += run
    return out


def _image_names(reference: str) -> list[str]:
    """The file names an image reference may have on disk: the path's last part, then without the upload prefix."""
    if "?d=" in reference:  # /data/local-files/?d=folder/image.jpg
        path = urllib.parse.unquote(reference.split("?d=", 1)[1])
    else:
        path = urllib.parse.unquote(urllib.parse.urlparse(reference).path)
    name = Path(path).name
    stripped = UPLOAD_PREFIX.sub("", name)
    return [name] + ([stripped] if stripped != name else [])


def _image_reference(task: dict, where: Path) -> str:
    """The task's image reference: data.image, else the one value of data that names an image file."""
    data = task.get("data") if isinstance(task.get("data"), dict) else {}
    if isinstance(data.get("image"), str):
        return data["image"]
    found = [v for v in data.values() if isinstance(v, str)
             and Path(urllib.parse.urlparse(v).path.split("?")[0]).suffix.lower() in IMAGE_EXTENSIONS]
    if len(found) != 1:
        raise DataError(f"{where}: task {task.get('id', '?')} names " + ("no image" if not found else
                        f"{len(found)} images") + f" in its data ({str(data)[:80]}); a task holds one image, "
                        f"under data.image")
    return found[0]


def _chosen_annotation(task: dict) -> dict | None:
    """The newest annotation that was not cancelled or skipped (the later in the list on a tie); None if none."""
    annotations = task.get("annotations", task.get("completions")) or []
    done = [(str(a.get("created_at") or ""), number, a) for number, a in enumerate(annotations)
            if isinstance(a, dict) and not a.get("was_cancelled") and not a.get("skipped")]
    return max(done, key=lambda t: t[:2])[2] if done else None


def _region_label(result: dict, labels_by_id: dict, *, where: Path, task) -> str:
    value = result.get("value") or {}
    names = value.get(result["type"]) or value.get("labels") or labels_by_id.get(result.get("id")) or []
    if isinstance(names, str):
        names = [names]
    if len(names) != 1:
        raise DataError(f"{where}: task {task} has a {result['type']} region ({result.get('id', '?')}) with "
                        + (f"{len(names)} labels ({', '.join(map(str, names))})" if names else "no label")
                        + "; a pixel takes one class: give the region one label in Label Studio")
    return str(names[0])


def _layers(regions: list, *, where: Path, task, outside: str):
    """The sample's `draw`: its polygon and brush regions in the annotation's order, the later one winning."""
    def draw(height: int, width: int) -> Iterator[Layer]:
        for kind, label, value, rid in regions:
            what = f"task {task}'s {kind} region {rid} ({label!r})"
            if kind in POLYGON:
                points = check_finite(value.get("points"), where=where, shape=what) * [width / 100, height / 100]
                check_points(points, height=height, width=width, outside=outside, where=where, shape=what)
                yield label, *polygon_pixels([points], height=height, width=width)
                continue
            try:
                rgba = decode_brush_rle(value.get("rle") or [])
            except (ValueError, TypeError) as exc:
                raise DataError(f"{where}: {what} holds a brush RLE that cannot be decoded ({exc}); export the "
                                f"project again") from None
            if rgba.size != height * width * 4:
                raise DataError(f"{where}: {what} holds a brush mask of {rgba.size} values where its "
                                f"{width}x{height} image has {height * width * 4} (RGBA); the annotation belongs "
                                f"to another image or size: export the project again")
            yield label, rgba[3::4].reshape(height, width) > 0, (0, 0)
    return draw


def _task_sample(task: dict, annotation: dict, *, where: Path, outside: str, index: dict | None,
                 images: Path | None, skipped: dict) -> Sample:
    """One task's sample: its regions, its image and the size Label Studio drew on."""
    task_id = task.get("id", "?")
    results = [r for r in annotation.get("result") or [] if isinstance(r, dict)]
    labels_by_id = {r.get("id"): (r.get("value") or {}).get("labels") for r in results if r.get("type") == "labels"}
    regions, sizes = [], set()
    for result in results:
        kind = result.get("type")
        if kind not in POLYGON + BRUSH:
            if kind != "labels":
                skipped[kind] = skipped.get(kind, 0) + 1
            continue
        value = result.get("value") or {}
        if kind in BRUSH and value.get("format", "rle") != "rle":
            raise DataError(f"{where}: task {task_id} has a brush region in the {value.get('format')!r} format; "
                            f"this reads Label Studio's 'rle' brush format: export the project as JSON again")
        if result.get("image_rotation"):
            raise DataError(f"{where}: task {task_id}'s region {result.get('id', '?')} was drawn on the image "
                            f"rotated by {result['image_rotation']} degrees; rotate it back in Label Studio and "
                            f"save the annotation again")
        size = (result.get("original_height"), result.get("original_width"))
        if not all(isinstance(v, int) and v > 0 for v in size):
            raise DataError(f"{where}: task {task_id}'s region {result.get('id', '?')} has no original_width and "
                            f"original_height; export the project as JSON (not JSON-MIN) again")
        sizes.add(size)
        regions.append((kind, _region_label(result, labels_by_id, where=where, task=task_id), value,
                        result.get("id", "?")))
    if len(sizes) > 1:
        raise DataError(f"{where}: task {task_id}'s regions give the image sizes {sorted(sizes)} (height, width); "
                        f"export the project again")
    reference = _image_reference(task, where)
    names = _image_names(reference)
    if isinstance(task.get("file_upload"), str):
        names += [n for n in _image_names(task["file_upload"]) if n not in names]
    if index is not None:
        image = find_in_index(index, names, where=where, folder=images)
    else:
        image = next((where.parent / n for n in names if (where.parent / n).is_file()), None)
    if image is None:
        raise DataError(f"{where}: task {task_id}'s image {reference} is not found as "
                        f"{' or '.join(names)} {f'under images={images}' if images else f'beside it in {where.parent}'}"
                        f"; give images=DIR, the folder that holds the project's images")
    return Sample(name=sample_name(UPLOAD_PREFIX.sub("", image.name), where=where), where=where,
                  draw=_layers(regions, where=where, task=task_id, outside=outside), image=image,
                  size=sizes.pop() if sizes else None, labels=tuple(dict.fromkeys(label for _, label, *_ in regions)),
                  item=f"task {task_id}")


def read_labelstudio(source: Path, *, images: Path | None = None, outside: str = "error") -> Export:
    """A Label Studio JSON export file (a list of tasks)."""
    if source.is_dir():
        found = sorted(source.glob("*.json"))
        if len(found) != 1:
            raise DataError(f"{source}: a folder; from=labelstudio reads Label Studio's one JSON export file, and "
                            + (f"{len(found)} are there" if found else "none is there")
                            + "; give source= the JSON file itself")
        source = found[0]
    tasks = read_json(source, tool=TOOL)
    if not isinstance(tasks, list) or not all(isinstance(t, dict) and "data" in t and
                                              ("annotations" in t or "completions" in t) for t in tasks):
        raise not_this_tool(source, tasks, tool=TOOL, expected="a Label Studio JSON export",
                            needs="a list of tasks with data and annotations")
    index = image_index(images) if images else None
    samples, unannotated, skipped = [], [], {}
    for task in tasks:
        annotation = _chosen_annotation(task)
        if annotation is None:
            unannotated.append(task.get("id", "?"))
            continue
        samples.append(_task_sample(task, annotation, where=source, outside=outside, index=index, images=images,
                                    skipped=skipped))
    notes = [f"{len(unannotated)} task(s) with no finished annotation (none, or only cancelled or skipped ones) were "
             f"left out, e.g. task {unannotated[0]}"] if unannotated else []
    notes += [f"{count} {kind} result(s) were left out: not regions of a mask" for kind, count in skipped.items()]
    labels = list(dict.fromkeys(label for s in samples for label in s.labels))
    return Export(tool="Label Studio JSON", source=source, labels=labels, samples=samples, notes=notes)
