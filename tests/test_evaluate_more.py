"""evaluate.py's answers past the split's numbers: each image's scores (per_image.csv, the worst ones printed and
drawn), checked against counts made by hand."""

import csv
import math

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import compose, make_voc_tree
from deeplab.cli.evaluate import run as evaluate_run
from deeplab.errors import ConfigError
from deeplab.figures import ERROR_RED, error_panel, worst_grid
from deeplab.metrics import (BoundaryIoU, Calibration, ConfusionMatrix, ImageScores, boundary_region, image_ids,
                             image_scores, per_image_csv)
from deeplab.visualization import palette_array


def test_per_image_counts_are_each_images_own_and_sum_to_the_split():
    torch.manual_seed(0)
    target, pred = torch.randint(0, 3, (4, 5, 6)), torch.randint(0, 3, (4, 5, 6))
    target[2] = 255  # an all-ignore image: no counts, whatever is predicted
    whole, parts = ConfusionMatrix(3), ConfusionMatrix(3)
    whole.update(pred, target)
    counts = parts.update_per_image(pred, target)
    assert torch.equal(whole.mat, parts.mat) and counts.shape == (4, 3, 3)
    for i in range(4):
        one = ConfusionMatrix(3)
        one.update(pred[i], target[i])
        assert counts[i].tolist() == [one.mat.sum(1).tolist(), one.mat.sum(0).tolist(), one.mat.diag().tolist()]
    assert counts[2].sum() == 0


def test_image_scores_by_hand():
    # truth [0 0 1 1], prediction [0 1 1 1]: class 0 IoU 1/2, class 1 IoU 2/3, class 2 in neither
    pred, truth = torch.tensor([[0, 1, 1, 1]]), torch.tensor([[0, 0, 1, 1]])
    counts = ConfusionMatrix(3).update_per_image(pred, truth)[0].numpy()
    assert counts.tolist() == [[2, 2, 0], [1, 3, 0], [1, 2, 0]]
    s = image_scores(counts)
    assert s["per_class_iou"] == [pytest.approx(1 / 2), pytest.approx(2 / 3), None]
    assert s["mIoU"] == pytest.approx((1 / 2 + 2 / 3) / 2) and s["pixel_acc"] == pytest.approx(3 / 4)
    empty = image_scores(np.zeros((3, 3), np.int64))  # all ignore
    assert math.isnan(empty["mIoU"]) and math.isnan(empty["pixel_acc"]) and empty["per_class_iou"] == [None] * 3


def test_worst_images_kept_and_ranked():
    scores = ImageScores(["a", "b", "c", "d", "e"], worst=2)
    asked = []
    for index, hit in enumerate((4, 1, 0, 3)):  # 4 pixels of class 0, `hit` of them predicted right
        counts = np.array([[4, 0], [hit, 4 - hit], [hit, 0]])
        scores.add(index, counts, lambda index=index: asked.append(index) or (np.zeros((2, 2, 3), np.uint8),) * 3)
    assert [name for name, _, _ in scores.pictures()] == ["c", "b"]
    assert [row["id"] for row in scores.ranked(3)] == ["c", "b", "d"]
    assert asked == [0, 1, 2], "a picture is made only for an image among the worst so far"
    scores.add(4, np.zeros((3, 2), np.int64), lambda: pytest.fail("an all-ignore image is never among the worst"))
    assert len(scores.rows()) == 5 and math.isnan(scores.rows()[4]["mIoU"])


def test_image_ids_are_paths_below_the_common_folder(tmp_path):
    paths = [tmp_path / "img" / "a" / "x.jpg", tmp_path / "img" / "b" / "y.jpg"]
    assert image_ids(paths) == ["a/x.jpg", "b/y.jpg"]
    assert image_ids(paths[:1]) == ["x.jpg"]


def test_per_image_csv_columns_and_empty_cells():
    rows = [{"id": "x.jpg", **image_scores(np.array([[2, 2, 0], [1, 3, 0], [1, 2, 0]])),
             "true_pixels": [2, 2, 0], "pred_pixels": [1, 3, 0]}]
    table = list(csv.reader(per_image_csv(rows, ["bg", "car", "pole"]).splitlines()))
    assert table[0] == ["id", "pixel_acc", "mIoU", "bg_iou", "car_iou", "pole_iou", "bg_true_pixels",
                        "car_true_pixels", "pole_true_pixels", "bg_pred_pixels", "car_pred_pixels",
                        "pole_pred_pixels"]
    assert table[1][0] == "x.jpg" and table[1][5] == "" and table[1][6:] == ["2", "2", "0", "1", "3", "0"]
    assert float(table[1][3]) == pytest.approx(0.5)


