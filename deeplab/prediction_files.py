"""Which images and videos `python predict.py` reads and where their label maps, colour masks and overlays go: an
image, a video, a folder (recursive) or a glob in, or a camera or stream (`live_source`); outputs planned, checked and
written (the video loop itself is `deeplab.prediction_video`).

Every output path is planned before anything is written. An input's outputs are named by its stem, in its folder
relative to the input: <stem>.png (class indices), <stem>_color.png, <stem>_overlay.jpg; a video's <stem>_overlay.mp4
and the folder <stem>_frames/ of its frames' label maps. Inputs whose outputs would land on the same file (x.jpg and
x.png; img.v1.png and img.v1.jpg; x.jpg's x_color.png and x_color.jpg's x_color.png; x.mp4 and x.avi) keep their
extension in their output names instead: x.jpg.png, x.jpg_color.png, x.png.png, ... If two outputs still coincide,
or an output would replace an input file, nothing is written: the run stops with a DataError naming the files.
"""

import csv
import glob
import logging
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import cv2
import numpy as np
from PIL import Image

from deeplab.data.dataset import IMAGE_EXTENSIONS, DataError, read_image
from deeplab.torch_files import TEMP_NAME_EXTRA, atomic_write, name_limits, remove_stale_temp_files
from deeplab.visualization import colourize

log = logging.getLogger("deeplab.predict")

# output kind -> name ending
SUFFIXES = {"index": ".png", "color": "_color.png", "overlay": "_overlay.jpg", "confidence": "_confidence.png"}
# a video's: the overlay video, and the folder of its frames' label maps (000000.png ...) and confidences
VIDEO_SUFFIXES = {"overlay": "_overlay.mp4", "frames": "_frames"}
LONGEST_FRAME = "000000_confidence.png"  # the longest name in a frames folder (`drop_unwritable_names`)
AREAS = "areas.csv"  # predict's table of class areas, one row per image or video frame, in its output folder
# what a folder or glob gives as videos (any case); OpenCV's FFmpeg opens them, or predict says it cannot
VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv", ".ts", ".mts",
                    ".m2ts", ".3gp", ".ogv")
STREAM_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "udp", "tcp", "srt", "file")
EXTENSIONS = " ".join(IMAGE_EXTENSIONS)
VIDEOS = " ".join(VIDEO_EXTENSIONS)


def is_video(path: Path) -> bool:
    """Whether predict reads this input file as a video (by its extension)."""
    return path.suffix.lower() in VIDEO_EXTENSIONS


@dataclass(frozen=True)
class LiveSource:
    """A camera (`camera:N`) or a stream URL: what cv2.VideoCapture opens, the name its outputs take (camera0,
    a URL's host and path), and how messages show it (a URL without its password)."""
    open_as: int | str
    name: str
    shown: str


def live_source(spec: object) -> LiveSource | None:
    """predict.py's input= as a camera (`camera:0`) or a stream URL (rtsp://, http(s)://, ... file://: what OpenCV's
    FFmpeg opens); None for a path, a glob or a list."""
    if not isinstance(spec, str):
        return None
    text = spec.strip()
    if text.lower().startswith("camera:"):
        index = text.split(":", 1)[1]
        if not index.isdigit():
            raise DataError(f"input={spec}: a camera is camera:N, N its index (0 for the first), e.g. input=camera:0")
        return LiveSource(int(index), f"camera{int(index)}", text)
    parts = urlsplit(text)
    if "://" not in text or parts.scheme.lower() not in STREAM_SCHEMES:
        return None
    host = (parts.hostname or "") + (f"_{parts.port}" if parts.port else "")
    raw = re.sub(r"[^A-Za-z0-9.-]+", "_", f"{host}{parts.path}_{parts.query}").strip("._-")
    stem, extension = os.path.splitext(raw)
    name = (stem if extension.lower() in VIDEO_EXTENSIONS else raw)[-80:].strip("._-") or "stream"  # its end
    shown = text if parts.password is None else \
        parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1)).geturl()
    return LiveSource(text, name, shown)


