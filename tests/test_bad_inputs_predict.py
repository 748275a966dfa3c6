"""Catalogue of a prediction user's mistakes, inputs, outputs and checkpoints: each ends in one sentence naming the
key or file, before anything is written; no input, checkpoint or earlier result is lost or overwritten, and no output
is lost to another."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO, digest, one_sentence, predict_refused, run_predict, write_image
from deeplab import prediction_files
from deeplab.data import DataError
from deeplab.engine.checkpoint import CheckpointError
from deeplab.errors import UserError, user_errors


# --- output names: planned before writing, never colliding --------------------------------------------------------

COLLIDING = [
    (["x.jpg", "x.png"], {"x.jpg": "x.jpg", "x.png": "x.png"}),  # one stem, two extensions
    (["img.v1.png", "img.v2.png"], {"img.v1.png": "img.v1", "img.v2.png": "img.v2"}),  # dots inside the stem
    (["x.jpg", "x_color.jpg"], {"x.jpg": "x.jpg", "x_color.jpg": "x_color.jpg"}),  # x_color.png twice
    (["a/x.jpg", "a/X.PNG", "b/x.jpg"], {"a/x.jpg": "a/x.jpg", "a/X.PNG": "a/X.PNG", "b/x.jpg": "b/x"}),
]


@pytest.mark.parametrize("names, stems", COLLIDING, ids=["same-stem", "dotted-stem", "cross-kind", "case"])
def test_every_input_gets_its_own_outputs(checkpoint, tmp_path, names, stems):
    photos = tmp_path / "photos"
    for i, name in enumerate(names):
        write_image(photos / name, size=(20 + i, 30 + 2 * i), value=i)  # sizes tell the outputs apart
    before = digest(photos)
    out = tmp_path / "out"
    assert run_predict(checkpoint, photos, output=out) == 0
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    expected = sorted(["areas.csv", *(f"{stem}{suffix}" for stem in stems.values()
                                      for suffix in (".png", "_color.png", "_overlay.jpg"))])
    assert written == expected, "each input's three outputs, none shared"
    for name, stem in stems.items():  # and each is that input's own label map, at its own size
        assert Image.open(out / f"{stem}.png").size == Image.open(photos / name).size
    assert digest(photos) == before


def test_outputs_that_would_still_coincide_are_refused_before_writing(tmp_path):
    # x.jpg_color has the stem "x" (its suffix is ".jpg_color"), so both keep their whole name, and then
    # x.jpg's colour mask and x.jpg_color's label map are both x.jpg_color.png
    inputs = [tmp_path / "x.jpg", tmp_path / "x.jpg_color"]
    with pytest.raises(DataError) as info:
        prediction_files.plan_outputs(inputs, tmp_path, tmp_path / "out", kinds=["index", "color"])
    one_sentence(info, tmp_path / "out" / "x.jpg_color.png", "would each be written for several inputs")
    assert not (tmp_path / "out").exists()


def test_an_output_that_is_also_a_folder_of_outputs_is_refused_before_writing(tmp_path):
    photos = tmp_path / "photos"
    inputs = [write_image(photos / "a.jpg"), write_image(photos / "a.png" / "x.jpg")]  # a.jpg's label map is out/a.png
    with pytest.raises(DataError) as info:
        prediction_files.plan_outputs(inputs, photos, tmp_path / "out", kinds=["index"])
    one_sentence(info, tmp_path / "out" / "a.png", "is also a folder")
    assert not (tmp_path / "out").exists()


def test_an_input_is_never_overwritten_by_its_own_label_map(checkpoint, tmp_path):
    photos = tmp_path / "photos"
    write_image(photos / "a.jpg")
    write_image(photos / "b.png")  # its label map would be photos/b.png
    predict_refused(DataError, checkpoint, photos, "allow_inside_input=true", output=photos,
                    names=[photos / "b.png", "overwrite this input"])


def test_an_input_reached_through_a_link_is_not_overwritten_either(checkpoint, tmp_path):
    photos = tmp_path / "photos"
    write_image(photos / "b.png")
    (tmp_path / "out").mkdir()
    os.link(photos / "b.png", tmp_path / "out" / "b.png")  # an output path that is the input under another name
    predict_refused(DataError, checkpoint, photos, output=tmp_path / "out", names=[photos / "b.png", "overwrite"])


# --- inputs and outputs that cannot work ----------------------------------------------------------------------------

def _empty(tmp):
    (tmp / "photos").mkdir()
    return tmp / "photos"


def _no_images(tmp):
    (tmp / "photos" / "sub").mkdir(parents=True)
    (tmp / "photos" / "sub" / "notes.txt").write_text("not an image")
    return tmp / "photos"


def _glob_nothing(tmp):
    write_image(tmp / "photos" / "a.jpg")
    return tmp / "photos" / "*.png"


def _glob_only_text(tmp):
    write_image(tmp / "photos" / "a.jpg")
    (tmp / "photos" / "notes.txt").write_text("not an image")
    return tmp / "photos" / "*.txt"


@pytest.mark.parametrize("make, words", [(_empty, ".jpg"), (_no_images, ".png"), (_glob_nothing, "no file matches"),
                                         (_glob_only_text, "notes.txt")],
                         ids=["empty-folder", "no-image-files", "glob-matches-nothing", "glob-matches-no-image"])
def test_no_images_to_predict_is_an_error_not_zero_written(checkpoint, tmp_path, make, words):
    inputs = make(tmp_path)
    predict_refused(DataError, checkpoint, inputs, output=tmp_path / "out", names=[f"input={inputs}", words])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("glob", [False, True], ids=["folder", "glob"])
def test_files_predict_cannot_read_are_named_in_one_line_at_the_end(checkpoint, tmp_path, capsys, glob):
    photos = tmp_path / "photos"
    write_image(photos / "a.jpg")
    for name in ("IMG_1.HEIC", "IMG_2.avif", "notes.txt"):  # phone photos, and something else
        (photos / "sub" / name).parent.mkdir(exist_ok=True)
        (photos / "sub" / name).write_bytes(b"not read")
    (photos / ".DS_Store").write_bytes(b"hidden: not mentioned")
    failed = run_predict(checkpoint, photos / "**" / "*" if glob else photos, "save_color=false",
                         "save_overlay=false", output=tmp_path / "out")
    assert failed == 0 and sorted(p.name for p in (tmp_path / "out").rglob("*.png")) == ["a.png"]
    line = [x for x in capsys.readouterr().out.splitlines() if "skipped" in x]
    assert len(line) == 1 and line[0].startswith("3 file(s) skipped") and ".avif, .heic, .txt" in line[0], line
    assert "IMG_1.HEIC" in line[0] and ".DS_Store" not in line[0]


def test_an_input_of_several_frames_is_said_to_give_its_first_frame_only(checkpoint, tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    frames = [Image.fromarray(np.full((24, 32, 3), v, np.uint8)) for v in (0, 120, 240)]
    frames[0].save(photos / "pages.tif", save_all=True, append_images=frames[1:])  # a multi-page TIFF
    write_image(photos / "single.png")
    assert run_predict(checkpoint, photos, "save_color=false", "save_overlay=false", output=tmp_path / "out") == 0
    line = [x for x in capsys.readouterr().out.splitlines() if "several frames" in x]
    assert len(line) == 1 and line[0].startswith("1 input(s)") and "pages.tif" in line[0], line
    assert "single.png" not in line[0] and "first frame" in line[0]


def test_only_unreadable_images_is_an_error(checkpoint, tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    predict_refused(DataError, checkpoint, tmp_path / "photos", output=tmp_path / "out",
                    names=["none of the 1 image(s) could be predicted", "broken.jpg: not a readable image"])


def test_output_that_is_an_existing_file_is_refused(checkpoint, tmp_path):
    write_image(tmp_path / "photos" / "a.jpg")
    (tmp_path / "masks").write_text("a user's file")
    predict_refused(DataError, checkpoint, tmp_path / "photos", output=tmp_path / "masks",
                    names=[f"output={tmp_path / 'masks'}", "is a file, not a folder"])


@pytest.mark.parametrize("below", ["sub", "sub/deeper"])
def test_an_output_inside_an_existing_file_is_refused_naming_the_file(checkpoint, tmp_path, below):
    write_image(tmp_path / "photos" / "a.jpg")
    (tmp_path / "notes.txt").write_text("a user's file")
    predict_refused(DataError, checkpoint, tmp_path / "photos", output=tmp_path / "notes.txt" / below,
                    names=[f"output={tmp_path / 'notes.txt' / below}",
                           f"{tmp_path / 'notes.txt'} is a file, not a folder"])


# --- checkpoints and exported models that cannot be used ------------------------------------------------------------

def _torchvision_weights(path):
    torch.save({"features.0.0.weight": torch.zeros(4, 3, 3, 3), "classifier.1.weight": torch.zeros(10, 4)}, path)


def _truncated(path, source):
    path.write_bytes(source.read_bytes()[: source.stat().st_size // 2])


BAD_CHECKPOINTS = [
    ("missing", lambda p, good: None, "no such checkpoint file"),
    ("zero-byte", lambda p, good: p.write_bytes(b""), "empty file (0 bytes)"),
    ("random-bytes", lambda p, good: p.write_bytes(bytes(np.random.default_rng(1).integers(0, 128, 4096, np.uint8))),
     "not a PyTorch file"),
    ("lfs-pointer", lambda p, good: p.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:"
                                                 f"{'0' * 64}\nsize 14000000\n"), "git lfs pull"),
    ("folder", lambda p, good: p.mkdir(), "is a folder, not a checkpoint file"),
    ("truncated", lambda p, good: _truncated(p, good), "truncated or corrupt PyTorch zip archive"),
    ("state-dict", lambda p, good: _torchvision_weights(p), "plain state dict"),
    ("html-page", lambda p, good: p.write_text("<!DOCTYPE html><html>Not Found</html>"), "a text file"),
]


@pytest.mark.parametrize("make, words", [(m, w) for _, m, w in BAD_CHECKPOINTS], ids=[i for i, _, _ in BAD_CHECKPOINTS])
def test_an_unusable_checkpoint_is_one_sentence_saying_what_it_is(checkpoint, tmp_path, make, words):
    write_image(tmp_path / "photos" / "a.jpg")
    bad = tmp_path / "bad.pt"
    make(bad, checkpoint)
    predict_refused(CheckpointError, bad, tmp_path / "photos", output=tmp_path / "out", names=[bad, words])


def test_a_malicious_checkpoint_is_refused_and_its_code_never_runs(checkpoint, tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    write_image(tmp_path / "photos" / "a.jpg")
    torch.save({"model": Evil(), "config": {}}, tmp_path / "evil.pt")
    message = predict_refused(CheckpointError, tmp_path / "evil.pt", tmp_path / "photos", output=tmp_path / "out",
                              names=["evil.pt", "refused", "never unpickles code"])
    assert "weights_only` set to `False`" not in message and "Please file an issue" not in message
    assert not (tmp_path / "pwned").exists()


ONNX_PROBLEMS = [
    ("missing", lambda p, ckpt: None, "no such ONNX model file"),
    ("a-checkpoint", lambda p, ckpt: shutil.copy(ckpt, p), "a PyTorch file, not an ONNX model"),
    ("junk", lambda p, ckpt: p.write_bytes(b"junk"), "not a readable ONNX model"),
]


@pytest.mark.parametrize("make, words", [(m, w) for _, m, w in ONNX_PROBLEMS], ids=[i for i, _, _ in ONNX_PROBLEMS])
def test_an_unusable_onnx_file_is_one_sentence(checkpoint, tmp_path, make, words):
    pytest.importorskip("onnxruntime")
    write_image(tmp_path / "photos" / "a.jpg")
    onnx = tmp_path / "model.onnx"
    make(onnx, checkpoint)
    predict_refused(CheckpointError, checkpoint, tmp_path / "photos", f"onnx={onnx}", output=tmp_path / "out",
                    names=[onnx, words])


# --- the commands as a user runs them: exit 1, the sentence, no traceback -------------------------------------------

def test_user_errors_turns_a_refusal_into_one_logged_sentence_and_exit_1(checkpoint, tmp_path, caplog):
    (tmp_path / "photos").mkdir()
    with pytest.raises(SystemExit) as exited, user_errors("deeplab.predict"):
        run_predict(checkpoint, tmp_path / "photos", output=tmp_path / "out")
    assert exited.value.code == 1
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == [
        f"input={tmp_path / 'photos'}: the folder (searched recursively) holds no image file "
        f"({prediction_files.EXTENSIONS}) nor video ({prediction_files.VIDEOS}); point input= at a folder, image, "
        "video or glob of images"]


@pytest.mark.slow  # python predict.py as a process
@pytest.mark.parametrize("case", ["empty-folder", "zero-byte-checkpoint"])
def test_predict_command_exits_1_with_one_sentence(checkpoint, tmp_path, case):
    (tmp_path / "photos").mkdir()
    if case == "zero-byte-checkpoint":
        write_image(tmp_path / "photos" / "a.jpg")
        checkpoint = tmp_path / "empty.pt"
        checkpoint.write_bytes(b"")
    before = digest(tmp_path)
    done = subprocess.run([sys.executable, "predict.py", f"checkpoint={checkpoint}", f"input={tmp_path / 'photos'}",
                           f"output={tmp_path / 'out'}", f"hydra.run.dir={tmp_path / 'run'}"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    text = done.stdout + done.stderr
    assert done.returncode == 1 and "Traceback" not in text, text[-3000:]
    expected = "holds no image file" if case == "empty-folder" else "empty.pt: empty file (0 bytes)"
    assert expected in text, text[-3000:]
    assert {p: h for p, h in digest(tmp_path).items() if p.relative_to(tmp_path).parts[0] != "run"} == before
    assert not (tmp_path / "out").exists()


def test_ctrl_c_during_predict_is_one_line_and_leaves_no_half_written_image(checkpoint, tmp_path, entry_point,
                                                                             monkeypatch, capsys):
    from deeplab.cli.predict import main as predict_main

    photos = tmp_path / "photos"
    for i in range(3):
        write_image(photos / f"im{i}.jpg", value=i)
    real_save, calls = Image.Image.save, {"n": 0}

    def interrupted_save(self, fp, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # the second image's label map: half written, then Ctrl-C
            Path(fp).write_bytes(b"\x89PNG half")
            raise KeyboardInterrupt
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", interrupted_save)
    out = tmp_path / "out"
    code = entry_point(predict_main, f"checkpoint={checkpoint}", f"input={photos}", f"output={out}",
                       "precision=fp32", "batch_size=1", "save_color=false", "save_overlay=false")
    logged = capsys.readouterr()
    errors = [line for line in (logged.out + logged.err).splitlines() if "ERROR" in line]
    assert code == 130 and len(errors) == 1, logged
    assert "interrupted (Ctrl-C)" in errors[0] and "overwrite=true" in errors[0]
    # whole, and no temp file or half image beside it (predict.log and .hydra: the record kept with the output)
    assert sorted(p.name for p in out.iterdir() if p.name not in ("predict.log", ".hydra")) == ["areas.csv", "im0.png"]
    assert [row.split(",")[0] for row in (out / "areas.csv").read_text().splitlines()[1:]] == ["im0.jpg"]  # done
    monkeypatch.setattr(Image.Image, "save", real_save)
    assert Image.open(out / "im0.png").size == (32, 24)


def test_the_temp_file_of_a_killed_predict_is_removed_by_the_next(checkpoint, tmp_path):
    import subprocess

    photos, out = tmp_path / "photos", tmp_path / "out"
    write_image(photos / "a.jpg")
    ended = subprocess.Popen(["true"])
    ended.wait()  # a process that has ended: the predict that SIGKILL stopped mid-write
    out.mkdir()
    killed = out / f".a.png.{ended.pid}.k1ll3d_x.tmp"
    killed.write_bytes(b"half")
    running = out / ".a.png.1.abcdefgh.tmp"  # pid 1 runs: another process's write in progress is left alone
    running.write_bytes(b"theirs")
    assert run_predict(checkpoint, photos, "save_color=false", "save_overlay=false", output=out) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(["a.png", "areas.csv", running.name])


def test_a_predict_into_an_output_folder_another_predict_is_writing_is_refused(checkpoint, tmp_path):
    """Two predict.py at once into one output= (different inputs) would both pass the check for existing outputs and
    leave a mix of the two: the second is refused while the first (here: pid 1, which runs) holds the folder."""
    photos, out = tmp_path / "photos", tmp_path / "out"
    write_image(photos / "a.jpg", size=(24, 32))
    out.mkdir()
    (out / ".predict.lock").write_text("1")
    predict_refused(UserError, checkpoint, photos, output=out,
                    names=(out, "pid 1", "another predict.py", "output=DIR"))
    (out / ".predict.lock").write_text("999999999")  # left by a killed predict: taken over
    assert run_predict(checkpoint, photos, output=out) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "a_color.png", "a_overlay.jpg", "areas.csv"]


def test_an_image_whose_output_name_would_be_too_long_is_named_and_the_others_are_written(checkpoint, tmp_path, capsys):
    """A 240-byte file name is a legal name, but its outputs' (x_overlay.jpg, and the temp file each is written
    through) pass the 255-byte limit: that image is named in one sentence at the end, the others are written."""
    photos, out = tmp_path / "photos", tmp_path / "out"
    long = "a" * 240
    write_image(photos / f"{long}.jpg", size=(24, 32))
    write_image(photos / "short.jpg", size=(24, 32))
    assert run_predict(checkpoint, photos, output=out) == 1  # exit status 1: not every image was predicted
    assert sorted(p.name for p in out.iterdir()) == ["areas.csv", "short.png", "short_color.png", "short_overlay.jpg"]
    assert [row.split(",")[0] for row in (out / "areas.csv").read_text().splitlines()[1:]] == ["short.jpg"]
    printed = capsys.readouterr().out
    assert "1 image(s) written" in printed and f"{long}.jpg: its output's name" in printed
    assert "over this file system's limit of 255" in printed and "rename the image" in printed
    with pytest.raises(DataError, match="none of the 1 image"):  # alone, it is the whole input: refused
        run_predict(checkpoint, photos / f"{long}.jpg", output=tmp_path / "out2")
    assert not (tmp_path / "out2").exists()


def test_areas_csv_counts_each_class_of_each_image_and_confidence_maps_show_the_top_probability(checkpoint, tmp_path):
    """areas.csv: one row per image (its path below the input, frame and time_s empty: they are a video frame's,
    height, width), then each class's pixels and share, in the class names' order, equal to the counts of the label
    PNG written beside it; save_confidence=true writes the top class's probability as 0-255 greys, the same as
    Predictor's probabilities give."""
    import csv

    from deeplab.inference import Predictor

    photos, out = tmp_path / "photos", tmp_path / "out"
    write_image(photos / "a.jpg", size=(24, 32), value=1)
    write_image(photos / "sub" / "b.png", size=(20, 30), value=2)
    assert run_predict(checkpoint, photos, "save_confidence=true", "save_color=false", "save_overlay=false",
                       output=out) == 0
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu", precision="fp32")
    rows = list(csv.reader((out / "areas.csv").open()))
    names = predictor.class_names
    assert rows[0] == ["image", "frame", "time_s", "height", "width",
                       *(f"{n}_{w}" for n in names for w in ("pixels", "share"))]
    assert [r[:5] for r in rows[1:]] == [["a.jpg", "", "", "24", "32"], ["sub/b.png", "", "", "20", "30"]]
    for row in rows[1:]:
        labels = np.array(Image.open(out / Path(row[0]).with_suffix(".png")))
        pixels = [int(v) for v in row[5::2]]
        assert pixels == np.bincount(labels.ravel(), minlength=len(names)).tolist()
        assert [float(v) for v in row[6::2]] == pytest.approx([p / labels.size for p in pixels], abs=1e-6)
    _, probs = predictor.predict(np.array(Image.open(photos / "a.jpg")), return_probs=True)
    sure = np.array(Image.open(out / "a_confidence.png"))
    assert sure.dtype == np.uint8 and np.abs(sure.astype(int) - np.round(probs.max(0) * 255)).max() <= 1
    before = digest(out)  # an earlier areas.csv is an output like the others: replaced only with overwrite=true
    with pytest.raises(DataError, match="areas.csv: exists already"):
        run_predict(checkpoint, photos / "sub", output=out, *["save_index=false", "save_color=false",
                                                              "save_overlay=false"])
    assert digest(out) == before
    assert run_predict(checkpoint, photos, "save_areas=false", "save_color=false", "save_overlay=false",
                       "overwrite=true", output=tmp_path / "plain") == 0
    assert not (tmp_path / "plain" / "areas.csv").exists()
