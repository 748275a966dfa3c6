"""COCO instances JSON + image folder, rasterised once into cached semantic masks (0 = background, 255 = ignore)."""

import hashlib
import json
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
from tqdm import tqdm

from deeplab.data.dataset import DataError, make_generated_folder, named_root, pair_ids
from deeplab.torch_files import atomic_write

# VOC class names whose COCO category is spelt differently, so a VOC-20 selection can be written in VOC's names.
VOC_TO_COCO = {"aeroplane": "airplane", "motorbike": "motorcycle", "sofa": "couch", "tvmonitor": "tv",
               "diningtable": "dining table", "pottedplant": "potted plant"}
IGNORE = 255
# Part of the cache key: bump it when the rasterisation rules change so old caches are not reused.
CACHE_VERSION = 1
DOWNLOAD_HINT = ("Download train2017.zip, val2017.zip and annotations_trainval2017.zip from https://cocodataset.org "
                 "and unzip them into the root (giving annotations/, train2017/ and val2017/)")


def select_categories(available: Sequence[Mapping], categories: Sequence[str | int] | None, *,
                      where: Path) -> list[Mapping]:
    """The chosen COCO categories in class order: all sorted by id, or the given names or ids in the given order."""
    if categories is None:
        return sorted(available, key=lambda c: c["id"])
    by_id = {c["id"]: c for c in available}
    by_name = {c["name"]: c for c in available}
    chosen = []
    for entry in categories:
        found = by_id.get(entry) if isinstance(entry, int) else by_name.get(VOC_TO_COCO.get(entry, entry))
        if found is None:
            raise DataError(f"{where}: category {entry!r} is not in the annotations; categories there (id: name): "
                            + ", ".join(f"{c['id']}: {c['name']}" for c in sorted(available, key=lambda c: c["id"])))
        if found in chosen:
            raise DataError(f"{where}: category {entry!r} ({found['name']}) is selected twice")
        chosen.append(found)
    if len(chosen) >= IGNORE:  # class ids 1..K share the uint8 range with the ignore value 255
        raise DataError(f"{where}: {len(chosen)} categories selected; at most {IGNORE - 1} fit in a uint8 mask")
    return chosen


def instance_mask(segmentation: list | dict, *, height: int, width: int) -> np.ndarray:
    """One annotation's polygons or RLE (compressed or not) as a bool (H, W) array."""
    if isinstance(segmentation, list):
        # pycocotools reads a list of 4-number lists as boxes; a polygon needs 3 points, fewer has no area anyway.
        polygons = [p for p in segmentation if len(p) >= 6]
        if not polygons:
            return np.zeros((height, width), bool)
        rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    elif isinstance(segmentation["counts"], list):
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rle = segmentation
    with warnings.catch_warnings():
        # pycocotools' Cython decode trips a NumPy 2 deprecation (copy keyword) on every call; harmless, and noisy.
        warnings.filterwarnings("ignore", "__array__ implementation", DeprecationWarning)
        return mask_utils.decode(rle).astype(bool)


def rasterise(annotations: Sequence[Mapping], *, height: int, width: int,
              class_of: Mapping[int, int]) -> np.ndarray:
    """A semantic mask: selected classes, 255 on crowd regions and where instances of different classes overlap."""
    semantic = np.zeros((height, width), np.uint8)
    ignore = np.zeros((height, width), bool)
    for ann in annotations:
        cls = class_of.get(ann["category_id"])
        if cls is None:  # categories not selected stay background
            continue
        pixels = instance_mask(ann["segmentation"], height=height, width=width)
        if ann.get("iscrowd"):
            ignore |= pixels
            continue
        # Once a pixel belongs to two classes it is ambiguous whatever order the instances come in.
        ignore |= pixels & (semantic != 0) & (semantic != cls)
        semantic[pixels] = cls
    semantic[ignore] = IGNORE
    return semantic


def mask_name(image_id: int | str) -> str:
    """The cached mask's file name; COCO's 12-digit form makes it share the image's stem (000000000139)."""
    return f"{image_id:012d}.png" if isinstance(image_id, int) else f"{image_id}.png"


def resolve_paths(*, root: str | Path, split: str, annotations: str | None, image_dir: str | None,
                  cache_dir: str | Path | None) -> tuple[Path, Path, Path]:
    """The annotations file, image folder and cache parent; relative options are under root, `{split}` filled in."""
    root = Path(root).expanduser()
    ann_path = root / (annotations or "annotations/instances_{split}.json").format(split=split)
    image_path = root / (image_dir or "{split}").format(split=split)
    if not ann_path.is_file():
        raise DataError(f"COCO annotations not found: looked for {ann_path} under {named_root(root)}. "
                        f"{DOWNLOAD_HINT}, or point dataset.root (and dataset.annotations) at your files.")
    if not image_path.is_dir():
        raise DataError(f"COCO images not found: looked for the folder {image_path} under {named_root(root)}. "
                        f"{DOWNLOAD_HINT}, or set dataset.image_dir.")
    return ann_path, image_path, root / (cache_dir or "semantic_masks")


