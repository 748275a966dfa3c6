"""`python -m deeplab.data.annotations`: annotation tools' exports (made by tests/annotation_exports.py from masks, or
written here by hand) imported as a folder dataset: the masks come back, the classes are the ones asked for, and
every mistake is one sentence naming the file or key, with nothing written and the source untouched."""

import base64
import io
import json
import os
import shlex
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from annotation_exports import FORMATS, IGNORE_LABEL, agreement, encode_brush_rle, write_export
from conftest import REPO, compose, digest, one_sentence, tiny_train_overrides
from deeplab.cli import annotations as annotations_cli
from deeplab.cli.command_line import unknown_override
from deeplab.data.annotations import IGNORE_INDEX, import_annotations
from deeplab.data.annotations.labelme import LINE_WIDTH, POINT_RADIUS, _shape_pixels
from deeplab.data.annotations.labelstudio import decode_brush_rle
from deeplab.data.dataset import DataError
from deeplab.engine.run_config import validate_config
from deeplab.errors import ConfigError

NAMES = ["background", "cat", "dog", "car"]


def scene(seed: int = 0, size=(40, 56)) -> np.ndarray:
    """Several classes, a region with a hole holding another class's island and a background island, a thin
    diagonal line, a lone pixel and an ignored patch."""
    import cv2

    rng = np.random.default_rng(seed)
    mask = np.zeros(size, np.uint8)
    cv2.rectangle(mask, (3, 3), (34, 26), 1, -1)
    cv2.rectangle(mask, (10, 10), (22, 20), 0, -1)  # a background hole in cat
    cv2.circle(mask, (15, 15), 3, 2, -1)  # a dog island in the hole
    cv2.circle(mask, (44, 30), 8 + seed, 3, -1)
    cv2.line(mask, (0, 39), (55, 33), 2, 1)
    mask[int(rng.integers(30, 38)), int(rng.integers(2, 20))] = 3
    mask[30:34, 22:27] = IGNORE_INDEX
    return mask


@pytest.fixture
def photos(tmp_path):
    """Three (image path, mask) pairs: lossless images whose grey encodes the class."""
    pairs = []
    for i in range(3):
        mask = scene(i)
        path = tmp_path / "photos" / f"shot{i}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(np.dstack([mask // 3 + 10 * i] * 3).astype(np.uint8)).save(path)
        pairs.append((path, mask))
    return pairs


def masks_of(pairs) -> dict:
    return {path.stem: mask for path, mask in pairs}


def refused(error, tmp_path, fmt, kwargs, *names, output_in: str = "", **options) -> str:
    """import_annotations into tmp_path/<output_in>/out refuses with one sentence naming `names`; no output folder,
    every file under tmp_path (the source among them) byte-identical."""
    before = digest(tmp_path)
    out = tmp_path / output_in / "out"
    with pytest.raises(error) as info:
        import_annotations(fmt, output=out, progress=False, **kwargs, **options)
    assert not out.exists()
    assert digest(tmp_path) == before
    return one_sentence(info, *names)


# --- every format gives the masks back -------------------------------------------------------------------------------

CASES = [(fmt, variant) for fmt, variants in FORMATS.items() for variant in variants]


@pytest.mark.parametrize("fmt, variant", CASES, ids=[f"{f}-{v}" for f, v in CASES])
def test_every_format_gives_the_masks_back_with_the_images_and_a_split(fmt, variant, photos, tmp_path):
    kwargs = write_export(fmt, photos, NAMES, tmp_path / "export", variant=variant)
    result = import_annotations(fmt, output=tmp_path / "out", class_names=NAMES, progress=False, **kwargs)
    shares = agreement(masks_of(photos), tmp_path / "out")
    exact = variant in ("mask", "mask_noimages", "brush", "rle")  # colour masks and RLE: every pixel
    assert all(share == 1.0 if exact else share >= 0.999 for share in shares.values()), shares
    assert result.class_names == NAMES
    for path, _ in photos:  # copied as they are
        assert (tmp_path / "out" / "images" / path.name).read_bytes() == path.read_bytes()
        assert Image.open(tmp_path / "out" / "masks" / f"{path.stem}.png").mode == "P"
    train = (tmp_path / "out" / "splits" / "train.txt").read_text().split()
    val = (tmp_path / "out" / "splits" / "val.txt").read_text().split()
    assert sorted(train + val) == ["shot0", "shot1", "shot2"] and len(val) == 1 and not set(train) & set(val)
    assert result.pixels[IGNORE_INDEX] == sum((m == IGNORE_INDEX).sum() for _, m in photos)


