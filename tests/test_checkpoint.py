import os

import pytest
import torch

from deeplab.engine.checkpoint import (CheckpointError, find_latest, load_checkpoint, load_model_weights,
                                       save_checkpoint)
from deeplab.model import build_model


def _state(model, iteration=1):
    return {"model": model.state_dict(), "config": {"model": {"num_classes": model.num_classes}},
            "iteration": iteration}


def test_round_trip_and_atomic_replace(tmp_path, monkeypatch):
    model = build_model(num_classes=3, separable=True, width_mult=0.5)
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
    assert find_latest(tmp_path) == path
    umask = os.umask(0o022)
    try:
        save_checkpoint(path, _state(model, 3))
    finally:
        os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o644, "readable like any new file, not mkstemp's owner-only 0600"


def test_bad_files_give_one_clear_sentence(tmp_path):
    with pytest.raises(CheckpointError, match="nope.pt: no such checkpoint file"):
        load_checkpoint(tmp_path / "nope.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"hello")
    with pytest.raises(CheckpointError, match="junk.pt: not a readable deeplab checkpoint"):
        load_checkpoint(junk)
    model = build_model(num_classes=3, separable=True, width_mult=0.5)
    good = tmp_path / "good.pt"
    save_checkpoint(good, _state(model))
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated.pt: not a readable deeplab checkpoint"):
        load_checkpoint(truncated)
    weights_only = tmp_path / "weights.pt"
    torch.save(model.state_dict(), weights_only)
    with pytest.raises(CheckpointError, match="weights.pt: not a deeplab checkpoint"):
        load_checkpoint(weights_only)


class Evil:
    def __reduce__(self):
        return (exec, ("import os; os.environ['PWNED'] = '1'",))


def test_pickled_code_never_runs(tmp_path, monkeypatch):
    monkeypatch.delenv("PWNED", raising=False)
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "config": {}, "payload": Evil()}, path)
    with pytest.raises(CheckpointError, match="evil.pt: not a readable deeplab checkpoint"):
        load_checkpoint(path)
    assert "PWNED" not in os.environ


def test_wrong_model_mismatch_messages(tmp_path):
    three = build_model(num_classes=3, separable=True, width_mult=0.5)
    five = build_model(num_classes=5, separable=True, width_mult=0.5)
    with pytest.raises(CheckpointError, match="x.pt: checkpoint is for 3 classes but the model has 5"):
        load_model_weights(five, three.state_dict(), source="x.pt")
    dense = build_model(num_classes=3, width_mult=0.5)
    with pytest.raises(CheckpointError, match="y.pt: checkpoint does not fit this model .*separable"):
        load_model_weights(dense, three.state_dict(), source="y.pt")
    assert load_model_weights(five, three.state_dict(), source="z", reinit_classifier=True) == [
        "decoder.classifier.weight", "decoder.classifier.bias"]
