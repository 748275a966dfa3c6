"""datasets/prepare_voc.py on a tiny fake VOC 2012 + SBD tree; the download path is only ever monkeypatched."""

import importlib.util
import subprocess
import sys
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import scipy.sparse
import yaml
from PIL import Image

from conftest import make_mask, palette_png
from deeplab.data.voc import voc_samples

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "datasets" / "prepare_voc.py"


def load_script():
    """The script as a module, by path: datasets/ is not a package."""
    spec = importlib.util.spec_from_file_location("prepare_voc", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


prep = load_script()

VOC_TRAIN = ["2007_000001", "2007_000002", "2007_000003"]
VOC_VAL = ["2008_000001", "2008_000002"]
# Overlaps on purpose: 2007_000002 is also VOC train, 2009_000002 is in both SBD lists, 2008_* are VOC val.
SBD_TRAIN = ["2007_000002", "2009_000001", "2009_000002", "2008_000001"]
SBD_VAL = ["2009_000002", "2009_000003", "2008_000002"]
# By hand: VOC train + the SBD ids outside VOC val.
EXPECTED_TRAIN_AUG = ["2007_000001", "2007_000002", "2007_000003", "2009_000001", "2009_000002", "2009_000003"]
SBD_ONLY_JPEG = "2009_000003"  # in SBD img/ but not in VOC JPEGImages: must be copied over


def save_sbd_mat(path: Path, seg: np.ndarray) -> None:
    """An SBD-style cls .mat: struct GTcls with Segmentation, Boundaries (cell of sparse maps), CategoriesPresent."""
    boundaries = np.empty((20, 1), dtype=object)
    for k in range(20):
        boundaries[k, 0] = scipy.sparse.csc_matrix(seg == k + 1, dtype=np.uint8)
    present = np.unique(seg[seg > 0]).astype(np.uint8).reshape(-1, 1)
    scipy.io.savemat(path, {"GTcls": {"Segmentation": seg, "Boundaries": boundaries, "CategoriesPresent": present}},
                     do_compression=True)


def jpeg(path: Path, shape: tuple[int, int], rng: np.random.Generator) -> None:
    Image.fromarray(rng.integers(0, 256, (*shape, 3), dtype=np.uint8)).save(path, quality=90)


def make_tree(root: Path) -> dict[str, dict[str, np.ndarray]]:
    """Fake data root (VOCdevkit/VOC2012 + SBD); returns the masks written, {'voc': {id: mask}, 'sbd': {...}}."""
    rng = np.random.default_rng(0)
    voc, sbd = root / "VOCdevkit" / "VOC2012", root / "SBD"
    for sub in (voc / "JPEGImages", voc / "SegmentationClass", voc / "ImageSets" / "Segmentation",
                sbd / "cls", sbd / "img"):
        sub.mkdir(parents=True)
    masks = {"voc": {}, "sbd": {}}
    for i, sample_id in enumerate(VOC_TRAIN + VOC_VAL):
        shape = (24, 32) if i % 2 else (32, 24)
        masks["voc"][sample_id] = make_mask(rng, *shape, num_classes=21)
        palette_png(voc / "SegmentationClass" / f"{sample_id}.png", masks["voc"][sample_id])
        jpeg(voc / "JPEGImages" / f"{sample_id}.jpg", shape, rng)
    for i, sample_id in enumerate(sorted(set(SBD_TRAIN + SBD_VAL))):
        shape = (20, 28) if i % 2 else (28, 20)
        masks["sbd"][sample_id] = rng.integers(0, 21, shape, dtype=np.uint8)  # SBD has no 255 borders
        save_sbd_mat(sbd / "cls" / f"{sample_id}.mat", masks["sbd"][sample_id])
        jpeg(sbd / "img" / f"{sample_id}.jpg", shape, rng)
        if sample_id != SBD_ONLY_JPEG and not (voc / "JPEGImages" / f"{sample_id}.jpg").exists():
            jpeg(voc / "JPEGImages" / f"{sample_id}.jpg", shape, rng)
    for name, ids in {"train": VOC_TRAIN, "val": VOC_VAL}.items():
        (voc / "ImageSets" / "Segmentation" / f"{name}.txt").write_text("\n".join(ids) + "\n")
    for name, ids in {"train": SBD_TRAIN, "val": SBD_VAL}.items():
        (sbd / f"{name}.txt").write_text("\n".join(ids) + "\n")
    return masks


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, dict[str, dict[str, np.ndarray]]]:
    return tmp_path, make_tree(tmp_path)


