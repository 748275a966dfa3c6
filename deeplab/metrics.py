"""Segmentation metrics from one confusion matrix accumulated over a whole split (the VOC definition), and the
strict JSON every metrics file is written in."""

import csv
import io
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.distributed as dist

from deeplab.visualization import denormalize


class ConfusionMatrix:
    """Device-resident (num_classes x num_classes) counts: rows are ground truth, columns are predictions."""

    def __init__(self, num_classes: int, *, ignore_index: int = 255, device: torch.device | str = "cpu") -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.mat = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch of predicted and true label maps (same shape); ignore pixels are skipped."""
        if pred.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
        keep = target != self.ignore_index
        if keep.any() and (pred[keep].min() < 0 or pred[keep].max() >= self.num_classes):
            raise ValueError(f"predictions must be class indices 0-{self.num_classes - 1} on labelled pixels")
        index = target[keep].to(torch.int64) * self.num_classes + pred[keep].to(torch.int64)
        self.mat += torch.bincount(index, minlength=self.num_classes ** 2).reshape(self.num_classes, -1)

    def update_per_image(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """`update` for a batch of (B, ...) label maps that also returns each image's (true, predicted, correct)
        pixel counts per class, (B, 3, C) on the CPU: one bincount over image, truth and prediction, as cheap as
        `update`'s."""
        if pred.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
        c, batch = self.num_classes, len(target)
        keep = target != self.ignore_index
        if keep.any() and (pred[keep].min() < 0 or pred[keep].max() >= c):
            raise ValueError(f"predictions must be class indices 0-{c - 1} on labelled pixels")
        index = target.to(torch.int64) * c + pred.to(torch.int64)
        if batch > 1:  # each image's own block of C x C counts
            index = index + torch.arange(batch, device=target.device).view(-1, *[1] * (target.dim() - 1)) * (c * c)
        index = index[keep]
        mats = torch.bincount(index, minlength=batch * c * c).reshape(batch, c, c)
        self.mat += mats.sum(0)
        return torch.stack([mats.sum(2), mats.sum(1), mats.diagonal(dim1=1, dim2=2)], 1).cpu()

    def reduce_from_all_processes(self) -> None:
        """Sum the counts of every process, so every rank reports the metric of the whole split."""
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.mat)

    def compute(self) -> dict:
        """mIoU, pixel accuracy, mean class accuracy, frequency-weighted IoU, per-class IoU, and per-class precision,
        recall and F1 (= Dice) with their means (`per_class_scores`).

        A class absent from both ground truth and predictions has no IoU (None) and is left out of the means.
        """
        mat = self.mat.double().cpu()
        true, predicted, hit = mat.sum(1), mat.sum(0), mat.diag()
        union = true + predicted - hit
        present = union > 0
        iou = torch.where(present, hit / union.clamp(min=1), torch.nan)
        acc = torch.where(true > 0, hit / true.clamp(min=1), torch.nan)
        total = mat.sum()
        freq = true / total.clamp(min=1)
        return {
            "mIoU": float(iou[present].mean()) if present.any() else float("nan"),
            "pixel_acc": float(hit.sum() / total) if total > 0 else float("nan"),
            "mean_class_acc": float(acc[true > 0].mean()) if (true > 0).any() else float("nan"),
            "fwIoU": float((freq[present] * iou[present]).sum()),
            "per_class_iou": [float(v) if present[i] else None for i, v in enumerate(iou)],
            "pixels": int(total),
            **per_class_scores(true, predicted, hit),
        }


def per_class_scores(true: torch.Tensor, predicted: torch.Tensor, hit: torch.Tensor) -> dict:
    """Per-class precision hit/predicted, recall hit/true and F1 = 2 hit/(true + predicted) (= Dice, the harmonic
    mean of the two) from each class's true, predicted and correctly predicted pixel counts, and their means.

    The IoU's convention: a class absent from truth and prediction has none of them (None) and is left out of the
    means; a class present in one of the two has all three, a zero denominator counting as 0 (never predicted:
    precision 0; only predicted: recall 0), so the means are over the classes the mIoU is over."""
    true, predicted, hit = true.double(), predicted.double(), hit.double()
    present = (true + predicted) > 0
    scores = {"precision": hit / predicted.clamp(min=1), "recall": hit / true.clamp(min=1),
              "f1": 2 * hit / (true + predicted).clamp(min=1)}
    out = {}
    for name, values in scores.items():
        out[f"per_class_{name}"] = [float(v) if present[i] else None for i, v in enumerate(values)]
    for name, values in scores.items():
        out[f"m{'F1' if name == 'f1' else name.capitalize()}"] = \
            float(values[present].mean()) if present.any() else float("nan")
    return out