def test_the_split_is_seeded_and_val_ratio_sets_its_size(photos, tmp_path):
    kwargs = write_export("cvat", photos, NAMES, tmp_path / "export")
    first = import_annotations("cvat", output=tmp_path / "a", seed=3, val_ratio=0.5, progress=False, **kwargs)
    again = import_annotations("cvat", output=tmp_path / "b", seed=3, val_ratio=0.5, progress=False, **kwargs)
    assert (first.train, first.val) == (again.train, again.val) and len(first.val) == 2  # round(1.5)


def test_one_image_is_in_both_splits_with_a_note(photos, tmp_path):
    kwargs = write_export("labelme", photos[:1], NAMES, tmp_path / "export")
    result = import_annotations("labelme", output=tmp_path / "out", progress=False, **kwargs)
    assert result.train == result.val == ["shot0"]
    assert any("both list it" in note for note in result.notes)


# --- classes ------------------------------------------------------------------------------------------------------

def test_without_class_names_the_exports_labels_come_in_its_order_with_background_first(photos, tmp_path):
    kwargs = write_export("coco", photos, ["bg", "cat", "dog", "car"], tmp_path / "export")
    result = import_annotations("coco", output=tmp_path / "out", progress=False, **kwargs)
    assert result.class_names == ["background", "bg", "cat", "dog", "car"]  # no 'background' label: added as 0
    kwargs = write_export("coco", photos, NAMES, tmp_path / "export2")
    result = import_annotations("coco", output=tmp_path / "out2", progress=False, **kwargs)
    assert result.class_names == NAMES  # the categories' order, IGNORE_LABEL drawn as 255 and not a class
    kwargs = write_export("cvat", photos, ["sky", "cat", "dog", "car"], tmp_path / "export3")
    result = import_annotations("cvat", output=tmp_path / "out3", progress=False, **kwargs)
    assert result.class_names == ["background", "sky", "cat", "dog", "car"]  # labelmap.txt's order


def test_class_names_fix_the_order_merge_draws_labels_as_one_class_and_drop_leaves_them_out(photos, tmp_path):
    kwargs = write_export("labelstudio", photos, NAMES, tmp_path / "export")
    result = import_annotations("labelstudio", output=tmp_path / "out", class_names=["background", "vehicle", "pet"],
                                merge={"cat": "pet", "dog": "pet"}, drop=["car"], progress=False, **kwargs)
    assert result.class_names == ["background", "vehicle", "pet"]
    for path, mask in photos:
        got = np.asarray(Image.open(tmp_path / "out" / "masks" / f"{path.stem}.png"))
        lut = np.arange(256, dtype=np.uint8)
        lut[[1, 2]] = 2
        kept = mask != 3
        assert (got[kept] == lut[mask][kept]).all()
        assert got[30, 44] == 0  # car dropped: the background beneath its circle shows
    assert result.pixels[1] == 0


def test_a_label_that_is_no_class_is_refused_naming_it_and_the_fixes(photos, tmp_path):
    kwargs = write_export("labelme", photos, NAMES, tmp_path / "export")
    text = refused(DataError, tmp_path, "labelme", kwargs, "shot0.json", "'dog'", "class_names", "merge=", "drop=[dog]",
                   class_names=["background", "cat", "car"])
    assert text.startswith(str(tmp_path / "export"))


@pytest.mark.parametrize("options, names", [
    (dict(merge={"cta": "pet"}), ["merge names 'cta'", "its labels: cat, car, background, dog, __ignore__"]),
    (dict(drop=["cars"]), ["drop names 'cars'"]),
    (dict(class_names=["background", "cat"], merge={"dog": "pet"}), ["'pet'", "class_names lacks"]),
    (dict(class_names=["background", "cat", "cat"]), ["'cat' twice"]),
    (dict(class_names=["background"]), ["2 to 255 classes"]),
    (dict(drop=["cat"], merge={"cat": "pet"}), ["drop and merge both name 'cat'"]),
    (dict(unlabelled="void"), ["unlabelled=void", "background", "ignore"]),
    (dict(outside="crop"), ["outside=crop", "clip"]),
    (dict(val_ratio=1.0), ["val_ratio=1.0"]),
])
def test_a_wrong_key_is_one_sentence_naming_it(options, names, photos, tmp_path):
    kwargs = write_export("labelme", photos, NAMES, tmp_path / "export")
    refused(ConfigError, tmp_path, "labelme", kwargs, *names, **options)