def aug_dir(root: Path) -> Path:
    return root / "VOCdevkit" / "VOC2012" / "SegmentationClassAug"


def train_aug_file(root: Path) -> Path:
    return root / "VOCdevkit" / "VOC2012" / "ImageSets" / "Segmentation" / "train_aug.txt"


def snapshot(root: Path) -> dict[Path, tuple[int, bytes]]:
    return {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(root.rglob("*")) if p.is_file()}


def test_colour_map_is_the_dataset_config_palette():
    config = yaml.safe_load((REPO / "configs" / "dataset" / "voc.yaml").read_text())
    flat = prep.voc_colour_map()
    assert len(flat) == 768
    assert [flat[3 * i:3 * i + 3] for i in range(21)] == config["palette"]
    assert flat[3 * 255:] == config["ignore_colour"]


def test_sbd_reader_returns_the_saved_segmentation(tmp_path):
    seg = np.arange(12, dtype=np.uint8).reshape(3, 4)
    save_sbd_mat(tmp_path / "x.mat", seg)
    out = prep.load_sbd_mask(tmp_path / "x.mat")
    assert out.dtype == np.uint8 and np.array_equal(out, seg)


def test_prepare_converts_copies_and_writes_train_aug(tree):
    root, masks = tree
    assert prep.main(["--root", str(root)]) == 0
    out = aug_dir(root)
    for sample_id, mask in masks["voc"].items():  # VOC masks copied with 255 borders; they win over SBD's
        with Image.open(out / f"{sample_id}.png") as img:
            assert img.mode == "P" and np.array_equal(np.array(img), mask)
        assert (mask == 255).any()
    for sample_id in set(masks["sbd"]) - set(masks["voc"]):
        with Image.open(out / f"{sample_id}.png") as img:
            assert img.mode == "P" and img.getpalette()[:63] == prep.voc_colour_map()[:63]
            assert np.array_equal(np.array(img), masks["sbd"][sample_id])
    assert sorted(p.stem for p in out.glob("*.png")) == sorted(set(EXPECTED_TRAIN_AUG) | set(VOC_VAL))
    assert not list(out.glob("*.tmp"))
    assert train_aug_file(root).read_text() == "".join(f"{i}\n" for i in EXPECTED_TRAIN_AUG)
    voc = root / "VOCdevkit" / "VOC2012"
    copied = voc / "JPEGImages" / f"{SBD_ONLY_JPEG}.jpg"
    assert copied.read_bytes() == (root / "SBD" / "img" / f"{SBD_ONLY_JPEG}.jpg").read_bytes()
    # the library's own loader accepts the result
    assert len(voc_samples(root=voc, split="train_aug", mask_dir="SegmentationClassAug")) == len(EXPECTED_TRAIN_AUG)
    assert len(voc_samples(root=voc, split="val", mask_dir="SegmentationClassAug")) == len(VOC_VAL)


def test_second_run_changes_nothing(tree, capsys):
    root, _ = tree
    assert prep.main(["--root", str(root)]) == 0
    before = snapshot(root)
    capsys.readouterr()
    assert prep.main(["--root", str(root)]) == 0
    assert snapshot(root) == before
    out = capsys.readouterr().out
    assert "SBD masks converted: 0 written, 3 skipped (identical), 0 conflicts" in out
    assert "VOC masks copied: 0 written, 5 skipped (identical)" in out
    assert "train_aug.txt: 0 written, 1 skipped" in out and "JPEGs copied from SBD: 0" in out


