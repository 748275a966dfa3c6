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


def format_metrics(metrics: dict, class_names: list[str]) -> str:
    """A per-class IoU, precision, recall and F1 table with their means, and the summary metrics; classes absent
    from truth and prediction are marked."""
    columns = [("IoU", "per_class_iou", "mIoU"), ("precision", "per_class_precision", "mPrecision"),
               ("recall", "per_class_recall", "mRecall"), ("F1", "per_class_f1", "mF1")]
    columns = [c for c in columns if c[1] in metrics]
    lines = [f"{'class':<20}" + "".join(f"{title:>11}" for title, _, _ in columns)]
    for i, name in enumerate(class_names):
        values = [metrics[key][i] for _, key, _ in columns]
        lines.append(f"{name:<20}" + "".join(f"{'absent' if v is None else f'{v:.4f}':>11}" for v in values))
    lines.append(f"{'mIoU and means':<20}" + "".join(f"{metrics[mean]:>11.4f}" for _, _, mean in columns) +
                 f"   (over {sum(v is not None for v in metrics['per_class_iou'])} classes present in truth or "
                 "prediction)")
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