def is_input(path: Path) -> bool:
    """Whether a folder or glob gives this file to predict: an image or a video."""
    return path.suffix.lower() in IMAGE_EXTENSIONS or is_video(path)


def list_inputs(spec: str | Sequence[str]) -> tuple[Path, list[Path], list[Path]]:
    """(base folder, image and video paths, files skipped) for an image or video file, a folder (searched
    recursively) or a glob, or a list of them (predict.py "input=[a.jpg,b.mp4]").

    A folder or a glob gives its files with an image extension (IMAGE_EXTENSIONS, any case) and its videos
    (VIDEO_EXTENSIONS: `is_video` tells them apart); the other files (HEIC, AVIF, GIF, text...; hidden files aside)
    are the skipped ones, which predict names at the end. A file named directly is read whatever its extension (as a
    video if it has a video extension). No image or video at all is a DataError. A camera or stream is no path: see
    `live_source`, predicted on its own.

    A list's entries are read each as one input is, and become one input whose base is their deepest common folder
    (absolute paths): outputs keep their paths below it and are planned and checked together, as a folder's are.
    An image that two entries give (a.jpg, and the folder holding it) is predicted once.
    """
    if not isinstance(spec, (str, os.PathLike)):
        live = next((str(entry) for entry in spec if live_source(str(entry))), None)
        if live is not None:
            raise DataError(f"input={list(spec)}: {live} is a camera or stream, which is predicted on its own; run "
                            f"it as input={live}, and the files in another predict")
        entries = [list_inputs(str(entry)) for entry in spec]
        if len(entries) == 1:
            return entries[0]
        def absolute(paths) -> list[Path]:  # normalised too: a/../b is b, so no output escapes the output folder
            return list(dict.fromkeys(Path(os.path.abspath(p)) for p in paths))
        return (Path(os.path.commonpath(absolute(base for base, _, _ in entries))),
                absolute(p for _, paths, _ in entries for p in paths),
                absolute(p for _, _, skipped in entries for p in skipped))
    path = Path(spec).expanduser()
    if path.is_file():
        return path.parent, [path], []
    if path.is_dir():
        found = sorted(p for p in path.rglob("*") if p.is_file())
        files = [p for p in found if is_input(p)]
        if not files:
            raise DataError(f"input={spec}: the folder (searched recursively) holds no image file ({EXTENSIONS}) "
                            f"nor video ({VIDEOS}); point input= at a folder, image, video or glob of images")
        return path, files, [p for p in found if not is_input(p) and not p.name.startswith(".")]
    matches = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
    if not matches:
        raise DataError(f"input={spec}: no such file or folder, and no file matches it as a glob; check the path "
                        "(quote a glob so the shell does not expand it)")
    files = [p for p in matches if is_input(p)]
    if not files:
        raise DataError(f"input={spec}: the glob matches {len(matches)} file(s) but no image ({EXTENSIONS}) nor "
                        f"video ({VIDEOS}), e.g. {matches[0]}; point input= at images or videos")
    parts = Path(spec).parts
    base = Path(*parts[:next((i for i, part in enumerate(parts) if any(c in part for c in "*?[")), len(parts))])
    return base, files, [p for p in matches if not is_input(p)]


def frame_count(path: Path) -> int:
    """How many frames an input holds (an animated GIF, PNG or WebP, a multi-page TIFF: predict reads the first
    only); 1 for the formats that hold one, or when it cannot tell."""
    if path.suffix.lower() not in (".gif", ".png", ".webp", ".tif", ".tiff"):
        return 1
    try:
        with Image.open(path) as img:
            return int(getattr(img, "n_frames", 1))
    except (OSError, SyntaxError, ValueError):
        return 1


