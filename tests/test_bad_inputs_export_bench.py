"""Catalogue of an export or bench user's mistakes: an export never replaces a checkpoint and checks its settings
first; the bench checks its sections, modes and JSON path before any work. Each ends in one sentence naming the key
or file, and no earlier file is lost."""

import json
import shutil

import pytest
import torch

from conftest import compose, digest, one_sentence
from deeplab import export
from deeplab.bench.modes import inference_runner, training_step
from deeplab.cli import bench as bench_cli
from deeplab.cli import export as export_cli
from deeplab.engine.checkpoint import CheckpointError
from deeplab.errors import ConfigError
from deeplab.export import ExportError


# --- export: never over a checkpoint, settings checked first --------------------------------------------------------

def _export_refused(error, checkpoint, *overrides, names=()):
    before = digest(checkpoint.parent)
    with pytest.raises(error) as info:
        export_cli.run(compose("export", [f"checkpoint={checkpoint}", *overrides]))
    assert digest(checkpoint.parent) == before
    return one_sentence(info, *names)


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


@pytest.mark.parametrize("override, key", [("format=tflite", "format='tflite'"), ("opset=13", "opset=13"),
                                           ("calibration_images=0", "calibration_images=0"),
                                           ("val_images=-1", "val_images=-1")])
def test_export_settings_are_checked_first(checkpoint, override, key):
    _export_refused(ConfigError, checkpoint, "format=int8", override, names=[key])


def test_a_full_disk_during_an_export_keeps_the_previous_file(monkeypatch, tmp_path):
    import errno
    from collections import namedtuple

    from deeplab.model import build_model

    model = build_model(num_classes=3, separable=True, backbone={"name": "mobilenet_v2", "width_mult": 0.5}).eval()
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
    one_sentence(info, target, "the disk is full", f"1.0 kB free in {tmp_path}", "MB needed",
                 "the previous model.onnx is intact")
    assert target.read_bytes() == b"the previous export"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"], "no temp file left behind"


# --- export: what the checkpoint is comes first -----------------------------------------------------------------------

def test_export_of_an_onnx_file_says_it_is_not_a_checkpoint(tmp_path):
    onnx = tmp_path / "best.onnx"
    onnx.write_bytes(b"\x08\x07\x12\x07pytorch\x1a\x052.5.1" + bytes(64))
    before = digest(tmp_path)
    with pytest.raises(CheckpointError) as info:
        export_cli.run(compose("export", [f"checkpoint={onnx}"]))
    message = one_sentence(info, onnx, "an ONNX model, not a training checkpoint")
    assert "is the checkpoint being exported" not in message
    assert digest(tmp_path) == before


def test_export_of_a_checkpoint_named_like_its_output_suggests_another_name(checkpoint, tmp_path):
    disguised = tmp_path / "model.onnx"  # a real training checkpoint under an .onnx name
    shutil.copy(checkpoint, disguised)
    message = _export_refused(ExportError, disguised, names=[f"output={disguised}", "is the checkpoint being exported"])
    assert "e.g. model.onnx)" not in message and "e.g. model.export.onnx" in message


# --- bench: sections, modes and the JSON path are checked before any work -------------------------------------------

def _bench(*overrides):

    return bench_cli.run(compose("bench", ["device=cpu", "loader.crop=64", "loader.images=2", "loader.rounds=1",
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
    one_sentence(info, *names)
    assert capsys.readouterr().out == "", "refused before the device line, the model or any timing"
    assert not (tmp_path / "out").exists()


def test_speed_modes_name_their_config_key():

    with pytest.raises(ConfigError) as info:
        inference_runner("turbo", None, device=torch.device("cpu"), workdir=None)
    one_sentence(info, "inference.modes", "turbo", "eager_fp32", "onnxruntime_int8")
    with pytest.raises(ConfigError) as info:
        training_step("turbo", None, device=torch.device("cpu"))
    one_sentence(info, "train.modes", "turbo", "eager_fp32", "fast")


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
    one_sentence(info, f"json={target}", *([f"{tmp_path / 'notes.txt'} is a file"] if where == "under-a-file"
                                             else ["is a folder", "bench.json"]))
    assert capsys.readouterr().out == ""
    assert (tmp_path / "notes.txt").read_text() == "a user's file"
