"""Scoring a split: a model's full-resolution predictions (`evaluate`, reduced across ranks) or a folder of saved
prediction PNGs (`score_predictions`), into one confusion matrix."""

import itertools
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from deeplab.data import DataError, SegmentationDataset, read_mask
from deeplab.engine.distributed import any_process, first_problem
from deeplab.engine.precision import autocast, inference_precision
from deeplab.engine.tta import predict_probs
from deeplab.errors import one_line
from deeplab.metrics import BoundaryIoU, Calibration, ConfusionMatrix, ImageScores
from deeplab.progress import progress_bar


class ScoringProblem(DataError):
    """A bad sample met while scoring a split that every process knows of: process `rank` met it."""

    def __init__(self, message: str, rank: int = 0) -> None:
        super().__init__(message)
        self.message, self.rank = message, rank


@torch.inference_mode()
def evaluate(model: nn.Module, batches: Iterable, *, num_classes: int, device: torch.device,
             ignore_index: int = 255, precision: str = "fp32", channels_last: bool = False,
             keep: int = 0, tta: dict | None = None, progress: bool | None = None,
             desc: str = "evaluate", scores: ImageScores | None = None,
             boundary: BoundaryIoU | None = None,
             calibration: Calibration | None = None) -> tuple[ConfusionMatrix, list]:
    """Score every (image, mask) batch; returns the reduced confusion matrix and the first `keep` samples.

    `tta` (scales, flip, window, stride) switches to test-time augmentation / sliding windows. Kept samples are
    (image tensor, mask, prediction) on the CPU, for the TensorBoard comparison grid. `progress`: a bar counting
    this process's images as `desc i/N` with rate and ETA (True/False; None follows DEEPLAB_PROGRESS, see
    deeplab.progress); opened under another bar (validation in training), it sits below it and is cleared when done.
    A bad sample on any process stops every one of them with the same ScoringProblem (none is left waiting in the
    reduction). `scores` gets each image's per-class counts by its dataset index (this process's images; a
    DataLoader's sampler gives the indices, else they count from 0) and keeps the worst images' pictures;
    `boundary` gets each image's prediction and truth (on the CPU) for boundary IoU; `calibration` the class
    probabilities (those averaged over scales and flips with `tta`) and truth.
    """
    was_training = model.training
    model.eval()
    matrix = ConfusionMatrix(num_classes, ignore_index=ignore_index, device=device)
    kept = []
    sampler = getattr(batches, "sampler", None)  # a DataLoader: this process's images; a plain iterable: unknown
    problem = None
    order = itertools.chain.from_iterable(batches.batch_sampler) if getattr(batches, "batch_sampler", None) is not None \
        else itertools.count()
    with progress_bar(desc=desc, total=len(sampler) if sampler is not None else None, unit=" images",
                      progress=progress) as bar:
        for images, masks in _until_a_problem(batches):
            if isinstance(images, DataError):
                problem = one_line(images)
                break
            images = images.to(device, non_blocking=True)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            if precision == "auto":  # measured on the first image, once per process (see inference_precision)
                precision = inference_precision(model, images)
            if tta:
                probs = predict_probs(model, images, precision=precision, **tta)
                pred = probs.argmax(1)
            else:
                with autocast(device.type, precision):
                    logits = model(images)
                pred = logits.argmax(1)
                probs = logits.float().softmax(1) if calibration is not None else None
            if calibration is not None:
                calibration.update(probs, masks.to(device, non_blocking=True))
            if scores is None:
                matrix.update(pred, masks.to(device, non_blocking=True))
            else:
                counts = matrix.update_per_image(pred, masks.to(device, non_blocking=True)).numpy()
                for i, index in zip(range(len(images)), order):
                    scores.add(index, counts[i], lambda i=i: (images[i].cpu(), masks[i].cpu().numpy(),
                                                               pred[i].cpu().numpy()))
            if boundary is not None:
                for image_pred, image_mask in zip(pred.cpu().numpy(), masks.cpu().numpy()):
                    boundary.update(image_pred, image_mask)
            for i in range(min(keep - len(kept), len(images))):
                kept.append((images[i].cpu(), masks[i].cpu().numpy(), pred[i].cpu().numpy()))
            bar.update(len(images))
    model.train(was_training)
    if any_process(device, problem is not None)[0]:
        rank, message = first_problem(problem)
        raise ScoringProblem(message, rank)
    matrix.reduce_from_all_processes()
    return matrix, kept


def _until_a_problem(batches: Iterable) -> Iterable:
    """The batches, ending with (DataError, None) where loading one fails."""
    try:
        yield from batches
    except DataError as exc:
        yield exc, None


def score_predictions(dataset: SegmentationDataset, folder: str | Path, *, progress: bool | None = None,
                      scores: ImageScores | None = None, boundary: BoundaryIoU | None = None) -> ConfusionMatrix:
    """Score index PNGs named like the dataset's masks (stem.png) against them, with no model involved.
    `progress`, `scores` and `boundary` as in `evaluate`."""
    folder = Path(folder)
    matrix = ConfusionMatrix(dataset.num_classes, ignore_index=dataset.ignore_index)
    with progress_bar(dataset.samples, desc="score", unit=" images", progress=progress) as samples:
        for index, (_, mask_path) in enumerate(samples):
            path = folder / f"{mask_path.stem}.png"
            if not path.is_file():
                raise DataError(f"{path}: missing prediction for {mask_path.stem} (one PNG per validation image)")
            image, truth = dataset.load(index)
            pred = read_mask(path, num_classes=dataset.num_classes, ignore_index=dataset.ignore_index,
                             palette=dataset.palette)
            unlabelled = int((pred == dataset.ignore_index).sum())
            if unlabelled:
                raise DataError(f"{path}: {unlabelled} pixel(s) hold the ignore value {dataset.ignore_index}; a "
                                f"prediction must give every pixel a class (0-{dataset.num_classes - 1})")
            if pred.shape != truth.shape:
                raise DataError(f"{path}: prediction is {pred.shape[1]}x{pred.shape[0]} (WxH) but the ground truth "
                                f"{mask_path} is {truth.shape[1]}x{truth.shape[0]}")
            if scores is None:
                matrix.update(torch.from_numpy(pred), torch.from_numpy(truth))
            else:
                counts = matrix.update_per_image(torch.from_numpy(pred)[None], torch.from_numpy(truth)[None])
                scores.add(index, counts[0].numpy(), lambda: (image, truth, pred))
            if boundary is not None:
                boundary.update(pred, truth)
    return matrix
