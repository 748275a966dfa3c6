"""`python predict.py`: label maps, colour masks and overlays for an image, a folder (recursive) or a glob."""

import sys
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from deeplab.cli import command, typed_settings
from deeplab.cli.record import Record
from deeplab.data.dataset import DataError
from deeplab.errors import ConfigError
from deeplab.inference import Predictor
from deeplab.prediction_files import (AREAS, area_row, batches, drop_unwritable_names, frame_count, list_inputs,
                                      output_folder, plan_outputs, refuse_existing, remove_killed_writes, save_outputs,
                                      summary, write_areas)
from deeplab.progress import progress_bar
from deeplab.torch_files import folder_lock
from deeplab.schema import ranged
from deeplab.visualization import palette_array


# the predict-only keys' types and ranges (predict.yaml gives their defaults)
SETTINGS = {**dict.fromkeys(("save_index", "save_color", "save_overlay", "save_confidence", "save_areas",
                             "allow_inside_input", "overwrite", "fast",
                             "compile", "flip"), bool),
            "batch_size": ranged(int, lambda v: v >= 1, "a whole number of images, 1 or more (e.g. batch_size=4)"),
            "alpha": ranged(float, lambda v: 0 <= v <= 1, "the overlay opacity, a number from 0 (image only) to 1 "
                                                          "(mask only), e.g. alpha=0.5")}


def check_settings(cfg: DictConfig) -> None:
    """The predict-only settings, checked before anything is loaded: one ConfigError naming the key."""
    if not cfg.checkpoint or not cfg.input:
        raise DataError("usage: python predict.py checkpoint=PATH input=IMAGE|FOLDER|GLOB [output=DIR]")
    typed_settings(cfg, SETTINGS)
    if not (cfg.save_index or cfg.save_color or cfg.save_overlay or cfg.save_confidence or cfg.save_areas):
        raise ConfigError("save_index, save_color, save_overlay, save_confidence and save_areas are all false: "
                          "nothing would be written; set at least one to true")


def run(cfg: DictConfig, output_dir: str | Path, record: Record | None = None) -> int:
    """Predict every input image; returns the number of images that could not be read (the exit code's cause).
    `record` keeps predict.log and the config in the run folder once every check has passed."""
    check_settings(cfg)
    base, paths, skipped = list_inputs(cfg.input)
    output = output_folder(cfg.output, run_dir=output_dir, base=base, allow_inside_input=cfg.allow_inside_input)
    with folder_lock(output, name=".predict.lock", busy="another predict.py is writing into this output folder; wait "
                                                        "for it to end, or predict into another output=DIR"):
        return predict_into(output, cfg, base, paths, skipped, output_dir, record)


def predict_into(output: Path, cfg: DictConfig, base: Path, paths: list[Path], skipped: list, output_dir: str | Path,
                 record: Record | None) -> int:
    """`run`'s work once it holds the output folder: plan every output, refuse clashes, then predict and write."""
    kinds = [kind for kind, wanted in (("index", cfg.save_index), ("color", cfg.save_color),
                                       ("overlay", cfg.save_overlay), ("confidence", cfg.save_confidence)) if wanted]
    plan = plan_outputs(paths, base, output, kinds=kinds)
    failed = drop_unwritable_names(plan)  # those images are named at the end; the others are written
    paths = [p for p in paths if p in plan]
    areas = output / AREAS if cfg.save_areas else None
    refuse_existing(plan, overwrite=cfg.overwrite, also=[areas] if areas else [])
    remove_killed_writes(plan)
    predictor = Predictor.from_checkpoint(cfg.checkpoint, device=cfg.device, output_stride=cfg.output_stride,
                                          scales=cfg.scales, flip=cfg.flip, window=cfg.window, stride=cfg.stride,
                                          precision=cfg.precision, fast=cfg.fast, compile=cfg.compile,
                                          onnx=cfg.onnx)
    if record is not None:
        record.keep(output_dir)
    table = palette_array(predictor.palette)
    unwritable = len(failed)
    rows = []  # areas.csv, written once every image is done
    with progress_bar(desc="predict", total=len(paths), unit=" images") as progress:
        for batch in batches(paths, cfg.batch_size, failed):
            top, labels = predictor.predict_batch([image for _, image in batch]).max(1)
            confidence = top.cpu().numpy() if cfg.save_confidence else [None] * len(batch)
            for (path, image), label, sure in zip(batch, labels.cpu().numpy(), confidence):
                save_outputs(image, label, plan[path], table, alpha=cfg.alpha, confidence=sure)
                if areas is not None:
                    rows.append((path.relative_to(base).as_posix(), *label.shape,
                                 area_row(label, len(predictor.class_names))))
            progress.update(len(batch))
        progress.update(len(failed))
    if rows:
        write_areas(areas, rows, predictor.class_names)
    if len(failed) - unwritable == len(paths):
        raise DataError(f"input={cfg.input}: none of the {len(paths) + unwritable} image(s) could be predicted, e.g. "
                        f"{failed[0]}")
    print(f"{len(paths) - len(failed) + unwritable} image(s) written to {output}")
    for line in summary(skipped, [p for p in paths if frame_count(p) > 1]):
        print(line)
    if failed:
        print(f"{len(failed)} image(s) could not be read or written:\n" + "\n".join(f"  {msg}" for msg in failed))
    return len(failed)


@command("predict", logger="deeplab.predict", record=True)
def main(cfg: DictConfig, record: Record) -> None:
    sys.exit(1 if run(cfg, HydraConfig.get().runtime.output_dir, record) else 0)  # unreadable images: exit 1
