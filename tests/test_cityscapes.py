from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from deeplab.data.cityscapes import cityscapes_samples
from deeplab.data.dataset import DataError, SegmentationDataset

CONFIG = Path(__file__).resolve().parents[1] / "configs/dataset/cityscapes.yaml"
# One column per label id 0..33 in every mask, so every entry of the label map is exercised.
LABEL_IDS = np.tile(np.arange(34, dtype=np.uint8), (6, 1))


def make_cityscapes_tree(root: Path) -> Path:
    """Two cities in train, one in val; each labelIds mask is a 6x34 strip holding every label id once per row."""
    frames = {"train": {"aachen": ["aachen_000000_000019", "aachen_000001_000019"], "bremen": ["bremen_000000_000019"]},
              "val": {"frankfurt": ["frankfurt_000000_000294"]}}
    for split, cities in frames.items():
        for city, stems in cities.items():
            images, gt = root / "leftImg8bit" / split / city, root / "gtFine" / split / city
            images.mkdir(parents=True)
            gt.mkdir(parents=True)
            for stem in stems:
                Image.new("RGB", (34, 6), (90, 90, 90)).save(images / f"{stem}_leftImg8bit.png")
                Image.fromarray(LABEL_IDS).save(gt / f"{stem}_gtFine_labelIds.png")
                # the other gtFine files sit beside it and must not be mistaken for masks
                Image.fromarray(LABEL_IDS).save(gt / f"{stem}_gtFine_instanceIds.png")
    return root


@pytest.fixture
def cityscapes_root(tmp_path: Path) -> Path:
    return make_cityscapes_tree(tmp_path / "cityscapes")


def test_pairs_images_with_label_ids_across_cities(cityscapes_root):
    samples = cityscapes_samples(root=cityscapes_root, split="train")
    assert [(i.name, m.name) for i, m in samples] == [
        ("aachen_000000_000019_leftImg8bit.png", "aachen_000000_000019_gtFine_labelIds.png"),
        ("aachen_000001_000019_leftImg8bit.png", "aachen_000001_000019_gtFine_labelIds.png"),
        ("bremen_000000_000019_leftImg8bit.png", "bremen_000000_000019_gtFine_labelIds.png")]
    assert all(i.parent.name == m.parent.name for i, m in samples), "image and mask come from the same city"
    assert len(cityscapes_samples(root=cityscapes_root, split="val")) == 1


def test_config_label_map_gives_the_19_train_ids(cityscapes_root):
    cfg = OmegaConf.load(CONFIG)
    assert cfg.format == "cityscapes" and cfg.num_classes == len(cfg.class_names) == len(cfg.palette) == 19
    assert sorted(cfg.label_map) == list(range(34))
    dataset = SegmentationDataset(cityscapes_samples(root=cityscapes_root, split="train"), num_classes=cfg.num_classes,
                                  ignore_index=cfg.ignore_index, palette=cfg.palette, label_map=cfg.label_map)
    image, mask = dataset.load(0)
    assert image.shape == (6, 34, 3) and mask.shape == (6, 34)
    row = mask[0]  # row[label id] is the train id it became
    assert row[7] == 0 and cfg.class_names[0] == "road"
    assert row[26] == 13 and cfg.class_names[13] == "car"
    assert row[33] == 18 and cfg.class_names[18] == "bicycle"
    assert row[24] == 11 and row[11] == 2 and row[23] == 10  # person, building, sky
    for void in (0, 1, 2, 3, 4, 5, 6, 9, 10, 14, 15, 16, 18, 29, 30):
        assert row[void] == 255, f"label id {void} is not a train class"
    assert sorted(set(row.tolist()) - {255}) == list(range(19)), "every train id is reached exactly by the map"


def test_missing_ground_truth_names_the_image(cityscapes_root):
    (cityscapes_root / "gtFine/train/bremen/bremen_000000_000019_gtFine_labelIds.png").unlink()
    with pytest.raises(DataError, match=r"1 mask\(s\) missing from .*gtFine/train .*bremen_000000_000019"):
        cityscapes_samples(root=cityscapes_root, split="train")


def test_missing_root_says_where_it_looked_and_how_to_get_it(tmp_path):
    with pytest.raises(DataError, match=r"looked for .*nowhere/leftImg8bit.*cityscapes-dataset.com.*"
                                        r"leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip"):
        cityscapes_samples(root=tmp_path / "nowhere", split="train")


def test_unknown_split_lists_the_available_ones(cityscapes_root):
    with pytest.raises(DataError, match=r"leftImg8bit/test: no such split folder; "
                                        r"splits available: \['train', 'val'\]"):
        cityscapes_samples(root=cityscapes_root, split="test")