def summary(skipped: list[Path], multi_frame: list[Path]) -> list[str]:
    """The lines predict prints at the end about what it did not predict in full: one for the files skipped as not
    images it reads, one for the inputs of several frames of which it predicted the first."""
    def shown(paths: list[Path]) -> str:
        return ", ".join(str(p) for p in paths[:5]) + (f" and {len(paths) - 5} more" if len(paths) > 5 else "")
    lines = []
    if skipped:
        kinds = ", ".join(sorted({p.suffix.lower() or "(no extension)" for p in skipped}))
        lines.append(f"{len(skipped)} file(s) skipped, not images or videos predict reads ({kinds}; it reads "
                     f"{EXTENSIONS} and the videos {VIDEOS}; convert them, e.g. to PNG): {shown(skipped)}")
    if multi_frame:
        lines.append(f"{len(multi_frame)} input(s) hold several frames (animated GIF/PNG/WebP, multi-page TIFF), and "
                     f"only the first frame of each was predicted: {shown(multi_frame)}")
    return lines


def output_folder(output: str | Path | None, *, run_dir: str | Path, base: Path | None,
                  allow_inside_input: bool = False) -> Path:
    """The folder the outputs go to: `output` (predict.py's output=) or the run dir; never an existing file, nor inside
    the input folder `base` unless allow_inside_input (a camera or stream has none: None)."""
    given = output or run_dir
    output = Path(given).expanduser().resolve()
    if output.exists() and not output.is_dir():
        raise DataError(f"output={given}: is a file, not a folder; choose a folder for the label "
                        "maps (output=DIR)")
    blocking = next((parent for parent in output.parents if parent.exists() and not parent.is_dir()), None)
    if blocking is not None:
        raise DataError(f"output={given}: {blocking} is a file, not a folder, so no output folder "
                        "can be made inside it; choose an output=DIR whose parents are folders (or do not exist yet)")
    if base is not None and not allow_inside_input and output.is_relative_to(base.resolve()):
        raise DataError(f"output {output} is inside the input folder {base}; choose another output=DIR "
                        "(or set allow_inside_input=true)")
    return output


def _names(path: Path, base: Path, output: Path, kinds: list[str], *, keep_extension: bool) -> dict[str, Path]:
    """The output paths of one input, named by its stem, or by its whole name (x.jpg.png) where that clashes; a
    video's kinds are those of VIDEO_SUFFIXES."""
    name = path.name if keep_extension else path.stem
    folder = output / path.relative_to(base).parent
    return {kind: folder / f"{name}{(VIDEO_SUFFIXES if is_video(path) else SUFFIXES)[kind]}" for kind in kinds}


def live_outputs(source: LiveSource, output: Path, kinds: list[str]) -> dict[str, dict[str, Path]]:
    """A camera's or stream's plan (`plan_outputs`' form): its name's video outputs in the output folder."""
    return {source.shown: {kind: output / f"{source.name}{VIDEO_SUFFIXES[kind]}" for kind in kinds}}


def _clashes(plan: dict[Path, dict[str, Path]], key=str) -> dict[str, list[Path]]:
    """Output paths (compared by `key`) planned for more than one input: path -> those inputs."""
    owners: dict[str, list[Path]] = {}
    for source, outputs in plan.items():
        for target in outputs.values():
            owners.setdefault(key(target), []).append(source)
    return {target: sources for target, sources in owners.items() if len(sources) > 1}


def plan_outputs(paths: list[Path], base: Path, output: Path, *, kinds: list[str], video_kinds: Sequence[str] = ()
                 ) -> dict[Path, dict[str, Path]]:
    """Every input's output paths (kind -> path; a video's `video_kinds` of VIDEO_SUFFIXES), decided before anything
    is written (see the module docstring).

    Outputs are compared case-insensitively to choose the names (x.JPG and x.png clash on macOS and Windows), and
    exactly to refuse; an output that would replace an input file is refused too.
    """
    whole: set[Path] = set()  # inputs named with their extension
    while True:
        plan = {p: _names(p, base, output, list(video_kinds) if is_video(p) else kinds, keep_extension=p in whole)
                for p in paths}
        clashing = {p for sources in _clashes(plan, key=lambda t: str(t).casefold()).values() for p in sources}
        if clashing <= whole:
            break
        whole |= clashing
    if whole:
        example = min(whole)
        log.warning("%d input(s) share output names with another input, so their outputs keep the extension, "
                    "e.g. %s -> %s", len(whole), example, next(iter(plan[example].values()), example))
    clashes = _clashes(plan)
    if clashes:
        shown = "; ".join(f"{target} from {' and '.join(str(s) for s in sources)}"
                          for target, sources in list(clashes.items())[:3])
        raise DataError(f"{len(clashes)} output file(s) would each be written for several inputs ({shown}); "
                        "rename those inputs or predict them into separate output folders")
    _refuse_unsafe_targets(plan)
    return plan


