"""What a run reports: TensorBoard scalars and image grids, and plain-text log lines (rank 0 only)."""

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from torch.utils.tensorboard import SummaryWriter

from deeplab.visualization import comparison_grid, denormalize

log = logging.getLogger("deeplab.train")


def ensure_log_file(path: Path) -> logging.Handler | None:
    """Log to `path` too, unless a handler (Hydra's job log) already writes there; returns the handler added."""
    root = logging.getLogger()
    if any(isinstance(h, logging.FileHandler) and Path(h.baseFilename) == path.resolve() for h in root.handlers):
        return None
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    handler.setLevel(logging.INFO)
    root.addHandler(handler)
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
    return handler


class RunLogger:
    """TensorBoard event files in `<run>/tb` plus log lines; tags: train/*, val/*, val/iou/<class>."""

    def __init__(self, output_dir: Path, *, class_names: Sequence[str], palette: np.ndarray,
                 mean: Sequence[float], std: Sequence[float], start_iter: int = 0) -> None:
        self.handler = ensure_log_file(output_dir / "train.log")
        # purge_step drops events a killed run wrote after its last checkpoint, so curves do not double back
        self.writer = SummaryWriter(str(output_dir / "tb"), purge_step=start_iter or None)
        self.class_names, self.palette, self.mean, self.std = list(class_names), palette, mean, std

    def train(self, iteration: int, loss: float, lr: float, images_per_s: float) -> None:
        self.writer.add_scalar("train/loss", loss, iteration)
        self.writer.add_scalar("train/lr", lr, iteration)
        self.writer.add_scalar("train/images_per_s", images_per_s, iteration)
        log.info("iter %d  loss %.4f  lr %.3e  %.1f img/s", iteration, loss, lr, images_per_s)

    def validation(self, iteration: int, metrics: dict, kept: list, *, best: float) -> None:
        for key in ("mIoU", "pixel_acc", "mean_class_acc", "fwIoU"):
            self.writer.add_scalar(f"val/{key}", metrics[key], iteration)
        for name, iou in zip(self.class_names, metrics["per_class_iou"]):
            if iou is not None:
                self.writer.add_scalar(f"val/iou/{name}", iou, iteration)
        if kept:
            rows = [(denormalize(image, self.mean, self.std), truth, pred) for image, truth, pred in kept]
            self.writer.add_image("val/input_truth_prediction", comparison_grid(rows, self.palette), iteration,
                                  dataformats="HWC")
        self.writer.flush()
        per_class = "  ".join(f"{n}:{'-' if v is None else f'{v:.3f}'}"
                              for n, v in zip(self.class_names, metrics["per_class_iou"]))
        log.info("val @ iter %d  mIoU %.4f (best %.4f)  pixel acc %.4f  | %s", iteration, metrics["mIoU"], best,
                 metrics["pixel_acc"], per_class)

    def close(self) -> None:
        self.writer.close()
        if self.handler:
            logging.getLogger().removeHandler(self.handler)
            self.handler.close()
