import numpy as np
import pytest
import torch

from deeplab.export import ExportError, check_output, export_onnx, export_pt2, quantize_onnx, verify_onnx
from deeplab.model import build_model
from deeplab.onnx_model import ort_session

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    net = build_model(num_classes=4, separable=True, backbone={"name": "mobilenet_v2", "width_mult": 0.5})
    for m in net.modules():  # BN statistics as after training, so folding is really exercised
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 1.5)
    return net.eval()


@pytest.fixture(scope="module")
def onnx_file(model, tmp_path_factory):
    return export_onnx(model, tmp_path_factory.mktemp("onnx") / "model.onnx")


def test_onnx_matches_pytorch_on_several_sizes_and_batches(model, onnx_file):
    import onnx

    proto = onnx.load(str(onnx_file))
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert not any(n.op_type == "BatchNormalization" for n in proto.graph.node)  # folded
    assert verify_onnx(onnx_file, model, sizes=[(1, 65, 97), (2, 128, 96), (1, 33, 200)]) < 1e-3


def test_onnx_output_follows_the_model_contract(onnx_file):
    out = ort_session(onnx_file).run(["logits"], {"images": np.zeros((3, 3, 70, 50), np.float32)})[0]
    assert out.shape == (3, 4, 70, 50) and out.dtype == np.float32


def test_export_never_overwrites_an_existing_file(model, tmp_path):
    target = tmp_path / "mine.onnx"
    target.write_bytes(b"a user's file")
    with pytest.raises(ExportError, match="exists"):
        export_onnx(model, target)
    assert target.read_bytes() == b"a user's file"
    assert not list(tmp_path.glob(".mine.onnx.*"))  # no temp file left behind
    export_onnx(model, target, overwrite=True)  # asked: an earlier export (or any non-checkpoint file) is replaced
    assert ort_session(target).get_inputs()[0].name == "images"


@pytest.mark.slow  # an int8 quantisation
def test_int8_model_runs_and_labels_like_the_float_model(model, onnx_file, tmp_path):
    rng = np.random.default_rng(0)
    calibration = [rng.normal(size=(1, 3, 64, 64)).astype(np.float32) for _ in range(4)]
    path = quantize_onnx(onnx_file, tmp_path / "model.int8.onnx", calibration)
    assert path.stat().st_size < onnx_file.stat().st_size / 2
    x = rng.normal(size=(2, 3, 80, 72)).astype(np.float32)
    got = ort_session(path).run(["logits"], {"images": x})[0]
    assert got.shape == (2, 4, 80, 72) and np.isfinite(got).all()
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    assert (got.argmax(1) == expected.argmax(1)).mean() > 0.95, "int8 labels are the float model's on most pixels"
    # the labels alone are weak evidence (a random model may give one class nearly everywhere): the int8 logits
    # must follow the float ones, compared per pixel after removing each pixel's mean over the classes
    centred = [(a - a.mean(1, keepdims=True)).ravel() for a in (got, expected)]
    assert np.corrcoef(*centred)[0, 1] > 0.95


@pytest.mark.slow  # a torch.export (pt2) export
def test_pt2_export_has_dynamic_batch_and_size(model, tmp_path):
    path = export_pt2(model, tmp_path / "model.pt2")
    assert check_output(path, overwrite=True) == path, "a .pt2 is a zip too, but not a checkpoint: it may be replaced"
    program = torch.export.load(str(path)).module()
    for shape in [(1, 3, 64, 64), (3, 3, 97, 65)]:
        x = torch.randn(shape)
        with torch.no_grad():
            assert (program(x) - model(x)).abs().max() < 1e-4


def _export_cli(*args):
    import subprocess
    import sys

    from conftest import REPO

    return subprocess.run([sys.executable, "-m", "deeplab.export", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.slow  # python -m deeplab.export four times, as processes
def test_export_command_writes_verified_onnx_int8_and_pt2_beside_nothing_of_the_users(trained, tmp_path):
    _, checkpoint = trained
    done = _export_cli(f"checkpoint={checkpoint}", f"output={tmp_path / 'm.onnx'}")
    assert done.returncode == 0, done.stderr
    assert "ONNX Runtime vs PyTorch: max |logit difference|" in done.stdout and (tmp_path / "m.onnx").is_file()
    done = _export_cli(f"checkpoint={checkpoint}", "format=int8", f"output={tmp_path / 'm.int8.onnx'}",
                       "calibration_images=2", "val_images=2")
    assert done.returncode == 0, done.stderr
    assert "mIoU float" in done.stdout and "int8" in done.stdout and (tmp_path / "m.int8.onnx").is_file()
    done = _export_cli(f"checkpoint={checkpoint}", f"output={tmp_path / 'm.onnx'}")
    assert done.returncode == 1 and "exists" in done.stdout + done.stderr
    done = _export_cli(f"checkpoint={tmp_path / 'nothing.pt'}")
    assert done.returncode == 1 and "no such checkpoint file" in done.stdout + done.stderr


def test_predictor_and_evaluate_run_an_exported_model(trained, tmp_path, capsys):
    from deeplab.engine.checkpoint import CheckpointError
    from deeplab.inference import Predictor

    tree, checkpoint = trained
    from deeplab.inference import model_from_checkpoint

    model, _ = model_from_checkpoint(checkpoint)
    path = export_onnx(model, tmp_path / "m.onnx")
    image = np.random.default_rng(1).integers(0, 256, (45, 61, 3), dtype=np.uint8)
    plain = Predictor.from_checkpoint(checkpoint, fast=False, precision="fp32")
    onnx = Predictor.from_checkpoint(checkpoint, onnx=path)
    labels, probs = onnx.predict(image, return_probs=True)
    expected_labels, expected_probs = plain.predict(image, return_probs=True)
    assert np.abs(probs - expected_probs).max() < 1e-4 and (labels == expected_labels).mean() > 0.999
    assert onnx.predict_batch([image, image]).shape == (2, 21, 45, 61)
    other = export_onnx(build_model(num_classes=3, separable=True), tmp_path / "other.onnx")
    with pytest.raises(CheckpointError, match="gives 3 classes but the checkpoint"):
        Predictor.from_checkpoint(checkpoint, onnx=other)
    (tmp_path / "junk.onnx").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="junk.onnx: not a readable ONNX model"):
        Predictor.from_checkpoint(checkpoint, onnx=tmp_path / "junk.onnx")
    from conftest import compose
    from deeplab.cli import evaluate as evaluate_cli

    capsys.readouterr()  # num_workers=0: see test_inference.test_evaluate_and_score_saved_predictions_agree
    result = evaluate_cli.run(compose("evaluate", [f"checkpoint={checkpoint}", f"onnx={path}", f"data_root={tree}",
                                                   "num_workers=0"]), tmp_path / "ev")
    assert "mIoU" in capsys.readouterr().out and (tmp_path / "ev" / "metrics.json").is_file()
    pytorch = evaluate_cli.run(compose("evaluate", [f"checkpoint={checkpoint}", f"data_root={tree}", "num_workers=0",
                                                    "precision=fp32"]), tmp_path / "ev_pt")
    assert result["images"] == pytorch["images"] == 3
    assert result["mIoU"] == pytest.approx(pytorch["mIoU"], abs=0.01), "the exported model scores as the checkpoint"


def test_every_export_format_has_one_exporter_in_the_table():
    from deeplab.cli.export import EXPORTERS
    from deeplab.export import FORMATS

    assert sorted(EXPORTERS) == sorted(FORMATS)