def drop_unwritable_names(plan: dict[Path, dict[str, Path]]) -> list[str]:
    """Inputs whose output names (with atomic_write's temp file's extra characters) or paths would pass the file
    system's limits (`name_limits`) are taken out of `plan`, each with one sentence; the others are written. A
    video's frames folder counts with its longest frame file's path."""
    limits: dict[Path, tuple[int, int]] = {}  # by output folder: thousands of outputs share a few folders
    problems = []
    for source, outputs in list(plan.items()):
        for kind, target in outputs.items():
            if target.parent not in limits:
                limits[target.parent] = name_limits(next(p for p in target.parents if p.exists()))
            name_max, path_max = limits[target.parent]
            extra = TEMP_NAME_EXTRA + (len(target.suffix) if target.name.endswith(VIDEO_SUFFIXES["overlay"]) else 0)
            name = len(os.fsencode(target.name)) + extra
            path = len(os.fsencode(str(target / LONGEST_FRAME if kind == "frames" else target))) + extra
            if name > name_max or path >= path_max:
                what, size, limit = (f"name {target.name}", name, name_max) if name > name_max else \
                    (f"path {target}", path, path_max)
                problems.append(f"{source}: its output's {what} would be {size} bytes with the temp file's "
                                f"{extra}, over this file system's limit of {limit}; rename the "
                                f"{'video' if is_video(Path(str(source))) else 'image'} (or predict into a shorter "
                                "output=DIR)")
                del plan[source]
                break
    return problems


def refuse_existing(plan: dict[Path, dict[str, Path]], *, overwrite: bool, also: Sequence[Path] = ()) -> None:
    """Outputs that exist already (ground-truth masks in the folder named, an earlier prediction, a video's frames
    folder) are replaced only with overwrite=true: otherwise one sentence names the first and the count, before any
    image is read. `also`: the run's other outputs (areas.csv)."""
    targets = [*also, *(target for outputs in plan.values() for target in outputs.values())]
    existing = [target for target in targets if target.exists()]
    if existing and not overwrite:
        raise DataError(f"{existing[0]}: exists already, as do {len(existing) - 1} more of the {len(targets)} output "
                        f"file(s) this would write (ground truth? an earlier prediction?); predict into another "
                        f"output=DIR, or set overwrite=true to replace them")


def _refuse_unsafe_targets(plan: dict[Path, dict[str, Path]]) -> None:
    """No output may replace an input file (the same resolved path, or the same file through a hard link), and
    none may be a folder (an existing one, or one that other outputs go into); a video's frames folder may be one
    (its own), but none that holds an input or other outputs, nor an existing file."""
    inputs = {p.resolve(): p for p in plan}
    identities = {(s.st_dev, s.st_ino): p for p, s in ((p, os.stat(p)) for p in plan)}
    folders = {parent for outputs in plan.values() for target in outputs.values() for parent in target.parents}
    for outputs in plan.values():
        for kind, target in outputs.items():
            source = inputs.get(target.resolve())
            if source is None and target.exists():
                stat = target.stat()
                source = identities.get((stat.st_dev, stat.st_ino))
            if kind == "frames" and source is None:
                source = next((p for resolved, p in inputs.items() if resolved.is_relative_to(target.resolve())), None)
            if source is not None:
                what = "video" if is_video(source) else "image"
                raise DataError(f"{source}: predicting would overwrite this input {what} with the output {target}; "
                                "choose an output=DIR outside the input folder")
            if kind == "frames" and (target in folders or target.is_file()):
                raise DataError(f"{target}: this frames folder's path is also a file or holds other outputs; rename "
                                "the input file or folder of that name, or predict into another output=DIR")
            if kind != "frames" and (target in folders or target.is_dir()):
                raise DataError(f"{target}: this output file's path is also a folder; rename the input file or "
                                "folder of that name, or predict into another output=DIR")


