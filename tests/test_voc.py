import numpy as np
import pytest

from conftest import VOC_PALETTE
from deeplab.data import DataError, build_dataset
from deeplab.data.voc import voc_samples
from deeplab.errors import ConfigError


def test_voc_tree_loads_with_image_and_mask_aligned(voc_root):
    dataset = build_dataset(split="train", format="voc", root=str(voc_root), num_classes=5)
    assert len(dataset) == 4
    colours = np.array(VOC_PALETTE, np.int16)
    for i in range(len(dataset)):
        image, mask = dataset.load(i)
        assert image.shape[:2] == mask.shape
        assert set(np.unique(mask)) <= {0, 1, 2, 3, 4, 255}
        assert (mask == 255).any(), "the 255 border must survive loading"
        inside = mask < 255
        error = np.abs(image.astype(np.int16)[inside] - colours[mask[inside]]).mean()
        assert error < 12, "image colour must match the mask's class at the same pixels"


def test_missing_root_says_where_it_looked_and_how_to_get_it(tmp_path):
    with pytest.raises(DataError, match=r"looked for .*nowhere/JPEGImages.*python datasets/prepare_voc.py --download"):
        voc_samples(root=tmp_path / "nowhere", split="train")


def test_missing_split_lists_the_available_ones(voc_root):
    with pytest.raises(DataError, match=r"train_aug.txt: no such split file; splits available: \['train', 'val'\]"):
        voc_samples(root=voc_root, split="train_aug")


def test_empty_split_file_is_an_error(voc_root):
    (voc_root / "ImageSets/Segmentation/empty.txt").write_text("\n  \n")
    with pytest.raises(DataError, match="empty.txt: split file is empty"):
        voc_samples(root=voc_root, split="empty")


def test_missing_files_are_listed(voc_root):
    (voc_root / "JPEGImages/2007_000001.jpg").unlink()
    (voc_root / "SegmentationClass/2007_000002.png").unlink()
    with pytest.raises(DataError, match=r"train.txt: 1 image\(s\) missing .*2007_000001.*1 mask\(s\) missing .*2007_000002"):
        voc_samples(root=voc_root, split="train")


def test_mask_folder_is_configurable(tmp_path):
    from conftest import make_voc_tree

    root = make_voc_tree(tmp_path / "aug", mask_dir="SegmentationClassAug")
    assert len(voc_samples(root=root, split="val", mask_dir="SegmentationClassAug")) == 3


def test_build_dataset_rejects_unknown_options_and_formats(voc_root):
    with pytest.raises(ConfigError, match=r"dataset.mask_folder: not an option of the voc dataset format .*mask_dir"):
        build_dataset(split="train", format="voc", root=str(voc_root), num_classes=5, mask_folder="x")
    with pytest.raises(ConfigError, match="dataset.format='vocc': unknown dataset format"):
        build_dataset(split="train", format="vocc", root=str(voc_root), num_classes=5)
    with pytest.raises(ConfigError, match="dataset.class_names lists 2 names but dataset.num_classes=5"):
        build_dataset(split="train", format="voc", root=str(voc_root), num_classes=5, class_names=["a", "b"])