def test_conflicting_mask_is_left_alone_unless_force(tree, capsys):
    root, masks = tree
    assert prep.main(["--root", str(root)]) == 0
    victim = aug_dir(root) / "2009_000001.png"
    palette_png(victim, np.full((5, 5), 3, np.uint8))
    before = victim.read_bytes()
    capsys.readouterr()
    assert prep.main(["--root", str(root)]) == 1
    err = capsys.readouterr().err
    assert str(victim) in err and "--force" in err and "Traceback" not in err
    assert victim.read_bytes() == before
    assert prep.main(["--root", str(root), "--force"]) == 0
    assert np.array_equal(np.array(Image.open(victim)), masks["sbd"]["2009_000001"])


def test_conflicting_split_file_is_left_alone_unless_force(tree, capsys):
    root, _ = tree
    split = train_aug_file(root)
    split.write_text("2007_000001\n")
    assert prep.main(["--root", str(root)]) == 1
    assert str(split) in capsys.readouterr().err
    assert split.read_text() == "2007_000001\n"
    assert prep.main(["--root", str(root), "--force"]) == 0
    assert split.read_text().split() == EXPECTED_TRAIN_AUG


@pytest.mark.slow  # the script as a process
def test_runs_as_a_script(tree):
    root, _ = tree
    result = subprocess.run([sys.executable, str(SCRIPT), "--root", str(root)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"train_aug {len(EXPECTED_TRAIN_AUG)}" in result.stdout
    assert str(aug_dir(root)) in result.stdout


def test_missing_sbd_mask_is_a_clear_error(tree, capsys):
    root, _ = tree
    (root / "SBD" / "cls" / "2009_000001.mat").unlink()
    assert prep.main(["--root", str(root)]) == 1
    assert "2009_000001.mat" in capsys.readouterr().err


def test_missing_data_says_how_to_get_it(tmp_path, capsys):
    assert prep.main(["--root", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "VOC 2012 not found" in err and "--download" in err and "README.md" in err


@pytest.mark.parametrize("error", [urllib.error.URLError("Name or service not known"),
                                   OSError("No space left on device"), RuntimeError("File not found or corrupted.")])
def test_download_failure_names_the_url_and_where_to_put_files(tmp_path, monkeypatch, capsys, error):
    import torchvision.datasets as tvd
    from torchvision.datasets.voc import DATASET_YEAR_DICT

    class FailingVOC(tvd.VOCSegmentation):
        def __init__(self, *args, **kwargs):
            raise error

    class FailingSBD(tvd.SBDataset):
        def __init__(self, *args, **kwargs):
            raise error

    monkeypatch.setattr(tvd, "VOCSegmentation", FailingVOC)
    monkeypatch.setattr(tvd, "SBDataset", FailingSBD)
    assert prep.main(["--root", str(tmp_path), "--download"]) == 1
    err = capsys.readouterr().err
    assert f"download failed: {DATASET_YEAR_DICT['2012']['url']}" in err
    assert f"download failed: {tvd.SBDataset.url}" in err
    assert str(tmp_path / "VOCdevkit" / "VOC2012") in err and str(tmp_path / "SBD") in err
    assert "Traceback" not in err


def test_download_skips_data_already_in_place(tree, monkeypatch):
    import torchvision.datasets as tvd

    def must_not_download(*args, **kwargs):
        raise AssertionError("downloader called although the data is in place")

    monkeypatch.setattr(tvd, "VOCSegmentation", must_not_download)
    monkeypatch.setattr(tvd, "SBDataset", must_not_download)
    root, _ = tree
    assert prep.main(["--root", str(root), "--download"]) == 0
