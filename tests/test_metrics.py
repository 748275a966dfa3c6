import math

import pytest
import torch

from deeplab.metrics import ConfusionMatrix


def test_metrics_against_a_hand_computed_confusion_matrix():
    # 4 classes; class 3 is absent from both truth and prediction; 255 pixels are ignored whatever is predicted
    target = torch.tensor([[0, 0, 0, 1], [1, 1, 2, 255], [2, 2, 255, 0]])
    pred = torch.tensor([[0, 0, 1, 1], [1, 2, 2, 3], [2, 0, 0, 0]])
    cm = ConfusionMatrix(4)
    cm.update(pred, target)
    expected = torch.tensor([[3, 1, 0, 0],   # truth 0: (0,0) (0,1) (0,2)->1 ... counted by hand
                             [0, 2, 1, 0],
                             [1, 0, 2, 0],
                             [0, 0, 0, 0]])
    assert torch.equal(cm.mat, expected)
    m = cm.compute()
    iou = [3 / (4 + 4 - 3), 2 / (3 + 3 - 2), 2 / (3 + 3 - 2)]
    assert m["per_class_iou"][:3] == pytest.approx(iou)
    assert m["per_class_iou"][3] is None, "an absent class has no IoU, neither 0 nor 1"
    assert m["mIoU"] == pytest.approx(sum(iou) / 3)
    assert m["pixel_acc"] == pytest.approx(7 / 10)
    assert m["mean_class_acc"] == pytest.approx((3 / 4 + 2 / 3 + 2 / 3) / 3)
    assert m["fwIoU"] == pytest.approx(0.4 * iou[0] + 0.3 * iou[1] + 0.3 * iou[2])
    assert m["pixels"] == 10


def test_predicted_but_absent_class_counts_as_zero():
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([0, 2]), torch.tensor([0, 0]))
    m = cm.compute()
    assert m["per_class_iou"] == [0.5, None, 0.0]
    assert m["mIoU"] == pytest.approx(0.25)


def test_accumulates_over_batches_like_one_big_batch():
    torch.manual_seed(0)
    target, pred = torch.randint(0, 5, (6, 7, 9)), torch.randint(0, 5, (6, 7, 9))
    whole, parts = ConfusionMatrix(5), ConfusionMatrix(5)
    whole.update(pred, target)
    for i in range(6):
        parts.update(pred[i], target[i])
    assert torch.equal(whole.mat, parts.mat)


def test_shape_mismatch_and_empty():
    with pytest.raises(ValueError, match="shape"):
        ConfusionMatrix(2).update(torch.zeros(2, 3), torch.zeros(3, 2))
    assert math.isnan(ConfusionMatrix(2).compute()["mIoU"])


def test_predictions_outside_the_classes_are_refused_on_labelled_pixels():
    matrix = ConfusionMatrix(3)
    matrix.update(torch.tensor([0, 7, 2]), torch.tensor([0, 255, 2]))  # on an ignored pixel it does not matter
    with pytest.raises(ValueError, match="class indices 0-2"):
        matrix.update(torch.tensor([0, 255, 2]), torch.tensor([0, 1, 2]))
    assert int(matrix.mat.sum()) == 2
