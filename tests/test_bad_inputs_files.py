"""The catalogue of data mistakes, image files and dataset settings: two files with one stem, EXIF rotation,
empty files and folders named like images, an error met in a DataLoader worker, dataset config keys. Each ends in one
sentence naming the file or config key and the fix, or is read correctly; no check changes the user's files."""

import numpy as np
import pytest
from PIL import Image

from conftest import FOLDER, REPO, VOC, make_folder, make_voc_tree, object_mask, one_sentence, palette_png, snapshot
from deeplab.data import DataError, SegmentationDataset, build_dataset
from deeplab.data.check import check_dataset, format_report
from deeplab.data.dataset import read_image
from deeplab.engine.loaders import TrainBatches, train_loader, val_loader
from deeplab.errors import ConfigError, one_line, user_errors


# 2. two files with one stem ------------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["folder", "voc"])
def test_two_images_with_one_stem_are_an_error_naming_both(tmp_path, layout):
    if layout == "folder":
        root = make_folder(tmp_path / "d", {f"s00{i}": object_mask() for i in range(3)}, image_ext=".jpg")
        folder, cfg = root / "images", FOLDER
    else:
        root = make_voc_tree(tmp_path / "voc")
        folder, cfg = root / "JPEGImages", VOC
    stem = sorted(folder.iterdir())[0].stem
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(folder / f"{stem}.png")
    before = snapshot(root)
    with pytest.raises(DataError) as exc:
        build_dataset(split="train", root=str(root), **cfg)
    one_sentence(exc.value, str(folder), f"{stem}.jpg", f"{stem}.png", "move or rename")
    assert any(f"{stem}.jpg and {stem}.png" in p for r in check_dataset(root=str(root), **cfg) for p in r.problems)
    assert snapshot(root) == before


def test_two_masks_with_one_stem_are_an_error_naming_both(tmp_path):
    root = make_folder(tmp_path / "d", {"s000": object_mask(), "s001": object_mask()})
    (root / "masks" / "s000.PNG").write_bytes((root / "masks" / "s000.png").read_bytes())
    if len(list((root / "masks").iterdir())) < 3:
        pytest.skip("case-insensitive file system: s000.PNG is s000.png")
    with pytest.raises(DataError) as exc:
        build_dataset(split="train", root=str(root), **FOLDER)
    one_sentence(exc.value, "s000.PNG", "s000.png", str(root / "masks"))


# 3. EXIF orientation -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [(24, 40), (32, 32)], ids=["non-square", "square"])
def test_exif_rotated_images_are_read_like_their_masks_and_noted_by_the_checker(tmp_path, size):
    root = tmp_path / "d"
    mask = np.zeros(size, np.uint8)
    mask[:, :12] = 1  # a band on the left of the stored pixels; a viewer applying EXIF 6 shows it on top
    make_folder(root, {"s0": mask, "s1": mask}, splits={"train": ["s0", "s1"], "val": ["s1"]})
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.dstack([mask * 250] * 3)).save(root / "images" / "s0.jpg", exif=exif.tobytes(), quality=95)
    (root / "images" / "s0.png").unlink()
    before = snapshot(root)
    image, loaded = build_dataset(split="train", root=str(root), **FOLDER).load(0)
    assert image.shape[:2] == loaded.shape == size
    assert image[:, :10].mean() > 200 and image[:, 14:].mean() < 40, "image rows and columns as stored"
    train, val = check_dataset(root=str(root), **FOLDER)
    assert not train.problems and not val.problems
    assert len(train.notes) == 1 and not val.notes
    one_sentence(Exception(train.notes[0]), str(root / "images" / "s0.jpg"), "orientation 6", "raw pixel order")
    assert "NOTE 1 image(s) carry an EXIF orientation" in format_report([train, val], FOLDER["class_names"])
    assert snapshot(root) == before


def test_a_mask_drawn_on_the_rotated_view_of_an_exif_image_says_so(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.zeros((20, 40, 3), np.uint8)).save(tmp_path / "a.jpg", exif=exif.tobytes())
    palette_png(tmp_path / "a.png", np.zeros((40, 20), np.uint8))  # the size a viewer shows: 20 wide, 40 high
    with pytest.raises(DataError) as exc:
        SegmentationDataset([(tmp_path / "a.jpg", tmp_path / "a.png")], num_classes=2).load(0)
    one_sentence(exc.value, f"{tmp_path / 'a.png'}: mask is 20x40 (WxH)", str(tmp_path / "a.jpg"),
                 "EXIF orientation is 6", "exif_transpose")


