"""Benchmark sections, run side by side by `python -m deeplab.bench [sections=[...]] [key=value ...]` (the command is
`deeplab.cli.bench`; the modes compared are `deeplab.bench.modes`).

Every comparison interleaves its contenders round by round on the same inputs and reports ratios to the plain eager
fp32 model, because this kind of machine is shared and noisy: absolute times drift, ratios measured together hold.
Sections: model (parameters, FLOPs), inference (batch-1 latency per mode, label agreement with fp32, peak memory),
train (images/s per training mode on the same batches, their loss curves, data time vs step time), loader
(training-transform throughput against PIL + torchvision transforms), video (predict.py's video loop at several
frames per forward, `deeplab.bench.video`).
"""

import math
import platform
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
from omegaconf import OmegaConf
from PIL import Image

from deeplab.bench.modes import inference_runner, label_quality, peak_memory_mib, synchronize, training_step
from deeplab.data.dataset import read_image, read_mask
from deeplab.data.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform, train_transform
from deeplab.inference import model_from_checkpoint
from deeplab.model import build_model, rebuild_model
from deeplab.timing import interleaved

SECTIONS = ("model", "inference", "train", "loader", "video")  # video: deeplab.bench.video, asked for by name


def make_images(folder: Path, *, count: int, size: tuple[int, int] = (375, 500), seed: int = 0,
                num_classes: int = 21) -> list[tuple[Path, Path]]:
    """VOC-sized JPEG + palette-PNG pairs with smooth content and noise, so decoding costs what photos cost."""
    rng = np.random.default_rng(seed)
    height, width = size
    yy, xx = np.mgrid[0:height, 0:width]
    pairs = []
    for i in range(count):
        base = np.stack([(xx * (i + 1)) % 256, (yy * 2) % 256, (xx + yy) % 256], -1)
        image = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
        mask = np.zeros((height, width), np.uint8)
        mask[height // 4: 3 * height // 4, width // 4: 3 * width // 4] = 1 + i % (num_classes - 1)
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


def _stats_ms(seconds: list[float]) -> dict:
    ordered = sorted(seconds)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000  # noqa: E731
    return {"median_ms": statistics.median(seconds) * 1000, "p10_ms": pick(0.1), "p90_ms": pick(0.9)}


def bench_inference(model: torch.nn.Module, *, device: torch.device, size: tuple[int, int], modes: list[str],
                    separable_modes: list[str], separable_model: torch.nn.Module | None, rounds: int, warmup: int,
                    samples: list[tuple[torch.Tensor, torch.Tensor | None]], calibration: list[np.ndarray]) -> dict:
    """Batch-1 latency of each mode (interleaved), its labels' agreement with eager fp32, mIoU and peak memory."""
    modes = ["eager_fp32"] + [m for m in modes if m != "eager_fp32"]
    x = samples[0][0] if samples[0][0].shape[-2:] == size else synthetic_inputs(size)[0]
    with tempfile.TemporaryDirectory(prefix="deeplab-bench-") as work:  # the exported models, removed after
        forwards, precisions = {}, {}
        for prefix, net, names in (("", model, modes), ("separable_", separable_model, separable_modes)):
            for name in names if net is not None else []:
                (workdir := Path(work, prefix + name)).mkdir()
                forwards[prefix + name], precisions[prefix + name] = inference_runner(
                    name, net, device=device, workdir=workdir, calibration=calibration, example=x,
                    key=f"inference.{prefix}modes")
        # peak memory of the first call: it includes what a mode allocates once (ONNX Runtime's arena, caches)
        memory = {n: peak_memory_mib(lambda f=f: f(x), device) for n, f in forwards.items()}
        for forward in forwards.values():
            for _ in range(warmup):
                forward(x)
        times = interleaved({n: (lambda f=f: (f(x), synchronize(device))) for n, f in forwards.items()}, rounds=rounds)
        base = statistics.median(times["eager_fp32"])
        results = {n: {"precision": precisions[n], **_stats_ms(t), "speedup": base / statistics.median(t),
                       "peak_memory_mib": memory[n]} for n, t in times.items()}
        for name in modes:
            results[name].update(label_quality(forwards[name], forwards["eager_fp32"], samples, model.num_classes))
    return {"size": list(size), "rounds": rounds, "samples": len(samples), "modes": results}


def synthetic_inputs(size: tuple[int, int], count: int = 1) -> list[torch.Tensor]:
    """`count` different photo-like normalised (1, 3, H, W) images, made in one go."""
    with tempfile.TemporaryDirectory() as folder:
        pairs = make_images(Path(folder), count=count, size=size)
        return [eval_transform()(read_image(image), np.zeros(size, np.uint8))[0][None] for image, _ in pairs]


def bench_train(model: torch.nn.Module, *, device: torch.device, modes: list[str], batch_size: int, crop: int,
                steps: int, warmup: int, lr: float) -> dict:
    """Images/s of each training mode, stepping in turn on the same batches from the same initial weights."""
    modes = ["eager_fp32"] + [m for m in modes if m != "eager_fp32"]
    transform = train_transform(crop_size=crop)
    batches, start = [], time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        pairs = make_images(Path(folder), count=batch_size * 2, num_classes=model.num_classes)
        for i in range(warmup + steps):
            chosen = [pairs[(i * batch_size + j) % len(pairs)] for j in range(batch_size)]
            samples = [transform(read_image(a), read_mask(b, num_classes=model.num_classes)) for a, b in chosen]
            batches.append(tuple(torch.stack(t) for t in zip(*samples)))
    data_s = (time.perf_counter() - start) / len(batches)
    stepper = {name: training_step(name, model, device=device, lr=lr, example=batches[0]) for name in modes}
    losses = {name: [] for name in modes}
    times = {name: [] for name in modes}
    for i, batch in enumerate(batches):
        for name in modes if i % 2 == 0 else reversed(modes):
            begin = time.perf_counter()
            losses[name].append(stepper[name](*batch))
            synchronize(device)
            if i >= warmup:
                times[name].append(time.perf_counter() - begin)
    base = statistics.median(times["eager_fp32"])
    half = len(batches) // 2
    results = {}
    for name in modes:
        step_s = statistics.median(times[name])
        gap = np.abs(np.subtract(losses[name][half:], losses["eager_fp32"][half:])).mean()
        results[name] = {"precision": stepper[name].precision, "plan": stepper[name].plan, "median_step_s": step_s,
                         "images_per_s": batch_size / step_s, "speedup": base / step_s, "losses": losses[name],
                         "loss_gap_vs_fp32": float(gap / np.mean(losses["eager_fp32"][half:])),
                         "peak_memory_mib": peak_memory_mib(lambda n=name: stepper[n](*batches[-1]), device)}
    fast = min(r["median_step_s"] for r in results.values())
    return {"batch_size": batch_size, "crop": crop, "steps": steps, "warmup": warmup, "modes": results,
            "data_s_per_batch_one_worker": data_s, "workers_to_keep_fed": math.ceil(data_s / fast)}


def format_inference(result: dict) -> str:
    h, w = result["size"]
    lines = [f"inference at {h}x{w}, batch 1 ({result['rounds']} interleaved rounds; agreement and mIoU over "
             f"{result['samples']} image(s)):",
             f"  {'mode':<28}{'prec':>6}{'median ms':>11}{'p10-p90 ms':>15}{'vs eager':>9}{'agree':>9}"
             f"{'mIoU':>8}{'peak MiB':>10}"]
    for name, r in result["modes"].items():
        agree = f"{r['agreement'] * 100:.2f}%" if "agreement" in r else "-"
        miou = f"{r['mIoU']:.4f}" if r.get("mIoU") is not None else "-"
        memory = f"{r['peak_memory_mib']:.0f}" if r["peak_memory_mib"] is not None else "-"
        lines.append(f"  {name:<28}{r['precision']:>6}{r['median_ms']:>11.1f}{r['p10_ms']:>7.1f}-{r['p90_ms']:<7.1f}"
                     f"{r['speedup']:>8.2f}x{agree:>9}{miou:>8}{memory:>10}")
    return "\n".join(lines)


def format_train(result: dict) -> str:
    lines = [f"training at batch {result['batch_size']}, crop {result['crop']} ({result['steps']} interleaved steps "
             f"after {result['warmup']} warm-up, same batches and initial weights):",
             f"  {'mode':<16}{'prec':>6}{'s/step':>9}{'img/s':>8}{'vs eager':>9}{'loss gap':>10}{'peak MiB':>10}"
             f"   loss curve"]
    for name, r in result["modes"].items():
        memory = f"{r['peak_memory_mib']:.0f}" if r["peak_memory_mib"] is not None else "-"
        curve = " ".join(f"{v:.3f}" for v in r["losses"])
        lines.append(f"  {name:<16}{r['precision']:>6}{r['median_step_s']:>9.3f}{r['images_per_s']:>8.2f}"
                     f"{r['speedup']:>8.2f}x{r['loss_gap_vs_fp32'] * 100:>9.1f}%{memory:>10}   {curve}")
    if "fast" in result["modes"]:
        lines.append(f"  fast = what train.py runs by default here: {result['modes']['fast']['plan']}")
    lines.append(f"  data: {result['data_s_per_batch_one_worker']:.3f} s per batch for one worker; "
                 f"{result['workers_to_keep_fed']} worker(s) keep the fastest step fed")
    return "\n".join(lines)


def bench_models(cfg, device: torch.device) -> tuple[torch.nn.Module, torch.nn.Module | None, dict | None]:
    """The model under test (a checkpoint's, or built from cfg.model), its separable twin, and the checkpoint config."""
    if cfg.get("checkpoint"):
        model, config = model_from_checkpoint(cfg.checkpoint, device=device)
        model_cfg = config["model"]
    else:
        model_cfg, config = OmegaConf.to_container(cfg.model, resolve=True), None
        model = build_model(**model_cfg).eval().to(device)
    separable = rebuild_model(model_cfg, separable=True).eval().to(device) \
        if cfg.inference.separable_modes and not model_cfg.get("separable") else None
    return model, separable, config


def cpu_name() -> str:
    """The CPU model as Linux names it, else what the platform module knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
