"""The built-in demo dataset: shapes on textured backgrounds, generated on first use in VOC layout.

It is what `python train.py` trains on with no arguments, so it must be learnable on a 2-core CPU in minutes, yet
not solvable from one pixel's colour: each class has its own hue family, but neighbouring families overlap, the
blotchy background carries every hue, and irregular background "distractor" patches are painted in the objects' own
colours with a stripe texture: a single pixel of a stripe looks exactly like an object pixel, so the network has to
look at its neighbourhood (texture, edges, shape) to tell an object from the background.
"""

import hashlib
import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from deeplab.data.dataset import make_generated_folder, named_root
from deeplab.data.voc import voc_samples
from deeplab.visualization import default_palette

GENERATOR_VERSION = 4
CLASS_NAMES = ["background", "disc", "ring", "square", "triangle", "cross"]
# hue family centre (OpenCV hue, 0-180) of each object class; drawn with a spread that makes neighbours overlap
CLASS_HUES = {1: 0, 2: 36, 3: 72, 4: 108, 5: 144}
HUE_SPREAD = 10


def _smooth_field(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [0, 1]: a coarse random grid upsampled with bicubic interpolation."""
    coarse = rng.random((cells, cells)).astype(np.float32)
    return np.clip(cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC), 0, 1)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Blotchy HSV texture covering every hue and saturation, plus irregular patches in the objects' colours."""
    hue = _smooth_field(rng, size, 4) * 180
    sat = 0.1 + 0.6 * _smooth_field(rng, size, 5)
    val = 0.35 + 0.55 * _smooth_field(rng, size, 6)
    hsv = np.stack([hue, sat * 255, val * 255], -1)
    yy, xx = np.mgrid[0:size, 0:size]
    for _ in range(int(rng.integers(1, 4))):  # distractors: object colours in stripes, on shapes that are no object
        patch = _smooth_field(rng, size, int(rng.integers(3, 7))) > rng.uniform(0.7, 0.8)
        angle, period = rng.uniform(0, np.pi), rng.uniform(3, 6)
        dark = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period) < 0
        colour = np.array(_object_colour(rng, int(rng.integers(1, len(CLASS_NAMES)))))
        hsv[patch] = colour
        hsv[patch & dark, 2] *= 0.55
    return hsv


def _object_colour(rng: np.random.Generator, cls: int) -> tuple[float, float, float]:
    """An HSV colour from the class's family (neighbouring families overlap)."""
    return ((CLASS_HUES[cls] + rng.normal(0, HUE_SPREAD)) % 180, rng.uniform(0.5, 1.0) * 255,
            rng.uniform(0.6, 1.0) * 255)


