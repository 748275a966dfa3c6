"""The catalogue of data mistakes: each ends in one sentence naming the file or config key and the fix, or is read
correctly; nothing trains silently on wrong data, and no check changes the user's files."""

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from conftest import make_voc_tree, palette_png
from deeplab.data import DataError, SegmentationDataset, build_dataset
from deeplab.data.check import check_dataset, format_report, preflight
from deeplab.data.dataset import read_image, read_mask
from deeplab.engine.loaders import TrainBatches, train_loader, val_loader
from deeplab.errors import ConfigError, UserError, one_line

REPO = Path(__file__).resolve().parents[1]
VOC = dict(format="voc", num_classes=5, class_names=["bg", "a", "b", "c", "d"],
           palette=[[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0], [0, 0, 128]])
FOLDER = dict(format="folder", num_classes=2, class_names=["background", "object"])


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under root with its bytes: a check must leave the user's data exactly as it was."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def one_sentence(exc: BaseException, *names: str) -> str:
    """The message, asserted to be one line that names each of `names`."""
    text = str(exc)
    assert "\n" not in text, text
    for name in names:
        assert name in text, f"{name!r} not in: {text}"
    return text


def object_mask(size=(24, 32), value=1) -> np.ndarray:
    """A binary mask: a filled rectangle of `value` on 0."""
    mask = np.zeros(size, np.uint8)
    mask[4:16, 6:20] = value
    return mask


