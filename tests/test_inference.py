import json
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO
from deeplab.cli.evaluate import main as evaluate_main
from deeplab.cli.predict import main as predict_main
from deeplab.engine.tta import predict_probs
from deeplab.inference import Predictor, model_from_checkpoint


def test_predictor_labels_and_probabilities_for_any_size(trained):
    _, checkpoint = trained
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu")
    image = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    labels, probs = predictor.predict(image, return_probs=True)
    assert labels.shape == (37, 53) and labels.dtype == np.uint8
    assert probs.shape == (21, 37, 53) and np.allclose(probs.sum(0), 1, atol=1e-5)
    assert (labels == probs.argmax(0)).all()
    with pytest.raises(ValueError, match=r"image: an array of shape \(37, 53, 2\) is no image"):
        predictor.predict(image[..., :2])


def test_single_scale_without_flip_is_plain_inference(trained):
    model, _ = model_from_checkpoint(trained[1])
    x = torch.randn(2, 3, 45, 61)
    with torch.no_grad():
        plain = model(x).softmax(1)
    assert torch.allclose(predict_probs(model, x, scales=[1.0], flip=False), plain, atol=1e-6)


def test_sliding_window_over_a_smaller_image_is_plain_inference(trained):
    model, _ = model_from_checkpoint(trained[1])
    x = torch.randn(1, 3, 45, 61)
    plain = predict_probs(model, x)
    assert torch.allclose(predict_probs(model, x, window=[64, 64], stride=[32, 32]), plain, atol=1e-6)
    tiled = predict_probs(model, torch.randn(1, 3, 100, 130), window=[64, 64], stride=[40, 40])
    assert tiled.shape == (1, 21, 100, 130) and torch.allclose(tiled.sum(1), torch.ones(1, 100, 130), atol=1e-5)


def test_multiscale_flip_averages_probabilities(trained):
    model, _ = model_from_checkpoint(trained[1])
    x = torch.randn(1, 3, 48, 64)
    both = predict_probs(model, x, scales=[0.75, 1.0], flip=True)
    parts = [predict_probs(model, x, scales=[s]) for s in (0.75, 1.0)]
    parts += [predict_probs(model, x.flip(-1), scales=[s]).flip(-1) for s in (0.75, 1.0)]
    assert torch.allclose(both, sum(parts) / 4, atol=1e-6)


