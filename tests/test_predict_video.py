"""predict.py on videos, cameras and streams: the overlay video (size, frame rate, frame count), each frame's label map
equal to predict.py on that frame as a PNG image, areas.csv's rows per frame, a video found in a folder of images,
Ctrl-C and SIGTERM leaving a playable video of the frames done, and the catalogue of a video user's mistakes."""

import csv
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from conftest import REPO, predict_refused, run_predict, write_image
from deeplab import prediction_video
from deeplab.data import DataError
from deeplab.errors import ConfigError
from deeplab.inference import Predictor
from deeplab.prediction_files import live_source

SIZE = (48, 64)  # height, width


def make_video(path: Path, *, frames: int = 10, fps: float = 12, fourcc: str = "mp4v", size=SIZE) -> Path:
    """A small video whose frames differ (a rectangle moving over a gradient), written by OpenCV."""
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (width, height))
    assert writer.isOpened()
    ramp = np.linspace(0, 255, width, dtype=np.uint8)
    for i in range(frames):
        frame = np.dstack([np.tile(ramp, (height, 1)), np.full(size, 40 * (i % 6), np.uint8),
                           np.tile(ramp[::-1], (height, 1))])
        cv2.rectangle(frame, (4 + 3 * i, 6), (24 + 3 * i, 30), (0, 0, 230), -1)
        writer.write(frame)
    writer.release()
    return path


def decoded(path: Path) -> list[np.ndarray]:
    """Every frame OpenCV decodes from a video (BGR)."""
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    return frames


def areas(out: Path) -> list[dict]:
    return list(csv.DictReader((out / "areas.csv").open()))


def no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.rglob(".*") if p.is_file() and ".tmp" in p.name]


def test_a_video_gives_an_overlay_video_at_its_size_and_rate_and_a_row_per_frame(checkpoint, tmp_path, capsys):
    video = make_video(tmp_path / "in" / "clip.mp4", frames=10, fps=12)
    out = tmp_path / "out"
    assert run_predict(checkpoint, video, "save_frames=true", output=out) == 0
    overlay = out / "clip_overlay.mp4"
    capture = cv2.VideoCapture(str(overlay))
    assert capture.get(cv2.CAP_PROP_FPS) == pytest.approx(12)
    frames = decoded(overlay)  # what the headless wheel wrote, read back by it: every frame, at the source's size
    assert len(frames) == 10 and {f.shape for f in frames} == {(*SIZE, 3)}
    assert sorted(p.name for p in (out / "clip_frames").iterdir()) == [f"{i:06d}.png" for i in range(10)]
    rows = areas(out)
    assert [(r["image"], r["frame"], r["time_s"]) for r in rows] == [("clip.mp4", str(i), f"{i / 12:.3f}")
                                                                       for i in range(10)]
    for row in rows:  # each frame's counts are its label map's
        labels = np.array(Image.open(out / "clip_frames" / f"{int(row['frame']):06d}.png"))
        pixels = [int(v) for k, v in row.items() if k.endswith("_pixels")]
        assert pixels == np.bincount(labels.ravel(), minlength=len(pixels)).tolist()
    printed = capsys.readouterr().out
    line = re.search(r"clip.mp4: 10 frames in [\d.]+ s \([\d.]+ fps end to end\): decode [\d.]+ ms, model [\d.]+ ms, "
                     r"overlay\+encode [\d.]+ ms, frame files [\d.]+ ms per frame -> .*clip_overlay.mp4", printed)
    assert line, printed
    assert "1 video(s) predicted (10 frames)" in printed and "image(s) written" not in printed
    assert no_temp_files(out)


