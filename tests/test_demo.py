import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from conftest import compose
from deeplab.data import build_dataset
from deeplab.data import demo as demo_module
from deeplab.data.dataset import read_image, read_mask
from deeplab.data.demo import CLASS_NAMES, demo_samples
from deeplab.metrics import ConfusionMatrix

SMALL = dict(num_train=40, num_val=20, size=96)


def test_generation_is_deterministic_byte_for_byte(tmp_path):
    a = demo_samples(root=tmp_path / "a", split="train", **SMALL)
    b = demo_samples(root=tmp_path / "b", split="train", **SMALL)
    assert len(a) == 40
    for (ia, ma), (ib, mb) in zip(a, b):
        assert ia.read_bytes() == ib.read_bytes() and ma.read_bytes() == mb.read_bytes()


def test_layout_labels_and_borders(tmp_path):
    cfg = OmegaConf.to_container(compose("check", ["dataset=demo"]).dataset)
    assert cfg["class_names"] == CLASS_NAMES and cfg["num_classes"] == len(CLASS_NAMES)
    cfg.update(root=str(tmp_path), **SMALL)
    for split in ("train", "val"):
        dataset = build_dataset(split=split, **cfg)
        counts = np.zeros(256, np.int64)
        for i in range(len(dataset)):
            image, mask = dataset.load(i)
            assert image.shape == (96, 96, 3) and mask.shape == (96, 96)
            counts += np.bincount(mask.ravel(), minlength=256)
        assert (counts[: len(CLASS_NAMES)] > 0).all(), f"every class appears in {split}"
        assert counts[len(CLASS_NAMES):255].sum() == 0 and counts[255] > 0, "labels are class ids and 255 bands"
    assert (tmp_path / next(p.name for p in tmp_path.iterdir()) / "JPEGImages").is_dir()


def test_existing_copy_is_reused_and_other_settings_get_their_own(tmp_path, monkeypatch):
    demo_samples(root=tmp_path, split="val", **SMALL)

    def must_not_run(*args, **kwargs):
        raise AssertionError("regenerated an existing copy")

    monkeypatch.setattr(demo_module, "generate", must_not_run)
    demo_samples(root=tmp_path, split="val", **SMALL)
    with pytest.raises(AssertionError, match="regenerated"):
        demo_samples(root=tmp_path, split="val", **{**SMALL, "seed": 1})
    assert len([p for p in tmp_path.iterdir() if not p.name.startswith(".")]) == 1


def test_interrupted_generation_leaves_no_dataset_that_looks_complete(tmp_path, monkeypatch):
    real = demo_module.generate

    def dies_halfway(folder, **kwargs):
        real(folder, **{**kwargs, "num_val": 0})
        raise KeyboardInterrupt

    monkeypatch.setattr(demo_module, "generate", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        demo_samples(root=tmp_path, split="train", **SMALL)
    assert not [p for p in tmp_path.iterdir() if not p.name.startswith(".")]
    monkeypatch.setattr(demo_module, "generate", real)
    assert len(demo_samples(root=tmp_path, split="val", **SMALL)) == 20


@pytest.mark.slow  # 600 training steps of a pixel classifier
def test_one_pixel_colour_does_not_solve_it(tmp_path):
    """A per-pixel colour classifier (an MLP on RGB, no neighbourhood) stays far below the 0.70 the CNN reaches."""
    torch.manual_seed(0)

    def pixels(split):
        samples = demo_samples(root=tmp_path, split=split, **SMALL)
        x = np.stack([read_image(i) for i, _ in samples]).reshape(-1, 3)
        y = np.stack([read_mask(m, num_classes=6) for _, m in samples]).ravel()
        return torch.from_numpy(x).float() / 255, torch.from_numpy(y).long()

    (xt, yt), (xv, yv) = pixels("train"), pixels("val")
    xt, yt = xt[yt != 255], yt[yt != 255]
    net = torch.nn.Sequential(torch.nn.Linear(3, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64), torch.nn.ReLU(),
                              torch.nn.Linear(64, 6))
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    for _ in range(600):
        idx = torch.randint(0, len(xt), (4096,))
        loss = torch.nn.functional.cross_entropy(net(xt[idx]), yt[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    matrix = ConfusionMatrix(6)
    with torch.no_grad():
        matrix.update(net(xv).argmax(1), yv)
    assert matrix.compute()["mIoU"] < 0.35