def load_json(path: Path) -> dict:
    """The instances JSON, with its required keys checked."""
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read the COCO annotations ({exc})") from exc
    missing = [k for k in ("images", "annotations", "categories") if k not in data]
    if missing:
        raise DataError(f"{path}: not a COCO instances file (no {missing} key); expected instances_<split>.json")
    incomplete = [im for im in data["images"] if not {"id", "file_name", "height", "width"} <= im.keys()]
    if incomplete:
        raise DataError(f"{path}: {len(incomplete)} image entries lack id, file_name, height or width, "
                        f"e.g. {incomplete[0]}")
    return data


def build_cache(*, ann_path: Path, folder: Path, categories: Sequence[str | int] | None) -> dict:
    """Rasterise every image's mask into `folder` and write the manifest that marks the cache complete."""
    data = load_json(ann_path)
    chosen = select_categories(data["categories"], categories, where=ann_path)
    class_of = {c["id"]: i for i, c in enumerate(chosen, start=1)}
    by_image: dict = {}
    for ann in data["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    make_generated_folder(folder, key=f"dataset.cache_dir={folder.parent}", what="the rasterised masks' cache",
                          example=Path.home() / "deeplab-cache" / "coco")
    images = sorted(data["images"], key=lambda im: im["id"])
    for image in tqdm(images, desc=f"rasterising COCO masks into {folder}", mininterval=5, leave=False):
        path = folder / mask_name(image["id"])
        if path.exists():  # left complete by an interrupted earlier run (writes are atomic)
            continue
        semantic = rasterise(by_image.get(image["id"], []), height=image["height"], width=image["width"],
                             class_of=class_of)
        atomic_write(path, lambda tmp: Image.fromarray(semantic).save(tmp, format="PNG"), durable=False)
    manifest = {"annotations": str(ann_path), "class_names": ["background"] + [c["name"] for c in chosen],
                "category_ids": [c["id"] for c in chosen],
                "samples": [[image["file_name"], mask_name(image["id"])] for image in images]}
    atomic_write(folder / "manifest.json", lambda tmp: tmp.write_text(json.dumps(manifest)), durable=False)
    return manifest


def load_manifest(*, root: str | Path, split: str, annotations: str | None = None, image_dir: str | None = None,
                  categories: Sequence[str | int] | None = None,
                  cache_dir: str | Path | None = None) -> tuple[dict, Path, Path]:
    """The cache's manifest (built on first use), the image folder and the mask folder."""
    ann_path, image_path, parent = resolve_paths(root=root, split=split, annotations=annotations,
                                                 image_dir=image_dir, cache_dir=cache_dir)
    # the cache is `<parent>/<split>-<hash>`: a new folder whenever the category selection or the JSON file changes
    stat = ann_path.stat()
    selection = None if categories is None else [VOC_TO_COCO.get(c, c) for c in categories]
    key = json.dumps([CACHE_VERSION, ann_path.name, stat.st_size, stat.st_mtime_ns, selection])
    folder = parent / f"{split}-{hashlib.sha1(key.encode()).hexdigest()[:10]}"
    manifest_path = folder / "manifest.json"
    if manifest_path.is_file():
        return json.loads(manifest_path.read_text()), image_path, folder
    return build_cache(ann_path=ann_path, folder=folder, categories=categories), image_path, folder


def list_images(image_path: Path, file_names: Sequence[str]) -> dict[str, Path]:
    """{file_name: path} for the JSON's images present on disk: one listing per folder, not one stat per image."""
    listings: dict[Path, set[str]] = {}
    present = {}
    for name in file_names:
        path = image_path / name
        if path.parent not in listings:
            listings[path.parent] = {p.name for p in path.parent.iterdir()} if path.parent.is_dir() else set()
        if path.name in listings[path.parent]:
            present[name] = path
    return present


def coco_samples(*, root: str | Path, split: str, annotations: str | None = None, image_dir: str | None = None,
                 categories: Sequence[str | int] | None = None,
                 cache_dir: str | Path | None = None) -> list[tuple[Path, Path]]:
    """(image, cached semantic mask) pairs of a COCO split, every image in the JSON, in image id order.

    annotations and image_dir default to `annotations/instances_{split}.json` and `{split}`; cache_dir to
    `semantic_masks`, each relative to root. categories: None for all, sorted by id, else names or ids in class order.
    """
    manifest, image_path, folder = load_manifest(root=root, split=split, annotations=annotations,
                                                 image_dir=image_dir, categories=categories, cache_dir=cache_dir)
    file_names = [name for name, _ in manifest["samples"]]
    masks = {name: folder / mask for name, mask in manifest["samples"]}
    return pair_ids(file_names, list_images(image_path, file_names), masks, where=manifest["annotations"],
                    image_dir=image_path, mask_dir=folder)