def make_folder(root: Path, masks: dict[str, np.ndarray], *, image_ext=".png", splits=None) -> Path:
    """A folder dataset: images/<stem><image_ext> (lossless), masks/<stem>.png greyscale, optional splits/*.txt."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for stem, mask in masks.items():
        Image.fromarray(np.dstack([mask * 3] * 3)).save(root / "images" / f"{stem}{image_ext}")
        Image.fromarray(mask).save(root / "masks" / f"{stem}.png")
    if splits is not None:
        (root / "splits").mkdir()
        for split, ids in splits.items():
            (root / "splits" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    return root


# 1. masks that are partly 0/255 -------------------------------------------------------------------------------

def _mixed_binary(root: Path) -> Path:
    """Four 0/1 masks and two binary masks saved as 0/255 (s2 and s5), train/val from split files."""
    masks = {f"s{i}": object_mask(value=255 if i in (2, 5) else 1) for i in range(6)}
    return make_folder(root, masks, splits={"train": ["s0", "s1", "s2", "s3"], "val": ["s4", "s5"]})


def test_mixed_0_1_and_0_255_masks_are_each_reported_and_refused(tmp_path):
    root = _mixed_binary(tmp_path / "mixed")
    before = snapshot(root)
    train, val = check_dataset(root=str(root), **FOLDER)
    assert len(train.problems) == 1 and len(val.problems) == 1, train.problems + val.problems
    for problem, name in ((train.problems[0], "s2.png"), (val.problems[0], "s5.png")):
        assert problem.startswith(str(root / "masks" / name))
        assert "only 0 and 255" in problem and "mask // 255" in problem and "dataset.label_map='{255: 1}'" in problem
        assert "dataset.allow_ignore_only_masks" in problem and "\n" not in problem
    # The training path: the preflight reads only the first sample here, and the bad mask is still refused on load.
    dataset = build_dataset(split="train", root=str(root), **FOLDER)
    preflight(dataset, samples=1)
    dataset.load(1)
    with pytest.raises(DataError) as exc:
        dataset.load(2)
    one_sentence(exc.value, str(root / "masks" / "s2.png"), "mask // 255")
    with pytest.raises(DataError, match="s2.png: mask holds only 0 and 255"):
        preflight(dataset)
    # Both fixes the message names work: the label map, and the opt-out for masks whose 255 really is "ignore".
    assert not any(r.problems for r in check_dataset(root=str(root), label_map={255: 1}, **FOLDER))
    allowed = check_dataset(root=str(root), allow_ignore_only_masks=True, **FOLDER)
    assert not any(r.problems for r in allowed)
    assert snapshot(root) == before


@pytest.mark.parametrize("case", ["thin_border_only", "object_with_border", "class_and_big_ignore_region",
                                  "background_only", "ignore_only"])
def test_legitimate_255_regions_are_not_taken_for_0_255_masks(tmp_path, case):
    mask = np.zeros((40, 48), np.uint8)
    if case == "thin_border_only":  # a VOC-like ring of "difficult" border around nothing, 3 px wide
        mask[5:30, 5:35] = 255
        mask[8:27, 8:32] = 0
    elif case == "object_with_border":
        mask[5:30, 5:35] = 255
        mask[7:28, 7:33] = 3
    elif case == "class_and_big_ignore_region":  # Cityscapes/COCO: large ignore areas beside real classes
        mask[:20] = 255
        mask[25:30, 10:20] = 2
    elif case == "ignore_only":
        mask[:] = 255
    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((40, 48, 3), np.uint8)).save(image)
    palette_png(tmp_path / "a_mask.png", mask)
    _, loaded = SegmentationDataset([(image, tmp_path / "a_mask.png")], num_classes=5).load(0)
    assert (loaded == mask).all()


def test_small_or_mostly_ignored_0_255_masks_are_still_caught(tmp_path):
    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((9, 9, 3), np.uint8)).save(image)
    mask = np.full((9, 9), 255, np.uint8)
    mask[:, ::3] = 0  # 2-px stripes: no 5x5 block survives an erosion, but two thirds of the mask is "ignore"
    Image.fromarray(mask).save(tmp_path / "m.png")
    with pytest.raises(DataError) as exc:
        SegmentationDataset([(image, tmp_path / "m.png")], num_classes=2).load(0)
    one_sentence(exc.value, str(tmp_path / "m.png"), "only 0 and 255")


@pytest.mark.parametrize("setting", ["unset", True, False])
def test_coco_masks_of_background_and_crowd_alone_are_real_ignore_regions(tmp_path, setting):
    from test_coco import make_coco_tree

    root = make_coco_tree(tmp_path / "coco")  # image 3: a motorcycle and a dog crowd; select the dog alone
    cfg = dict(format="coco", root=str(root), num_classes=2, categories=["dog"])
    if setting != "unset":
        cfg["allow_ignore_only_masks"] = setting
    dataset = build_dataset(split="val2017", **cfg)
    if setting is False:  # the user's explicit choice is kept: refused, by name
        with pytest.raises(DataError, match="000000000003.png: mask holds only 0 and 255"):
            dataset.load(2)
        return
    _, mask = dataset.load(2)  # the default (also for runs saved before the key existed): taken as it is
    assert set(np.unique(mask)) == {0, 255}


def test_checker_command_line_names_the_0_255_mask_without_a_traceback(tmp_path):
    root = _mixed_binary(tmp_path / "mixed")
    before = snapshot(root)
    result = subprocess.run([sys.executable, "-m", "deeplab.data.check", "dataset=folder", f"dataset.root={root}",
                             "dataset.class_names=[background,object]", "workers=0"],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"PROBLEM {root / 'masks' / 's2.png'}: mask holds only 0 and 255" in result.stdout
    assert f"PROBLEM {root / 'masks' / 's5.png'}: mask holds only 0 and 255" in result.stdout
    assert "2 problem(s) found" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr
    assert snapshot(root) == before


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


# 3. EXIF orientation ------------------------------------------------------------------------------------------

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
    assert offenders == ["deeplab/data/dataset.py"], offenders


# 4. empty splits -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("content", ["", "  \n\t\n\r\n"], ids=["empty", "whitespace"])
def test_empty_val_split_file_names_split_file_and_fix(tmp_path, content):
    root = make_folder(tmp_path / "d", {"s0": object_mask(), "s1": object_mask()},
                       splits={"train": ["s0", "s1"], "val": []})
    (root / "splits" / "val.txt").write_text(content)
    before = snapshot(root)
    train, val = check_dataset(root=str(root), **FOLDER)
    assert not train.problems and len(val.problems) == 1
    one_sentence(Exception(val.problems[0]), str(root / "splits" / "val.txt"), "split 'val'", "one per line")
    with pytest.raises(DataError) as exc:
        build_dataset(split="val", root=str(root), **FOLDER)
    one_sentence(exc.value, "val.txt", "split 'val'")
    assert snapshot(root) == before


def test_ratio_split_that_would_leave_val_empty_names_the_folder_and_fix(tmp_path):
    root = make_folder(tmp_path / "d", {"only": object_mask()})
    _, val = check_dataset(root=str(root), **FOLDER)
    one_sentence(Exception(val.problems[0]), str(root / "images"), "split 'val'", "dataset.val_ratio",
                 "splits/val.txt")
    # two images and a ratio that rounds to all of them: each split still gets one
    root2 = make_folder(tmp_path / "d2", {"a": object_mask(), "b": object_mask()})
    sizes = [len(build_dataset(split=s, root=str(root2), val_ratio=0.9, **FOLDER)) for s in ("train", "val")]
    assert sizes == [1, 1]


def test_a_split_with_no_samples_names_split_and_root(tmp_path):
    # A COCO JSON that lists no images: the format itself has nothing to complain about.
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    (root / "val2017").mkdir()
    (root / "annotations" / "instances_val2017.json").write_text(
        json.dumps({"images": [], "annotations": [], "categories": [{"id": 1, "name": "person"}]}))
    with pytest.raises(DataError) as exc:
        build_dataset(split="val2017", format="coco", root=str(root), num_classes=2)
    one_sentence(exc.value, "split 'val2017'", f"dataset.root={root}", "dataset.val_split")
    with pytest.raises(DataError) as exc:
        preflight(SegmentationDataset([], num_classes=2, where=f"split 'val' of dataset.root={root}"))
    one_sentence(exc.value, "split 'val'", f"dataset.root={root}")


# 5. split file encodings ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("encoding", ["utf-8-sig", "crlf", "cr", "trailing spaces"])
def test_split_files_in_utf8_with_bom_or_windows_line_ends_are_read(tmp_path, encoding):
    root = make_folder(tmp_path / "d", {"s0": object_mask(), "s1": object_mask(), "s2": object_mask()},
                       splits={"val": ["s2"]})
    text = {"utf-8-sig": "s0\ns1\n", "crlf": "s0\r\ns1\r\n", "cr": "s0\rs1\r",
            "trailing spaces": "s0  \n\ts1 \t\n"}[encoding]
    (root / "splits" / "train.txt").write_bytes(text.encode("utf-8-sig" if encoding == "utf-8-sig" else "utf-8"))
    dataset = build_dataset(split="train", root=str(root), **FOLDER)
    assert [i.stem for i, _ in dataset.samples] == ["s0", "s1"]


@pytest.mark.parametrize("encoding,found", [("utf-16", "UTF-16"), ("utf-16-le", "UTF-16"), ("utf-32", "UTF-32"),
                                            ("latin-1", "Latin-1")])
def test_split_files_in_other_encodings_name_the_encoding(tmp_path, encoding, found):
    root = make_voc_tree(tmp_path / "voc")
    split_file = root / "ImageSets/Segmentation/train.txt"
    split_file.write_bytes("2007_000000\n2007_000001\ncafé\n".encode(encoding))
    before = snapshot(root)
    with pytest.raises(DataError) as exc:
        build_dataset(split="train", root=str(root), **VOC)
    one_sentence(exc.value, str(split_file), found, "save it as UTF-8")
    assert snapshot(root) == before


# 6. masks saved with another extension -------------------------------------------------------------------------

@pytest.mark.parametrize("ext,why", [(".jpg", "JPEG compression changes label values"), (".bmp", "save them as PNG")])
@pytest.mark.parametrize("layout", ["folder_ratio", "folder_splits", "voc"])
def test_masks_with_another_extension_say_what_was_found(tmp_path, ext, why, layout):
    if layout == "voc":
        root, cfg = make_voc_tree(tmp_path / "voc"), VOC
        masks, stem = root / "SegmentationClass", "2007_000000"
    else:
        splits = {"train": ["s0", "s1"], "val": ["s2"]} if layout == "folder_splits" else None
        root = make_folder(tmp_path / "d", {f"s{i}": object_mask() for i in range(3)}, splits=splits)
        masks, stem, cfg = root / "masks", "s0", FOLDER
    Image.open(masks / f"{stem}.png").convert("L").save(masks / f"{stem}{ext}")
    (masks / f"{stem}.png").unlink()
    before = snapshot(root)
    with pytest.raises(DataError) as exc:
        build_dataset(split="train", root=str(root), **cfg)
    one_sentence(exc.value, f"found {stem}{ext}", str(masks), "masks must be PNG", why)
    assert snapshot(root) == before


def test_images_with_an_unread_extension_say_what_was_found(tmp_path):
    root = make_voc_tree(tmp_path / "voc")
    image = root / "JPEGImages" / "2007_000001.jpg"
    image.rename(image.with_suffix(".gif"))
    with pytest.raises(DataError) as exc:
        build_dataset(split="train", root=str(root), **VOC)
    one_sentence(exc.value, "found 2007_000001.gif", "images must be one of", ".jpg")


# 7. mask modes -------------------------------------------------------------------------------------------------

INDICES = np.array([[0, 1, 2, 3], [4, 255, 1, 0], [2, 2, 3, 3]], np.uint8)


def _write_mode(path: Path, mode: str, indices: np.ndarray = INDICES) -> None:
    """`indices` saved in PIL mode `mode` (a PNG where PNG can hold the mode)."""
    if mode == "1":
        Image.fromarray(indices > 0).save(path)
    elif mode == "LA":
        Image.fromarray(np.dstack([indices, np.full_like(indices, 7)]), mode="LA").save(path)
    elif mode == "I;16":
        Image.fromarray(indices.astype(np.uint16)).save(path)
    elif mode == "I;16 large":
        Image.fromarray((indices.astype(np.uint16) * 100)).save(path)
    elif mode == "RGBA":
        colours = np.array(VOC["palette"] + [[0, 0, 0]] * 250 + [[224, 224, 192]], np.uint8)[indices]
        Image.fromarray(np.dstack([colours, np.full_like(indices, 128)]), mode="RGBA").save(path)
    elif mode == "P transparent":
        img = Image.fromarray(indices, mode="P")
        img.putpalette([c for rgb in VOC["palette"] for c in rgb] + [224, 224, 192] * 251)
        img.save(path, transparency=255)
    elif mode == "RGB 16-bit":
        colours = np.array(VOC["palette"] + [[0, 0, 0]] * 250 + [[224, 224, 192]], np.uint16)[indices]
        cv2.imwrite(str(path), colours[..., ::-1].copy())  # 16-bit per channel: 8-bit values stay small
    elif mode == "I":
        Image.fromarray(indices.astype(np.int32) - 1).save(path)
    elif mode in ("F", "F fractional"):
        Image.fromarray(indices.astype(np.float32) + (0.5 if mode == "F fractional" else 0)).save(path)
    elif mode == "CMYK":
        Image.fromarray(indices).convert("CMYK").save(path)


READ_MODES = ["1", "LA", "I;16", "RGBA", "P transparent", "F"]
REFUSED_MODES = {"I;16 large": "values up to 25500", "RGB 16-bit": "16-bit RGB mask", "I": "negative values",
                 "F fractional": "fractional values", "CMYK": "CMYK mask"}


@pytest.mark.parametrize("mode", READ_MODES + sorted(REFUSED_MODES))
def test_every_mask_mode_is_read_correctly_or_refused_by_name(tmp_path, mode):
    path = tmp_path / ("m.tif" if mode in ("I", "F", "F fractional", "CMYK") else "m.png")  # modes PNG cannot hold
    _write_mode(path, mode)
    before = path.read_bytes()
    if mode in READ_MODES:
        expected = (INDICES > 0).astype(np.uint8) if mode == "1" else INDICES
        got = read_mask(path, num_classes=5, palette=VOC["palette"], ignore_colour=[224, 224, 192])
        assert (got == expected).all(), got
    else:
        with pytest.raises(DataError) as exc:
            read_mask(path, num_classes=5, palette=VOC["palette"])
        one_sentence(exc.value, str(path), REFUSED_MODES[mode], "save")
    assert path.read_bytes() == before


@pytest.mark.parametrize("mode", ["LA", "I;16 large", "RGB 16-bit"])
def test_the_checker_reports_unusual_mask_modes_in_a_voc_layout_without_crashing(tmp_path, mode):
    root = make_voc_tree(tmp_path / "voc")
    mask_path = root / "SegmentationClass" / "2007_000000.png"
    indices = np.zeros(np.array(Image.open(mask_path)).shape, np.uint8)
    indices[:10], indices[10] = 1, 255
    _write_mode(mask_path, mode, indices)
    train, _ = check_dataset(root=str(root), workers=0, **VOC)
    if mode == "LA":
        assert not train.problems, train.problems
    else:
        assert len(train.problems) == 1
        one_sentence(Exception(train.problems[0]), str(mask_path), REFUSED_MODES[mode])


def test_an_rgb_mask_colour_given_to_two_classes_is_refused_not_guessed(tmp_path):
    palette = [[0, 0, 0], [128, 0, 0], [128, 0, 0], [0, 128, 0]]
    colours = np.zeros((4, 4, 3), np.uint8)
    colours[0, 0] = [128, 0, 0]
    Image.fromarray(colours).save(tmp_path / "rgb.png")
    with pytest.raises(DataError) as exc:
        read_mask(tmp_path / "rgb.png", num_classes=4, palette=palette)
    one_sentence(exc.value, str(tmp_path / "rgb.png"), "(128, 0, 0)", "classes [1, 2]", "dataset.palette")
    colours[0, 0] = [0, 128, 0]  # a mask without the shared colour is unaffected
    Image.fromarray(colours).save(tmp_path / "rgb.png")
    assert read_mask(tmp_path / "rgb.png", num_classes=4, palette=palette)[0, 0] == 3


# 8. an error raised in a DataLoader worker -------------------------------------------------------------------

@pytest.mark.parametrize("which", ["train", "val"])
def test_an_error_in_a_dataloader_worker_reaches_the_user_as_its_one_sentence(tmp_path, which):
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
    with pytest.raises(DataError) as exc:
        for _ in loader:
            pass
    assert "DataLoader worker" in str(exc.value), "the error came from the worker process"
    assert isinstance(exc.value, UserError), "user_errors() catches it as one of the user's"
    assert one_line(exc.value) == str(direct.value)
    one_sentence(Exception(one_line(exc.value)), str(bad), "label values [9]")


# 9. more of the same kinds -------------------------------------------------------------------------------------

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


def test_an_id_listed_twice_is_an_error_naming_id_and_lines(tmp_path):
    root = make_voc_tree(tmp_path / "voc")
    split_file = root / "ImageSets/Segmentation/train.txt"
    split_file.write_text("2007_000000\n2007_000001\n\n2007_000000\n")
    with pytest.raises(DataError) as exc:
        build_dataset(split="train", root=str(root), **VOC)
    one_sentence(exc.value, str(split_file), "'2007_000000'", "lines 1 and 4", "list each id once")


@pytest.mark.parametrize("line,fix", [("2007_000000.jpg", "'2007_000000'"), ("JPEGImages/2007_000000", "'2007_000000'"),
                                      ("JPEGImages\\2007_000000.jpg", "'2007_000000'"),
                                      ("2007_000000 1", "one id")])
def test_ids_with_a_folder_extension_or_extra_field_say_how_to_write_them(tmp_path, line, fix):
    root = make_voc_tree(tmp_path / "voc")
    split_file = root / "ImageSets/Segmentation/train.txt"
    split_file.write_text(f"{line}\n2007_000001\n")
    with pytest.raises(DataError) as exc:
        build_dataset(split="train", root=str(root), **VOC)
    one_sentence(exc.value, str(split_file), repr(line), fix)


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


@pytest.mark.parametrize("ratio", [0, 1, -0.1, 1.5, "0.1"])
def test_val_ratio_outside_0_1_names_the_key(tmp_path, ratio):
    root = make_folder(tmp_path / "d", {"a": object_mask(), "b": object_mask()})
    with pytest.raises(ConfigError) as exc:
        build_dataset(split="val", root=str(root), val_ratio=ratio, **FOLDER)
    one_sentence(exc.value, f"dataset.val_ratio={ratio!r}", "between 0 and 1")


def test_a_batch_larger_than_the_training_split_names_the_key():
    with pytest.raises(ConfigError) as exc:
        TrainBatches(3, batch_size=8, total_iters=1)
    one_sentence(exc.value, "trainer.batch_size=8", "3 samples")
    with pytest.raises(ConfigError) as exc:
        TrainBatches(30, batch_size=8, total_iters=1, world_size=3)
    one_sentence(exc.value, "trainer.batch_size=8", "trainer.grad_accum", "not divisible")


def test_read_image_refuses_an_empty_file_by_name(tmp_path):
    (tmp_path / "e.jpg").write_bytes(b"")
    with pytest.raises(DataError) as exc:
        read_image(tmp_path / "e.jpg")
    one_sentence(exc.value, str(tmp_path / "e.jpg"), "0 bytes")
