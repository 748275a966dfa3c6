"""Tiny synthetic datasets built in temp dirs: nothing is downloaded."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

VOC_PALETTE = [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0], [0, 0, 128]]


def palette_png(path: Path, mask: np.ndarray, palette=VOC_PALETTE) -> None:
    """Save a class-index mask as a palette PNG, the way VOC ships its masks."""
    img = Image.fromarray(mask.astype(np.uint8), mode="P")
    flat = [c for rgb in palette for c in rgb]
    img.putpalette(flat + [224, 224, 192] * (256 - len(palette)))
    img.save(path)


def make_mask(rng: np.random.Generator, height: int, width: int, num_classes: int) -> np.ndarray:
    """Background with one or two rectangles of object classes, each ringed by a 255 border like VOC."""
    mask = np.zeros((height, width), np.uint8)
    for _ in range(rng.integers(1, 3)):
        cls = int(rng.integers(1, num_classes))
        y0, x0 = int(rng.integers(0, height // 2)), int(rng.integers(0, width // 2))
        y1, x1 = y0 + int(rng.integers(6, height // 2)), x0 + int(rng.integers(6, width // 2))
        mask[y0:y1, x0:x1] = 255
        mask[y0 + 1:y1 - 1, x0 + 1:x1 - 1] = cls
    return mask


def image_for(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An RGB image whose colour encodes the class, so alignment with the mask can be checked."""
    colours = np.array(VOC_PALETTE + [[200, 200, 200]] * 251, np.int16)
    image = colours[mask] + rng.integers(-8, 9, (*mask.shape, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def make_voc_tree(root: Path, *, n_train: int = 4, n_val: int = 3, size=(48, 64), num_classes: int = 5,
                  mask_dir: str = "SegmentationClass", seed: int = 0) -> Path:
    """A VOC-layout root: JPEGImages/*.jpg, <mask_dir>/*.png (palette), ImageSets/Segmentation/{train,val}.txt."""
    rng = np.random.default_rng(seed)
    for sub in ("JPEGImages", mask_dir, "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    ids = {"train": [f"2007_{i:06d}" for i in range(n_train)],
           "val": [f"2008_{i:06d}" for i in range(n_val)]}
    for split, split_ids in ids.items():
        for i, sample_id in enumerate(split_ids):
            h, w = size if i % 2 == 0 else (size[1], size[0])  # mixed orientations
            mask = make_mask(rng, h, w, num_classes)
            Image.fromarray(image_for(mask, rng)).save(root / "JPEGImages" / f"{sample_id}.jpg", quality=95)
            palette_png(root / mask_dir / f"{sample_id}.png", mask)
        (root / "ImageSets/Segmentation" / f"{split}.txt").write_text("\n".join(split_ids) + "\n")
    return root


@pytest.fixture
def voc_root(tmp_path: Path) -> Path:
    return make_voc_tree(tmp_path / "VOC2012")


REPO = Path(__file__).resolve().parents[1]


def compose(config_name: str, overrides: list[str]):
    """The real Hydra config, composed as the command line would, with test overrides."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        return hydra_compose(config_name, overrides=overrides)


def tiny_train_overrides(root: Path, out: Path, iterations: int = 3) -> list[str]:
    """A training run that takes seconds on a CPU: tiny crops, batch 4, no workers, checkpoints every 2 iters."""
    return [f"dataset.root={root}", f"output_root={out}", f"trainer.iterations={iterations}",
            "trainer.batch_size=4", "trainer.val_every=2", "trainer.checkpoint_every=2", "trainer.log_every=1",
            "trainer.num_workers=0", "trainer.precision=fp32", "augment.crop_size=[64,64]",
            "model.separable=true", "model.backbone_weights=null", "optim.lr=0.002"]


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """A tiny VOC-layout dataset and a checkpoint trained on it for 2 iterations."""
    from deeplab.engine.trainer import train

    tmp = tmp_path_factory.mktemp("inference")
    tree = make_voc_tree(tmp / "VOC", n_train=4, n_val=3, size=(48, 64))
    train(compose("train", ["dataset=voc", *tiny_train_overrides(tree, tmp / "outputs", iterations=2)]), tmp / "run")
    return tree, tmp / "run" / "last.pt"
