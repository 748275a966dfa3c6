"""Videos, cameras and streams in `python predict.py`: open one, predict its frames in batches, and write the overlay
video (and, asked for, each frame's label map and confidence) with areas.csv's rows, timing each stage.

A video's outputs are planned with the images' (`prediction_files.plan_outputs`): <stem>_overlay.mp4 at the source's
size and frame rate (mp4v, what OpenCV's own FFmpeg writes and reads back), and <stem>_frames/000000.png ... (class
indices, the palette PNGs of the image path, written by the same `save_outputs`), 000000_confidence.png beside them.
The video is written under a temp name (`torch_files.temp_file`) and renamed when the loop ends, however it ends: the
last frame, the end of a camera's stream, Ctrl-C or SIGTERM (the first stops after the batch under way; a second
Ctrl-C at once), so the frames done are a playable video under the final name. Only a kill (SIGKILL, power) leaves
the temp file, which the next predict into that folder removes.
"""

import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from deeplab.data.dataset import DataError
from deeplab.engine.distributed import TerminationRequest
from deeplab.inference import Predictor
from deeplab.prediction_files import LiveSource, area_row, save_outputs
from deeplab.progress import progress_bar
from deeplab.torch_files import remove_stale_temp_files, temp_file
from deeplab.visualization import colourize

log = logging.getLogger("deeplab.predict")

FOURCC = "mp4v"  # MPEG-4 Part 2: written and read back by the opencv-python(-headless) wheels' FFmpeg
FALLBACK_FPS = 30.0  # the overlay video's rate when the source reports none (many cameras and streams)
FRAME_FILE = re.compile(r"\d{6,}(_confidence)?\.png")  # a frames folder's files, replaced with overwrite=true
STOP_NOTICE = b"\nCtrl-C: stopping after the frames under way, the video kept playable (Ctrl-C again stops at once)\n"


@dataclass
class Video:
    """An opened video file, camera or stream: its capture, the frame read to check it, its frame rate (reported,
    or FALLBACK_FPS), and the frame count its container states (None for a camera or stream)."""
    capture: cv2.VideoCapture
    shown: str
    fps: float
    fps_reported: bool
    frames: int | None
    pending: list = field(default_factory=list)  # frames read but not yet predicted (the first)

    def read(self) -> np.ndarray | None:
        """The next frame (BGR), or None at the end."""
        if self.pending:
            return self.pending.pop(0)
        ok, frame = self.capture.read()
        return frame if ok else None


def open_video(source: Path | LiveSource) -> Video:
    """Open a video file, camera or stream and read its first frame; one DataError sentence naming it and the fix if
    OpenCV cannot, so that a run is refused before the model is loaded."""
    live = isinstance(source, LiveSource)
    shown = f"input={source.shown}" if live else str(source)
    if not live and source.stat().st_size == 0:
        raise DataError(f"{source}: video file is empty (0 bytes); copy the video again, or remove it from the input")
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)  # its warnings would come before our sentence
    try:
        capture = cv2.VideoCapture(source.open_as if live else str(source))
    finally:
        cv2.utils.logging.setLogLevel(level)
    if not capture.isOpened():
        if live and isinstance(source.open_as, int):
            raise DataError(f"{shown}: camera {source.open_as} cannot be opened (no such device, or another program "
                            f"holds it); check the index (camera:0 is the first; ls /dev/video* lists them)")
        if live:
            raise DataError(f"{shown}: OpenCV cannot open this stream; check the URL, the network and any "
                            "user:password in it (try it in ffplay or VLC)")
        raise DataError(f"{source}: OpenCV cannot open this video (truncated or corrupt, or a format its FFmpeg lacks); "
                        f"check that it plays, or re-encode it (ffmpeg -i {source.name} -c:v libx264 "
                        f"{source.stem}_h264.mp4), or remove it from the input")
    ok, first = capture.read()
    if not ok:
        capture.release()
        if live:
            raise DataError(f"{shown}: opened, but it gave no frame; check that it streams (try it in ffplay or VLC)")
        raise DataError(f"{source}: the video holds no frame OpenCV can decode (0 frames); check that it plays, "
                        f"re-encode it (ffmpeg -i {source.name} -c:v libx264 {source.stem}_h264.mp4), or remove it "
                        "from the input")
    fps = capture.get(cv2.CAP_PROP_FPS)
    reported = bool(np.isfinite(fps) and 0 < fps <= 1000)
    count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) if not live else 0
    return Video(capture, shown, fps if reported else FALLBACK_FPS, reported, count if count > 0 else None, [first])


