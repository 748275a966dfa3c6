"""`python predict.py`: label maps, colour masks and overlays for an image, a folder (recursive) or a glob; overlay
videos (and each frame's label map) for a video file, a camera or a stream."""

import sys
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from deeplab.cli import command, typed_settings
from deeplab.cli.record import Record
from deeplab.data.dataset import DataError
from deeplab.errors import ConfigError
from deeplab.inference import Predictor
from deeplab.prediction_files import (AREAS, LiveSource, area_row, batches, drop_unwritable_names, frame_count, is_video,
                                      list_inputs, live_outputs, live_source, output_folder, plan_outputs,
                                      refuse_existing, remove_killed_writes, save_outputs, summary, write_areas)
from deeplab.prediction_video import check_video, open_video, predict_video
from deeplab.progress import progress_bar
from deeplab.torch_files import folder_lock
from deeplab.schema import ranged
from deeplab.visualization import palette_array


# the predict-only keys' types and ranges (predict.yaml gives their defaults)
SETTINGS = {**dict.fromkeys(("save_index", "save_color", "save_overlay", "save_confidence", "save_areas", "save_frames",
                             "allow_inside_input", "overwrite", "fast",
                             "compile", "flip"), bool),
            "batch_size": ranged(int, lambda v: v >= 1, "a whole number of images, 1 or more (e.g. batch_size=4)"),
            "alpha": ranged(float, lambda v: 0 <= v <= 1, "the overlay opacity, a number from 0 (image only) to 1 "
                                                          "(mask only), e.g. alpha=0.5")}


def check_settings(cfg: DictConfig) -> None:
    """The predict-only settings, checked before anything is loaded: one ConfigError naming the key."""
    if not cfg.checkpoint or not cfg.input:
        raise DataError("usage: python predict.py checkpoint=PATH input=IMAGE|VIDEO|FOLDER|GLOB|camera:N|URL "
                        "[output=DIR]")
    typed_settings(cfg, SETTINGS)
    if not (cfg.save_index or cfg.save_color or cfg.save_overlay or cfg.save_confidence or cfg.save_areas):
        raise ConfigError("save_index, save_color, save_overlay, save_confidence and save_areas are all false: "
                          "nothing would be written; set at least one to true")


def run(cfg: DictConfig, output_dir: str | Path, record: Record | None = None) -> int:
    """Predict every input image and video (or the camera or stream); returns the number of inputs that could not be
    read (the exit code's cause). `record` keeps predict.log and the config in the run folder once every check has
    passed."""
    check_settings(cfg)
    live = live_source(cfg.input)
    base, paths, skipped = (None, [], []) if live else list_inputs(cfg.input)
    output = output_folder(cfg.output, run_dir=output_dir, base=base, allow_inside_input=cfg.allow_inside_input)
    with folder_lock(output, name=".predict.lock", busy="another predict.py is writing into this output folder; wait "
                                                        "for it to end, or predict into another output=DIR"):
        return predict_into(output, cfg, base, paths, skipped, output_dir, record, live)