def test_unlabelled_ignore_makes_the_pixels_no_shape_covers_255(photos, tmp_path):
    kwargs = write_export("cvat", photos, NAMES, tmp_path / "export", variant="coco")
    result = import_annotations("cvat", output=tmp_path / "out", class_names=NAMES, unlabelled="ignore",
                                progress=False, **kwargs)
    for path, mask in photos:
        got = np.asarray(Image.open(tmp_path / "out" / "masks" / f"{path.stem}.png"))
        # background inside another region was drawn (as the label background); the rest is unlabelled
        assert (got[mask != 0] == mask[mask != 0]).all() and got[0, -1] == IGNORE_INDEX and got[11, 11] == 0
    assert result.allow_ignore_only_masks
    assert "dataset.allow_ignore_only_masks=true" in annotations_cli.train_overrides(result)


# --- labelme, by hand ------------------------------------------------------------------------------------------------

def labelme_file(folder, stem, shapes, *, size=(20, 30), image=True, **fields):
    """A labelme JSON `stem`.json with its PNG image beside it (unless image=False)."""
    folder.mkdir(parents=True, exist_ok=True)
    if image:
        Image.fromarray(np.full((*size, 3), 90, np.uint8)).save(folder / f"{stem}.png")
    document = {"version": "5.5.0", "flags": {}, "shapes": shapes, "imagePath": f"{stem}.png", "imageData": None,
                "imageHeight": size[0], "imageWidth": size[1], **fields}
    path = folder / f"{stem}.json"
    path.write_text(json.dumps(document))
    return path


def shape(label, points, kind="polygon", **fields):
    return {"label": label, "points": points, "group_id": None, "description": "", "shape_type": kind, "flags": {},
            "mask": None, **fields}


def mask_of(out, stem="a"):
    return np.asarray(Image.open(out / "masks" / f"{stem}.png"))


def test_the_later_shape_wins_where_shapes_overlap(tmp_path):
    first, second = shape("cat", [[2, 2], [12, 10]], "rectangle"), shape("dog", [[8, 5], [20, 15]], "rectangle")
    labelme_file(tmp_path / "src", "a", [first, second])
    labelme_file(tmp_path / "src", "b", [second, first])
    import_annotations("labelme", tmp_path / "src", tmp_path / "out", class_names=["background", "cat", "dog"],
                       progress=False)
    a, b = mask_of(tmp_path / "out", "a"), mask_of(tmp_path / "out", "b")
    assert a[9, 10] == 2 and b[9, 10] == 1  # the overlap takes the later shape's class
    assert (a[2:11, 2:8] == 1).all() and a[2:11, 2:13].sum() and a[1, 2] == 0 and a[2, 1] == 0
    assert (a[5:16, 8:21] == 2).all() and a[16, 8] == 0 and a[5, 21] == 0  # rectangles include both corners


def test_a_labelme_file_naming_itself_as_its_image_is_read_from_its_imagedata(tmp_path):
    # labelme's own examples/tutorial/apc2016_obj3.json: imagePath is the JSON's name, the image embedded
    buffer = io.BytesIO()
    Image.fromarray(np.full((20, 30, 3), 90, np.uint8)).save(buffer, format="PNG")
    labelme_file(tmp_path / "src", "a", [shape("cat", [[2, 2], [12, 10]], "rectangle")], image=False,
                 imagePath="a.json", imageData=base64.b64encode(buffer.getvalue()).decode())
    import_annotations("labelme", tmp_path / "src", tmp_path / "out", progress=False)
    assert mask_of(tmp_path / "out")[5, 5] == 1 and len(list((tmp_path / "out" / "images").iterdir())) == 1


def test_labelmes_own_background_label_is_class_0_unless_class_names_lists_it(tmp_path):
    shapes = [shape("_background_", [[0, 0], [29, 19]], "rectangle"), shape("cat", [[2, 2], [12, 10]], "rectangle")]
    labelme_file(tmp_path / "src", "a", shapes)
    result = import_annotations("labelme", tmp_path / "src", tmp_path / "out", progress=False)
    assert result.class_names == ["background", "cat"] and mask_of(tmp_path / "out")[15, 20] == 0
    result = import_annotations("labelme", tmp_path / "src", tmp_path / "out2", progress=False,
                                class_names=["background", "_background_", "cat"])
    assert result.class_names == ["background", "_background_", "cat"] and mask_of(tmp_path / "out2")[15, 20] == 1