def check_video(path: Path) -> None:
    """A video file that predict can read: opened and its first frame decoded, then closed (DataError if not)."""
    open_video(path).capture.release()


class OverlayWriter:
    """The overlay video, written through a temp name (`temp_file`, with the .mp4 OpenCV chooses its container by)
    and put in place by `close`, which a `finally` calls however the loop ended: a playable file of the frames
    written, under the final name; no file at all if none was."""

    def __init__(self, path: Path, size: tuple[int, int], fps: float) -> None:
        self.path, self.size, self.frames, self.resized = path, size, 0, False
        self.tmp = temp_file(path, suffix=path.suffix)
        self.writer = cv2.VideoWriter(str(self.tmp), cv2.VideoWriter_fourcc(*FOURCC), fps, size)
        if not self.writer.isOpened():
            self.tmp.unlink(missing_ok=True)
            raise DataError(f"{path}: OpenCV cannot write an {FOURCC} video here (its FFmpeg lacks the encoder, or "
                            "the folder is not writable); predict into another output=DIR, or set save_overlay=false")

    def write(self, frame: np.ndarray) -> None:
        if frame.shape[1::-1] != self.size:  # a stream that changed size: the video keeps its first
            if not self.resized:
                log.warning("%s: frames of %dx%d after %dx%d; the overlay video keeps the first size, and the "
                            "label maps each frame's own", self.path, *frame.shape[1::-1], *self.size)
                self.resized = True
            frame = cv2.resize(frame, self.size, interpolation=cv2.INTER_AREA)
        self.writer.write(frame)
        self.frames += 1

    def close(self) -> None:
        self.writer.release()  # writes the container's index: without it an .mp4 does not play
        if self.frames:
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)


def overlay_lut(table: np.ndarray) -> np.ndarray:
    """The palette (RGB, `palette_array`) as the (256, 1, 3) BGR table cv2.LUT colours a frame with."""
    return np.ascontiguousarray(table[:256, ::-1]).reshape(256, 1, 3)


def blend(frame: np.ndarray, labels: np.ndarray, table: np.ndarray, alpha: float, lut: np.ndarray | None
          ) -> np.ndarray:
    """The colour mask blended on a BGR frame in uint8, the image path's overlay in BGR: cv2.LUT (`overlay_lut`, a
    model of up to 256 classes) and cv2.addWeighted take 1 ms for a 720x960 frame, where numpy's fancy indexing and a
    float blend took 11 ms (2-core Xeon)."""
    if lut is not None:
        index = labels.astype(np.uint8)
        colour = cv2.LUT(cv2.merge((index, index, index)), lut)
    else:  # more than 256 classes: the palette table and the default map past it
        colour = np.ascontiguousarray(colourize(labels, table)[..., ::-1])
    return cv2.addWeighted(frame, 1 - alpha, colour, alpha, 0)


def clear_frames(folder: Path) -> None:
    """An earlier run's frame files in a frames folder (replaced with overwrite=true: a shorter video would leave
    the old frames past its end) and the temp files a killed run left there."""
    if folder.is_dir():
        for path in folder.iterdir():
            if FRAME_FILE.fullmatch(path.name) and path.is_file():
                path.unlink()
        remove_stale_temp_files(folder, every_name=True)


@dataclass
class VideoResult:
    """What `predict_video` did: frames done, seconds end to end, and the seconds of each stage over all frames."""
    frames: int = 0
    seconds: float = 0.0
    stages: dict = field(default_factory=lambda: dict.fromkeys(("decode", "model", "overlay+encode", "frame files"),
                                                               0.0))
    stopped: str | None = None  # how a signal stopped it, if one did

    def line(self, shown: str, target: Path | None) -> str:
        """`clip.mp4: 300 frames in 12.3 s (24.4 fps end to end): decode 1.2 ms, model 30.1 ms, overlay+encode
        5.0 ms per frame -> out/clip_overlay.mp4`."""
        per_frame = ", ".join(f"{name} {seconds / max(self.frames, 1) * 1000:.1f} ms"
                              for name, seconds in self.stages.items() if seconds or name != "frame files")
        stopped = f" ({self.stopped}: stopped there)" if self.stopped else ""
        return (f"{shown}: {self.frames} frames in {self.seconds:.1f} s ({self.frames / max(self.seconds, 1e-9):.1f} "
                f"fps end to end){stopped}: {per_frame} per frame" + (f" -> {target}" if target else ""))