def _cli(script, *args, cwd=REPO):
    return subprocess.run([sys.executable, script, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.fixture
def command(entry_point, capsys):
    """command(script, *args): the script's Hydra main run in this process (conftest.entry_point), answering like
    subprocess.run: returncode, stdout, stderr. `python evaluate.py` as a process: test_bad_checkpoints (slow tier)."""
    mains = {"evaluate.py": evaluate_main, "predict.py": predict_main}

    def run(script, *args):
        capsys.readouterr()
        code = entry_point(mains[script], *args)
        out, err = capsys.readouterr()
        return SimpleNamespace(returncode=code, stdout=out, stderr=err)

    return run


def test_evaluate_and_score_saved_predictions_agree(trained, tmp_path, command):
    tree, checkpoint = trained
    # num_workers=0: the val loader's iterator is left to the garbage collector, and stopping its two persistent
    # workers from there waits 5 s each, in this process (`python evaluate.py` exits instead)
    done = command("evaluate.py", f"checkpoint={checkpoint}", f"data_root={tree}", "num_workers=0",
                   f"hydra.run.dir={tmp_path / 'ev'}")
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["images"] == 3 and "mIoU" in done.stdout and (tmp_path / "ev" / "confusion_matrix.png").is_file()
    assert any(v is None for v in metrics["per_class_iou"]) and "absent" in done.stdout
    # predict the val images, then score that folder with no model: the same numbers
    val_dir = tmp_path / "val_images"
    val_dir.mkdir()
    for line in (tree / "ImageSets/Segmentation/val.txt").read_text().split():
        (val_dir / f"{line}.jpg").write_bytes((tree / "JPEGImages" / f"{line}.jpg").read_bytes())
    done = command("predict.py", f"checkpoint={checkpoint}", f"input={val_dir}", f"output={tmp_path / 'pred'}",
                   "save_color=false", "save_overlay=false", f"hydra.run.dir={tmp_path / 'run'}")
    assert done.returncode == 0, done.stderr[-2000:]
    done = command("evaluate.py", f"predictions={tmp_path / 'pred'}", "dataset=voc", f"dataset.root={tree}",
                   f"hydra.run.dir={tmp_path / 'scored'}")
    assert done.returncode == 0, done.stderr[-2000:]
    scored = json.loads((tmp_path / "scored" / "metrics.json").read_text())
    assert scored["confusion_matrix"] == metrics["confusion_matrix"]
    first = tmp_path / "pred" / sorted(p.name for p in (tmp_path / "pred").iterdir())[0]
    unlabelled = np.array(Image.open(first))
    unlabelled[:2] = 255
    Image.fromarray(unlabelled).save(first)
    done = command("evaluate.py", f"predictions={tmp_path / 'pred'}", "dataset=voc", f"dataset.root={tree}",
                   f"hydra.run.dir={tmp_path / 'scored1'}")
    assert done.returncode == 1 and f"{first.name}: {2 * unlabelled.shape[1]} pixel(s) hold the ignore value 255" \
        in done.stdout + done.stderr
    first.unlink()
    done = command("evaluate.py", f"predictions={tmp_path / 'pred'}", "dataset=voc", f"dataset.root={tree}",
                   f"hydra.run.dir={tmp_path / 'scored2'}")
    assert done.returncode == 1 and "missing prediction for" in done.stdout + done.stderr


def test_predict_over_a_nested_folder_with_odd_images(trained, tmp_path, command):
    _, checkpoint = trained
    photos = tmp_path / "photos"
    (photos / "a" / "b").mkdir(parents=True)
    Image.fromarray(np.zeros((33, 47), np.uint8)).save(photos / "grey.png")
    Image.fromarray(np.zeros((40, 41, 4), np.uint8)).save(photos / "a" / "rgba.png")
    Image.fromarray(np.full((35, 36), 40000, np.uint16)).save(photos / "a" / "b" / "deep.png")
    (photos / "a" / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    out = tmp_path / "out"
    done = command("predict.py", f"checkpoint={checkpoint}", f"input={photos}", f"output={out}",
                   f"hydra.run.dir={tmp_path / 'run'}")
    assert done.returncode == 1, "an unreadable image makes the exit code non-zero"
    assert "broken.jpg: not a readable image" in done.stdout
    for stem, size in (("grey", (47, 33)), ("a/rgba", (41, 40)), ("a/b/deep", (36, 35))):
        index = Image.open(out / f"{stem}.png")
        assert index.mode == "P" and index.size == size
        assert (out / f"{stem}_color.png").is_file() and (out / f"{stem}_overlay.jpg").is_file()
    refused = command("predict.py", f"checkpoint={checkpoint}", f"input={photos}", f"output={photos / 'x'}",
                      f"hydra.run.dir={tmp_path / 'run2'}")
    assert refused.returncode == 1 and "inside the input folder" in refused.stdout + refused.stderr
    assert not (photos / "x").exists()


@pytest.mark.slow  # python evaluate.py twice, as processes
def test_bad_checkpoints_are_one_sentence(trained, tmp_path):
    done = _cli("evaluate.py", f"checkpoint={trained[1]}", "dataset=folder", f"hydra.run.dir={tmp_path / 'ev2'}")
    assert done.returncode == 1 and "checkpoint is for 21 classes but the dataset (folder) has 2" in done.stdout + done.stderr
    (tmp_path / "bad.pt").write_bytes(b"nonsense")
    done = _cli("evaluate.py", f"checkpoint={tmp_path / 'bad.pt'}", f"hydra.run.dir={tmp_path / 'ev'}")
    assert done.returncode == 1
    assert "bad.pt: a text file (it starts 'nonsense'), not a checkpoint" in done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