def test_labelme_shapes_are_drawn_as_labelme_draws_them(tmp_path):
    shapes = [shape("cat", [[10, 10], [14, 10]], "circle"), shape("dog", [[30, 5]], "point"),
              shape("car", [[2, 30], [40, 30]], "line"), shape("cat", [[50, 2], [52, 2], [52, 4], [50, 4]],
                                                                 "oriented_rectangle")]
    patch = io.BytesIO()
    Image.fromarray(np.array([[1, 0, 1], [1, 1, 0]], np.uint8) * 255).save(patch, format="PNG")
    shapes.append(shape("dog", [[40, 10], [42, 11]], "mask", mask=base64.b64encode(patch.getvalue()).decode()))
    labelme_file(tmp_path / "src", "a", shapes, size=(40, 60))
    import_annotations("labelme", tmp_path / "src", tmp_path / "out", class_names=["background", "cat", "dog", "car"],
                       progress=False)
    m = mask_of(tmp_path / "out")
    assert m[10, 14] == 1 and m[10, 15] == 0 and m[6, 10] == 1 and m[14, 10] == 1  # radius 4
    assert m[5, 30 + POINT_RADIUS] == 2 and m[5, 31 + POINT_RADIUS] == 0
    assert m[30 - LINE_WIDTH // 2 + 1, 20] == 3 and m[30 + LINE_WIDTH // 2, 20] == 3 and m[30 - LINE_WIDTH, 20] == 0
    assert (m[2:5, 50:53] == 1).all()
    assert m[10:12, 40:43].tolist() == [[2, 0, 2], [2, 2, 0]]  # the patch, its top-left at the first point


def test_shapes_drawn_in_a_window_are_those_drawn_on_the_whole_image():
    """The rasteriser draws each shape only in the window it covers: the same pixels as drawing on the whole image
    (PIL's rounding is exact under integer shifts)."""
    from PIL import ImageDraw

    rng = np.random.default_rng(0)
    for kind in ("polygon", "rectangle", "circle", "line", "linestrip", "point"):
        for _ in range(20):
            count = {"rectangle": 2, "circle": 2, "line": 2, "point": 1}.get(kind, 5)
            points = rng.uniform(-3, 50, (count, 2)).round(rng.integers(0, 3))
            pixels, (top, left) = _shape_pixels(kind, points, None, height=40, width=45)
            got = np.zeros((40, 45), bool)
            got[top:top + pixels.shape[0], left:left + pixels.shape[1]] = pixels
            whole = Image.new("L", (45, 40), 0)
            draw, xy = ImageDraw.Draw(whole), [tuple(p) for p in points]
            if kind in ("circle", "point"):
                (cx, cy), r = xy[0], np.hypot(*np.subtract(xy[0], xy[-1])) if kind == "circle" else POINT_RADIUS
                draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=1, fill=1)
            elif kind == "rectangle":
                draw.rectangle([tuple(points.min(0)), tuple(points.max(0))], outline=1, fill=1)
            elif kind in ("line", "linestrip"):
                draw.line(xy, fill=1, width=LINE_WIDTH, joint="curve" if kind == "linestrip" else None)
            else:
                draw.polygon(xy, outline=1, fill=1)
            assert (got == np.asarray(whole, bool)).all(), (kind, points)


def test_an_image_turned_by_its_exif_orientation_is_written_as_labelme_showed_it(tmp_path):
    stored = np.zeros((20, 30, 3), np.uint8)
    stored[:, :5] = 255  # a white band along the stored image's left edge
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned 90 degrees clockwise: 20 wide, 30 high, the band along the top
    (tmp_path / "src").mkdir()
    Image.fromarray(stored).save(tmp_path / "src" / "a.jpg", exif=exif, quality=100)
    labelme_file(tmp_path / "src", "a", [shape("cat", [[0, 0], [19, 4]], "rectangle")], size=(30, 20), image=False,
                 imagePath="a.jpg")
    import_annotations("labelme", tmp_path / "src", tmp_path / "out", progress=False)
    image = np.asarray(Image.open(tmp_path / "out" / "images" / "a.png"))
    assert image.shape == (30, 20, 3) and image[:5].mean() > 200 and image[6:].mean() < 50
    assert (mask_of(tmp_path / "out")[:5] == 1).all() and not mask_of(tmp_path / "out")[5:].any()


