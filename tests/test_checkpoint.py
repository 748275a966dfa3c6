import collections
import errno
import io
import os
import pickle
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from deeplab.engine.checkpoint import CheckpointError, load_checkpoint, load_model_weights, save_checkpoint
from conftest import one_sentence
from deeplab.errors import UserError
from deeplab.torch_files import atomic_write, tensor_bytes
from deeplab.model import build_model


def _state(model, iteration=1):
    return {"model": model.state_dict(), "config": {"model": {"num_classes": model.num_classes}},
            "iteration": iteration}


def test_round_trip_and_atomic_replace(tmp_path, monkeypatch):
    model = build_model(num_classes=3, separable=True, backbone={"name": "mobilenet_v2", "width_mult": 0.5})
    path = tmp_path / "run" / "last.pt"
    save_checkpoint(path, _state(model, 1))

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, _state(model, 2))
    monkeypatch.undo()
    assert load_checkpoint(path)["iteration"] == 1, "a failed write keeps the last good checkpoint"
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"], "no temp file left behind"
    umask = os.umask(0o022)
    try:
        save_checkpoint(path, _state(model, 3))
    finally:
        os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o644, "readable like any new file, not mkstemp's owner-only 0600"


def _pickle_with_plain_pickle(payload, path):
    with open(path, "wb") as f:
        pickle.dump(payload, f)


BAD_FILES = [  # (name, make(path, good checkpoint), what the sentence says the file is)
    ("missing", lambda p, good: None, "no such checkpoint file"),
    ("zero-byte", lambda p, good: p.write_bytes(b""), "empty file (0 bytes)"),
    ("random-bytes", lambda p, good: p.write_bytes(bytes(range(1, 128)) * 8), "not a PyTorch file"),
    ("lfs-pointer", lambda p, good: p.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:"
                                                 f"{'a' * 64}\nsize 9000000\n"), "a git-LFS pointer"),
    ("folder", lambda p, good: p.mkdir(), "is a folder, not a checkpoint file"),
    ("text", lambda p, good: p.write_text("hello"), "a text file (it starts 'hello')"),
    ("onnx-model", lambda p, good: p.write_bytes(b"\x08\x08\x12\x07pytorch\x1a\x062.14.1:" + bytes(100)),
     "an ONNX model, not a training checkpoint; pass it as onnx=FILE"),
    ("pt2-program", lambda p, good: _zip(p, "model/archive_format", "pt2"), "a torch.export program"),
    ("other-zip", lambda p, good: _zip(p, "notes/readme.txt", "hello"), "a zip archive but not one torch.save wrote"),
    ("truncated-zip", lambda p, good: p.write_bytes(good.read_bytes()[: good.stat().st_size // 2]),
     "truncated or corrupt PyTorch zip archive"),
    ("truncated-legacy", lambda p, good: p.write_bytes(_legacy(good)[:-10]), "truncated or corrupt PyTorch pickle"),
    ("numpy-inside", lambda p, good: torch.save({"model": {}, "config": {}, "mean": np.zeros(3)}, p),
     "refused: it holds code or objects other than tensors (it asks for numpy"),
    ("torchvision-weights", lambda p, good: torch.save({"features.0.0.weight": torch.zeros(1),
                                                        "classifier.1.bias": torch.zeros(1)}, p),
     "a plain state dict of 2 tensor(s) (weights only, e.g. 'features.0.0.weight'), not a deeplab training "
     "checkpoint: these look like torchvision MobileNetV2 weights, which can start a training run as "
     "model.backbone_weights=FILE"),
    ("deeplab-weights", lambda p, good: torch.save(torch.load(good, weights_only=True)["model"], p),
     "a deeplab model's weights saved without the run's config"),
    ("peer-checkpoint", lambda p, good: torch.save({"state_dict": {"w": torch.zeros(1)}, "epoch": 3}, p),
     "not a deeplab training checkpoint (it holds 'state_dict', 'epoch'"),
    ("newer-format", lambda p, good: torch.save({"model": {}, "config": {}, "format_version": 99}, p),
     "written by a newer deeplab"),
]


def _zip(path, name, text):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(name, text)


def _legacy(good):
    """The good checkpoint in torch's pre-1.6 (non-zip) format."""
    buffer = io.BytesIO()
    torch.save(torch.load(good, weights_only=True), buffer, _use_new_zipfile_serialization=False)
    return buffer.getvalue()


@pytest.mark.parametrize("make, what", [(m, w) for _, m, w in BAD_FILES], ids=[n for n, _, _ in BAD_FILES])
def test_an_unusable_file_is_one_sentence_saying_what_it_is(tmp_path, make, what):
    model = build_model(num_classes=3, separable=True, backbone={"name": "mobilenet_v2", "width_mult": 0.5})
    good = tmp_path / "good.pt"
    save_checkpoint(good, _state(model))
    bad = tmp_path / "bad.pt"
    make(bad, good)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(bad)
    message = str(info.value)
    assert message.startswith(f"{bad}: ") and what in message and "\n" not in message, message
    assert "Weights only load failed" not in message and "file an issue" not in message  # not torch's advice


class Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("writer", [torch.save, _pickle_with_plain_pickle], ids=["torch.save", "pickle.dump"])
def test_pickled_code_never_runs(tmp_path, writer):
    path = tmp_path / "evil.pt"
    writer({"model": {}, "config": {}, "payload": Evil(tmp_path / "pwned")}, path)
    with pytest.raises(CheckpointError, match="evil.pt: refused: it holds code or objects other than tensors.* "
                                              "never unpickles code"):
        load_checkpoint(path)
    assert not (tmp_path / "pwned").exists()


def _write_then_fail(error):
    """A torch.save that writes part of the file and then fails as a full disk makes it fail."""
    def save(obj, path, *args, **kwargs):
        Path(path).write_bytes(b"\0" * 4096)
        raise error
    return save


@pytest.mark.parametrize("error", [
    RuntimeError("[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing file data/3: file "
                 "write failed"),
    OSError(errno.ENOSPC, "No space left on device"),
], ids=["torch-stream-writer", "enospc"])
def test_a_full_disk_keeps_the_last_checkpoint_and_says_how_much_space_is_needed(tmp_path, monkeypatch, error):
    model = build_model(num_classes=3, separable=True, backbone={"name": "mobilenet_v2", "width_mult": 0.5})
    path = tmp_path / "run" / "last.pt"
    save_checkpoint(path, _state(model, 1))
    before = path.read_bytes()
    monkeypatch.setattr(torch, "save", _write_then_fail(error))
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda folder: usage(10**9, 10**9 - 5000, 5000))
    with pytest.raises(CheckpointError) as info:
        save_checkpoint(path, _state(model, 2))
    message = str(info.value)
    needed = f"{max(tensor_bytes(model.state_dict()), len(before)) / 1e6:.1f} MB needed"  # the new or the old size
    for words in (str(path), "the disk is full", f"5.0 kB free in {path.parent}", needed,
                  "the previous last.pt is intact", f"then continue the run with resume={path}"):
        assert words in message and "\n" not in message, (words, message)
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"], "no temp file left behind"


