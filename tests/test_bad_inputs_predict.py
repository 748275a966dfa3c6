"""Catalogue of a prediction or export user's mistakes: each ends in one sentence naming the key or file, before
anything is written; no input, checkpoint or earlier result is lost or overwritten, and no output is lost to
another."""

import hashlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO, compose
from deeplab import export
from deeplab.data import DataError
from deeplab.engine import prediction
from deeplab.engine.checkpoint import CheckpointError
from deeplab.errors import ConfigError, user_errors
from deeplab.export import ExportError


def _digest(root):
    """Path -> sha256 of every file under root: what must be byte-identical after a refused command."""
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def _one_sentence(exc_info, *names):
    message = str(exc_info.value)
    assert "\n" not in message and "Traceback" not in message, message
    for name in names:
        assert str(name) in message, (name, message)
    return message


def _image(path, size=(24, 32), value=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(value).integers(0, 256, (*size, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path, quality=95)
    return path


@pytest.fixture
def checkpoint(trained, tmp_path):
    """A private copy of the trained checkpoint, so a test may hash it and try to break it."""
    shutil.copy(trained[1], tmp_path / "best.pt")
    return tmp_path / "best.pt"


def _predict(checkpoint, inputs, *extra, output):
    """Run predict.py's body in-process; returns the number of unreadable images."""
    cfg = compose("predict", [f"checkpoint={checkpoint}", f"input={inputs}", f"output={output}", "precision=fp32",
                              *extra])
    return prediction.run(cfg, output.parent / "run")


def _refused(error, checkpoint, inputs, *extra, output, names=()):
    """predict refuses with one sentence naming `names`; every file that existed is byte-identical and none is new."""
    root = checkpoint.parent
    before = _digest(root)
    with pytest.raises(error) as info:
        _predict(checkpoint, inputs, *extra, output=output)
    after = _digest(root)
    assert after == before, f"files changed or were written: {set(after) ^ set(before)}"
    return _one_sentence(info, *names)


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
        _image(photos / name, size=(20 + i, 30 + 2 * i), value=i)  # sizes tell the outputs apart
    before = _digest(photos)
    out = tmp_path / "out"
    assert _predict(checkpoint, photos, output=out) == 0
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    expected = sorted(f"{stem}{suffix}" for stem in stems.values() for suffix in (".png", "_color.png", "_overlay.jpg"))
    assert written == expected, "each input's three outputs, none shared"
    for name, stem in stems.items():  # and each is that input's own label map, at its own size
        assert Image.open(out / f"{stem}.png").size == Image.open(photos / name).size
    assert _digest(photos) == before


def test_outputs_that_would_still_coincide_are_refused_before_writing(tmp_path):
    # x.jpg_color has the stem "x" (its suffix is ".jpg_color"), so both keep their whole name, and then
    # x.jpg's colour mask and x.jpg_color's label map are both x.jpg_color.png
    inputs = [tmp_path / "x.jpg", tmp_path / "x.jpg_color"]
    with pytest.raises(DataError) as info:
        prediction.plan_outputs(inputs, tmp_path, tmp_path / "out", kinds=["index", "color"])
    _one_sentence(info, tmp_path / "out" / "x.jpg_color.png", "would each be written for several inputs")
    assert not (tmp_path / "out").exists()


def test_an_output_that_is_also_a_folder_of_outputs_is_refused_before_writing(tmp_path):
    photos = tmp_path / "photos"
    inputs = [_image(photos / "a.jpg"), _image(photos / "a.png" / "x.jpg")]  # a.jpg's label map is out/a.png
    with pytest.raises(DataError) as info:
        prediction.plan_outputs(inputs, photos, tmp_path / "out", kinds=["index"])
    _one_sentence(info, tmp_path / "out" / "a.png", "is also a folder")
    assert not (tmp_path / "out").exists()


def test_an_input_is_never_overwritten_by_its_own_label_map(checkpoint, tmp_path):
    photos = tmp_path / "photos"
    _image(photos / "a.jpg")
    _image(photos / "b.png")  # its label map would be photos/b.png
    _refused(DataError, checkpoint, photos, "allow_inside_input=true", output=photos,
             names=[photos / "b.png", "overwrite this input"])


def test_an_input_reached_through_a_link_is_not_overwritten_either(checkpoint, tmp_path):
    photos = tmp_path / "photos"
    _image(photos / "b.png")
    (tmp_path / "out").mkdir()
    os.link(photos / "b.png", tmp_path / "out" / "b.png")  # an output path that is the input under another name
    _refused(DataError, checkpoint, photos, output=tmp_path / "out", names=[photos / "b.png", "overwrite"])


# --- inputs and outputs that cannot work ----------------------------------------------------------------------------

def _empty(tmp):
    (tmp / "photos").mkdir()
    return tmp / "photos"


def _no_images(tmp):
    (tmp / "photos" / "sub").mkdir(parents=True)
    (tmp / "photos" / "sub" / "notes.txt").write_text("not an image")
    return tmp / "photos"


def _glob_nothing(tmp):
    _image(tmp / "photos" / "a.jpg")
    return tmp / "photos" / "*.png"


def _glob_only_text(tmp):
    _image(tmp / "photos" / "a.jpg")
    (tmp / "photos" / "notes.txt").write_text("not an image")
    return tmp / "photos" / "*.txt"


@pytest.mark.parametrize("make, words", [(_empty, ".jpg"), (_no_images, ".png"), (_glob_nothing, "no file matches"),
                                         (_glob_only_text, "notes.txt")],
                         ids=["empty-folder", "no-image-files", "glob-matches-nothing", "glob-matches-no-image"])
def test_no_images_to_predict_is_an_error_not_zero_written(checkpoint, tmp_path, make, words):
    inputs = make(tmp_path)
    _refused(DataError, checkpoint, inputs, output=tmp_path / "out", names=[f"input={inputs}", words])
    assert not (tmp_path / "out").exists()


def test_a_non_image_file_in_a_glob_is_skipped(checkpoint, tmp_path, caplog):
    photos = tmp_path / "photos"
    _image(photos / "a.jpg")
    (photos / "notes.txt").write_text("not an image")
    with caplog.at_level("WARNING"):
        failed = _predict(checkpoint, photos / "*", "save_color=false", "save_overlay=false", output=tmp_path / "out")
    assert failed == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png"]
    assert "skipping 1 file(s) without an image extension" in caplog.text and "notes.txt" in caplog.text


def test_only_unreadable_images_is_an_error(checkpoint, tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    _refused(DataError, checkpoint, tmp_path / "photos", output=tmp_path / "out",
             names=["none of the 1 image(s) could be read", "broken.jpg: not a readable image"])


def test_output_that_is_an_existing_file_is_refused(checkpoint, tmp_path):
    _image(tmp_path / "photos" / "a.jpg")
    (tmp_path / "masks").write_text("a user's file")
    _refused(DataError, checkpoint, tmp_path / "photos", output=tmp_path / "masks",
             names=[f"output={tmp_path / 'masks'}", "is a file, not a folder"])


# --- settings: refused before the checkpoint is loaded --------------------------------------------------------------

BAD_SETTINGS = [
    ("batch_size=0", "batch_size=0"), ("batch_size=-2", "batch_size=-2"), ("batch_size=1.5", "batch_size=1.5"),
    ("alpha=1.5", "alpha=1.5"), ("alpha=-0.1", "alpha=-0.1"),
    ("precision=fp16", "precision=fp16"), ("precision=half", "half"), ("device=gpu", "gpu"),
    ("scales=[]", "scales=[]"), ("scales=[1.0,0]", "scales=[1.0, 0]"), ("window=[64]", "window=[64]"),
    ("stride=[32,32]", "stride=[32, 32]"),
]


@pytest.mark.parametrize("override, value", BAD_SETTINGS, ids=[o for o, _ in BAD_SETTINGS])
def test_a_bad_setting_is_one_sentence_naming_the_key(checkpoint, tmp_path, override, value):
    _image(tmp_path / "photos" / "a.jpg")
    extra = [override] if override.startswith("device") else ["device=cpu", override]
    _refused(ConfigError, checkpoint, tmp_path / "photos", *extra, output=tmp_path / "out",
             names=[override.split("=")[0] + "=", value])
    assert not (tmp_path / "out").exists()


def test_nothing_to_save_is_refused(checkpoint, tmp_path):
    _image(tmp_path / "photos" / "a.jpg")
    _refused(ConfigError, checkpoint, tmp_path / "photos", "save_index=false", "save_color=false",
             "save_overlay=false", output=tmp_path / "out", names=["save_index, save_color and save_overlay"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_on_a_machine_without_it_is_one_sentence(checkpoint, tmp_path):
    _image(tmp_path / "photos" / "a.jpg")
    _refused(ConfigError, checkpoint, tmp_path / "photos", "device=cuda", output=tmp_path / "out",
             names=["device=cuda", "CUDA", "device=cpu"])


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
    _image(tmp_path / "photos" / "a.jpg")
    bad = tmp_path / "bad.pt"
    make(bad, checkpoint)
    _refused(CheckpointError, bad, tmp_path / "photos", output=tmp_path / "out", names=[bad, words])


def test_a_malicious_checkpoint_is_refused_and_its_code_never_runs(checkpoint, tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    _image(tmp_path / "photos" / "a.jpg")
    torch.save({"model": Evil(), "config": {}}, tmp_path / "evil.pt")
    message = _refused(CheckpointError, tmp_path / "evil.pt", tmp_path / "photos", output=tmp_path / "out",
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
    _image(tmp_path / "photos" / "a.jpg")
    onnx = tmp_path / "model.onnx"
    make(onnx, checkpoint)
    _refused(CheckpointError, checkpoint, tmp_path / "photos", f"onnx={onnx}", output=tmp_path / "out",
             names=[onnx, words])


# --- export: never over a checkpoint, settings checked first --------------------------------------------------------

def _export_refused(error, checkpoint, *overrides, names=()):
    before = _digest(checkpoint.parent)
    with pytest.raises(error) as info:
        export.run(compose("export", [f"checkpoint={checkpoint}", *overrides]))
    assert _digest(checkpoint.parent) == before
    return _one_sentence(info, *names)


def test_export_never_replaces_the_checkpoint_it_exports(checkpoint):
    _export_refused(ExportError, checkpoint, f"output={checkpoint}", "overwrite=true",
                    names=[f"output={checkpoint}", "is the checkpoint being exported"])


def test_export_never_replaces_another_checkpoint(checkpoint, tmp_path):
    other = tmp_path / "other.pt"
    shutil.copy(checkpoint, other)
    _export_refused(ExportError, checkpoint, f"output={other}", "overwrite=true", names=[other, ".pt"])
    disguised = tmp_path / "old.onnx"  # a checkpoint under another name is still one
    shutil.copy(checkpoint, disguised)
    _export_refused(ExportError, checkpoint, f"output={disguised}", "overwrite=true",
                    names=[disguised, "is a PyTorch checkpoint"])
    _export_refused(ExportError, checkpoint, f"output={tmp_path / 'new.pth'}", names=["new.pth", ".pth"])
    assert not (tmp_path / "new.pth").exists()


@pytest.mark.parametrize("override, key", [("format=tflite", "format=tflite"), ("opset=13", "opset=13"),
                                           ("calibration_images=0", "calibration_images=0"),
                                           ("val_images=-1", "val_images=-1")])
def test_export_settings_are_checked_first(checkpoint, override, key):
    _export_refused(ConfigError, checkpoint, "format=int8", override, names=[key])


def test_a_full_disk_during_an_export_keeps_the_previous_file(monkeypatch, tmp_path):
    import errno
    from collections import namedtuple

    from deeplab.model import build_model

    model = build_model(num_classes=3, separable=True, width_mult=0.5).eval()
    target = tmp_path / "model.onnx"
    target.write_bytes(b"the previous export")

    def fill_the_disk(folded, args, path, **kwargs):
        with open(path, "wb") as f:
            f.write(b"\0" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device", path)

    monkeypatch.setattr(torch.onnx, "export", fill_the_disk)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda folder: usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(CheckpointError) as info:
        export.export_onnx(model, target, overwrite=True)
    _one_sentence(info, target, "the disk is full", f"1.0 kB free in {tmp_path}", "MB needed",
                  "the previous model.onnx is intact")
    assert target.read_bytes() == b"the previous export"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"], "no temp file left behind"


# --- the commands as a user runs them: exit 1, the sentence, no traceback -------------------------------------------

def test_user_errors_turns_a_refusal_into_one_logged_sentence_and_exit_1(checkpoint, tmp_path, caplog):
    (tmp_path / "photos").mkdir()
    with pytest.raises(SystemExit) as exited, user_errors("deeplab.predict"):
        _predict(checkpoint, tmp_path / "photos", output=tmp_path / "out")
    assert exited.value.code == 1
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == [
        f"input={tmp_path / 'photos'}: the folder (searched recursively) holds no image file "
        f"({prediction.EXTENSIONS}); point input= at a folder, image or glob of images"]


@pytest.mark.parametrize("case", ["empty-folder", "zero-byte-checkpoint"])
def test_predict_command_exits_1_with_one_sentence(checkpoint, tmp_path, case):
    (tmp_path / "photos").mkdir()
    if case == "zero-byte-checkpoint":
        _image(tmp_path / "photos" / "a.jpg")
        checkpoint = tmp_path / "empty.pt"
        checkpoint.write_bytes(b"")
    before = _digest(tmp_path)
    done = subprocess.run([sys.executable, "predict.py", f"checkpoint={checkpoint}", f"input={tmp_path / 'photos'}",
                           f"output={tmp_path / 'out'}", f"hydra.run.dir={tmp_path / 'run'}"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    text = done.stdout + done.stderr
    assert done.returncode == 1 and "Traceback" not in text, text[-3000:]
    expected = "holds no image file" if case == "empty-folder" else "empty.pt: empty file (0 bytes)"
    assert expected in text, text[-3000:]
    assert {p: h for p, h in _digest(tmp_path).items() if p.relative_to(tmp_path).parts[0] != "run"} == before
    assert not (tmp_path / "out").exists()


# --- combinations and shapes of settings that used to pass silently or end in a traceback ---------------------------

def test_evaluate_refuses_a_checkpoint_and_predictions_together(checkpoint, tmp_path):
    from deeplab.engine import evaluation

    (tmp_path / "preds").mkdir()
    cfg = compose("evaluate", [f"checkpoint={checkpoint}", f"predictions={tmp_path / 'preds'}", "device=cpu"])
    with pytest.raises(ConfigError) as info:
        evaluation.run(cfg, tmp_path / "run")
    _one_sentence(info, f"checkpoint={checkpoint}", f"predictions={tmp_path / 'preds'}", "not both")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("overrides, names", [
    (["window=[32,32]", "stride=[64,64]"], ["stride=[64, 64]", "window=[32, 32]", "at most the window side"]),
    (["window=[32,32]", "stride=[16,33]"], ["stride=[16, 33]", "window=[32, 32]"]),
    (["scales=1.5"], ["scales=1.5", "scales=[1.0]"]),
    (["window=512"], ["window=512", "window=[512,512]"]),
], ids=["stride-beyond-window", "one-side-beyond", "bare-scale", "bare-window"])
def test_test_time_settings_that_cannot_work_are_refused_by_predict_and_evaluate(checkpoint, tmp_path, overrides,
                                                                                 names):
    from deeplab.engine import evaluation

    _image(tmp_path / "photos" / "a.jpg")
    _refused(ConfigError, checkpoint, tmp_path / "photos", "device=cpu", *overrides, output=tmp_path / "out",
             names=names)
    cfg = compose("evaluate", [f"checkpoint={checkpoint}", "device=cpu", *overrides])
    with pytest.raises(ConfigError) as info:
        evaluation.run(cfg, tmp_path / "run")
    _one_sentence(info, *names)
    assert not (tmp_path / "out").exists() and not (tmp_path / "run").exists()


def test_a_stride_up_to_the_window_covers_every_pixel():
    from deeplab.inference import check_tta, sliding_logits

    for stride in ([32, 32], [16, 32], None):
        check_tta(scales=[1.0], window=[32, 32], stride=stride)
    logits = sliding_logits(lambda x: x[:, :2], torch.ones(1, 3, 70, 90), window=[32, 32], stride=[32, 32])
    assert not logits.isnan().any()


@pytest.mark.parametrize("below", ["sub", "sub/deeper"])
def test_an_output_inside_an_existing_file_is_refused_naming_the_file(checkpoint, tmp_path, below):
    _image(tmp_path / "photos" / "a.jpg")
    (tmp_path / "notes.txt").write_text("a user's file")
    _refused(DataError, checkpoint, tmp_path / "photos", output=tmp_path / "notes.txt" / below,
             names=[f"output={tmp_path / 'notes.txt' / below}", f"{tmp_path / 'notes.txt'} is a file, not a folder"])


# --- bench: sections, modes and the JSON path are checked before any work -------------------------------------------

def _bench(*overrides):
    from deeplab import bench

    return bench.run(compose("bench", ["device=cpu", "loader.crop=64", "loader.images=2", "loader.rounds=1",
                                       *overrides]))


@pytest.mark.parametrize("overrides, names", [
    (["sections=[foo]"], ["sections", "foo", "model, inference, train, loader"]),
    (["sections=[loader,Train]"], ["sections", "Train", "known: model, inference, train, loader"]),
    (["sections=[]"], ["sections=[]", "model, inference, train, loader"]),
    (["sections=[inference]", "inference.modes=[eager_fp32,turbo]"], ["inference.modes", "turbo", "onnxruntime_int8"]),
    (["sections=[inference]", "inference.separable_modes=[fastest]"], ["inference.separable_modes", "fastest"]),
    (["sections=[train,loader]", "train.modes=[bf32]"], ["train.modes", "bf32", "eager_fp32, fast_convs_fp32"]),
], ids=["unknown-section", "misspelt-section", "no-section", "inference-mode", "separable-mode", "train-mode"])
def test_bench_refuses_unknown_sections_and_modes_before_any_work(tmp_path, capsys, overrides, names):
    with pytest.raises(ConfigError) as info:
        _bench(f"json={tmp_path / 'out' / 'bench.json'}", *overrides)
    _one_sentence(info, *names)
    assert capsys.readouterr().out == "", "refused before the device line, the model or any timing"
    assert not (tmp_path / "out").exists()


def test_speed_modes_name_their_config_key():
    from deeplab.speed import inference_mode, training_step

    with pytest.raises(ConfigError) as info:
        inference_mode("turbo", None, device=torch.device("cpu"), workdir=None)
    _one_sentence(info, "inference.modes", "turbo", "eager_fp32", "onnxruntime_int8")
    with pytest.raises(ConfigError) as info:
        training_step("turbo", None, device=torch.device("cpu"))
    _one_sentence(info, "train.modes", "turbo", "eager_fp32", "fast")


def test_bench_a_bare_section_runs_it_and_the_json_folder_is_made_first(tmp_path, capsys):
    target = tmp_path / "results" / "today" / "bench.json"
    result = _bench("sections=loader", f"json={target}")
    assert set(result) == {"device", "loader"}, "sections=loader is the loader section, not l, o, a, d, e, r"
    assert json.loads(target.read_text())["loader"]["samples_per_s_per_worker"]
    assert "ours / PIL" in capsys.readouterr().out


@pytest.mark.parametrize("where", ["under-a-file", "a-folder"])
def test_bench_refuses_a_json_path_it_cannot_write_before_running(tmp_path, capsys, where):
    (tmp_path / "notes.txt").write_text("a user's file")
    target = tmp_path / "notes.txt" / "bench.json" if where == "under-a-file" else tmp_path
    with pytest.raises(ConfigError) as info:
        _bench("sections=[loader]", f"json={target}")
    _one_sentence(info, f"json={target}", *([f"{tmp_path / 'notes.txt'} is a file"] if where == "under-a-file"
                                             else ["is a folder", "bench.json"]))
    assert capsys.readouterr().out == ""
    assert (tmp_path / "notes.txt").read_text() == "a user's file"


# --- export: what the checkpoint is comes first; data check: a bare split name ---------------------------------------

def test_export_of_an_onnx_file_says_it_is_not_a_checkpoint(tmp_path):
    onnx = tmp_path / "best.onnx"
    onnx.write_bytes(b"\x08\x07\x12\x07pytorch\x1a\x052.5.1" + bytes(64))
    before = _digest(tmp_path)
    with pytest.raises(CheckpointError) as info:
        export.run(compose("export", [f"checkpoint={onnx}"]))
    message = _one_sentence(info, onnx, "an ONNX model, not a training checkpoint")
    assert "is the checkpoint being exported" not in message
    assert _digest(tmp_path) == before


def test_export_of_a_checkpoint_named_like_its_output_suggests_another_name(checkpoint, tmp_path):
    disguised = tmp_path / "model.onnx"  # a real training checkpoint under an .onnx name
    shutil.copy(checkpoint, disguised)
    message = _export_refused(ExportError, disguised, names=[f"output={disguised}", "is the checkpoint being exported"])
    assert "e.g. model.onnx)" not in message and "e.g. model.export.onnx" in message


def test_check_takes_a_bare_split_name_as_one_split(voc_root, capsys):
    from deeplab.data import check

    code = check.run(compose("check", ["dataset=voc", f"dataset.root={voc_root}", "splits=val", "workers=0"]))
    out = capsys.readouterr().out
    assert code == 0, out
    assert "split val: 3 samples, 0 problem(s)" in out
    assert "split v:" not in out and "split train" not in out
    assert [r.split for r in check.check_dataset(splits="train", root=str(voc_root), format="voc", num_classes=5)] \
        == ["train"]


@pytest.mark.parametrize("command,key", [("predict", "save_color"), ("predict", "fast"), ("predict", "allow_inside_input"),
                                         ("evaluate", "compile"), ("export", "overwrite")])
def test_a_switch_given_a_word_is_refused_not_taken_as_true(command, key, trained, tmp_path):
    from deeplab.engine import evaluation, prediction
    import deeplab.export as export

    tree, checkpoint = trained
    extra = {"predict": [f"input={tree / 'JPEGImages'}", f"output={tmp_path / 'out'}"], "evaluate": [],
             "export": [f"output={tmp_path / 'm.onnx'}"]}[command]
    cfg = compose(command, [f"checkpoint={checkpoint}", *extra, f"{key}=maybe"])
    run = {"predict": lambda: prediction.run(cfg, tmp_path / "run"), "evaluate": lambda: evaluation.run(cfg, tmp_path),
           "export": lambda: export.run(cfg)}[command]
    with pytest.raises(ConfigError, match=rf"^{key}='maybe': must be true or false$"):
        run()
    assert not (tmp_path / "out").exists() and not (tmp_path / "m.onnx").exists()
