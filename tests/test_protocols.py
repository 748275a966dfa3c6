"""The peer repositories' evaluation protocols (`evaluate.py protocol=...`, deeplab.engine.protocols): the transforms
on hand-made cases, and (slow) the mIoU of a converted random-weight peer checkpoint against the peer's own
evaluation code, run from a snapshot of the peer repository outside this project (tests/peer_eval.py).

The peer check needs the snapshots: DEEPLAB_PEER_VAINF and DEEPLAB_PEER_BUBBLIIIING, each a checkout of (or a bare
git directory holding) VainF/DeepLabV3Plus-Pytorch and bubbliiiing/deeplabv3-plus-pytorch; without them it is
skipped, saying so (CI has none: the project downloads nothing).
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import compose, make_mask, one_sentence
from peer_formats import VOC, bubbliiiing_state, randomised, vainf_state
from deeplab.cli.evaluate import run as evaluate_run
from deeplab.convert import NORMALISATION, convert_checkpoint
from deeplab.engine.protocols import (GREY, bubbliiiing_miou, center_crop, check_protocol, crop_back, letterbox,
                                      protocol_metrics, shorter_side_resize, to_tensor)
from deeplab.errors import ConfigError
from deeplab.metrics import ConfusionMatrix
from deeplab.model import build_model
from peer_formats import BUBBLIIIING_MODEL, VAINF_MODEL

TESTS = Path(__file__).resolve().parent


# --- the transforms, by hand ----------------------------------------------------------------------------------------

def test_letterbox_scales_to_fit_truncates_and_centres_on_grey():
    image = Image.new("RGB", (300, 200), (10, 200, 30))  # w x h
    boxed, nw, nh = letterbox(image)
    assert boxed.shape == (512, 512, 3) and (nw, nh) == (512, 341)  # 200 * 512 / 300 = 341.33, truncated
    top = (512 - 341) // 2  # 85
    assert (boxed[:top] == GREY).all() and (boxed[top + nh:] == GREY).all()
    assert (boxed[top:top + nh] == (10, 200, 30)).all()  # a uniform image stays uniform under bicubic
    tall, nw, nh = letterbox(Image.new("RGB", (100, 400), (0, 0, 0)))
    assert (nw, nh) == (128, 512) and (tall[:, :192] == GREY).all() and (tall[:, 192:320] == 0).all()


def test_crop_back_takes_the_letterbox_content_and_resizes_it_to_the_image():
    # a 256x128 (w x h) image is letterboxed at scale 2: content 512x256 at top 128
    boxed, nw, nh = letterbox(Image.new("RGB", (256, 128)))
    assert (nw, nh) == (512, 256)
    probs = np.zeros((512, 512, 3), np.float32)
    probs[..., 2] = 1.0  # the grey border: class 2, which must not survive the crop
    probs[128:384, :256, 2], probs[128:384, :256, 0] = 0.0, 1.0
    probs[128:384, 256:, 2], probs[128:384, 256:, 1] = 0.0, 1.0
    labels = crop_back(probs, nw, nh, (128, 256))
    assert labels.shape == (128, 256)
    assert (labels[:, :128] == 0).all() and (labels[:, 128:] == 1).all()


def test_shorter_side_resize_and_centre_crop_are_torchvisions():
    functional = pytest.importorskip("torchvision.transforms.functional")
    rng = np.random.default_rng(0)
    for width, height in [(400, 300), (300, 451), (513, 600), (514, 513), (516, 700)]:
        image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        mask = Image.fromarray(rng.choice(np.array([0, 7, 255], np.uint8), (height, width)))
        resized, label = shorter_side_resize(image, mask, 513)
        short, long = min(width, height), max(width, height)
        assert min(resized.size) == 513 and max(resized.size) == int(513 * long / short) and label.size == resized.size
        assert np.array_equal(np.asarray(resized), np.asarray(functional.resize(image, 513)))
        assert set(np.unique(np.asarray(label))) <= {0, 7, 255}  # nearest: no blended label values
        for array, pil in ((np.asarray(resized), resized), (np.asarray(label), label)):
            assert np.array_equal(center_crop(array, 513), np.asarray(functional.center_crop(pil, 513)))


def test_centre_crop_offsets_round_half_to_even_as_torchvision():
    columns = np.tile(np.arange(520), (513, 1))
    assert [center_crop(columns[:, :w], 513)[0, 0] for w in (513, 514, 515, 516, 518)] == [0, 0, 1, 2, 2]


def test_to_tensor_is_to_tensor_then_normalize():
    functional = pytest.importorskip("torchvision.transforms.functional")
    array = np.random.default_rng(1).integers(0, 256, (7, 9, 3), dtype=np.uint8)
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    expected = functional.normalize(functional.to_tensor(Image.fromarray(array)), mean, std)
    assert torch.equal(to_tensor(array, mean, std)[0], expected)


def test_bubbliiiing_miou_counts_classes_in_neither_truth_nor_prediction_as_zero():
    matrix = ConfusionMatrix(3)
    matrix.update(torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 1, 1]))  # class 2 nowhere
    # class 0: 1 hit / union 2; class 1: 2 / 3; class 2: 0 / max(0, 1)
    assert protocol_metrics("bubbliiiing", matrix)["mIoU"] == pytest.approx((1 / 2 + 2 / 3 + 0) / 3)
    assert protocol_metrics("vainf_full", matrix)["mIoU"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert bubbliiiing_miou(np.zeros((2, 2))) == 0.0


@pytest.mark.parametrize("settings, words", [
    (dict(protocol="mmseg"), "protocol=mmseg: must be one of full, vainf, vainf_full, bubbliiiing"),
    (dict(protocol="vainf_full", scales=[0.5, 1.0]), "protocol=vainf_full evaluates as that repository does"),
    (dict(protocol="bubbliiiing", flip=True), "drop scales=, flip= and window="),
    (dict(protocol="vainf", predictions="preds"), "a protocol is how a model's predictions are made"),
])
def test_protocol_settings_that_cannot_work_are_one_sentence(settings, words):
    given = dict(scales=[1.0], flip=False, window=None) | settings
    with pytest.raises(ConfigError) as info:
        check_protocol(given.pop("protocol"), **given)
    assert words in one_sentence(info)
    check_protocol("full", scales=[0.5, 1.0], flip=True, window=[64, 64])  # ours takes every test-time setting


# --- against the peers' own evaluation code -------------------------------------------------------------------------

PEERS = {"vainf_full": "DEEPLAB_PEER_VAINF", "vainf": "DEEPLAB_PEER_VAINF", "bubbliiiing": "DEEPLAB_PEER_BUBBLIIIING"}
VOC_21 = [[(i >> 0 & 1) * 128, (i >> 1 & 1) * 128, (i >> 2 & 1) * 128] for i in range(21)]


def peer_checkout(protocol: str, tmp_path: Path) -> Path:
    """The peer's code: the folder its variable names, or one exported from the bare git directory it names."""
    variable = PEERS[protocol]
    given = os.environ.get(variable)
    if not given or not Path(given).is_dir():
        pytest.skip(f"{variable} is not set to a snapshot of the peer repository (a checkout or a bare git directory); "
                    "this check runs the peer's own evaluation code, which the project does not hold")
    if (Path(given) / ("main.py" if variable.endswith("VAINF") else "get_miou.py")).is_file():
        return Path(given)
    out = tmp_path / "peer"
    out.mkdir()
    paths = ["main.py", "network", "utils", "datasets", "metrics"] if variable.endswith("VAINF") else [
        "deeplab.py", "nets", "utils"]  # the code only: a snapshot may lack its largest files (weights)
    archive = subprocess.run(["git", "-C", given, "archive", "HEAD", *paths], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(out)], input=archive, check=True)
    return out