def boundary_region(mask: np.ndarray, dilation: int) -> np.ndarray:
    """The pixels of a binary mask within `dilation` px of its contour: the mask minus its erosion by `dilation`
    3x3 steps, the image border counting as contour (Cheng et al.'s `mask_to_boundary`, boundary-iou-api)."""
    mask = mask.astype(np.uint8)
    height, width = mask.shape
    padded = cv2.copyMakeBorder(mask, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    eroded = cv2.erode(padded, np.ones((3, 3), np.uint8), iterations=dilation)[1:height + 1, 1:width + 1]
    return (mask - eroded).astype(bool)


class BoundaryIoU:
    """Boundary IoU per class over a split (Cheng et al., CVPR 2021): for each image and class, the boundary regions
    of the true and the predicted mask (`boundary_region`, d = `dilation` x the image diagonal, at least 1 px), their
    intersection and union counted over labelled pixels and summed over the split; a class with an empty union
    everywhere has none (None) and is left out of the mean, as for IoU."""

    def __init__(self, num_classes: int, *, ignore_index: int = 255, dilation: float = 0.02) -> None:
        self.num_classes, self.ignore_index, self.dilation = num_classes, ignore_index, dilation
        self.intersection = np.zeros(num_classes, np.int64)
        self.union = np.zeros(num_classes, np.int64)

    def update(self, pred: np.ndarray, truth: np.ndarray) -> None:
        """One image's (H, W) predicted and true label maps."""
        pred, truth = np.asarray(pred), np.asarray(truth)
        height, width = truth.shape
        d = max(1, int(round(self.dilation * math.hypot(height, width))))
        keep = truth != self.ignore_index
        if not keep.any():
            return
        for c in np.union1d(np.unique(truth[keep]), np.unique(pred[keep])):
            true_edge = boundary_region(truth == c, d) & keep
            pred_edge = boundary_region(pred == c, d) & keep
            self.intersection[c] += int((true_edge & pred_edge).sum())
            self.union[c] += int((true_edge | pred_edge).sum())

    def compute(self) -> dict:
        present = self.union > 0
        iou = self.intersection / np.maximum(self.union, 1)
        return {"per_class_boundary_iou": [float(v) if present[i] else None for i, v in enumerate(iou)],
                "mBoundaryIoU": float(iou[present].mean()) if present.any() else float("nan"),
                "boundary_dilation": self.dilation}


class Calibration:
    """Expected calibration error of the top-class probability over labelled pixels: the pixels binned by that
    confidence into `bins` equal-width bins ([0, 1/15), ..., [14/15, 1]), ECE = sum over bins of
    (n_b / N) |accuracy_b - mean confidence_b|, accuracy being the share of the bin's pixels whose top class is
    right."""

    def __init__(self, *, bins: int = 15, ignore_index: int = 255, device: torch.device | str = "cpu") -> None:
        self.bins, self.ignore_index = bins, ignore_index
        self.count = torch.zeros(bins, dtype=torch.float64, device=device)
        self.confidence = torch.zeros(bins, dtype=torch.float64, device=device)
        self.correct = torch.zeros(bins, dtype=torch.float64, device=device)

    def update(self, probs: torch.Tensor, target: torch.Tensor) -> None:
        """(B, C, H, W) class probabilities (averaged over scales and flips where test-time augmentation is on) and
        the (B, H, W) truth."""
        confidence, pred = probs.float().max(1)
        keep = target != self.ignore_index
        confidence, right = confidence[keep].double(), (pred[keep] == target[keep]).double()
        index = (confidence * self.bins).long().clamp(0, self.bins - 1)
        self.count += torch.bincount(index, minlength=self.bins).double()
        self.confidence += torch.bincount(index, weights=confidence, minlength=self.bins)
        self.correct += torch.bincount(index, weights=right, minlength=self.bins)

    def compute(self) -> dict:
        count, confidence, correct = self.count.cpu(), self.confidence.cpu(), self.correct.cpu()
        total = float(count.sum())
        filled = count > 0
        accuracy = torch.where(filled, correct / count.clamp(min=1), torch.nan)
        mean_confidence = torch.where(filled, confidence / count.clamp(min=1), torch.nan)
        gaps = (count / max(total, 1.0)) * (accuracy - mean_confidence).abs()
        return {"ece": float(gaps[filled].sum()) if total > 0 else float("nan"),
                "calibration_bins": {"pixels": [int(v) for v in count],
                                     "accuracy": [float(v) if filled[i] else None for i, v in enumerate(accuracy)],
                                     "confidence": [float(v) if filled[i] else None
                                                    for i, v in enumerate(mean_confidence)]}}


def image_ids(paths: Sequence[str | Path]) -> list[str]:
    """Each image's id: its path relative to the folder holding all of them (the dataset's image folder), with '/'
    separators; a single image's is its file name."""
    paths = [Path(p) for p in paths]
    if not paths:
        return []
    common = Path(os.path.commonpath([str(p.parent) for p in paths]))
    return [p.relative_to(common).as_posix() for p in paths]


def image_scores(counts: np.ndarray) -> dict:
    """One image's pixel accuracy, mean IoU and per-class IoU from its (3, C) true, predicted and correct pixel
    counts (labelled pixels only): the split's definitions on one image. A class absent from its truth and prediction
    has no IoU (None); an image with no labelled pixel has neither accuracy nor mean IoU (NaN)."""
    true, predicted, hit = (np.asarray(row, np.float64) for row in counts)
    union = true + predicted - hit
    present = union > 0
    iou = np.where(present, hit / np.maximum(union, 1), np.nan)
    total = true.sum()
    return {"pixel_acc": float(hit.sum() / total) if total > 0 else float("nan"),
            "mIoU": float(iou[present].mean()) if present.any() else float("nan"),
            "per_class_iou": [float(v) if present[i] else None for i, v in enumerate(iou)]}


class ImageScores:
    """Each image's per-class (true, predicted, correct) pixel counts, by its index in the dataset, and the `worst`
    images by mean IoU as (index, mean IoU, (image, truth, prediction)) pictures, with the images as (H, W, 3) uint8
    (normalised tensors are turned back with `mean` and `std`)."""

    def __init__(self, ids: Sequence[str], *, worst: int = 0, mean: Sequence[float] = (0.0, 0.0, 0.0),
                 std: Sequence[float] = (1.0, 1.0, 1.0)) -> None:
        self.ids, self.worst_count, self.mean, self.std = list(ids), worst, mean, std
        self.counts: dict[int, np.ndarray] = {}
        self.worst: list[tuple[float, int, tuple]] = []  # (mean IoU, index, picture), worst first

    def add(self, index: int, counts: np.ndarray, picture: Callable[[], tuple]) -> None:
        """Image `index`'s (3, C) counts; `picture()` gives its (image, truth, prediction), asked for only when the
        image is among the worst so far."""
        self.counts[index] = np.asarray(counts, np.int64)
        score = image_scores(counts)["mIoU"]
        if self.worst_count <= 0 or math.isnan(score):
            return
        if len(self.worst) == self.worst_count and (score, index) >= self.worst[-1][:2]:
            return
        image, truth, pred = picture()
        if isinstance(image, torch.Tensor):
            image = denormalize(image, self.mean, self.std)
        self.worst = sorted([*self.worst, (score, index, (image, np.asarray(truth), np.asarray(pred)))],
                            key=lambda entry: entry[:2])[: self.worst_count]

    def rows(self) -> list[dict]:
        """One row per image scored, in dataset order: id, pixel accuracy, mean IoU, per-class IoU and counts."""
        return [{"id": self.ids[i], **image_scores(c), "true_pixels": c[0].tolist(), "pred_pixels": c[1].tolist()}
                for i, c in sorted(self.counts.items())]

    def ranked(self, count: int) -> list[dict]:
        """The `count` rows with the lowest mean IoU (images with no labelled pixel left out), worst first."""
        scored = [row for row in self.rows() if not math.isnan(row["mIoU"])]
        return sorted(scored, key=lambda row: row["mIoU"])[:count]

    def pictures(self) -> list[tuple[str, float, tuple]]:
        """The worst images' (id, mean IoU, (image, truth, prediction)), worst first."""
        return [(self.ids[index], score, picture) for score, index, picture in self.worst]


def per_image_csv(rows: Sequence[dict], class_names: Sequence[str]) -> str:
    """per_image.csv's text: id, pixel_acc, mIoU, then each class's `<name>_iou` (empty where the class is in
    neither the image's truth nor its prediction), `<name>_true_pixels` and `<name>_pred_pixels`."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["id", "pixel_acc", "mIoU", *(f"{n}_iou" for n in class_names),
                     *(f"{n}_true_pixels" for n in class_names), *(f"{n}_pred_pixels" for n in class_names)])

    def cell(value):
        return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.6f}"
    for row in rows:
        writer.writerow([row["id"], cell(row["pixel_acc"]), cell(row["mIoU"]), *map(cell, row["per_class_iou"]),
                         *row["true_pixels"], *row["pred_pixels"]])
    return out.getvalue()


def format_worst(rows: Sequence[dict]) -> str:
    """The worst images, one a line: mean IoU, pixel accuracy, id."""
    lines = [f"the {len(rows)} worst image{'s' if len(rows) != 1 else ''} by mean IoU (per_image.csv has every one):"]
    lines += [f"  mIoU {row['mIoU']:.4f}  pixel acc {row['pixel_acc']:.4f}  {row['id']}" for row in rows]
    return "\n".join(lines)


def format_metrics(metrics: dict, class_names: list[str]) -> str:
    """A per-class IoU, precision, recall and F1 table with their means, and the summary metrics; classes absent
    from truth and prediction are marked."""
    columns = [("IoU", "per_class_iou", "mIoU"), ("precision", "per_class_precision", "mPrecision"),
               ("recall", "per_class_recall", "mRecall"), ("F1", "per_class_f1", "mF1"),
               ("boundary", "per_class_boundary_iou", "mBoundaryIoU")]
    columns = [c for c in columns if c[1] in metrics]
    lines = [f"{'class':<20}" + "".join(f"{title:>11}" for title, _, _ in columns)]
    for i, name in enumerate(class_names):
        values = [metrics[key][i] for _, key, _ in columns]
        lines.append(f"{name:<20}" + "".join(f"{'absent' if v is None else f'{v:.4f}':>11}" for v in values))
    lines.append(f"{'mIoU and means':<20}" + "".join(f"{metrics[mean]:>11.4f}" for _, _, mean in columns) +
                 f"   (over {sum(v is not None for v in metrics['per_class_iou'])} classes present in truth or "
                 "prediction)")
    if "ece" in metrics:
        lines.append(f"expected calibration error {metrics['ece']:.4f} (15 bins of the top-class probability)")
    lines.append(f"pixel acc {metrics['pixel_acc']:.4f}   mean class acc {metrics['mean_class_acc']:.4f}   "
                 f"fwIoU {metrics['fwIoU']:.4f}   ({metrics['pixels']:,} labelled pixels)")
    return "\n".join(lines)


def _finite(value):
    """`value` with NaN and infinities (an mIoU with no class present) replaced by None, in mappings and lists too."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def json_text(value, **options) -> str:
    """`value` as strict JSON (RFC 8259), the one way the project writes JSON: NaN and infinities become null.

    Python's json writes them as bare NaN and Infinity, which strict readers refuse (JavaScript's JSON.parse, jq,
    Go, Rust's serde_json). `options` go to json.dumps (indent, default...)."""
    return json.dumps(_finite(value), allow_nan=False, **options)