def batches(paths: list[Path], batch_size: int, failed: list) -> Iterator[list[tuple[Path, np.ndarray]]]:
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


def remove_killed_writes(plan: dict[Path, dict[str, Path]]) -> None:
    """The temp files a killed predict left in the output folders and frames folders (each output is a temp file
    renamed, and a kill can come between; a video's too): removed once, before this run writes there."""
    for folder in {folder for outputs in plan.values() for kind, target in outputs.items()
                   for folder in ((target.parent, target) if kind == "frames" else (target.parent,))}:
        if folder.is_dir():
            remove_stale_temp_files(folder, every_name=True)


def save_outputs(image: np.ndarray, labels: np.ndarray, targets: dict[str, Path], table: np.ndarray, *,
                 alpha: float, confidence: np.ndarray | None = None) -> None:
    """Write the planned outputs (`plan_outputs`): index (palette PNG of class indices; a 16-bit greyscale PNG where an
    index is past 255, which 8 bits cannot hold), color, overlay, confidence (the top class's probability, 0-1 as
    0-255 greys: dark where the model is unsure). Each is written whole or not at all (a temp file renamed): a
    Ctrl-C or a kill leaves no half image behind."""
    def write(kind: str, img: Image.Image, **options) -> None:
        atomic_write(targets[kind], lambda tmp: img.save(tmp, **options), durable=False, sweep=False)

    if "index" in targets:
        top = int(labels.max(initial=0))
        if top > np.iinfo(np.uint16).max:
            raise ValueError(f"labels: class index {top} does not fit a 16-bit PNG, the widest PNG of indices; save "
                             "labels of more than 65536 classes with np.save")
        if top > 255:
            img = Image.fromarray(labels.astype(np.uint16))  # read back as they were by np.array(Image.open(path))
        else:
            img = Image.fromarray(labels.astype(np.uint8), mode="P")
            img.putpalette(table[:256].ravel().tolist())
        write("index", img, format="PNG")
    coloured = colourize(labels, table) if "color" in targets or "overlay" in targets else None
    if "color" in targets:
        write("color", Image.fromarray(coloured), format="PNG")
    if "overlay" in targets:
        write("overlay", Image.fromarray(cv2.addWeighted(image, 1 - alpha, coloured, alpha, 0)), format="JPEG",
              quality=92)
    if "confidence" in targets:
        write("confidence", Image.fromarray(np.round(confidence * 255).astype(np.uint8), mode="L"), format="PNG")


def area_row(name: str, labels: np.ndarray, num_classes: int, *, frame: int | None = None,
             time_s: float | None = None) -> tuple:
    """One row of areas.csv (`write_areas`): the input's name, for a video the frame's index and time, the label
    map's size, and the pixels of each class in class order."""
    counts = np.bincount(labels.ravel(), minlength=num_classes)[:num_classes].tolist()
    return (name, "" if frame is None else frame, "" if time_s is None else f"{time_s:.3f}", *labels.shape, counts)


def write_areas(path: Path, rows: Sequence[tuple], class_names: Sequence[str]) -> None:
    """areas.csv, one table for images and video frames: a row per image or frame (`area_row`: its path below the
    input; for a frame of a video that path, the frame's index from 0 and its time in seconds at the video's frame
    rate, empty for an image; height, width), then each class's pixels and share of the image, in the class names'
    order; written whole or not at all."""
    header = ["image", "frame", "time_s", "height", "width",
              *(f"{name}_{what}" for name in class_names for what in ("pixels", "share"))]

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            table = csv.writer(f)
            table.writerow(header)
            for name, frame, time_s, height, width, counts in rows:
                table.writerow([name, frame, time_s, height, width,
                                *(v for c in counts for v in (c, f"{c / (height * width):.6f}"))])
    atomic_write(path, write, durable=False)
