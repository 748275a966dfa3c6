import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import make_voc_tree, palette_png
from deeplab.data import DataError, build_dataset
from deeplab.data.check import check_dataset, preflight

CFG = dict(format="voc", num_classes=5, class_names=["bg", "a", "b", "c", "d"],
           palette=[[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0], [0, 0, 128]])
REPO = Path(__file__).resolve().parents[1]


def test_clean_dataset_has_no_problems_and_a_histogram(voc_root):
    reports = check_dataset(root=str(voc_root), **CFG)
    assert [r.split for r in reports] == ["train", "val"]
    assert all(not r.problems for r in reports)
    expected = sum(np.bincount(np.array(Image.open(p)).ravel(), minlength=256)
                   for p in sorted((voc_root / "SegmentationClass").glob("2007_*.png")))
    assert (reports[0].pixels == expected).all()


def _break_everything(root: Path) -> None:
    (root / "JPEGImages/2007_000000.jpg").write_bytes(b"corrupt")
    palette_png(root / "SegmentationClass/2007_000001.png", np.zeros((5, 5), np.uint8))  # size mismatch
    mask = np.array(Image.open(root / "SegmentationClass/2007_000002.png"))
    mask[0, 0] = 9
    Image.fromarray(mask).save(root / "SegmentationClass/2007_000002.png")  # label outside classes
    rgb = np.zeros((*mask.shape, 3), np.uint8)
    rgb[0, 0] = [1, 2, 3]
    Image.fromarray(rgb).save(root / "SegmentationClass/2007_000003.png")  # colour not in palette


def test_every_problem_kind_is_reported_with_its_file(voc_root):
    _break_everything(voc_root)
    (voc_root / "ImageSets/Segmentation/val.txt").write_text("")
    train, val = check_dataset(root=str(voc_root), workers=2, **CFG)
    text = "\n".join(train.problems)
    assert "2007_000000.jpg: not a readable image" in text
    assert "2007_000001.png: mask is 5x5 (WxH)" in text
    assert "2007_000002.png: label values [9]" in text
    assert "2007_000003.png: RGB mask has 1 colour(s) not in the dataset palette, e.g. (1, 2, 3)" in text
    assert len(val.problems) == 1
    assert val.problems[0].startswith(f"{voc_root}/ImageSets/Segmentation/val.txt: split file is empty, so split 'val'")


def test_zero_255_masks_are_detected_and_explained(tmp_path):
    root = make_voc_tree(tmp_path / "bin", num_classes=2)
    for path in (root / "SegmentationClass").glob("*.png"):
        mask = np.array(Image.open(path))
        palette_png(path, np.where(mask > 0, 255, 0).astype(np.uint8))
    cfg = dict(CFG, num_classes=2, class_names=["bg", "fg"])
    train, _ = check_dataset(root=str(root), **cfg)
    assert any("only 0 and 255" in p and "label_map" in p for p in train.problems)
    with pytest.raises(DataError, match="only 0 and 255"):
        preflight(build_dataset(split="train", root=str(root), **cfg))
    fixed = build_dataset(split="train", root=str(root), label_map={255: 1}, **cfg)
    preflight(fixed)


def test_masks_that_are_entirely_ignore_are_counted_and_a_split_of_only_those_is_a_problem(voc_root):
    masks = sorted((voc_root / "SegmentationClass").glob("*.png"))
    val = (voc_root / "ImageSets/Segmentation/val.txt").read_text().split()
    for path in masks:  # one training mask and every val mask: all ignore
        if path.stem in val or path == masks[0]:
            palette_png(path, np.full(np.array(Image.open(path)).shape, 255, np.uint8))
    train, val_report = check_dataset(root=str(voc_root), **CFG)
    assert not train.problems and any(n.startswith("1 of the") and "entirely the ignore index 255" in n and
                                      masks[0].name in n for n in train.notes), train.notes
    assert len(val_report.problems) == 1 and "every one of its" in val_report.problems[0], val_report.problems
    # and so with dataset.allow_ignore_only_masks=true (meant for masks of 0 and 255), which says nothing of this
    assert check_dataset(root=str(voc_root), allow_ignore_only_masks=True, **CFG)[1].problems


def test_preflight_stops_on_a_bad_first_sample(voc_root):
    _break_everything(voc_root)
    with pytest.raises(DataError, match="2007_000000.jpg"):
        preflight(build_dataset(split="train", root=str(voc_root), **CFG))


def _cli(*overrides, cwd):
    return subprocess.run([sys.executable, "-m", "deeplab.data.check", "dataset=folder", *overrides],
                          capture_output=True, text=True, cwd=cwd)


@pytest.mark.slow  # python -m deeplab.data.check twice, as processes
def test_command_line_exit_codes(tmp_path):
    root = tmp_path / "own"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(4):  # 10x12: above the smallest side a sample may have (dataset.MIN_SIDE)
        Image.fromarray(np.full((10, 12, 3), 9, np.uint8)).save(root / "images" / f"s{i}.png")
        Image.fromarray(np.eye(10, 12, dtype=np.uint8)).save(root / "masks" / f"s{i}.png")
    good = _cli(f"dataset.root={root}", "dataset.val_ratio=0.5", cwd=tmp_path)
    assert good.returncode == 0, good.stdout + good.stderr
    assert "no problems found" in good.stdout and "foreground" in good.stdout
    Image.fromarray(np.full((10, 12), 4, np.uint8)).save(root / "masks" / "s0.png")
    bad = _cli(f"dataset.root={root}", "dataset.val_ratio=0.5", "workers=0", cwd=tmp_path)
    assert bad.returncode == 1
    assert "s0.png: label values [4] are outside the 2 classes" in bad.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["own"], "the checker writes nothing"