def test_a_failure_with_room_to_spare_is_not_called_a_full_disk(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    monkeypatch.setattr(torch, "save", _write_then_fail(RuntimeError("something else broke")))
    with pytest.raises(RuntimeError, match="something else broke"):
        save_checkpoint(path, {"model": {}, "config": {}})
    assert not path.exists() and not list(tmp_path.iterdir())


def test_temp_files_of_a_killed_write_are_removed_by_the_next(tmp_path):
    import subprocess

    path = tmp_path / "last.pt"
    ended = subprocess.Popen(["true"])
    ended.wait()  # a process that has ended: its temp file is a killed write's
    stale = [tmp_path / f".last.pt.{ended.pid}.k1ll3d_x.tmp", tmp_path / f".last.pt.{os.getpid()}.abcdefgh.tmp"]
    others = [tmp_path / ".last.pt.bak.1.abcdefgh.tmp", tmp_path / "notes.tmp", tmp_path / ".best.pt.1.abcdefgh.tmp",
              tmp_path / ".last.pt.1.abcdefgh.tmp"]  # pid 1 runs: another process's write in progress is left alone
    for p in stale + others:
        p.write_bytes(b"half a checkpoint")
    save_checkpoint(path, {"model": {}, "config": {}})
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["last.pt", *(p.name for p in others)])


def test_wrong_model_mismatch_messages(tmp_path):
    three = build_model(num_classes=3, separable=True, backbone={"name": "mobilenet_v2", "width_mult": 0.5})
    five = build_model(num_classes=5, separable=True, backbone={"name": "mobilenet_v2", "width_mult": 0.5})
    with pytest.raises(CheckpointError, match="x.pt: checkpoint is for 3 classes but the model has 5"):
        load_model_weights(five, three.state_dict(), source="x.pt")
    dense = build_model(num_classes=3, backbone={"name": "mobilenet_v2", "width_mult": 0.5})
    with pytest.raises(CheckpointError, match="y.pt: checkpoint does not fit this model .*separable"):
        load_model_weights(dense, three.state_dict(), source="y.pt")
    assert load_model_weights(five, three.state_dict(), source="z", reinit_classifier=True) == [
        "decoder.classifier.weight", "decoder.classifier.bias"]


def test_a_write_that_must_not_replace_keeps_a_file_another_process_wrote_meanwhile(tmp_path):
    """export and convert check, before a long write, that their output does not exist (overwrite=false); a second
    command with the same output= that finishes first must keep its file, not have it replaced by the slower one."""
    path = tmp_path / "model.onnx"

    def slow_write(tmp):
        path.write_bytes(b"the other process's export")  # it finishes while this one writes
        tmp.write_bytes(b"this process's export")
    with pytest.raises(UserError) as info:
        atomic_write(path, slow_write, replace=False)
    one_sentence(info, path, "another process wrote this file", "overwrite=true")
    assert path.read_bytes() == b"the other process's export"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]  # no temp file left
    atomic_write(path, lambda tmp: tmp.write_bytes(b"replaced"))  # overwrite=true replaces, as before
    assert path.read_bytes() == b"replaced"
    new = tmp_path / "new.pt"
    save_checkpoint(new, {"model": {}, "config": {}}, replace=False)  # nothing there: written
    assert load_checkpoint(new)["config"] == {}
