"""`python evaluate.py`: mIoU of a checkpoint (or of a folder of saved predictions) on a validation split."""

import json
import logging
from pathlib import Path

import cv2
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from deeplab.data import DataError, SegmentationDataset, build_dataset, read_mask
from deeplab.data.transforms import eval_transform
from deeplab.engine.checkpoint import CheckpointError
from deeplab.engine.evaluator import evaluate
from deeplab.engine.loaders import val_loader
from deeplab.engine.precision import resolve_device, resolve_precision
from deeplab.errors import ConfigError, check_flags
from deeplab.inference import check_tta, is_channels_last, model_from_checkpoint
from deeplab.metrics import ConfusionMatrix

log = logging.getLogger("deeplab.evaluate")


def score_predictions(dataset: SegmentationDataset, folder: str | Path) -> ConfusionMatrix:
    """Score index PNGs named like the dataset's masks (stem.png) against them, with no model involved."""
    folder = Path(folder)
    matrix = ConfusionMatrix(dataset.num_classes, ignore_index=dataset.ignore_index)
    for index, (_, mask_path) in enumerate(dataset.samples):
        path = folder / f"{mask_path.stem}.png"
        if not path.is_file():
            raise DataError(f"{path}: missing prediction for {mask_path.stem} (one PNG per validation image)")
        _, truth = dataset.load(index)
        pred = read_mask(path, num_classes=dataset.num_classes, ignore_index=dataset.ignore_index,
                         palette=dataset.palette)
        unlabelled = int((pred == dataset.ignore_index).sum())
        if unlabelled:
            raise DataError(f"{path}: {unlabelled} pixel(s) hold the ignore value {dataset.ignore_index}; a prediction "
                            f"must give every pixel a class (0-{dataset.num_classes - 1})")
        if pred.shape != truth.shape:
            raise DataError(f"{path}: prediction is {pred.shape[1]}x{pred.shape[0]} (WxH) but the ground truth "
                            f"{mask_path} is {truth.shape[1]}x{truth.shape[0]}")
        matrix.update(torch.from_numpy(pred), torch.from_numpy(truth))
    return matrix


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


def confusion_image(matrix: ConfusionMatrix, cell: int = 24) -> np.ndarray:
    """Row-normalised confusion matrix as a heat map (rows: truth, columns: prediction), with class indices."""
    mat = matrix.mat.double().cpu()
    norm = (mat / mat.sum(1, keepdim=True).clamp(min=1)).numpy()
    heat = cv2.applyColorMap((norm * 255).astype(np.uint8), cv2.COLORMAP_VIRIDIS)
    heat = cv2.resize(heat, None, fx=cell, fy=cell, interpolation=cv2.INTER_NEAREST)
    canvas = np.full((heat.shape[0] + cell, heat.shape[1] + cell, 3), 255, np.uint8)
    canvas[cell:, cell:] = heat
    for i in range(len(norm)):
        for pos in ((cell + i * cell + 4, cell - 8), (4, cell + i * cell + cell - 8)):
            cv2.putText(canvas, str(i), pos, cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 0, 0), 1)
    return cv2.cvtColor(canvas, cv2.COLOR_BGR2RGB)


def run(cfg: DictConfig, output_dir: str | Path) -> dict:
    """Evaluate `checkpoint` (or score `predictions`) on the validation split; write metrics.json and the matrix."""
    output_dir = Path(output_dir)
    if cfg.checkpoint and cfg.predictions:
        raise ConfigError(f"checkpoint={cfg.checkpoint} and predictions={cfg.predictions}: give checkpoint= (a model "
                          "to evaluate) or predictions= (a folder of index PNGs to score), not both")
    device = resolve_device(cfg.device)  # the settings first: nothing is loaded or written for a wrong one
    resolve_precision(cfg.precision, device.type)
    check_tta(scales=cfg.scales, window=cfg.window, stride=cfg.stride, flip=cfg.flip)
    check_flags(cfg, ("fast", "compile"))
    if isinstance(cfg.num_workers, bool) or not isinstance(cfg.num_workers, int) or cfg.num_workers < 0:
        raise ConfigError(f"num_workers={cfg.num_workers!r}: must be a whole number >= 0 (0 reads images in this "
                          f"process)")
    output_dir.mkdir(parents=True, exist_ok=True)
    model = None
    if cfg.checkpoint:
        model, config = model_from_checkpoint(cfg.checkpoint, device=device, output_stride=cfg.output_stride,
                                              fast=cfg.fast, compile=cfg.compile, onnx=cfg.onnx)
        data = config["dataset"]
    elif cfg.predictions:
        data = None
    else:
        raise DataError("give checkpoint=PATH (a model to evaluate) or predictions=DIR (index PNGs to score)")
    if cfg.get("dataset"):
        data = OmegaConf.to_container(cfg.dataset, resolve=True)
    if data is None:
        raise DataError("predictions=DIR needs a dataset to score against: add dataset=<name> [dataset.root=...]")
    if cfg.data_root:
        data["root"] = cfg.data_root
    if model is not None and model.num_classes != data["num_classes"]:
        raise CheckpointError(f"{cfg.checkpoint}: checkpoint is for {model.num_classes} classes but the dataset "
                              f"({data['format']}) has {data['num_classes']}; evaluate it on the data it was trained for")
    split = cfg.split or data["val_split"]
    dataset = build_dataset(split=split, **data, transform=eval_transform(mean=data["mean"], std=data["std"]))
    if model is not None:
        tta = dict(scales=tuple(cfg.scales), flip=cfg.flip, window=cfg.window, stride=cfg.stride)
        loader = val_loader(dataset, rank=0, world_size=1, num_workers=cfg.num_workers, pin_memory=False)
        matrix, _ = evaluate(model, loader, num_classes=data["num_classes"], device=device,
                             ignore_index=data["ignore_index"], precision=resolve_precision(cfg.precision, device.type),
                             channels_last=is_channels_last(model), tta=tta)
    else:
        matrix = score_predictions(dataset, cfg.predictions)
    metrics = matrix.compute()
    names = data.get("class_names") or [str(i) for i in range(data["num_classes"])]
    print(f"{cfg.checkpoint or cfg.predictions} on {data['format']} split '{split}' ({len(dataset)} images)")
    print(format_metrics(metrics, names))
    result = {"source": str(cfg.checkpoint or cfg.predictions), "split": split, "images": len(dataset),
              "class_names": names, **metrics, "confusion_matrix": matrix.mat.cpu().tolist()}
    (output_dir / "metrics.json").write_text(json.dumps(result, indent=2))
    cv2.imwrite(str(output_dir / "confusion_matrix.png"), cv2.cvtColor(confusion_image(matrix), cv2.COLOR_RGB2BGR))
    print(f"metrics.json and confusion_matrix.png written to {output_dir}")
    return result
