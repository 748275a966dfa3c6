"""The evaluation's pictures (deeplab.figures): the numbers behind them, that they draw at VOC's 21 and ADE20K's 150
classes, that evaluate and TensorBoard get them, and that without matplotlib both carry on with one sentence."""

import json
import logging
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import compose, make_voc_tree
from deeplab.cli.evaluate import FIGURES, run as evaluate_run
from deeplab.engine.tracking import RunLogger
from deeplab.figures import (MIN_FONT, NUMBERS_UP_TO, MissingDependency, absent_classes, bar_layout, confusion_figure,
                             confusion_layout, iou_chart, row_percentages)
from deeplab.metrics import ConfusionMatrix
from deeplab.visualization import palette_array

METRICS_KEYS = {"source", "split", "images", "protocol", "class_names", "mIoU", "pixel_acc", "mean_class_acc",
                "fwIoU", "per_class_iou", "pixels", "confusion_matrix", "per_class_precision", "per_class_recall",
                "per_class_f1", "mPrecision", "mRecall", "mF1"}


def counts(classes: int, absent: tuple[int, ...] = (), seed: int = 0) -> np.ndarray:
    """A confusion matrix like a trained model's: a strong diagonal, some confusions, `absent` rows empty."""
    rng = np.random.default_rng(seed)
    matrix = rng.integers(0, 50, (classes, classes)) + np.diag(rng.integers(2000, 9000, classes))
    matrix[list(absent)] = 0
    return matrix


def metrics_of(matrix: np.ndarray) -> dict:
    confusion = ConfusionMatrix(len(matrix))
    confusion.mat = torch.from_numpy(matrix).long()
    return confusion.compute()