def test_each_frame_label_map_equals_predict_on_that_frame_saved_as_a_png(checkpoint, tmp_path):
    """The frames predict decodes, saved losslessly and predicted as images (same batches: the default batch_size
    over 10 frames in order), give the same label maps, overlays and areas.csv counts."""
    video = make_video(tmp_path / "in" / "clip.mp4", frames=10)
    frames = tmp_path / "frames"
    frames.mkdir()
    for i, frame in enumerate(decoded(video)):
        cv2.imwrite(str(frames / f"{i:06d}.png"), frame)
    assert run_predict(checkpoint, video, "save_frames=true", output=tmp_path / "video") == 0
    assert run_predict(checkpoint, frames, output=tmp_path / "images") == 0
    for i in range(10):
        from_video = np.array(Image.open(tmp_path / "video" / "clip_frames" / f"{i:06d}.png"))
        from_image = np.array(Image.open(tmp_path / "images" / f"{i:06d}.png"))
        assert from_video.dtype == np.uint8 and np.array_equal(from_video, from_image), f"frame {i}"
    video_rows, image_rows = areas(tmp_path / "video"), areas(tmp_path / "images")
    counts = lambda row: [v for k, v in row.items() if k.endswith(("_pixels", "_share"))]  # noqa: E731
    assert [counts(r) for r in video_rows] == [counts(r) for r in image_rows]
    assert [r["frame"] for r in image_rows] == [""] * 10 and image_rows[0]["image"] == "000000.png"


def test_the_overlay_is_the_image_paths_blend_made_in_uint8(checkpoint):
    """blend (cv2.LUT + addWeighted on BGR) gives what save_outputs blends for an image (RGB), to the pixel."""
    import cv2 as _cv2

    from deeplab.visualization import colourize, palette_array

    table = palette_array(Predictor.from_checkpoint(checkpoint, device="cpu").palette)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, SIZE)
    rgb = rng.integers(0, 256, (*SIZE, 3), dtype=np.uint8)
    bgr = prediction_video.blend(rgb[..., ::-1].copy(), labels, table, 0.4, prediction_video.overlay_lut(table))
    expected = _cv2.addWeighted(rgb, 0.6, colourize(labels, table), 0.4, 0)
    assert np.array_equal(bgr[..., ::-1], expected)
    wide = prediction_video.blend(rgb[..., ::-1].copy(), labels + 300, palette_array(None), 0.4, None)  # >256 classes
    assert wide.shape == (*SIZE, 3)