def test_an_embedded_image_is_used_when_the_file_is_not_there(tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(np.full((20, 30, 3), 7, np.uint8)).save(buffer, format="PNG")
    labelme_file(tmp_path / "src", "a", [shape("cat", [[1, 1], [5, 5]], "rectangle")], image=False,
                 imageData=base64.b64encode(buffer.getvalue()).decode())
    import_annotations("labelme", tmp_path / "src", tmp_path / "out", progress=False)
    assert (tmp_path / "out" / "images" / "a.png").read_bytes() == buffer.getvalue()


# --- Label Studio ----------------------------------------------------------------------------------------------------

def test_the_brush_rle_decoder_reads_what_label_studios_encoder_writes():
    # by hand: 4 values, 8-bit words, widths 3, 4, 8, 16; a run of three 7s (1 00 010 00000111), one literal 0
    # (0 00 000 00000000), padded to whole bytes
    assert decode_brush_rle([0, 0, 0, 4, 57, 27, 252, 64, 224, 0, 0]).tolist() == [7, 7, 7, 0]
    assert encode_brush_rle(np.array([7, 7, 7, 0])) == [0, 0, 0, 4, 57, 27, 252, 64, 224, 0, 0]
    rng = np.random.default_rng(0)
    for length in (1, 2, 17, 256, 257, 1000):
        values = rng.integers(0, 256, length, dtype=np.uint8)
        assert (decode_brush_rle(encode_brush_rle(values)) == values).all()
    runs = np.repeat(rng.integers(0, 3, 40, dtype=np.uint8), rng.integers(1, 300, 40))
    runs = np.concatenate([runs, np.full(2 ** 16 * 2 + 5, 9, np.uint8)])  # a run longer than 16 bits can count
    assert (decode_brush_rle(encode_brush_rle(runs)) == runs).all()
    with pytest.raises(ValueError):
        decode_brush_rle(encode_brush_rle(runs)[:-40])


def test_label_studio_takes_the_newest_finished_annotation_and_leaves_out_unannotated_tasks(photos, tmp_path):
    kwargs = write_export("labelstudio", photos, NAMES, tmp_path / "export")
    tasks = json.loads(kwargs["source"].read_text())
    done = tasks[0]["annotations"][0]
    older = {**done, "id": 90, "created_at": "2025-01-01T00:00:00Z",
             "result": [{**done["result"][0], "value": {**done["result"][0]["value"], "polygonlabels": ["car"]}}]}
    cancelled = {**older, "id": 91, "created_at": "2027-01-01T00:00:00Z", "was_cancelled": True}
    tasks[0]["annotations"] = [done, older, cancelled]
    tasks[1]["annotations"] = [cancelled]
    kwargs["source"].write_text(json.dumps(tasks))
    result = import_annotations("labelstudio", output=tmp_path / "out", class_names=NAMES, progress=False, **kwargs)
    assert sorted(result.train + result.val) == ["shot0", "shot2"]
    assert agreement({"shot0": photos[0][1]}, tmp_path / "out")["shot0"] == 1.0  # neither the older nor the cancelled
    assert any("1 task(s) with no finished annotation" in note for note in result.notes)


def test_label_studio_finds_the_images_beside_the_json_without_their_upload_prefix(photos, tmp_path):
    kwargs = write_export("labelstudio", photos, NAMES, tmp_path / "export")
    for path, _ in photos:
        (tmp_path / "export" / path.name).write_bytes(path.read_bytes())
    import_annotations("labelstudio", kwargs["source"], tmp_path / "out", progress=False)
    assert sorted(p.name for p in (tmp_path / "out" / "images").iterdir()) == ["shot0.png", "shot1.png", "shot2.png"]


# --- mistakes: one sentence, nothing written --------------------------------------------------------------------------

def test_a_shape_outside_the_image_is_refused_unless_outside_clip(tmp_path):
    labelme_file(tmp_path / "src", "a", [shape("cat", [[1, 1], [31.5, 5], [5, 8]])])  # 30 wide: 31.5 is 1.5 past
    refused(DataError, tmp_path, "labelme", {"source": tmp_path / "src"}, "a.json", "(31.5, 5)", "outside=clip")
    labelme_file(tmp_path / "src", "a", [shape("cat", [[1, 1], [31, 5], [5, 8]])])  # 1 pixel past: rounding
    import_annotations("labelme", tmp_path / "src", tmp_path / "out", progress=False)
    labelme_file(tmp_path / "src", "a", [shape("cat", [[1, 1], [80, 5], [5, 8]])])
    import_annotations("labelme", tmp_path / "src", tmp_path / "out2", outside="clip", progress=False)
    assert mask_of(tmp_path / "out2")[5, 29] == 1


def test_an_annotation_for_another_image_size_is_refused(photos, tmp_path):
    kwargs = write_export("coco", photos, NAMES, tmp_path / "export")
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(tmp_path / "export" / "images" / "shot1.png")
    refused(DataError, tmp_path, "coco", kwargs, "annotations.json", "56x40", "shot1.png is 10x10")


@pytest.mark.parametrize("fmt, variant, remove, names", [
    ("labelme", "polygon", "export/shot1.png", ["shot1.json", "shot1.png", "images=DIR"]),
    ("coco", "polygon", "export/images/shot1.png", ["annotations.json", "shot1.png", "images=DIR"]),
    ("labelstudio", "polygon", "export/media/upload/1/00000002-shot1.png", ["project.json", "task 2",
                                                                           "images=DIR"]),
    ("cvat", "mask", "export/JPEGImages/shot1.png", ["shot1.png", "images=DIR"]),
])
def test_an_image_the_export_names_but_the_folder_lacks_is_refused(fmt, variant, remove, names, photos, tmp_path):
    kwargs = write_export(fmt, photos, NAMES, tmp_path / "export", variant=variant)
    (tmp_path / remove).unlink()
    refused(DataError, tmp_path, fmt, kwargs, *names)


def test_a_cvat_export_without_images_needs_images_and_says_so(photos, tmp_path):
    kwargs = write_export("cvat", photos, NAMES, tmp_path / "export", variant="mask_noimages")
    (tmp_path / "export" / "JPEGImages").rmdir()
    text = refused(DataError, tmp_path, "cvat", {"source": kwargs["source"]}, "no JPEGImages/", "images=DIR",
                   "Save images")
    assert text.startswith(str(tmp_path / "export"))


def test_a_colour_the_labelmap_lacks_is_refused_naming_the_mask_and_the_colour(photos, tmp_path):
    kwargs = write_export("cvat", photos, NAMES, tmp_path / "export")
    path = tmp_path / "export" / "SegmentationClass" / "shot2.png"
    rgb = np.array(Image.open(path))
    rgb[0, 0] = (1, 2, 3)
    Image.fromarray(rgb).save(path)
    refused(DataError, tmp_path, "cvat", kwargs, str(path), "(1, 2, 3)", "labelmap.txt")


@pytest.mark.parametrize("given, made, names", [
    ("labelme", ("coco", "polygon"), ["annotations.json", "a COCO instances file", "from=coco"]),
    ("labelstudio", ("labelme", "polygon"), ["shot0.json", "a labelme annotation", "from=labelme"]),
    ("coco", ("labelstudio", "polygon"), ["project.json", "a Label Studio JSON export", "from=labelstudio"]),
    ("cvat", ("labelme", "polygon"), ["not a CVAT export", "labelmap.txt", "instances_*.json"]),
])
def test_an_export_of_another_tool_is_named_as_what_it_is(given, made, names, photos, tmp_path):
    kwargs = write_export(made[0], photos, NAMES, tmp_path / "export", variant=made[1])
    source = kwargs["source"] if given != "labelstudio" else kwargs["source"] / "shot0.json"
    refused(DataError, tmp_path, given, {"source": source}, *names)


def _edit_json(path, change):
    document = json.loads(path.read_text())
    change(document)
    path.write_text(json.dumps(document))


def _first_result(tasks):
    return tasks[0]["annotations"][0]["result"][0]


MALFORMED = [  # (tool, variant, the file to edit, the edit, what the sentence names)
    ("labelme", "polygon", "shot0.json", lambda d: d["shapes"][0].update(shape_type="ellipse"),
     ["shot0.json", "shape 0", "'ellipse'", "delete it in labelme"]),
    ("labelme", "polygon", "shot0.json", lambda d: d["shapes"][0].update(shape_type="rectangle"),
     ["shot0.json", "rectangle with", "points where labelme gives 2"]),
    ("labelme", "polygon", "shot0.json", lambda d: d["shapes"][1].update(points=[["a", 1]]),
     ["shot0.json", "shape 1", "not [x, y] number pairs"]),
    ("labelme", "polygon", "shot0.json", lambda d: d.update(shapes={}), ["shot0.json", "'shapes' is a dict"]),
    ("labelstudio", "polygon", "project.json",
     lambda d: _first_result(d)["value"].update(polygonlabels=["cat", "dog"]),
     ["project.json", "task 1", "2 labels (cat, dog)", "one label"]),
    ("labelstudio", "brush", "project.json",
     lambda d: _first_result(d)["value"].update(rle=encode_brush_rle(np.zeros(16))),
     ["project.json", "task 1", "brush mask of 16 values", "56x40", "another image or size"]),
    ("labelstudio", "polygon", "project.json",
     lambda d: [r.update(original_width=50) for r in d[0]["annotations"][0]["result"]],
     ["project.json (task 1)", "a 50x40 image", "is 56x40", "another image or size"]),
    ("labelstudio", "polygon", "project.json", lambda d: _first_result(d).update(image_rotation=90),
     ["project.json", "rotated by 90 degrees"]),
    ("coco", "polygon", "annotations.json", lambda d: [a.pop("segmentation") for a in d["annotations"]],
     ["annotations.json", "no segmentation", "detection file"]),
    ("coco", "rle", "annotations.json", lambda d: d["annotations"][0]["segmentation"].update(size=[10, 10]),
     ["annotations.json", "an RLE of size [10, 10]", "40x56"]),
    ("coco", "polygon", "annotations.json", lambda d: d["annotations"][0].update(category_id=99),
     ["annotations.json", "category_id 99"]),
]


@pytest.mark.parametrize("fmt, variant, name, change, names", MALFORMED,
                         ids=[f"{m[0]}-{i}" for i, m in enumerate(MALFORMED)])
def test_a_malformed_export_is_one_sentence_naming_the_file_and_the_fix(fmt, variant, name, change, names, photos,
                                                                         tmp_path):
    kwargs = write_export(fmt, photos, NAMES, tmp_path / "export", variant=variant)
    path = next((tmp_path / "export").rglob(name))
    _edit_json(path, change)
    refused(DataError, tmp_path, fmt, kwargs, *names)


def test_an_empty_export_an_unreadable_json_and_a_zip_are_one_sentence_each(photos, tmp_path):
    (tmp_path / "empty").mkdir()
    refused(DataError, tmp_path, "labelme", {"source": tmp_path / "empty"}, "holds no annotated image")
    kwargs = write_export("labelstudio", photos, NAMES, tmp_path / "export")
    tasks = json.loads(kwargs["source"].read_text())
    for task in tasks:
        task["annotations"] = [{**task["annotations"][0], "was_cancelled": True}]
    kwargs["source"].write_text(json.dumps(tasks))
    refused(DataError, tmp_path, "labelstudio", kwargs, "holds no annotated image", "no finished annotation")
    kwargs["source"].write_text(kwargs["source"].read_text()[:50])
    refused(DataError, tmp_path, "labelstudio", kwargs, "project.json", "not valid JSON")
    (tmp_path / "task.zip").write_bytes(b"PK")
    refused(DataError, tmp_path, "cvat", {"source": tmp_path / "task.zip"}, "unzip it first")


def test_two_images_with_one_stem_are_refused(photos, tmp_path):
    kwargs = write_export("labelstudio", photos, NAMES, tmp_path / "export")
    tasks = json.loads(kwargs["source"].read_text())
    tasks[1]["data"]["image"] = tasks[0]["data"]["image"]
    tasks[1]["file_upload"] = tasks[0]["file_upload"]
    kwargs["source"].write_text(json.dumps(tasks))
    refused(DataError, tmp_path, "labelstudio", kwargs, "stem 'shot0'", "rename one")


def test_an_output_folder_holding_files_is_refused_and_overwrite_replaces_only_the_dataset(photos, tmp_path):
    kwargs = write_export("cvat", photos, NAMES, tmp_path / "export")
    out = tmp_path / "out"
    (out / "images").mkdir(parents=True)
    (out / "images" / "stale.png").write_bytes(b"an earlier import's")
    (out / "notes.txt").write_text("mine")
    before = digest(tmp_path)
    with pytest.raises(DataError) as info:
        import_annotations("cvat", output=out, progress=False, **kwargs)
    one_sentence(info, f"output={out}", "already holds files", "overwrite=true")
    assert digest(tmp_path) == before
    import_annotations("cvat", output=out, overwrite=True, progress=False, **kwargs)
    assert (out / "notes.txt").read_text() == "mine" and not (out / "images" / "stale.png").exists()
    assert sorted(p.name for p in out.iterdir()) == ["images", "masks", "notes.txt", "splits"]


def test_the_output_may_not_lie_in_what_the_import_reads(photos, tmp_path):
    kwargs = write_export("labelme", photos, NAMES, tmp_path / "export")
    refused(DataError, tmp_path, "labelme", kwargs, f"output={tmp_path / 'export' / 'out'}", "lies inside source=",
            "outside it", output_in="export")
    kwargs = write_export("coco", photos, NAMES, tmp_path / "coco")
    before = digest(tmp_path)
    with pytest.raises(DataError) as info:  # COCO's images/ beside its JSON: output= that folder, overwrite=true
        import_annotations("coco", output=tmp_path / "coco", overwrite=True, progress=False, **kwargs)
    one_sentence(info, "holds the export's image", "outside it")
    assert digest(tmp_path) == before


def test_a_failure_midway_leaves_no_output_behind(photos, tmp_path):
    kwargs = write_export("cvat", photos, NAMES, tmp_path / "export")
    path = tmp_path / "export" / "SegmentationClass" / "shot2.png"  # the last image read
    Image.fromarray(np.full((40, 56, 3), 9, np.uint8)).save(path)
    refused(DataError, tmp_path, "cvat", kwargs, "(9, 9, 9)")
    (tmp_path / "out").mkdir()  # an empty folder that exists: left as it was
    with pytest.raises(DataError):
        import_annotations("cvat", output=tmp_path / "out", progress=False, **kwargs)
    assert list((tmp_path / "out").iterdir()) == []


# --- the command -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("args, expected", [
    (["from=labelmee", "source=x", "output=y"], "from=labelmee: not a known tool; did you mean from=labelme?"),
    (["from=labelme", "sorce=x", "output=y"], "sorce=x: configs/annotations.yaml and its groups have no key sorce; "
                                              "did you mean source=x?"),
    (["from=coco", "source=x"], "output: not set; usage: python -m deeplab.data.annotations"),
    (["from=coco", "source=x", "output=y", "overwrite=maybe"], "overwrite='maybe': must be true or false"),
])
def test_a_wrong_command_line_is_one_sentence_naming_the_key(args, expected, entry_point, capsys, tmp_path,
                                                             monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = entry_point(annotations_cli.main, *args)
    out, err = capsys.readouterr()
    text = out + err
    assert code == 1 and expected in text and text.strip().count("\n") == 0 and "Traceback" not in text, text
    assert list(tmp_path.iterdir()) == []


def test_the_command_checks_the_dataset_prints_the_classes_and_a_train_line_that_parses(photos, tmp_path,
                                                                                      entry_point, capsys):
    names = ["background", "traffic light", "1", "it's"]  # a space, a number, a quote: Hydra needs them quoted
    kwargs = write_export("labelme", photos, names, tmp_path / "export")
    out = tmp_path / "my data"
    code = entry_point(annotations_cli.main, "from=labelme", f"source={kwargs['source']}", f"output='{out}'",
                       """class_names=[background,'traffic light','1',"it's"]""")
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "check: split train: 2 images, 0 problem(s)" in printed and "check: split val: 1 images" in printed
    assert "    1 traffic light" in printed and "(ignore)" in printed
    line = next(line for line in printed.splitlines() if line.startswith("train: "))
    args = shlex.split(line.removeprefix("train: "))
    assert args[:2] == ["python", "train.py"]
    assert unknown_override("train", args[2:]) is None
    cfg = compose("train", args[2:])
    validate_config(cfg)
    assert list(cfg.dataset.class_names) == names and cfg.dataset.num_classes == 4
    assert cfg.dataset.root == str(out) and cfg.dataset.allow_ignore_only_masks is True


def test_the_help_page_says_what_it_does_and_gives_examples(entry_point, capsys):
    assert entry_point(annotations_cli.main, "--help") == 0
    page = capsys.readouterr().out
    assert page.startswith("python -m deeplab.data.annotations: an annotation tool's export as a dataset=folder")
    assert "later one in the file wins" in page and "\nExamples\n" in page and "--cfg job" in page
    assert "(none: every setting is a key=value of the config)" in page


# --- slow: the real command, then the printed train line ---------------------------------------------------------

def _run(*args, timeout=240) -> subprocess.CompletedProcess:
    env = {**os.environ, "DEEPLAB_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *map(str, args)], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.mark.slow  # two processes: the import, then train.py on what it wrote
@pytest.mark.parametrize("fmt, variant", [("labelme", "polygon"), ("cvat", "mask_noimages"), ("labelstudio", "brush"),
                                          ("coco", "polygon")])
def test_the_command_imports_an_export_and_its_train_line_trains(fmt, variant, photos, tmp_path):
    kwargs = write_export(fmt, photos, NAMES, tmp_path / "export", variant=variant)
    extra = [f"images={kwargs['images']}"] if kwargs["images"] else []
    done = _run("-m", "deeplab.data.annotations", f"from={fmt}", f"source={kwargs['source']}",
                f"output={tmp_path / 'data'}", *extra)
    assert done.returncode == 0 and "0 problem(s)" in done.stdout, done.stdout + done.stderr
    line = next(line for line in done.stdout.splitlines() if line.startswith("train: python train.py "))
    overrides = shlex.split(line.removeprefix("train: python train.py "))
    tiny = [o for o in tiny_train_overrides(tmp_path / "data", tmp_path / "runs", iterations=2)
            if not o.startswith("dataset.root=")]
    trained = _run("train.py", *overrides, *tiny, "augment.crop_size=[32,32]", "trainer.batch_size=2")
    assert trained.returncode == 0, trained.stdout[-3000:] + trained.stderr[-3000:]
    assert list((tmp_path / "runs").rglob("last.pt"))


def test_the_generator_marks_ignore_with_its_own_label(photos, tmp_path):
    kwargs = write_export("labelme", photos, NAMES, tmp_path / "export")
    labels = {s["label"] for s in json.loads((kwargs["source"] / "shot0.json").read_text())["shapes"]}
    assert IGNORE_LABEL in labels and "background" in labels  # the hole's background is drawn