def voc_predictions(tmp_path, broken: str):
    """A VOC tree and its truth saved as predictions, one image (`broken`) predicted as all background."""
    tree = make_voc_tree(tmp_path / "VOC", n_train=1, n_val=3, size=(24, 32))
    predictions = tmp_path / "pred"
    predictions.mkdir()
    for mask in (tree / "SegmentationClass").glob("2008_*.png"):
        labels = np.array(Image.open(mask))
        labels = np.zeros_like(labels) if mask.stem == broken else np.where(labels == 255, 0, labels)
        Image.fromarray(labels.astype(np.uint8)).save(predictions / mask.name)
    return tree, predictions


def test_evaluate_writes_per_image_csv_and_prints_the_worst(tmp_path, capsys):
    tree, predictions = voc_predictions(tmp_path, broken="2008_000001")
    cfg = compose("evaluate", [f"predictions={predictions}", "dataset=voc", f"dataset.root={tree}"])
    result = evaluate_run(cfg, tmp_path / "out")
    table = list(csv.DictReader((tmp_path / "out" / "per_image.csv").open()))
    assert [row["id"] for row in table] == ["2008_000000.jpg", "2008_000001.jpg", "2008_000002.jpg"]
    assert float(table[0]["mIoU"]) == 1.0 and float(table[1]["mIoU"]) < 1.0
    for c, name in enumerate(result["class_names"]):  # the per-image counts add up to the split's matrix
        assert sum(int(row[f"{name}_true_pixels"]) for row in table) == sum(result["confusion_matrix"][c])
        assert sum(int(row[f"{name}_pred_pixels"]) for row in table) == \
            sum(r[c] for r in result["confusion_matrix"])
    out = capsys.readouterr().out
    worst = out[out.index("worst image"):].splitlines()
    assert "2008_000001.jpg" in worst[1] and len(worst) >= 4


def test_worst_grid_rows_and_errors_in_one_colour():
    truth = np.zeros((6, 8), np.int64)
    truth[:, 4:] = 1
    truth[0, 0] = 255  # ignore: never an error
    pred = np.ones_like(truth)
    panel = error_panel(np.zeros((6, 8, 3), np.uint8), truth, pred)
    wrong = (panel == ERROR_RED).all(2)
    assert wrong.sum() == 4 * 6 - 1 and not wrong[:, 4:].any() and not wrong[0, 0]
    image = np.full((6, 8, 3), 90, np.uint8)
    one = worst_grid([("a.jpg", 0.2, (image, truth, pred))], palette_array(None))
    two = worst_grid([("a.jpg", 0.2, (image, truth, pred)), ("b/c.jpg", 0.5, (image, truth, truth))],
                     palette_array(None))
    assert one.dtype == np.uint8 and two.shape[0] > one.shape[0] + 200  # a row per image, scaled up to be seen
    red = (np.abs(two.astype(int) - ERROR_RED).sum(2) < 30)
    assert red[:-250].sum() > 100 and red[-245:].sum() == 0  # the last row (b/c.jpg, 240 px high) has no error


def test_evaluate_draws_the_worst_images(tmp_path, capsys):
    tree, predictions = voc_predictions(tmp_path, broken="2008_000002")
    cfg = compose("evaluate", [f"predictions={predictions}", "dataset=voc", f"dataset.root={tree}", "worst=2"])
    evaluate_run(cfg, tmp_path / "out")
    grid = np.array(Image.open(tmp_path / "out" / "worst_images.png"))
    assert grid.ndim == 3 and grid.shape[0] > 2 * 240
    assert "worst_images.png written to" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="worst_images.png"):  # a second evaluation refuses to replace it
        (tmp_path / "out" / "metrics.json").unlink()
        (tmp_path / "out" / "per_image.csv").unlink()
        for name in ("confusion_matrix.png", "per_class_iou.png"):
            (tmp_path / "out" / name).unlink()
        evaluate_run(cfg, tmp_path / "out")


