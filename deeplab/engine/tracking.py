"""What a run reports: TensorBoard scalars, image grids and hparams, plain-text log lines, and the run's history in
`<run>/metrics.jsonl` (rank 0 only)."""

import itertools
import json
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from hydra.core.override_parser.overrides_parser import OverridesParser
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from tensorboard.plugins.hparams.metadata import SESSION_START_INFO_TAG
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams as hparams_summaries

from deeplab.engine.run_config import _flat
from deeplab.figures import MissingDependency, confusion_figure, iou_chart, worst_grid
from deeplab.metrics import json_text
from deeplab.torch_files import atomic_write
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


HISTORY_FILE = "metrics.jsonl"
WORST_IMAGES = 8  # the worst validation images by mean IoU in val/worst_images (trainer.log_figures)
# the hparams every run shows, whatever its command line set: the HParams view's columns line up across runs
CORE_HPARAMS = ("model.backbone.name", "optim.name", "optim.lr", "schedule.name", "loss.name", "trainer.iterations",
                "trainer.batch_size", "dataset.format")
# the HParams view's metric columns: scalars of the run's own event file, their last value shown
HPARAM_METRICS = ("hparams/best_mIoU", "hparams/final_mIoU")


def lrs_by_group(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """{param group name: its current LR} (optim.build_optimizer names them backbone and head)."""
    return {group.get("name", f"group{i}"): group["lr"] for i, group in enumerate(optimizer.param_groups)}


def hparam_value(value) -> int | float | str:
    """A config value as TensorBoard's HParams view takes it: numbers as they are; bools, None, lists and mappings as
    the text Hydra would print (torch's `hparams` would store a bool as the number 1.0)."""
    plain = isinstance(value, (int, float, str)) and not isinstance(value, bool)
    return value if plain else json.dumps(value, default=str)


def run_hparams(config: Mapping, overrides: Sequence[str] = ()) -> dict[str, int | float | str]:
    """The run's hyperparameters for TensorBoard: the CORE_HPARAMS keys, then each key the command line set
    (Hydra's overrides.task, as `trainer.train` receives them) with its resolved value from `config`.

    A config group chosen on the command line (`optim=adamw`, `model/backbone=resnet50`, `experiment=voc_os16`) is
    one hparam named after the group, its value the option's name: an experiment sets dozens of keys, and the ones that
    tell runs apart are in the core set or set on the command line. `~group` shows as "(deleted)"; hydra.*, resume and
    output_root are left out (where the run goes, not how it trains).
    """
    flat = _flat(config)
    hparams = {key: hparam_value(flat.get(key)) for key in CORE_HPARAMS}
    for override in OverridesParser.create().parse_overrides(list(overrides)):
        key = override.key_or_group + (f"@{override.package}" if override.package else "")
        if key.split(".")[0] in ("hydra", "resume", "output_root"):
            continue
        hparams[key] = "(deleted)" if override.is_delete() else hparam_value(
            flat[key] if key in flat else override.value())
    return hparams


def has_hparams(tb_dir: Path, *, first_events: int = 8) -> bool:
    """Whether an event file in `tb_dir` already holds a run's hparams (written by the run's first session). A new
    RunLogger writes them right after the file's header, so only the first few events of each file are read."""
    for path in sorted(tb_dir.glob("events.out.tfevents.*")):
        for event in itertools.islice(EventFileLoader(str(path)).Load(), first_events):
            if any(value.tag == SESSION_START_INFO_TAG for value in event.summary.value):
                return True
    return False


def wait_to_sort_last(tb_dir: Path) -> None:
    """TensorBoard reads a run's event files in name order, and a name starts with its creation second: a resumed
    run's file must sort after the files before it, or purge_step drops nothing and the killed run's steps come back
    after the new ones. Only a writer opened in the same second as the newest file (a resume in the same process,
    as in a notebook) has to wait for the next second."""
    newest = max((int(part) for path in tb_dir.glob("events.out.tfevents.*")
                  if (part := path.name.split(".")[3]).isdigit()), default=None)
    while newest is not None and time.time() < newest + 1:
        time.sleep(newest + 1 - time.time())


def truncate_history(path: Path, iteration: int) -> int:
    """Drop the lines of `path` logged after `iteration` (what a killed run wrote after its last checkpoint, redone by
    the resumed run) and a line a kill cut short, rewriting the file atomically; returns how many were dropped."""
    if not path.is_file():
        return 0
    text = path.read_text(encoding="utf-8")
    kept = []
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and not (isinstance(entry.get("iteration"), int) and entry["iteration"] > iteration):
            kept.append(line)
    dropped = len(text.splitlines()) - len(kept)
    if dropped or (text and not text.endswith("\n")):
        atomic_write(path, lambda tmp: tmp.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8"))
    return dropped


class RunHistory:
    """`<run>/metrics.jsonl`: one JSON object a line, {"kind": "train" | "val", "iteration", "time" (unix seconds),
    "elapsed_s" (since this process started the run or its resume), ...}; appended and flushed line by line, so a
    killed run keeps what it logged, and a resumed run continues the same file from its checkpoint's iteration."""

    def __init__(self, path: Path, *, start_iter: int = 0) -> None:
        self.path = path
        truncate_history(path, start_iter)
        self.file = open(path, "a", encoding="utf-8")
        self.started = time.monotonic()

    def write(self, kind: str, iteration: int, fields: Mapping) -> None:
        line = {"kind": kind, "iteration": iteration, "time": round(time.time(), 3),
                "elapsed_s": round(time.monotonic() - self.started, 3), **fields}
        self.file.write(json_text(line, default=str) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


class RunLogger:
    """TensorBoard event files in `<run>/tb` plus log lines and `<run>/metrics.jsonl` (RunHistory); tags: train/*
    (train/lr/<group> too once the param groups' LRs differ), val/*, val/iou/<class>, hparams/*.

    `hparams` (`run_hparams`) go into the run's own event file at the start, so a killed run shows them too, with
    HPARAM_METRICS as the HParams view's metrics. TensorBoard keeps only the first hparams summary of a run (it stores
    a tag's metadata once), so a resumed run writes none when its event files already hold them: the view shows the
    hparams the run started with. `iterations` is trainer.iterations: its validation, the run's last, writes
    hparams/final_mIoU and the session's end (success).
    """

    def __init__(self, output_dir: Path, *, class_names: Sequence[str], palette: np.ndarray,
                 mean: Sequence[float], std: Sequence[float], start_iter: int = 0,
                 hparams: Mapping[str, int | float | str] | None = None, iterations: int | None = None,
                 ignore_index: int = 255) -> None:
        self.handler = ensure_log_file(output_dir / "train.log")
        tb = output_dir / "tb"
        first_session = not has_hparams(tb)
        # purge_step drops the events a killed run wrote after its last checkpoint (the steps after start_iter, which
        # the resumed run logs again), so curves do not double back
        wait_to_sort_last(tb)
        self.writer = SummaryWriter(str(tb), purge_step=start_iter + 1 if start_iter else None)
        self.history = RunHistory(output_dir / HISTORY_FILE, start_iter=start_iter)
        self.class_names, self.palette, self.mean, self.std = list(class_names), palette, mean, std
        self.ignore_index = ignore_index
        self.figures = True  # the confusion matrix and per-class IoU images, until matplotlib turns out missing
        self.iterations, self.session_end, self.per_group_lr = iterations, None, False
        if hparams is not None:
            experiment, start, self.session_end = hparams_summaries(dict(hparams), dict.fromkeys(HPARAM_METRICS))
            if first_session:
                self.writer.file_writer.add_summary(experiment)
                self.writer.file_writer.add_summary(start)
                self.writer.flush()

    def train(self, iteration: int, loss: float, lr: float, images_per_s: float, *,
              group_lrs: Mapping[str, float]) -> None:
        """A log step: `lr` is the head's (train/lr), `group_lrs` every param group's (`lrs_by_group`)."""
        self.writer.add_scalar("train/loss", loss, iteration)
        self.writer.add_scalar("train/lr", lr, iteration)
        # once they have differed (optim.backbone_lr_mult), every group's LR is logged, also where both reach 0
        self.per_group_lr = self.per_group_lr or len(set(group_lrs.values())) > 1
        if self.per_group_lr:
            for name, group_lr in group_lrs.items():
                self.writer.add_scalar(f"train/lr/{name}", group_lr, iteration)
        self.writer.add_scalar("train/images_per_s", images_per_s, iteration)
        self.history.write("train", iteration, {"loss": loss, "lr": dict(group_lrs), "images_per_s": images_per_s})
        log.info("iter %d  loss %.4f  lr %.3e  %.1f img/s", iteration, loss, lr, images_per_s)

    def validation(self, iteration: int, metrics: dict, kept: list, *, best: float,
                   confusion: np.ndarray | None = None, worst: list | None = None) -> None:
        """The validation's line in metrics.jsonl, scalars, image grid and log line; with `confusion` (the C x C
        counts, rows truth) also val/confusion_matrix and val/per_class_iou as images (`deeplab.figures`; one warning
        and none without matplotlib), and with `worst` (`ImageScores.pictures`) val/worst_images, the worst images
        by mean IoU as image | truth | prediction | errors. The HParams view's metrics: hparams/best_mIoU at every validation;
        hparams/final_mIoU and the session's end at the one at trainer.iterations."""
        self.history.write("val", iteration, {**metrics, "best_mIoU": best,
                                              "per_class_iou": dict(zip(self.class_names, metrics["per_class_iou"]))})
        self.writer.add_scalar("hparams/best_mIoU", best, iteration)
        if iteration == self.iterations:
            self.writer.add_scalar("hparams/final_mIoU", metrics["mIoU"], iteration)
            if self.session_end is not None:
                self.writer.file_writer.add_summary(self.session_end)
        for key in ("mIoU", "pixel_acc", "mean_class_acc", "fwIoU"):
            self.writer.add_scalar(f"val/{key}", metrics[key], iteration)
        for name, iou in zip(self.class_names, metrics["per_class_iou"]):
            if iou is not None:
                self.writer.add_scalar(f"val/iou/{name}", iou, iteration)
        if kept:
            rows = [(denormalize(image, self.mean, self.std), truth, pred) for image, truth, pred in kept]
            self.writer.add_image("val/input_truth_prediction", comparison_grid(rows, self.palette), iteration,
                                  dataformats="HWC")
        if confusion is not None and self.figures:
            try:
                self.writer.add_image("val/confusion_matrix", confusion_figure(confusion, self.class_names), iteration,
                                      dataformats="HWC")
                self.writer.add_image("val/per_class_iou", iou_chart(metrics["per_class_iou"], self.class_names,
                                                                     metrics["mIoU"]), iteration, dataformats="HWC")
                if worst:
                    self.writer.add_image("val/worst_images", worst_grid(worst, self.palette,
                                                                         ignore_index=self.ignore_index),
                                          iteration, dataformats="HWC")
            except MissingDependency as exc:
                self.figures = False
                log.warning("TensorBoard's confusion matrix, per-class IoU and worst images are skipped for this run: %s", exc)
        self.writer.flush()
        per_class = "  ".join(f"{n}:{'-' if v is None else f'{v:.3f}'}"
                              for n, v in zip(self.class_names, metrics["per_class_iou"]))
        log.info("val @ iter %d  mIoU %.4f (best %.4f)  pixel acc %.4f  | %s", iteration, metrics["mIoU"], best,
                 metrics["pixel_acc"], per_class)

    def close(self) -> None:
        self.history.close()
        self.writer.close()
        if self.handler:
            logging.getLogger().removeHandler(self.handler)
            self.handler.close()
