"""`python predict.py`: label maps, colour masks and overlays for an image, a folder (recursive) or a glob."""

import glob
import logging
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
from omegaconf import DictConfig
from PIL import Image
from tqdm import tqdm

from deeplab.data.dataset import IMAGE_EXTENSIONS, DataError, read_image
from deeplab.inference import Predictor
from deeplab.visualization import colourize, palette_array

log = logging.getLogger("deeplab.predict")


def list_inputs(spec: str) -> tuple[Path, list[Path]]:
    """(base folder, image paths) for an image file, a folder (searched recursively) or a glob pattern."""
    path = Path(spec).expanduser()
    if path.is_file():
        return path.parent, [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        return path, files
    files = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
    if not files:
        raise DataError(f"input={spec}: no such file or folder, and no file matches it as a glob")
    base = Path(*Path(spec).parts[:next((i for i, part in enumerate(Path(spec).parts) if any(c in part for c in "*?[")),
                                       len(Path(spec).parts))])
    return base, files


def _batches(paths: list[Path], batch_size: int, failed: list) -> Iterator[list[tuple[Path, np.ndarray]]]:
    """Consecutive readable images of one size, up to batch_size at a time; unreadable ones go to `failed`."""
    batch: list[tuple[Path, np.ndarray]] = []
    for path in paths:
        try:
            image = read_image(path)
        except DataError as exc:
            failed.append(str(exc))
            continue
        if batch and (len(batch) == batch_size or batch[0][1].shape != image.shape):
            yield batch
            batch = []
        batch.append((path, image))
    if batch:
        yield batch


def save_outputs(image: np.ndarray, labels: np.ndarray, target: Path, table: np.ndarray, *, index: bool,
                 colour: bool, overlay: bool, alpha: float) -> None:
    """Write <stem>.png (palette PNG of class indices), <stem>_color.png and <stem>_overlay.jpg as asked."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if index:
        img = Image.fromarray(labels.astype(np.uint8), mode="P")
        img.putpalette(table.ravel().tolist())
        img.save(target.with_suffix(".png"))
    coloured = colourize(labels, table)
    if colour:
        Image.fromarray(coloured).save(target.with_name(target.name + "_color.png"))
    if overlay:
        blend = cv2.addWeighted(image, 1 - alpha, coloured, alpha, 0)
        Image.fromarray(blend).save(target.with_name(target.name + "_overlay.jpg"), quality=92)


def run(cfg: DictConfig, output_dir: str | Path) -> int:
    """Predict every input image; returns the number of images that could not be read (the exit code's cause)."""
    if not cfg.checkpoint or not cfg.input:
        raise DataError("usage: python predict.py checkpoint=PATH input=IMAGE|FOLDER|GLOB [output=DIR]")
    base, paths = list_inputs(cfg.input)
    output = Path(cfg.output or output_dir).expanduser().resolve()
    if not cfg.allow_inside_input and output.is_relative_to(base.resolve()) and paths:
        raise DataError(f"output {output} is inside the input folder {base}; choose another output=DIR "
                        "(or set allow_inside_input=true)")
    predictor = Predictor.from_checkpoint(cfg.checkpoint, device=cfg.device, output_stride=cfg.output_stride,
                                          scales=cfg.scales, flip=cfg.flip, window=cfg.window, stride=cfg.stride,
                                          precision=cfg.precision, fast=cfg.fast, compile=cfg.compile,
                                          onnx=cfg.onnx)
    table = palette_array(predictor.palette)
    failed: list[str] = []
    with tqdm(total=len(paths), desc="predict", mininterval=1) as progress:
        for batch in _batches(paths, cfg.batch_size, failed):
            labels = predictor.predict_batch([image for _, image in batch]).argmax(1).cpu().numpy()
            for (path, image), label in zip(batch, labels):
                target = output / path.relative_to(base).parent / path.stem
                save_outputs(image, label, target, table, index=cfg.save_index, colour=cfg.save_color,
                             overlay=cfg.save_overlay, alpha=cfg.alpha)
            progress.update(len(batch))
        progress.update(len(failed))
    print(f"{len(paths) - len(failed)} image(s) written to {output}")
    if failed:
        print(f"{len(failed)} image(s) could not be read:\n" + "\n".join(f"  {msg}" for msg in failed))
    return len(failed)
