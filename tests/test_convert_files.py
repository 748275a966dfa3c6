"""Converted peer checkpoints as files: reading, refusals, the command, and the converted checkpoints run through
evaluate, predict, export and init_from (the peer formats: tests/peer_formats.py)."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import compose, make_voc_tree, one_sentence, tiny_train_overrides
from peer_formats import VOC, bubbliiiing_state, vainf_state
from deeplab.cli import convert as convert_cli
from deeplab.cli import evaluate as evaluate_cli
from deeplab.cli import export as export_cli
from deeplab.convert import ConvertError, convert_checkpoint
from deeplab.engine.checkpoint import load_checkpoint
from deeplab.engine.trainer import train
from deeplab.errors import ConfigError
from deeplab.export import verify_onnx
from deeplab.inference import Predictor, model_from_checkpoint


# --- files and refusals ---------------------------------------------------------------------------------------------

def _vainf_file(path, model, **extra):
    torch.save({"cur_itrs": 30000, "model_state": vainf_state(model.state_dict()),
                "optimizer_state": {"state": {}, "param_groups": [{"lr": 0.01, "params": [0, 1]}]},
                "scheduler_state": {"last_epoch": 30000, "base_lrs": [0.01]}, "best_score": np.float64(0.711),
                **extra}, path)
    return path


def test_vainf_file_with_its_numpy_best_score_converts_to_a_self_describing_checkpoint(vainf_model, tmp_path):
    source = _vainf_file(tmp_path / "best_deeplabv3plus_mobilenet_voc_os16.pth", vainf_model)
    done = convert_checkpoint(source, source="vainf", dataset=VOC, output=tmp_path / "out.pt")
    state = load_checkpoint(done.path)
    assert state["config"]["dataset"]["mean"] == [0.485, 0.456, 0.406]  # VainF's normalisation, not the config's
    assert state["config"]["dataset"]["class_names"] == VOC["class_names"]
    assert state["converted_from"]["repository"] == "VainF/DeepLabV3Plus-Pytorch"
    assert state["converted_from"]["best_score"] == pytest.approx(0.711)
    assert state["converted_from"]["cur_itrs"] == 30000
    model, _ = model_from_checkpoint(done.path)
    x = torch.randn(1, 3, 65, 66)
    with torch.no_grad():
        assert torch.allclose(model(x), vainf_model(x), atol=1e-5)


def test_numpy_1_pickles_of_the_best_score_load_too(vainf_model, tmp_path):
    """numpy 1.x (what VainF's checkpoints were written with) names the scalar numpy.core.multiarray.scalar."""
    buffer = io.BytesIO()
    torch.save({"model_state": vainf_state(vainf_model.state_dict()), "best_score": np.float64(0.7)}, buffer,
               _use_new_zipfile_serialization=False)
    raw = buffer.getvalue()
    assert b"numpy._core.multiarray" in raw or b"numpy.core.multiarray" in raw
    (tmp_path / "old.pth").write_bytes(raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    done = convert_checkpoint(tmp_path / "old.pth", source="vainf", dataset=VOC, output=tmp_path / "old.pt")
    assert load_checkpoint(done.path)["converted_from"]["best_score"] == pytest.approx(0.7)


class _Code:
    """Stands for a pickled object whose class would have to be imported (and could run code) to load."""


def _refused(tmp_path, source_file, source, *, dataset=VOC, names=(), output=None):
    output = output or tmp_path / "converted.pt"
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(ConvertError) as info:
        convert_checkpoint(source_file, source=source, dataset=dataset, output=output)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written, not even a temp file
    return one_sentence(info, *names)


@pytest.fixture
def vainf_peer(vainf_model):
    return vainf_state(vainf_model.state_dict())


@pytest.fixture
def bubbliiiing_peer(bubbliiiing_model):
    return bubbliiiing_state(bubbliiiing_model.state_dict())


def test_refusals_are_one_sentence_and_write_nothing(tmp_path, vainf_peer, bubbliiiing_peer):
    text = tmp_path / "page.pth"
    text.write_text("<html><body>Dropbox - sign in</body></html>")
    assert "a text file" in _refused(tmp_path, text, "vainf", names=[text])

    code = tmp_path / "code.pth"
    torch.save({"model_state": vainf_peer, "trainer": _Code()}, code)
    message = _refused(tmp_path, code, "vainf", names=[code, "weights_only=True", "_Code"])
    assert "never runs code" in message

    missing = tmp_path / "missing.pth"
    torch.save({"model_state": {k: v for k, v in vainf_peer.items() if k != "classifier.aspp.convs.2.1.weight"}},
               missing)
    assert "has no classifier.aspp.convs.2.1.weight" in _refused(tmp_path, missing, "vainf", names=[missing])

    extra = tmp_path / "extra.pth"
    torch.save({**bubbliiiing_peer, "aspp.branch6.0.weight": torch.zeros(1)}, extra)
    assert _refused(tmp_path, extra, "bubbliiiing").startswith(f"{extra}: aspp.branch6.0.weight: no tensor of the "
                                                               "bubbliiiing DeepLabV3+ MobileNetV2 model")
    unfolded = tmp_path / "no_bias.pth"
    torch.save({k: v for k, v in bubbliiiing_peer.items() if k != "cat_conv.4.bias"}, unfolded)
    assert "has no cat_conv.4.bias" in _refused(tmp_path, unfolded, "bubbliiiing")

    shape = tmp_path / "shape.pth"
    torch.save({"model_state": {**vainf_peer, "classifier.aspp.project.0.weight": torch.zeros(256, 1024, 1, 1)}},
               shape)
    assert "classifier.aspp.project.0.weight has shape (256, 1024, 1, 1) where the VainF DeepLabV3+ MobileNetV2 " \
           "model has (256, 1280, 1, 1)" in _refused(tmp_path, shape, "vainf")

    vainf = tmp_path / "vainf.pth"
    torch.save({"model_state": vainf_peer, "best_score": np.float64(0.7)}, vainf)
    assert "is a VainF/DeepLabV3Plus-Pytorch checkpoint, not a bubbliiiing one: convert it with from=vainf" in \
        _refused(tmp_path, vainf, "bubbliiiing")
    bubbliiiing = tmp_path / "bubbliiiing.pth"
    torch.save(bubbliiiing_peer, bubbliiiing)
    assert "is a bubbliiiing/deeplabv3-plus-pytorch checkpoint, not a vainf one: convert it with from=bubbliiiing" \
           in _refused(tmp_path, bubbliiiing, "vainf")
    assert _refused(tmp_path, vainf, "tensorflow").startswith("from=tensorflow: not a format deeplab converts")

    cityscapes = {**VOC, "num_classes": 19, "class_names": VOC["class_names"][:19]}
    assert _refused(tmp_path, vainf, "vainf", dataset=cityscapes) == (
        f"{vainf}: its model gives 21 classes but the dataset (voc) has dataset.num_classes=19; choose dataset=voc")

    assert "is the source file itself, which is never replaced" in _refused(tmp_path, vainf, "vainf",
                                                                                   output=vainf)
    taken = tmp_path / "taken.pt"
    taken.write_bytes(b"")
    assert f"{taken} exists; choose another output=FILE or set overwrite=true" in _refused(tmp_path, vainf, "vainf",
                                                                                         output=taken)


def test_vainf_checkpoints_that_have_no_counterpart_here_are_named(tmp_path, vainf_peer):
    deeplabv3 = {k.replace("classifier.aspp.", "classifier.classifier.0."): v for k, v in vainf_peer.items()
                 if not k.startswith(("classifier.project", "classifier.classifier."))}
    deeplabv3["classifier.classifier.4.weight"] = torch.zeros(21, 256, 1, 1)
    torch.save({"model_state": deeplabv3}, tmp_path / "v3.pth")
    with pytest.raises(ConvertError) as info:
        convert_checkpoint(tmp_path / "v3.pth", source="vainf", dataset=VOC, output=tmp_path / "v3.pt")
    assert "is a VainF DeepLabV3 checkpoint (no decoder" in one_sentence(info)
    separable = {k.replace("classifier.classifier.0.weight", "classifier.classifier.0.body.0.weight"): v
                 for k, v in vainf_peer.items()}
    torch.save({"model_state": separable}, tmp_path / "sep.pth")
    with pytest.raises(ConvertError) as info:
        convert_checkpoint(tmp_path / "sep.pth", source="vainf", dataset=VOC, output=tmp_path / "sep.pt")
    assert "was trained with --separable_conv" in one_sentence(info)
    assert not list(tmp_path.glob("*.pt"))


# --- the command, and what takes a converted checkpoint -------------------------------------------------------------

@pytest.fixture(scope="module")
def converted(vainf_model, bubbliiiing_model, tmp_path_factory):
    """Both formats converted with the command, and a tiny VOC tree to evaluate them on."""
    tmp = tmp_path_factory.mktemp("converted")
    vainf = _vainf_file(tmp / "best_deeplabv3plus_mobilenet_voc_os16.pth", vainf_model)
    bubbliiiing = tmp / "deeplab_mobilenetv2.pth"
    torch.save(bubbliiiing_state(bubbliiiing_model.state_dict()), bubbliiiing)
    paths = {}
    for name, source in (("vainf", vainf), ("bubbliiiing", bubbliiiing)):
        paths[name] = convert_cli.run(compose("convert", [f"source={source}", f"from={name}", "dataset=voc",
                                                          f"output={tmp / name}.pt"]))
    return make_voc_tree(tmp / "VOC", n_train=4, n_val=2, size=(48, 64)), paths


def test_the_command_writes_a_checkpoint_with_the_dataset_config(converted):
    _, paths = converted
    for name, mean in (("vainf", [0.485, 0.456, 0.406]), ("bubbliiiing", [0.0, 0.0, 0.0])):
        config = load_checkpoint(paths[name])["config"]
        assert config["dataset"]["class_names"][15] == "person" and config["dataset"]["palette"][1] == [128, 0, 0]
        assert config["dataset"]["mean"] == mean and config["model"]["num_classes"] == 21


def test_the_command_refuses_in_one_line(tmp_path, entry_point, capsys):
    code = entry_point(convert_cli.main, f"source={tmp_path / 'nowhere.pth'}", "from=vainf")
    out = "".join(capsys.readouterr())
    assert code == 1 and "nowhere.pth: no such checkpoint file" in out and "Traceback" not in out
    code = entry_point(convert_cli.main, f"source={tmp_path / 'nowhere.pth'}", "from=caffe")
    out = "".join(capsys.readouterr())
    assert code == 1 and "from=caffe: not a format deeplab converts; use from=vainf" in out
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("name", ["vainf", "bubbliiiing"])
def test_converted_checkpoints_predict_with_the_peers_normalisation(converted, name):
    tree, paths = converted
    predictor = Predictor.from_checkpoint(paths[name], fast=False, precision="fp32")
    image = np.array(Image.open(next((tree / "JPEGImages").glob("*.jpg"))).convert("RGB"))
    labels, probs = predictor.predict(image, return_probs=True)
    assert labels.shape == image.shape[:2] and probs.shape == (21, *image.shape[:2])
    data = load_checkpoint(paths[name])["config"]["dataset"]
    x = torch.from_numpy(image).permute(2, 0, 1).float()[None] / 255  # VainF: ImageNet mean/std; bubbliiiing: / 255
    x = (x - torch.tensor(data["mean"]).view(1, 3, 1, 1)) / torch.tensor(data["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = predictor.model(x).softmax(1)[0].numpy()
    assert np.abs(probs - expected).max() < 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vainf", "bubbliiiing"])
def test_converted_checkpoints_evaluate_at_os16_and_os8_and_predict_fast(converted, name, tmp_path):
    tree, paths = converted
    for stride in (None, 8):
        overrides = [f"checkpoint={paths[name]}", f"data_root={tree}", "num_workers=0", "device=cpu",
                     "precision=fp32"] + ([f"output_stride={stride}"] if stride else [])
        metrics = evaluate_cli.run(compose("evaluate", overrides), tmp_path / f"eval{stride}")
        assert metrics["images"] == 2 and 0 <= metrics["mIoU"] <= 1 and len(metrics["class_names"]) == 21
    model, _ = model_from_checkpoint(paths[name], output_stride=8)
    assert model.output_stride == 8 and model.aspp.rates == (12, 24, 36)
    image = np.array(Image.open(next((tree / "JPEGImages").glob("*.jpg"))).convert("RGB"))
    _, fast = Predictor.from_checkpoint(paths[name], precision="fp32").predict(image, return_probs=True)
    _, plain = Predictor.from_checkpoint(paths[name], fast=False, precision="fp32").predict(image, return_probs=True)
    assert np.abs(fast - plain).max() < 1e-4


def test_resuming_a_converted_checkpoint_is_refused_pointing_to_init_from(converted, tmp_path):
    tree, paths = converted
    overrides = ["dataset=voc", *tiny_train_overrides(tree, tmp_path / "outputs", 2), f"resume={paths['vainf']}"]
    with pytest.raises(ConfigError) as info:
        train(compose("train", overrides), tmp_path / "stub", overrides=overrides)
    assert "converted from VainF/DeepLabV3Plus-Pytorch" in one_sentence(info, f"init_from={paths['vainf']}")


@pytest.mark.slow
def test_converted_checkpoints_export_to_onnx(converted, tmp_path):
    _, paths = converted
    for name in ("vainf", "bubbliiiing"):
        onnx = export_cli.run(compose("export", [f"checkpoint={paths[name]}", "format=onnx",
                                                 f"output={tmp_path / name}.onnx"]))
        model, _ = model_from_checkpoint(paths[name])
        assert verify_onnx(onnx, model, sizes=((1, 65, 97),)) < 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("name, options", [
    ("vainf", ["model.decoder_convs=1", "model.backbone.padding=input"]),
    ("bubbliiiing", ["model.align_corners=true", "dataset.mean=[0,0,0]", "dataset.std=[1,1,1]"]),
])
def test_converted_checkpoints_start_a_training_run(converted, name, options, tmp_path):
    tree, paths = converted
    overrides = ["dataset=voc", *tiny_train_overrides(tree, tmp_path / "outputs", 2, model=()), "model.separable=false",
                 f"init_from={paths[name]}", *options]
    train(compose("train", overrides), tmp_path / "run")
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    start = load_checkpoint(paths[name])["model"]
    assert state["iteration"] == 2 and set(state["model"]) == set(start)
    moved = (state["model"]["aspp.project.0.weight"] - start["aspp.project.0.weight"]).abs().max()
    assert 0 < moved < 0.1  # two small steps from the converted weights, not from scratch
