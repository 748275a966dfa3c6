import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from deeplab.data import coco
from deeplab.data.coco import coco_samples
from deeplab.data.dataset import DataError, SegmentationDataset, read_mask

# Listed out of id order on purpose: with categories=None classes follow the ids, not the JSON order.
CATEGORIES = [{"id": 3, "name": "car"}, {"id": 1, "name": "person"}, {"id": 18, "name": "dog"},
              {"id": 5, "name": "airplane"}, {"id": 4, "name": "motorcycle"}]
ALL_CLASSES = ["background", "person", "car", "motorcycle", "airplane", "dog"]  # ids 1, 3, 4, 5, 18
VOC_SUBSET = ["aeroplane", "motorbike", 1]  # VOC spellings and a bare id: classes airplane 1, motorcycle 2, person 3


def coco_class_names(**options) -> list[str]:
    """["background", ...the chosen categories' COCO names in class order], as the cache's manifest records them."""
    return coco.load_manifest(**options)[0]["class_names"]


def box(x0: int, y0: int, x1: int, y1: int) -> list[int]:
    """A rectangle polygon; pycocotools fills exactly the pixels x0..x1-1, y0..y1-1."""
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def block(height: int, width: int, rows: slice, cols: slice) -> np.ndarray:
    """A bool (H, W) mask that is True on one rectangle."""
    mask = np.zeros((height, width), bool)
    mask[rows, cols] = True
    return mask


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE: run lengths down the columns (Fortran order), starting with a run of zeros."""
    flat = mask.ravel(order="F").astype(np.int8)
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
    counts = np.diff(bounds).tolist()
    return {"counts": ([0] if flat[0] else []) + counts, "size": list(mask.shape)}


def annotation(ann_id: int, image_id: int, category_id: int, segmentation, iscrowd: int = 0) -> dict:
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "segmentation": segmentation,
            "iscrowd": iscrowd, "area": 1.0, "bbox": [0, 0, 1, 1]}


def make_coco_tree(root: Path, split: str = "val2017") -> Path:
    """Three images: 1 with overlaps, a crowd RLE and a degenerate polygon; 2 with no annotations; 3 multi-part."""
    images = [{"id": 1, "file_name": "000000000001.jpg", "height": 30, "width": 40},
              {"id": 2, "file_name": "000000000002.jpg", "height": 20, "width": 24},
              {"id": 3, "file_name": "000000000003.jpg", "height": 24, "width": 32}]
    dog_crowd = mask_utils.encode(np.asfortranarray(block(24, 32, slice(14, 20), slice(20, 30)).astype(np.uint8)))
    annotations = [
        annotation(1, 1, 3, [box(15, 10, 35, 25)]),  # car A, overlaps the person
        annotation(2, 1, 1, [box(2, 2, 20, 14)]),  # person
        annotation(3, 1, 3, [box(30, 20, 38, 28)]),  # car B, overlaps car A
        annotation(4, 1, 1, uncompressed_rle(block(30, 40, slice(18, 28), slice(2, 10))), iscrowd=1),
        # a 2-point "polygon" first: pycocotools would take the whole list for boxes
        annotation(5, 1, 5, [[0, 0, 1, 1], box(22, 2, 28, 8)]),  # airplane
        annotation(6, 3, 4, [box(4, 4, 12, 12), box(14, 4, 18, 8)]),  # motorcycle in two parts
        annotation(7, 3, 18, {"counts": dog_crowd["counts"].decode(), "size": [24, 32]}, iscrowd=1),  # dog crowd
    ]
    (root / "annotations").mkdir(parents=True)
    (root / split).mkdir()
    for image in images:
        Image.new("RGB", (image["width"], image["height"]), (120, 80, 40)).save(root / split / image["file_name"])
    data = {"images": images, "annotations": annotations, "categories": CATEGORIES}
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))
    return root


def expected_masks(*, subset: bool) -> list[np.ndarray]:
    """The masks computed by hand: later rules (overlap, crowd) win over earlier fills."""
    person, car, motorcycle, airplane = (3, 0, 2, 1) if subset else (1, 2, 3, 4)
    first = np.zeros((30, 40), np.uint8)
    first[2:14, 2:20] = person
    if car:
        first[10:25, 15:35] = car
        first[10:14, 15:20] = 255  # person and car overlap
        first[20:28, 30:38] = car  # car B, including where it overlaps car A
    first[2:8, 22:28] = airplane
    first[18:28, 2:10] = 255  # crowd person
    third = np.zeros((24, 32), np.uint8)
    third[4:12, 4:12] = motorcycle
    third[4:8, 14:18] = motorcycle
    if not subset:
        third[14:20, 20:30] = 255  # crowd dog; with the subset, dog is not selected and stays background
    return [first, np.zeros((20, 24), np.uint8), third]


@pytest.fixture
def coco_root(tmp_path: Path) -> Path:
    return make_coco_tree(tmp_path / "coco")


def read_masks(samples) -> list[np.ndarray]:
    return [read_mask(m, num_classes=len(ALL_CLASSES)) for _, m in samples]


@pytest.mark.parametrize("subset", [False, True])
def test_masks_match_the_hand_computation(coco_root, subset):
    samples = coco_samples(root=coco_root, split="val2017", categories=VOC_SUBSET if subset else None)
    assert [i.name for i, _ in samples] == ["000000000001.jpg", "000000000002.jpg", "000000000003.jpg"]
    masks, expected = read_masks(samples), expected_masks(subset=subset)
    for mask, want in zip(masks, expected):
        np.testing.assert_array_equal(mask, want)
    first = masks[0]
    if not subset:
        assert first[5, 5] == 1 and first[20, 20] == 2, "person, car"
        assert first[12, 17] == 255, "person/car overlap is ignored"
        assert first[22, 32] == 2, "car/car overlap stays car"
    else:
        assert first[12, 17] == 3, "an unselected car does not make the person ambiguous"
    assert first[20, 5] == 255 and first[0, 0] == 0 and first[4, 24] == (1 if subset else 4)
    assert not masks[1].any(), "an image without annotations is all background"


def test_class_names_follow_the_category_selection(coco_root):
    assert coco_class_names(root=coco_root, split="val2017") == ALL_CLASSES
    assert coco_class_names(root=coco_root, split="val2017", categories=VOC_SUBSET) == [
        "background", "airplane", "motorcycle", "person"]
    assert coco_class_names(root=coco_root, split="val2017", categories=["dog", 3]) == ["background", "dog", "car"]


def test_masks_load_through_the_dataset_with_their_images(coco_root):
    dataset = SegmentationDataset(coco_samples(root=coco_root, split="val2017"), num_classes=len(ALL_CLASSES))
    for i, want in enumerate(expected_masks(subset=False)):
        image, mask = dataset.load(i)
        assert image.shape[:2] == mask.shape == want.shape


def test_second_call_reads_the_cache_without_parsing_or_rasterising(coco_root, monkeypatch):
    first = coco_samples(root=coco_root, split="val2017")
    folder = first[0][1].parent
    assert folder.parent == coco_root / "semantic_masks" and folder.name.startswith("val2017-")
    assert sorted(p.name for p in folder.iterdir()) == [
        "000000000001.png", "000000000002.png", "000000000003.png", "manifest.json"], "no temp files left"

    def forbidden(*args, **kwargs):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(coco, "rasterise", forbidden)
    monkeypatch.setattr(coco, "load_json", forbidden)
    assert coco_samples(root=coco_root, split="val2017") == first
    assert coco_class_names(root=coco_root, split="val2017") == ALL_CLASSES


def count_rasterise(monkeypatch) -> list:
    calls = []
    real = coco.rasterise

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(coco, "rasterise", counting)
    return calls


def test_a_new_selection_or_a_changed_json_gets_its_own_cache(coco_root, monkeypatch):
    calls = count_rasterise(monkeypatch)
    everything = coco_samples(root=coco_root, split="val2017")
    subset = coco_samples(root=coco_root, split="val2017", categories=VOC_SUBSET)
    assert len(calls) == 6 and everything[0][1].parent != subset[0][1].parent
    ann_path = coco_root / "annotations/instances_val2017.json"
    stat = ann_path.stat()
    os.utime(ann_path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert coco_samples(root=coco_root, split="val2017")[0][1].parent not in {everything[0][1].parent,
                                                                              subset[0][1].parent}
    assert len(calls) == 9


def test_an_interrupted_build_resumes_with_the_missing_masks_only(coco_root, monkeypatch):
    samples = coco_samples(root=coco_root, split="val2017")
    folder = samples[0][1].parent
    (folder / "manifest.json").unlink()  # as if killed before the manifest was written
    samples[2][1].unlink()
    calls = count_rasterise(monkeypatch)
    assert coco_samples(root=coco_root, split="val2017") == samples
    assert len(calls) == 1
    np.testing.assert_array_equal(read_masks(samples)[2], expected_masks(subset=False)[2])


def test_layout_options_and_cache_dir(tmp_path):
    root = make_coco_tree(tmp_path / "custom", split="val2017")
    (root / "annotations/instances_val2017.json").rename(root / "annotations/mine_val2017.json")
    (root / "val2017").rename(root / "pictures")
    samples = coco_samples(root=root, split="val2017", annotations="annotations/mine_{split}.json",
                           image_dir="pictures", cache_dir=tmp_path / "cache")
    assert samples[0][0] == root / "pictures/000000000001.jpg"
    assert samples[0][1].parent.parent == tmp_path / "cache"


def test_missing_image_is_named(coco_root):
    (coco_root / "val2017/000000000002.jpg").unlink()
    with pytest.raises(DataError, match=r"instances_val2017.json: 1 image\(s\) missing from .*val2017 "
                                        r"\(e.g. \['000000000002.jpg'\]\)"):
        coco_samples(root=coco_root, split="val2017")


def test_missing_annotations_say_where_and_how_to_get_them(tmp_path):
    with pytest.raises(DataError, match=r"looked for .*nowhere/annotations/instances_train2017.json.*"
                                        r"annotations_trainval2017.zip"):
        coco_samples(root=tmp_path / "nowhere", split="train2017")


def test_unknown_or_repeated_category_is_an_error(coco_root):
    with pytest.raises(DataError, match=r"category 'bus' is not in the annotations; .*1: person, 3: car"):
        coco_samples(root=coco_root, split="val2017", categories=["person", "bus"])
    with pytest.raises(DataError, match=r"category 'motorbike' \(motorcycle\) is selected twice"):
        coco_samples(root=coco_root, split="val2017", categories=[4, "motorbike"])