def predict_into(output: Path, cfg: DictConfig, base: Path | None, paths: list[Path], skipped: list,
                 output_dir: str | Path, record: Record | None, live: LiveSource | None = None) -> int:
    """`run`'s work once it holds the output folder: plan every output, refuse clashes and videos OpenCV cannot
    open, then predict and write: the images, then each video (or the camera or stream)."""
    kinds = [kind for kind, wanted in (("index", cfg.save_index), ("color", cfg.save_color),
                                       ("overlay", cfg.save_overlay), ("confidence", cfg.save_confidence)) if wanted]
    video_kinds = [kind for kind, wanted in (("overlay", cfg.save_overlay),
                                             ("frames", cfg.save_frames or cfg.save_confidence)) if wanted]
    frame_kinds = [kind for kind, wanted in (("index", cfg.save_frames), ("confidence", cfg.save_confidence))
                   if wanted]
    with_video = bool(live) or any(map(is_video, paths))
    if with_video and not (video_kinds or cfg.save_areas):
        raise ConfigError(f"input={cfg.input}: save_overlay, save_frames, save_confidence and save_areas are all "
                          "false, so nothing of a video would be written; set save_overlay=true (the overlay video) "
                          "or save_frames=true (each frame's label map)")
    plan = plan_outputs(paths, base, output, kinds=kinds, video_kinds=video_kinds) if paths else \
        live_outputs(live, output, video_kinds)
    failed = drop_unwritable_names(plan)  # those inputs are named at the end; the others are written
    paths = [p for p in paths if p in plan]
    areas = output / AREAS if cfg.save_areas else None
    refuse_existing(plan, overwrite=cfg.overwrite, also=[areas] if areas else [])
    opened = open_video(live) if live else None  # a camera that cannot open: refused before the model is loaded
    videos = [p for p in paths if is_video(p) and _readable(p, failed)]  # each opened and its first frame decoded
    images = [p for p in paths if not is_video(p)]
    if not (images or videos or opened):
        raise nothing_predicted(cfg.input, failed, with_video)
    remove_killed_writes(plan)
    predictor = Predictor.from_checkpoint(cfg.checkpoint, device=cfg.device, output_stride=cfg.output_stride,
                                          scales=cfg.scales, flip=cfg.flip, window=cfg.window, stride=cfg.stride,
                                          precision=cfg.precision, fast=cfg.fast, compile=cfg.compile,
                                          onnx=cfg.onnx)
    if record is not None:
        record.keep(output_dir)
    table = palette_array(predictor.palette)
    rows = [] if areas is not None else None  # areas.csv: the images and frames done, however the run ends
    try:
        written = predict_images(predictor, images, plan, cfg, base=base, table=table, failed=failed, rows=rows)
        frames = 0
        for source in [live] if live else videos:
            video = opened if live else open_video(source)
            name = source.shown if live else source.relative_to(base).as_posix()  # its rows' name in areas.csv
            frames += predict_video(predictor, video, plan[name if live else source], name=name, table=table,
                                    alpha=cfg.alpha, batch_size=cfg.batch_size, frame_kinds=frame_kinds,
                                    rows=rows).frames
    finally:
        if rows:
            write_areas(areas, rows, predictor.class_names)
    if not (written or videos or opened):
        raise nothing_predicted(cfg.input, failed, with_video)
    if images:
        print(f"{written} image(s) written to {output}")
    if videos or opened:
        print(f"{len(videos) or 1} video(s) predicted ({frames} frames) into {output}")
    for line in summary(skipped, [p for p in images if frame_count(p) > 1]):
        print(line)
    if failed:
        print(f"{len(failed)} {'input' if with_video else 'image'}(s) could not be read or written:\n"
              + "\n".join(f"  {msg}" for msg in failed))
    return len(failed)


def nothing_predicted(spec, failed: list[str], with_video: bool) -> DataError:
    """The one sentence for a run none of whose inputs could be predicted (checked before the model loads, for the
    videos, and after the images were read)."""
    return DataError(f"input={spec}: none of the {len(failed)} {'input' if with_video else 'image'}(s) could be "
                     f"predicted, e.g. {failed[0]}")


def _readable(path: Path, failed: list[str]) -> bool:
    """Whether OpenCV opens a video file and decodes its first frame; if not, its sentence joins `failed`."""
    try:
        check_video(path)
    except DataError as exc:
        failed.append(str(exc))
        return False
    return True


def predict_images(predictor: Predictor, paths: list[Path], plan: dict, cfg: DictConfig, *, base: Path,
                   table, failed: list[str], rows: list | None) -> int:
    """The images, `batch_size` of one size per forward: their planned outputs, and their rows of areas.csv; returns
    how many were written (those that cannot be read join `failed`)."""
    if not paths:
        return 0
    written = 0
    with progress_bar(desc="predict", total=len(paths), unit=" images") as progress:
        for batch in batches(paths, cfg.batch_size, failed):
            top, labels = predictor.predict_batch([image for _, image in batch]).max(1)
            confidence = top.cpu().numpy() if cfg.save_confidence else [None] * len(batch)
            for (path, image), label, sure in zip(batch, labels.cpu().numpy(), confidence):
                save_outputs(image, label, plan[path], table, alpha=cfg.alpha, confidence=sure)
                if rows is not None:
                    rows.append(area_row(path.relative_to(base).as_posix(), label, len(predictor.class_names)))
            progress.update(len(batch))
            written += len(batch)
    return written


@command("predict", logger="deeplab.predict", record=True)
def main(cfg: DictConfig, record: Record) -> None:
    sys.exit(1 if run(cfg, HydraConfig.get().runtime.output_dir, record) else 0)  # unreadable images: exit 1