def _shape_mask(cls: int, rng: np.random.Generator, size: int) -> np.ndarray:
    """A filled shape of class `cls` at a random position, size and rotation."""
    mask = np.zeros((size, size), np.uint8)
    r = int(rng.integers(size // 10, size // 4))
    cx, cy = (int(v) for v in rng.integers(r // 2, size - r // 2, 2))
    angle = rng.uniform(0, 2 * np.pi)
    if cls == 1:
        cv2.circle(mask, (cx, cy), r, 1, -1)
    elif cls == 2:
        cv2.circle(mask, (cx, cy), r, 1, -1)
        cv2.circle(mask, (cx, cy), max(2, int(r * rng.uniform(0.45, 0.65))), 0, -1)
    elif cls == 5:  # a plus sign: two thick bars at right angles
        for a in (angle, angle + np.pi / 2):
            dx, dy = np.cos(a) * r, np.sin(a) * r
            cv2.line(mask, (int(cx - dx), int(cy - dy)), (int(cx + dx), int(cy + dy)), 1, max(2, int(r * 0.45)))
    else:  # square or triangle: a regular polygon
        corners = 4 if cls == 3 else 3
        angles = angle + np.arange(corners) * 2 * np.pi / corners
        points = np.stack([cx + np.cos(angles) * r, cy + np.sin(angles) * r], -1)
        cv2.fillPoly(mask, [np.round(points).astype(np.int32)], 1)
    return mask.astype(bool)


def render(rng: np.random.Generator, *, size: int, max_objects: int, border: int) -> tuple[np.ndarray, np.ndarray]:
    """One RGB image and its label mask (class ids, 255 bands `border` px wide along object edges)."""
    hsv = _background(rng, size)
    labels = np.zeros((size, size), np.uint8)
    for _ in range(int(rng.integers(1, max_objects + 1))):
        cls = int(rng.integers(1, len(CLASS_NAMES)))
        shape = _shape_mask(cls, rng, size)
        hue, sat, val = _object_colour(rng, cls)
        shade = np.linspace(rng.uniform(0.75, 0.9), 1.0, size)[None, :] * val  # a soft light gradient
        hsv[shape, 0], hsv[shape, 1] = hue, sat
        hsv[shape, 2] = np.broadcast_to(shade, (size, size))[shape]
        labels[shape] = cls  # later objects occlude earlier ones
    hsv[..., 2] += rng.normal(0, 12, (size, size))  # sensor-like noise over everything
    rgb = cv2.cvtColor(np.clip(hsv, 0, 255).astype(np.uint8), cv2.COLOR_HSV2RGB)
    edges = cv2.morphologyEx(labels, cv2.MORPH_GRADIENT, np.ones((border + 1, border + 1), np.uint8)) > 0
    labels[edges] = 255  # like VOC: a band of "don't care" along every boundary
    return rgb, labels


def generate(folder: Path, *, num_train: int, num_val: int, size: int, max_objects: int, border: int,
             seed: int, palette: list[list[int]]) -> None:
    """Write the whole dataset into `folder` (VOC layout); the same arguments always give the same pixels."""
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for split, count, offset in (("train", num_train, 0), ("val", num_val, 1_000_000)):
        ids = []
        for i in range(count):
            rgb, labels = render(np.random.default_rng([seed, offset + i]), size=size, max_objects=max_objects,
                                 border=border)
            sample_id = f"{split}_{i:05d}"
            Image.fromarray(rgb).save(folder / "JPEGImages" / f"{sample_id}.png")  # lossless: exact pixels
            mask = Image.fromarray(labels, mode="P")
            mask.putpalette([c for rgb in palette for c in rgb] + [224, 224, 192] * (256 - len(palette)))
            mask.save(folder / "SegmentationClass" / f"{sample_id}.png")
            ids.append(sample_id)
        (folder / "ImageSets/Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")


def demo_samples(*, root: str | Path, split: str, num_train: int = 300, num_val: int = 60, size: int = 128,
                 max_objects: int = 4, border: int = 2, seed: int = 0) -> list:
    """Generate the demo dataset under `root` if needed (one sub-folder per generator setting), then list a split."""
    params = dict(version=GENERATOR_VERSION, num_train=num_train, num_val=num_val, size=size,
                  max_objects=max_objects, border=border, seed=seed)
    key = hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]
    folder = Path(root).expanduser() / f"v{GENERATOR_VERSION}-{key}"
    if not (folder / "manifest.json").is_file():
        # build beside the target and rename at the end: an interrupted run never leaves a half dataset in place
        tmp = folder.parent / f".{folder.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        make_generated_folder(tmp, key=named_root(root), what="the demo dataset",
                              example=Path.home() / "deeplab-data" / "demo")
        palette = default_palette(len(CLASS_NAMES))  # mask PNGs look like VOC's in an image viewer
        generate(tmp, num_train=num_train, num_val=num_val, size=size, max_objects=max_objects, border=border,
                 seed=seed, palette=palette)
        (tmp / "manifest.json").write_text(json.dumps(params, indent=2))
        try:
            os.replace(tmp, folder)
        except OSError:  # another process (a DDP rank) finished first: use its copy
            shutil.rmtree(tmp, ignore_errors=True)
    return voc_samples(root=folder, split=split, hint="delete the folder; it is regenerated on first use")
