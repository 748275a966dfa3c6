"""Segmentation metrics from one confusion matrix accumulated over a whole split (the VOC definition), and the
strict JSON every metrics file is written in."""

import json
import math
from collections.abc import Mapping

import torch
import torch.distributed as dist


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

    def reduce_from_all_processes(self) -> None:
        """Sum the counts of every process, so every rank reports the metric of the whole split."""
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.mat)

    def compute(self) -> dict:
        """mIoU, pixel accuracy, mean class accuracy, frequency-weighted IoU and per-class IoU.

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
        }


def format_metrics(metrics: dict, class_names: list[str]) -> str:
    """A per-class IoU table and the summary metrics; classes absent from truth and prediction are marked."""
    lines = [f"{'class':<20}{'IoU':>8}"]
    for name, iou in zip(class_names, metrics["per_class_iou"]):
        lines.append(f"{name:<20}{'absent' if iou is None else f'{iou:.4f}':>8}")
    lines.append(f"{'mIoU':<20}{metrics['mIoU']:>8.4f}   (over {sum(v is not None for v in metrics['per_class_iou'])}"
                 f" classes present in truth or prediction)")
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
