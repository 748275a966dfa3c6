"""Benchmarks, side by side in one run: `python -m deeplab.bench [section=...] [key=value ...]`.

Every comparison interleaves its contenders round by round on the same inputs and reports ratios, because this
kind of machine is shared and noisy: absolute times drift, ratios measured together hold.
"""

import json
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from deeplab.data.dataset import read_image, read_mask
from deeplab.data.transforms import IMAGENET_MEAN, IMAGENET_STD, train_transform


def make_images(folder: Path, *, count: int, size: tuple[int, int] = (375, 500), seed: int = 0) -> list[tuple[Path, Path]]:
    """VOC-sized JPEG + palette-PNG pairs with smooth content and noise, so decoding costs what photos cost."""
    rng = np.random.default_rng(seed)
    height, width = size
    yy, xx = np.mgrid[0:height, 0:width]
    pairs = []
    for i in range(count):
        base = np.stack([(xx * (i + 1)) % 256, (yy * 2) % 256, (xx + yy) % 256], -1)
        image = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
        mask = np.zeros((height, width), np.uint8)
        mask[height // 4: 3 * height // 4, width // 4: 3 * width // 4] = 1 + i % 20
        Image.fromarray(image).save(folder / f"{i}.jpg", quality=90)
        Image.fromarray(mask, mode="L").convert("P").save(folder / f"{i}.png")
        pairs.append((folder / f"{i}.jpg", folder / f"{i}.png"))
    return pairs


def ours_pipeline(crop: int, scale_range: tuple[float, float]) -> Callable:
    """OpenCV decoding + the albumentations train preset (what the trainer's DataLoader workers run)."""
    transform = train_transform(crop_size=crop, scale_range=scale_range)
    return lambda image_path, mask_path: transform(read_image(image_path), read_mask(mask_path, num_classes=21))


def pil_pipeline(crop: int, scale_range: tuple[float, float]) -> Callable:
    """The same operations the torchvision reference way: PIL decoding and torchvision functional transforms."""
    def run(image_path: Path, mask_path: Path) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = Image.open(image_path).convert("RGB"), Image.open(mask_path)
        scale = random.uniform(*scale_range)
        size = [int(image.height * scale), int(image.width * scale)]
        image = TF.resize(image, size, TF.InterpolationMode.BILINEAR)
        mask = TF.resize(mask, size, TF.InterpolationMode.NEAREST)
        pad_h, pad_w = max(crop - size[0], 0), max(crop - size[1], 0)
        image = TF.pad(image, [0, 0, pad_w, pad_h], fill=0)
        mask = TF.pad(mask, [0, 0, pad_w, pad_h], fill=255)
        top, left = random.randint(0, image.height - crop), random.randint(0, image.width - crop)
        image, mask = TF.crop(image, top, left, crop, crop), TF.crop(mask, top, left, crop, crop)
        if random.random() < 0.5:
            image, mask = TF.hflip(image), TF.hflip(mask)
        tensor = TF.normalize(TF.pil_to_tensor(image).float() / 255.0, IMAGENET_MEAN, IMAGENET_STD)
        return tensor, torch.as_tensor(np.array(mask), dtype=torch.int64)
    return run


def interleaved(contenders: dict[str, Callable[[], None]], *, rounds: int) -> dict[str, list[float]]:
    """Seconds per call of each contender, alternating the order every round so drift hits all alike."""
    times: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    for r in range(rounds):
        for name in names if r % 2 == 0 else reversed(names):
            start = time.perf_counter()
            contenders[name]()
            times[name].append(time.perf_counter() - start)
    return times


def bench_loader(*, crop: int = 513, scale_range: tuple[float, float] = (0.5, 2.0), images: int = 16,
                 rounds: int = 5) -> dict:
    """Training-transform throughput (decode + augment + normalise) in samples/s for one worker (one thread)."""
    torch.set_num_threads(1)
    cv2.setNumThreads(1)  # a DataLoader worker gets one thread; measure what one worker does
    random.seed(0)
    with tempfile.TemporaryDirectory() as folder:
        pairs = make_images(Path(folder), count=images)
        pipelines = {"ours (opencv + albumentations)": ours_pipeline(crop, scale_range),
                     "pil + torchvision transforms": pil_pipeline(crop, scale_range)}
        times = interleaved({name: (lambda p=p: [p(i, m) for i, m in pairs]) for name, p in pipelines.items()},
                            rounds=rounds)
    rates = {name: len(pairs) / statistics.median(t) for name, t in times.items()}
    ours, baseline = rates.values()
    return {"crop": crop, "scale_range": list(scale_range), "images": images, "rounds": rounds,
            "samples_per_s_per_worker": rates, "speedup_vs_pil": ours / baseline}


def format_loader(result: dict) -> str:
    lines = [f"training transforms at crop {result['crop']}, scale {result['scale_range']}, one worker "
             f"({result['images']} images x {result['rounds']} interleaved rounds, median):"]
    lines += [f"  {name:<34} {rate:8.1f} samples/s" for name, rate in result["samples_per_s_per_worker"].items()]
    lines.append(f"  ours / PIL: {result['speedup_vs_pil']:.2f}x")
    return "\n".join(lines)


def run(cfg) -> dict:
    """Run the configured sections, print their tables, and write the JSON next to the run if asked."""
    results = {}
    if "loader" in cfg.sections:
        results["loader"] = bench_loader(**cfg.loader)
        print(format_loader(results["loader"]))
    if cfg.json:
        Path(cfg.json).write_text(json.dumps(results, indent=2))
        print(f"JSON written to {cfg.json}")
    return results


if __name__ == "__main__":
    import hydra

    @hydra.main(version_base="1.3", config_path="../configs", config_name="bench")
    def _main(cfg) -> None:
        run(cfg)

    _main()