@pytest.fixture
def no_matplotlib(monkeypatch):
    """matplotlib as if not installed: `import matplotlib` raises ImportError."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)


def test_row_percentages_and_absent_classes():
    matrix = np.array([[8, 2, 0], [0, 0, 0], [1, 1, 2]])
    percent = row_percentages(matrix)
    assert np.allclose(percent[0], [80, 20, 0]) and np.allclose(percent[2], [25, 25, 50])
    assert np.isnan(percent[1]).all()  # absent from the truth: no percentages, not 0 %
    assert absent_classes(matrix) == [1]
    assert absent_classes(np.zeros((2, 2))) == [0, 1] and absent_classes(np.eye(2)) == []
    with pytest.raises(ValueError, match="C, C"):
        row_percentages(np.zeros((2, 3)))


def test_layouts_grow_with_the_class_count_and_thin_only_past_what_reads():
    voc, ade, many = confusion_layout(21), confusion_layout(150), confusion_layout(400)
    assert voc.numbers and not ade.numbers and NUMBERS_UP_TO < 150
    assert voc.label_step == ade.label_step == 1  # every name written at 150 classes, at the smallest font
    assert ade.font == MIN_FONT < voc.font and ade.pitch * 150 > voc.pitch * 21
    assert many.label_step > 1 and many.pitch * 400 <= 24.0 + 1e-9
    assert bar_layout(150).pitch * 150 > bar_layout(21).pitch * 21 and bar_layout(150).label_step == 1


def test_figures_draw_at_21_and_150_classes():
    shapes = {}
    for classes, absent in ((21, (18,)), (150, (37, 90, 121))):
        matrix, names = counts(classes, absent), [f"class_{i:03d}" for i in range(classes)]
        metrics = metrics_of(matrix)
        shapes[classes] = []
        for image in (confusion_figure(matrix, names), iou_chart(metrics["per_class_iou"], names, metrics["mIoU"])):
            assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
            assert (image < 128).any() and (image == 255).any()  # something drawn on a white ground
            shapes[classes].append(image.shape[:2])
    for small, large in zip(shapes[21], shapes[150]):
        assert large[0] > small[0]
    assert shapes[150][0][1] > shapes[21][0][1]  # the matrix grows both ways
    with pytest.raises(ValueError, match="class names"):
        confusion_figure(counts(3), ["a", "b"])


def test_absent_everywhere_and_no_miou_still_draw():
    assert confusion_figure(np.zeros((3, 3), np.int64), ["a", "b", "c"]).shape[2] == 3
    assert iou_chart([None, None, None], ["a", "b", "c"], float("nan")).shape[2] == 3


def test_evaluate_writes_both_figures_and_the_same_metrics_json(tmp_path, capsys):
    tree = make_voc_tree(tmp_path / "VOC", n_train=1, n_val=2, size=(24, 32))
    predictions = tmp_path / "pred"
    predictions.mkdir()
    for mask in (tree / "SegmentationClass").glob("2008_*.png"):  # the truth, as index PNGs (no ignore value)
        labels = np.array(Image.open(mask))
        Image.fromarray(np.where(labels == 255, 0, labels).astype(np.uint8)).save(predictions / mask.name)
    cfg = compose("evaluate", [f"predictions={predictions}", "dataset=voc", f"dataset.root={tree}"])
    result = evaluate_run(cfg, tmp_path / "out")
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert set(metrics) == METRICS_KEYS and metrics == json.loads(json.dumps(result))
    assert np.array(metrics["confusion_matrix"]).shape == (21, 21)  # the absolute counts stay
    for name in FIGURES:
        image = np.array(Image.open(tmp_path / "out" / name))
        assert image.ndim == 3 and image.shape[2] == 3 and min(image.shape[:2]) > 100
    assert "metrics.json, per_image.csv, confusion_matrix.png, per_class_iou.png and worst_images.png written to" in \
        capsys.readouterr().out


def test_without_matplotlib_one_sentence_and_evaluate_still_scores(tmp_path, capsys, no_matplotlib):
    with pytest.raises(MissingDependency) as caught:
        confusion_figure(counts(3), ["a", "b", "c"])
    message = str(caught.value)
    assert "\n" not in message and "pip install matplotlib (or pip install -e '.[plot]')" in message
    with pytest.raises(MissingDependency):
        iou_chart([0.5], ["a"], 0.5)
    tree = make_voc_tree(tmp_path / "VOC", n_train=1, n_val=1, size=(24, 32))
    predictions = tmp_path / "pred"
    predictions.mkdir()
    for mask in (tree / "SegmentationClass").glob("2008_*.png"):
        Image.fromarray(np.zeros(np.array(Image.open(mask)).shape, np.uint8)).save(predictions / mask.name)
    evaluate_run(compose("evaluate", [f"predictions={predictions}", "dataset=voc", f"dataset.root={tree}"]),
                 tmp_path / "out")
    assert set(json.loads((tmp_path / "out" / "metrics.json").read_text())) == METRICS_KEYS
    assert not any((tmp_path / "out" / name).exists() for name in FIGURES)
    skipped = [line for line in capsys.readouterr().out.splitlines() if "skipped" in line]
    assert len(skipped) == 1 and "pip install matplotlib" in skipped[0]


def run_logger(tmp_path, names):
    return RunLogger(tmp_path, class_names=names, palette=palette_array(None), mean=[0.5] * 3, std=[0.5] * 3)


def test_tensorboard_gets_both_figures_at_each_validation(tmp_path):
    names = ["background", "cat", "dog"]
    matrix = counts(3, absent=(2,))
    logger = run_logger(tmp_path, names)
    try:
        worst = [("x.jpg", 0.1, (np.zeros((6, 8, 3), np.uint8), np.zeros((6, 8), np.int64), np.ones((6, 8), np.int64)))]
        for iteration in (2, 4):
            logger.validation(iteration, metrics_of(matrix), [], best=0.5, confusion=matrix, worst=worst)
    finally:
        logger.close()
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0}).Reload()
    for tag in ("val/confusion_matrix", "val/per_class_iou", "val/worst_images"):
        assert [e.step for e in events.Images(tag)] == [2, 4]


def test_tensorboard_without_matplotlib_warns_once_and_skips(tmp_path, caplog, no_matplotlib):
    matrix = counts(2)
    logger = run_logger(tmp_path, ["a", "b"])
    try:
        with caplog.at_level(logging.WARNING, logger="deeplab.train"):
            for iteration in (2, 4):
                logger.validation(iteration, metrics_of(matrix), [], best=0.5, confusion=matrix)
    finally:
        logger.close()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "pip install matplotlib" in warnings[0]
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0}).Reload()
    assert not events.Tags()["images"] and [e.step for e in events.Scalars("val/mIoU")] == [2, 4]