def test_a_video_in_a_folder_of_images_is_predicted_as_a_video(checkpoint, tmp_path, capsys):
    photos = tmp_path / "photos"
    write_image(photos / "a.jpg", size=SIZE)
    make_video(photos / "sub" / "clip.avi", frames=6, fourcc="MJPG")
    (photos / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    assert run_predict(checkpoint, photos, output=out) == 0
    assert len(decoded(out / "sub" / "clip_overlay.mp4")) == 6
    assert (out / "a.png").is_file() and not (out / "sub" / "clip_frames").exists()  # save_frames is off
    rows = areas(out)
    assert [(r["image"], r["frame"]) for r in rows] == [("a.jpg", ""), *((("sub/clip.avi", str(i)) for i in range(6)))]
    printed = capsys.readouterr().out
    assert "1 image(s) written" in printed and "1 video(s) predicted (6 frames)" in printed
    skipped = [line for line in printed.splitlines() if "skipped" in line]
    assert len(skipped) == 1 and "notes.txt" in skipped[0] and "clip.avi" not in skipped[0]


# --- Ctrl-C, SIGTERM: a playable video of the frames done, under its final name ---------------------------------------

def _stopping_predictor(monkeypatch, *, after: int, how):
    """Predictor.predict_batch that, on its call number `after`, either raises KeyboardInterrupt (how=None: a second
    Ctrl-C, at once) or sends this process the signal `how` and answers (the loop stops after that batch)."""
    real = Predictor.predict_batch
    calls = []

    def predict_batch(self, images):
        calls.append(len(images))
        if len(calls) == after:
            if how is None:
                raise KeyboardInterrupt
            os.kill(os.getpid(), how)
        return real(self, images)
    monkeypatch.setattr(Predictor, "predict_batch", predict_batch)


@pytest.mark.parametrize("how, done", [(None, 4), (signal.SIGINT, 6), (signal.SIGTERM, 6)],
                         ids=["keyboard-interrupt", "ctrl-c", "sigterm"])
def test_an_interrupted_video_leaves_a_playable_video_of_the_frames_done(checkpoint, tmp_path, monkeypatch, capsys,
                                                                         how, done):
    video = make_video(tmp_path / "in" / "clip.mp4", frames=16)
    out = tmp_path / "out"
    _stopping_predictor(monkeypatch, after=3, how=how)
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        run_predict(checkpoint, video, "save_frames=true", "batch_size=2", output=out)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers  # given back
    frames = decoded(out / "clip_overlay.mp4")
    assert len(frames) == done and frames[0].shape == (*SIZE, 3)
    assert [r["frame"] for r in areas(out)] == [str(i) for i in range(done)]
    assert len(list((out / "clip_frames").glob("*.png"))) == done
    assert no_temp_files(out)
    printed = capsys.readouterr().out
    assert f"clip.mp4: {done} frames in" in printed
    if how is not None:
        assert ("interrupted (Ctrl-C)" if how == signal.SIGINT else "terminated (SIGTERM)") in printed


def test_the_end_of_a_camera_stream_leaves_its_video_at_the_fallback_rate(checkpoint, tmp_path, monkeypatch, caplog,
                                                                        capsys):
    """camera:N (here a video file standing in for the camera, reporting no frame rate as many do): camera0's overlay
    video at 30 fps, a row per frame under the name camera:0, and a log line saying the rate was not given."""
    video = make_video(tmp_path / "in" / "clip.mp4", frames=7)
    real = cv2.VideoCapture

    class Camera:  # what predict asks of a capture (a subclass of OpenCV's crashes the interpreter at exit)
        def __init__(self, source, *args):
            assert source == 0, source
            self.capture = real(str(video))
            self.isOpened, self.read, self.release = self.capture.isOpened, self.capture.read, self.capture.release

        def get(self, prop):
            return 0.0 if prop == cv2.CAP_PROP_FPS else self.capture.get(prop)
    monkeypatch.setattr(prediction_video.cv2, "VideoCapture", Camera)
    out = tmp_path / "out"
    with caplog.at_level("WARNING", logger="deeplab.predict"):
        assert run_predict(checkpoint, "camera:0", "save_frames=true", output=out) == 0
    monkeypatch.undo()
    assert sorted(p.name for p in out.iterdir()) == ["areas.csv", "camera0_frames", "camera0_overlay.mp4"]
    assert cv2.VideoCapture(str(out / "camera0_overlay.mp4")).get(cv2.CAP_PROP_FPS) == pytest.approx(30)
    assert len(decoded(out / "camera0_overlay.mp4")) == 7
    assert [(r["image"], r["time_s"]) for r in areas(out)][-1] == ("camera:0", f"{6 / 30:.3f}")
    assert any("camera:0 reports no frame rate" in r.getMessage() and "30 fps" in r.getMessage()
               for r in caplog.records)
    assert "input=camera:0: 7 frames in" in capsys.readouterr().out


def test_a_stream_url_takes_the_stream_path_and_a_name_made_from_it(checkpoint, tmp_path):
    video = make_video(tmp_path / "in" / "clip.mp4", frames=5)
    out = tmp_path / "out"
    assert run_predict(checkpoint, video.as_uri(), output=out) == 0  # file:///.../in/clip.mp4, opened by FFmpeg
    [overlay] = out.glob("*_overlay.mp4")
    assert overlay.name.endswith("_in_clip_overlay.mp4") and "/" not in overlay.name
    assert len(decoded(overlay)) == 5 and areas(out)[0]["image"] == video.as_uri()


def test_stream_names_keep_no_password_and_no_path_separator():
    source = live_source("rtsp://admin:secret@192.168.1.10:554/Streaming/Channels/101?transport=tcp")
    assert source.name == "192.168.1.10_554_Streaming_Channels_101_transport_tcp"
    assert "secret" not in source.shown and "admin:***@" in source.shown
    assert source.open_as.startswith("rtsp://admin:secret@")  # what OpenCV is given keeps it
    assert live_source("camera:2").open_as == 2 and live_source("camera:2").name == "camera2"
    assert live_source("photos/clip.mp4") is None and live_source(["camera:0"]) is None


def test_overwrite_replaces_an_earlier_frames_folder_whole(checkpoint, tmp_path):
    out = tmp_path / "out"
    assert run_predict(checkpoint, make_video(tmp_path / "in" / "clip.mp4", frames=9), "save_frames=true",
                       output=out) == 0
    assert run_predict(checkpoint, make_video(tmp_path / "in" / "clip.mp4", frames=5), "save_frames=true",
                       "overwrite=true", output=out) == 0
    assert sorted(p.name for p in (out / "clip_frames").iterdir()) == [f"{i:06d}.png" for i in range(5)]
    assert len(decoded(out / "clip_overlay.mp4")) == 5 and len(areas(out)) == 5


def test_the_temp_video_of_a_killed_predict_is_removed_by_the_next(checkpoint, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    ended = subprocess.Popen(["true"])
    ended.wait()  # the predict that SIGKILL stopped mid-video
    killed = out / f".clip_overlay.mp4.{ended.pid}.k1ll3d_x.tmp.mp4"
    killed.write_bytes(b"no moov atom")
    assert run_predict(checkpoint, make_video(tmp_path / "in" / "clip.mp4", frames=3), output=out) == 0
    assert sorted(p.name for p in out.iterdir()) == ["areas.csv", "clip_overlay.mp4"]


# --- a video user's mistakes: one sentence naming the file or key, nothing written ----------------------------------

def _zero_bytes(tmp):
    (tmp / "in").mkdir()
    (tmp / "in" / "clip.mp4").write_bytes(b"")
    return tmp / "in" / "clip.mp4"


def _corrupt(tmp):
    (tmp / "in").mkdir()
    (tmp / "in" / "clip.mp4").write_bytes(bytes(np.random.default_rng(1).integers(0, 256, 4096, np.uint8)))
    return tmp / "in" / "clip.mp4"


def _truncated(tmp):
    whole = make_video(tmp / "whole" / "clip.mp4").read_bytes()
    (tmp / "in").mkdir()
    (tmp / "in" / "clip.mp4").write_bytes(whole[: len(whole) // 2])  # a copy cut short: no index (moov atom)
    return tmp / "in" / "clip.mp4"


def _no_frames(tmp):
    return make_video(tmp / "in" / "clip.avi", frames=0, fourcc="MJPG")  # opens, holds no frame


VIDEO_FILES = [(_zero_bytes, "video file is empty (0 bytes)"), (_corrupt, "OpenCV cannot open this video"),
               (_truncated, "OpenCV cannot open this video"), (_no_frames, "holds no frame OpenCV can decode")]


@pytest.mark.parametrize("make, words", VIDEO_FILES, ids=["zero-bytes", "random-bytes", "truncated", "no-frames"])
def test_a_video_opencv_cannot_read_is_one_sentence_naming_it(checkpoint, tmp_path, make, words):
    video = make(tmp_path)
    text = predict_refused(DataError, checkpoint, video, output=tmp_path / "out", names=[video, words])
    assert "none of the 1 input(s)" in text
    assert not (tmp_path / "out").exists()


def test_a_video_that_cannot_be_read_among_images_is_named_and_the_others_are_written(checkpoint, tmp_path, capsys):
    photos = tmp_path / "photos"
    write_image(photos / "a.jpg", size=SIZE)
    (photos / "broken.mp4").write_bytes(b"")
    assert run_predict(checkpoint, photos, output=tmp_path / "out") == 1  # exit status 1, as for an unreadable image
    assert (tmp_path / "out" / "a.png").is_file() and not (tmp_path / "out" / "broken_overlay.mp4").exists()
    assert "broken.mp4: video file is empty" in capsys.readouterr().out


LIVE = [("camera:97", "camera 97 cannot be opened"), ("camera:front", "a camera is camera:N"),
        ("file:///nonexistent/clip.mp4", "OpenCV cannot open this stream")]


@pytest.mark.parametrize("source, words", LIVE, ids=["no-such-camera", "camera-not-a-number", "stream"])
def test_a_camera_or_stream_that_cannot_open_is_one_sentence_before_the_model(checkpoint, tmp_path, source, words):
    predict_refused(DataError, checkpoint, source, output=tmp_path / "out", names=[f"input={source}", words])
    assert not (tmp_path / "out").exists()


def test_an_existing_overlay_video_is_kept_without_overwrite(checkpoint, tmp_path):
    video = make_video(tmp_path / "in" / "clip.mp4")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "clip_overlay.mp4").write_bytes(b"an earlier result")
    predict_refused(DataError, checkpoint, video, output=tmp_path / "out",
                    names=[tmp_path / "out" / "clip_overlay.mp4", "exists already", "overwrite=true"])


def test_an_existing_frames_folder_is_kept_without_overwrite(checkpoint, tmp_path):
    video = make_video(tmp_path / "in" / "clip.mp4")
    (tmp_path / "out" / "clip_frames").mkdir(parents=True)
    (tmp_path / "out" / "clip_frames" / "000000.png").write_bytes(b"an earlier frame")
    predict_refused(DataError, checkpoint, video, "save_frames=true", output=tmp_path / "out",
                    names=[tmp_path / "out" / "clip_frames", "exists already", "overwrite=true"])


def test_an_output_video_that_would_replace_an_input_is_refused(checkpoint, tmp_path):
    photos = tmp_path / "photos"
    make_video(photos / "clip.mp4")
    make_video(photos / "clip_overlay.mp4")  # an earlier result, now among the inputs
    predict_refused(DataError, checkpoint, photos, "allow_inside_input=true", "overwrite=true", output=photos,
                    names=[photos / "clip_overlay.mp4", "would overwrite this input video"])


def test_a_frames_folder_that_holds_inputs_is_refused(checkpoint, tmp_path):
    photos = tmp_path / "photos"
    make_video(photos / "clip.mp4")
    write_image(photos / "clip_frames" / "000000.jpg", size=SIZE)  # the user's own images where frames would go
    predict_refused(DataError, checkpoint, photos, "allow_inside_input=true", "save_frames=true", "overwrite=true",
                    output=photos, names=[photos / "clip_frames" / "000000.jpg", "would overwrite this input"])


def test_a_camera_in_a_list_of_inputs_is_refused(checkpoint, tmp_path):
    write_image(tmp_path / "photos" / "a.jpg")
    predict_refused(DataError, checkpoint, f"[camera:0,{tmp_path / 'photos'}]", output=tmp_path / "out",
                    names=["camera:0 is a camera or stream", "input=camera:0"])


def test_a_video_with_nothing_of_it_to_write_is_refused(checkpoint, tmp_path):
    video = make_video(tmp_path / "in" / "clip.mp4")
    predict_refused(ConfigError, checkpoint, video, "save_overlay=false", "save_areas=false", output=tmp_path / "out",
                    names=["save_overlay, save_frames, save_confidence and save_areas", "save_frames=true"])


def test_confidence_of_each_frame_goes_beside_its_label_map(checkpoint, tmp_path):
    video = make_video(tmp_path / "in" / "clip.mp4", frames=3)
    out = tmp_path / "out"
    assert run_predict(checkpoint, video, "save_confidence=true", "save_overlay=false", "save_areas=false",
                       output=out) == 0
    assert sorted(p.name for p in out.iterdir()) == ["clip_frames"]
    assert sorted(p.name for p in (out / "clip_frames").iterdir()) == [f"{i:06d}_confidence.png" for i in range(3)]


@pytest.mark.slow  # python predict.py as a process
def test_predict_command_on_a_video_end_to_end(checkpoint, tmp_path):
    video = make_video(tmp_path / "in" / "clip.mp4", frames=12, fps=10)
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, str(REPO / "predict.py"), f"checkpoint={checkpoint}", f"input={video}",
                           f"output={out}", "save_frames=true"], capture_output=True, text=True, cwd=tmp_path,
                          timeout=300, env={**os.environ, "DEEPLAB_PROGRESS": "0"})
    assert done.returncode == 0, done.stderr
    assert re.search(r"clip.mp4: 12 frames in [\d.]+ s \([\d.]+ fps end to end\): decode", done.stdout), done.stdout
    assert len(decoded(out / "clip_overlay.mp4")) == 12
    assert len(list((out / "clip_frames").glob("*.png"))) == 12 and len(areas(out)) == 12
    assert (out / "predict.log").is_file() and no_temp_files(out)
