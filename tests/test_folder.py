import numpy as np
import pytest
from PIL import Image

from deeplab.data import DataError
from deeplab.data.folder import folder_samples, ratio_split


def _make(root, stems):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for stem in stems:
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "images" / f"{stem}.jpg")
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "masks" / f"{stem}.png")
    return root


def test_ratio_split_is_seeded_disjoint_and_complete(tmp_path):
    root = _make(tmp_path / "d", [f"img{i:02d}" for i in range(20)])
    train = folder_samples(root=root, split="train", val_ratio=0.2, seed=3)
    val = folder_samples(root=root, split="val", val_ratio=0.2, seed=3)
    assert len(val) == 4 and len(train) == 16
    assert {p.stem for p, _ in train}.isdisjoint({p.stem for p, _ in val})
    assert val == folder_samples(root=root, split="val", val_ratio=0.2, seed=3)
    assert val != folder_samples(root=root, split="val", val_ratio=0.2, seed=4)
    assert all(i.stem == m.stem for i, m in train + val)


def test_split_files_take_precedence(tmp_path):
    root = _make(tmp_path / "d", ["a", "b", "c"])
    (root / "splits").mkdir()
    (root / "splits/train.txt").write_text("a\nc\n")
    assert [p.stem for p, _ in folder_samples(root=root, split="train")] == ["a", "c"]
    with pytest.raises(DataError, match="val.txt: no such split file"):
        folder_samples(root=root, split="val")


def test_unmatched_files_are_an_error_naming_them(tmp_path):
    root = _make(tmp_path / "d", ["a", "b"])
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "images" / "lonely.png")
    with pytest.raises(DataError, match=r"1 file stem\(s\) have an image but no mask .*lonely"):
        folder_samples(root=root, split="train")


def test_missing_folder_and_bad_split_names(tmp_path):
    with pytest.raises(DataError, match="looked for .*images"):
        folder_samples(root=tmp_path, split="train")
    with pytest.raises(DataError, match="only 'train' and 'val'"):
        ratio_split(["a", "b"], split="test", val_ratio=0.5, seed=0)