def test_no_other_module_decodes_images_with_exif_rotation():
    # read_image is the one reader for training, evaluation, prediction and the checker; a second decoder would
    # bring back images and masks that disagree.
    decoders = ("imdecode(", "imread(", "exif_transpose(")
    offenders = [str(p.relative_to(REPO)) for p in sorted((REPO / "deeplab").rglob("*.py"))
                 if any(d in p.read_text() for d in decoders)]
    # the one other: the annotation importer writes an image that labelme showed turned by its EXIF orientation (the
    # shapes drawn on the turned picture) as an upright PNG, so the dataset's stored pixel order matches its masks
    assert offenders == ["deeplab/data/annotations/__init__.py", "deeplab/data/dataset.py"], offenders


# 8. an error raised in a DataLoader worker ---------------------------------------------------------------------

@pytest.mark.parametrize("which", ["train", "val"])
def test_an_error_in_a_dataloader_worker_reaches_the_user_as_its_one_sentence(tmp_path, which, caplog):
    root = make_voc_tree(tmp_path / "voc", n_train=4)
    bad = root / "SegmentationClass" / "2007_000002.png"
    mask = np.array(Image.open(bad))
    mask[0, 0] = 9
    Image.fromarray(mask).save(bad)
    dataset = build_dataset(split="train", root=str(root), **VOC)
    with pytest.raises(DataError) as direct:
        dataset.load(2)
    if which == "train":
        loader = train_loader(dataset, TrainBatches(4, batch_size=1, total_iters=4), num_workers=1, pin_memory=False)
    else:
        loader = val_loader(dataset, rank=0, world_size=1, num_workers=1, pin_memory=False)
    batches = iter(loader)
    with pytest.raises(DataError) as exc:
        for _ in batches:
            pass
    # left to the garbage collector (the traceback holds it in a cycle), the iterator's worker takes 5 s to stop
    batches._shutdown_workers()
    assert "DataLoader worker" in str(exc.value), "the error came from the worker process"
    with pytest.raises(SystemExit) as exited, user_errors("deeplab.train"):  # as a command ends it: one line, exit 1
        raise exc.value
    assert exited.value.code == 1
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == [str(direct.value)]
    assert one_line(exc.value) == str(direct.value)
    one_sentence(Exception(one_line(exc.value)), str(bad), "label values [9]")


# 9. empty files, folders named like files, dataset keys --------------------------------------------------------

@pytest.mark.parametrize("case,said", [("zero-byte image", "image file is empty (0 bytes)"),
                                       ("folder named like an image", "is a folder, not an image file"),
                                       ("zero-byte mask", "not a readable mask image"),
                                       ("folder named like a mask", "is a folder, not a mask file")])
def test_empty_files_and_folders_with_image_names(tmp_path, case, said):
    root = make_voc_tree(tmp_path / "voc")
    kind = "image" if "image" in case else "mask"
    path = root / ("JPEGImages/2007_000001.jpg" if kind == "image" else "SegmentationClass/2007_000001.png")
    path.unlink()
    path.mkdir() if "folder" in case else path.write_bytes(b"")
    before = snapshot(root)
    train, _ = check_dataset(root=str(root), **VOC)
    assert len(train.problems) == 1, train.problems
    fix = "rename or move it" if "folder" in case else "copy the image again" if kind == "image" else "save it again"
    one_sentence(Exception(train.problems[0]), f"{path}: {said}", fix)
    with pytest.raises(DataError):
        build_dataset(split="train", root=str(root), **VOC).load(1)
    assert snapshot(root) == before


@pytest.mark.parametrize("override,key", [
    (dict(class_names=["bg", "a"]), "dataset.class_names"),
    (dict(palette=[[0, 0, 0], [1, 1, 1]]), "dataset.palette"),
    (dict(palette=[[0, 0, 0], [1, 1], [2, 2, 2], [3, 3, 3], [4, 4, 4]]), "dataset.palette entry 1"),
    (dict(format="vocc"), "dataset.format='vocc'"),
    (dict(mask_folder="x"), "dataset.mask_folder"),
    (dict(ignore_index=3), "dataset.ignore_index=3"),
    (dict(ignore_index=-1), "dataset.ignore_index=-1"),
    (dict(label_map={255: 300}), "dataset.label_map"),
    (dict(ignore_colour=[1, 2]), "dataset.ignore_colour"),
    (dict(allow_ignore_only_masks="yes"), "dataset.allow_ignore_only_masks='yes'"),
])
def test_dataset_config_mistakes_name_the_key(voc_root, override, key):
    with pytest.raises(ConfigError) as exc:
        build_dataset(split="train", root=str(voc_root), **{**VOC, **override})
    one_sentence(exc.value, key)
    if "class_names" in override:
        assert "dataset.num_classes=5" in str(exc.value)


def test_read_image_refuses_an_empty_file_by_name(tmp_path):
    (tmp_path / "e.jpg").write_bytes(b"")
    with pytest.raises(DataError) as exc:
        read_image(tmp_path / "e.jpg")
    one_sentence(exc.value, str(tmp_path / "e.jpg"), "0 bytes")
