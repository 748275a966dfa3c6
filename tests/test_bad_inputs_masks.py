"""The catalogue of data mistakes, masks: 0/255 masks, masks saved in another format or mode. Each ends in one
sentence naming the file or config key and the fix, or is read correctly; nothing trains silently on wrong data, and
no check changes the user's files."""

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from conftest import FOLDER, VOC, make_folder, make_voc_tree, object_mask, one_sentence, palette_png, snapshot
from deeplab.data import DataError, SegmentationDataset, build_dataset
from deeplab.data.check import check_dataset, preflight
from deeplab.data.dataset import read_mask


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


@pytest.mark.slow  # python -m deeplab.data.check as a process
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