def test_boundary_iou_of_a_square_shifted_by_one_pixel():
    # 4x4 squares, d = 1 px (2% of a 10x10 diagonal rounds to 0, raised to 1): each boundary is the 12-pixel ring;
    # shifted one column, the rings share 3 pixels on the top row and 3 on the bottom: 6 / (12 + 12 - 6)
    truth = np.zeros((10, 10), np.int64)
    truth[2:6, 2:6] = 1
    pred = np.zeros_like(truth)
    pred[2:6, 3:7] = 1
    assert boundary_region(truth == 1, 1).sum() == 12
    boundary = BoundaryIoU(3)
    boundary.update(pred, truth)
    boundary.update(pred, np.full_like(truth, 255))  # an all-ignore image adds nothing
    m = boundary.compute()
    assert m["per_class_boundary_iou"][1] == pytest.approx(1 / 3)
    assert m["per_class_boundary_iou"][2] is None, "a class in neither truth nor prediction has no boundary IoU"
    assert m["mBoundaryIoU"] == pytest.approx((m["per_class_boundary_iou"][0] + 1 / 3) / 2)
    perfect = BoundaryIoU(3)
    perfect.update(truth, truth)
    assert perfect.compute()["per_class_boundary_iou"][:2] == [1.0, 1.0]


def test_boundary_is_the_whole_of_a_thin_mask_and_the_ring_of_a_wide_one():
    mask = np.zeros((100, 100), bool)
    mask[10:90, 10:90] = True
    d = round(0.02 * np.hypot(100, 100))  # 3 px
    assert boundary_region(mask, d).sum() == 80 * 80 - 74 * 74
    pole = np.zeros((100, 100), bool)
    pole[:, 50:53] = True
    assert boundary_region(pole, d).sum() == pole.sum()  # a 3 px wide pole is all boundary


def test_evaluate_boundary_true(tmp_path, capsys):
    tree, predictions = voc_predictions(tmp_path, broken="2008_000002")
    cfg = compose("evaluate", [f"predictions={predictions}", "dataset=voc", f"dataset.root={tree}", "boundary=true"])
    result = evaluate_run(cfg, tmp_path / "out")
    assert 0 < result["mBoundaryIoU"] < 1 and result["boundary_dilation"] == 0.02
    assert len(result["per_class_boundary_iou"]) == 21 and "boundary" in capsys.readouterr().out
    plain = evaluate_run(compose("evaluate", [f"predictions={predictions}", "dataset=voc", f"dataset.root={tree}"]),
                         tmp_path / "plain")
    assert "mBoundaryIoU" not in plain


def test_expected_calibration_error_by_hand():
    # four labelled pixels, two classes; top-class probability and whether the top class is right:
    # 0.95 right, 0.97 right (bin 14: confidence 0.96, accuracy 1), 0.62 wrong, 0.64 right (bin 9: 0.63, 0.5);
    # a fifth pixel is ignore. ECE = 2/4 |1 - 0.96| + 2/4 |0.5 - 0.63| = 0.02 + 0.065
    top = torch.tensor([0.95, 0.97, 0.62, 0.64, 0.99])
    probs = torch.stack([top, 1 - top]).view(1, 2, 1, 5)
    target = torch.tensor([[[0, 0, 1, 0, 255]]])
    calibration = Calibration()
    calibration.update(probs, target)
    calibration.update(probs, torch.full_like(target, 255))  # an all-ignore image adds nothing
    m = calibration.compute()
    assert m["ece"] == pytest.approx(0.085)
    assert m["calibration_bins"]["pixels"][14] == 2 and m["calibration_bins"]["pixels"][9] == 2
    assert m["calibration_bins"]["accuracy"][9] == 0.5 and m["calibration_bins"]["confidence"][0] is None
    assert math.isnan(Calibration().compute()["ece"])


def test_evaluate_calibration_with_flip_and_scales(trained, tmp_path, capsys):
    tree, checkpoint = trained
    cfg = compose("evaluate", [f"checkpoint={checkpoint}", f"data_root={tree}", "num_workers=0", "precision=fp32",
                               "calibration=true", "flip=true", "scales=[0.75,1.0]", "worst=2"])
    result = evaluate_run(cfg, tmp_path / "out")
    assert 0 <= result["ece"] <= 1 and sum(result["calibration_bins"]["pixels"]) == result["pixels"]
    assert (tmp_path / "out" / "calibration.png").is_file() and "calibration error" in capsys.readouterr().out