def varied(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """`model` (randomised) with a classifier whose labels vary across the image: random weights scaled by the spread
    of the decoder's features and a bias that centres them (a random model otherwise labels every pixel alike)."""
    seen = []
    hook = model.decoder.classifier.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
    with torch.no_grad():
        model(torch.rand(1, 3, 300, 400, generator=torch.Generator().manual_seed(seed)) * 2 - 1)
        hook.remove()
        features, classifier = seen[0], model.decoder.classifier
        spread = features.std((0, 2, 3)).clamp(min=1e-3) * features.shape[1] ** 0.5
        classifier.weight.copy_(torch.randn(classifier.weight.shape, generator=torch.Generator().manual_seed(seed))
                                / spread.view(1, -1, 1, 1))
        classifier.bias.copy_(-(classifier.weight[:, :, 0, 0] @ features.mean((0, 2, 3))))
    return model


TIE = 1e-3  # logits (probabilities for bubbliiiing) closer than this: float rounding may decide the class


def near_ties(protocol: str, model: torch.nn.Module, image: Image.Image, mean, std) -> np.ndarray:
    """The pixels of `image` (at its own size) whose label under `protocol` has a runner-up within TIE: the 1e-5
    the converted model's logits differ from the peer model's by can flip those, whatever the protocol."""
    height, width = image.size[1], image.size[0]
    with torch.no_grad():
        if protocol == "bubbliiiing":
            boxed, nw, nh = letterbox(image)
            probs = torch.softmax(model(to_tensor(boxed, mean, std))[0].permute(1, 2, 0), -1).numpy()
            top = (512 - nh) // 2, (512 - nw) // 2
            scores = cv2.resize(probs[top[0]:top[0] + nh, top[1]:top[1] + nw], (width, height),
                                interpolation=cv2.INTER_LINEAR)
            source = np.arange(height * width).reshape(height, width)
        elif protocol == "vainf":
            index = Image.fromarray(np.arange(height * width, dtype=np.int32).reshape(height, width))
            resized, index = shorter_side_resize(image, index, 513)
            scores = model(to_tensor(center_crop(np.asarray(resized), 513), mean, std))[0].permute(1, 2, 0).numpy()
            source = center_crop(np.asarray(index), 513)
        else:
            scores = model(to_tensor(np.asarray(image), mean, std))[0].permute(1, 2, 0).numpy()
            source = np.arange(height * width).reshape(height, width)
    best = np.sort(scores, axis=-1)
    ties = np.zeros(height * width, bool)
    ties[source[best[..., -1] - best[..., -2] < TIE]] = True
    return ties.reshape(height, width)


def voc_set(parent: Path, sizes, model: torch.nn.Module, mean, std, protocol: str, seed: int = 0) -> Path:
    """VOCdevkit/VOC2012 under `parent`: one val image (JPEG) and palette mask per (height, width), 21 classes; each
    mask is `model`'s labels of its image (so the scores are far from 0 and move with the protocol), with a random
    object of a random class and a 255 band of VOC's kind, and 255 (ignored) on the near ties of `protocol`."""
    rng = np.random.default_rng(seed)
    root = parent / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True)
    ids = [f"2008_{i:06d}" for i in range(len(sizes))]
    for sample_id, (height, width) in zip(ids, sizes):
        objects = make_mask(rng, height, width, 21)
        image = np.clip(np.array(VOC_21 + [[224, 224, 192]] * 235, np.int16)[objects]
                        + rng.integers(-3, 4, (height, width, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(image).save(path := root / "JPEGImages" / f"{sample_id}.jpg", quality=90)
        with torch.no_grad():
            labels = model(to_tensor(np.asarray(Image.open(path).convert("RGB")), mean, std)).argmax(1)[0].numpy()
        mask = np.where(objects == 0, labels, objects).astype(np.uint8)
        mask[near_ties(protocol, model, Image.open(path).convert("RGB"), mean, std)] = 255
        png = Image.fromarray(mask, mode="P")
        png.putpalette([c for rgb in VOC_21 for c in rgb] + [224, 224, 192] * 235)
        png.save(root / "SegmentationClass" / f"{sample_id}.png")
    for split in ("train", "val"):
        (root / "ImageSets/Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return root


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["vainf_full", "vainf", "bubbliiiing"])
@pytest.mark.parametrize("fast", [False, True])
def test_a_converted_peer_checkpoint_scores_what_the_peers_own_evaluation_scores(protocol, fast, tmp_path):
    peer = peer_checkout(protocol, tmp_path)
    source = "bubbliiiing" if protocol == "bubbliiiing" else "vainf"
    if source == "vainf":
        model = varied(randomised(build_model(num_classes=21, **VAINF_MODEL), seed=5), seed=5)
        torch.save({"model_state": vainf_state(model.state_dict())}, weights := tmp_path / "peer.pth")
    else:
        model = varied(randomised(build_model(num_classes=21, **BUBBLIIIING_MODEL), seed=7), seed=7)
        torch.save(bubbliiiing_state(model.state_dict()), weights := tmp_path / "peer.pth")
    root = voc_set(tmp_path / "data", [(200, 300), (375, 500), (500, 333), (281, 410), (457, 213)], model,
                   *NORMALISATION[source], protocol)
    converted = convert_checkpoint(weights, source=source, dataset=VOC, output=tmp_path / "converted.pt").path
    cfg = compose("evaluate", [f"checkpoint={converted}", f"data_root={root}", f"protocol={protocol}",
                               "device=cpu", f"fast={str(fast).lower()}", "num_workers=0"])
    ours = evaluate_run(cfg, tmp_path / "evaluate")["mIoU"]
    done = subprocess.run([sys.executable, str(TESTS / "peer_eval.py"), protocol, str(peer), str(root.parents[1]),
                           str(weights), str(tmp_path / "peer_out")], cwd=peer, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    theirs = float(re.findall(r"^PEER_MIOU (\S+)$", done.stdout, re.M)[-1])
    print(f"{protocol} fast={fast}: ours {ours!r} peer {theirs!r} difference {abs(ours - theirs):.3g}")
    assert 0.05 < theirs < 0.95 and abs(ours - theirs) <= 1e-6