def predict_video(predictor: Predictor, video: Video, targets: dict[str, Path], *, name: str, table: np.ndarray,
                  alpha: float, batch_size: int, frame_kinds: list[str], rows: list | None,
                  report: Callable[[str], None] = print, progress: bool | None = None) -> VideoResult:
    """Predict every frame of an opened video, `batch_size` frames per forward: the overlay video
    (targets["overlay"]), each frame's `frame_kinds` ("index", "confidence") in targets["frames"], and a row per frame
    appended to `rows` (areas.csv, under `name`). `report` gets the timing line at the end, however the loop ends;
    `progress`: the frames' bar (None: on a terminal).

    Ctrl-C or SIGTERM stops after the frames under way (a second Ctrl-C at once: KeyboardInterrupt); either way the
    video, the frame files and the rows hold the same frames, the video is renamed into place, and KeyboardInterrupt
    is raised once that is done.
    """
    result = VideoResult()
    classes = len(predictor.class_names)
    lut = overlay_lut(table) if classes <= 256 else None
    writer = None
    if "frames" in targets:
        clear_frames(targets["frames"])
    if not video.fps_reported:
        log.warning("%s reports no frame rate; the overlay video is written at %g fps and areas.csv's time_s counts "
                    "at that rate", video.shown, video.fps)
    started = time.perf_counter()
    with TerminationRequest(notice=STOP_NOTICE) as stop, \
            progress_bar(desc=Path(name).name, total=video.frames, unit=" frames", progress=progress) as bar:
        try:
            if "overlay" in targets:
                height, width = video.pending[0].shape[:2]
                writer = OverlayWriter(targets["overlay"], (width, height), video.fps)
            while not stop.received:
                clock = time.perf_counter()
                batch = _read_batch(video, batch_size)
                if not batch:
                    break
                now = time.perf_counter()
                result.stages["decode"] += now - clock
                top, labels = predictor.predict_batch([rgb for _, rgb in batch]).max(1)
                labels = labels.cpu().numpy()
                sure = top.cpu().numpy() if "confidence" in frame_kinds else [None] * len(batch)
                clock, now = now, time.perf_counter()
                result.stages["model"] += now - clock
                for (frame, rgb), label, confidence in zip(batch, labels, sure):
                    index = result.frames
                    if writer is not None:
                        clock = time.perf_counter()
                        writer.write(blend(frame, label, table, alpha, lut))
                        result.stages["overlay+encode"] += time.perf_counter() - clock
                    if frame_kinds:
                        clock = time.perf_counter()
                        files = {kind: targets["frames"] / f"{index:06d}{'' if kind == 'index' else '_' + kind}.png"
                                 for kind in frame_kinds}
                        save_outputs(rgb, label, files, table, alpha=alpha, confidence=confidence)
                        result.stages["frame files"] += time.perf_counter() - clock
                    if rows is not None:
                        rows.append(area_row(name, label, classes, frame=index, time_s=index / video.fps))
                    result.frames += 1
                bar.update(len(batch))
        finally:
            video.capture.release()
            if writer is not None:
                writer.close()
            result.seconds = time.perf_counter() - started
            result.stopped = stop.how
            if result.frames:
                report(result.line(video.shown, targets.get("overlay") if writer and writer.frames else None))
    if stop.received:
        raise KeyboardInterrupt
    return result


def _read_batch(video: Video, batch_size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Up to batch_size consecutive frames of one size (BGR, and RGB for the model); a frame of another size waits
    for the next batch."""
    batch: list[tuple[np.ndarray, np.ndarray]] = []
    while len(batch) < batch_size:
        frame = video.read()
        if frame is None:
            break
        if batch and frame.shape != batch[0][0].shape:
            video.pending.insert(0, frame)
            break
        batch.append((frame, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)))
    return batch
