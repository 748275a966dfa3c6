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


def test_precision_recall_f1_against_hand_computed_counts():
    # class 0: truth 3 px, predicted 2, both 1; class 1: truth 1, never predicted; class 2: only predicted (2 px);
    # class 3: absent from both. A second image is all ignore: it adds nothing, whatever is predicted there.
    target = torch.tensor([0, 0, 0, 1, 255])
    pred = torch.tensor([0, 2, 2, 0, 1])
    cm = ConfusionMatrix(4)
    cm.update(pred, target)
    cm.update(torch.tensor([[3, 1], [2, 0]]), torch.full((2, 2), 255))
    m = cm.compute()
    assert m["per_class_precision"] == pytest.approx([1 / 2, 0.0, 0.0, None], nan_ok=False)
    assert m["per_class_recall"] == [pytest.approx(1 / 3), 0.0, 0.0, None]
    assert m["per_class_f1"] == [pytest.approx(2 * 1 / (3 + 2)), 0.0, 0.0, None]
    assert m["per_class_iou"] == [pytest.approx(1 / 4), 0.0, 0.0, None]
    assert m["mPrecision"] == pytest.approx(1 / 6) and m["mRecall"] == pytest.approx(1 / 9)
    assert m["mF1"] == pytest.approx(0.4 / 3)


def test_f1_is_dice_and_the_harmonic_mean_of_precision_and_recall():
    torch.manual_seed(1)
    target, pred = torch.randint(0, 3, (40, 30)), torch.randint(0, 3, (40, 30))
    cm = ConfusionMatrix(3)
    cm.update(pred, target)
    m = cm.compute()
    for c in range(3):
        a, b = target == c, pred == c
        dice = 2 * (a & b).sum().item() / (a.sum() + b.sum()).item()
        p, r = m["per_class_precision"][c], m["per_class_recall"][c]
        assert m["per_class_f1"][c] == pytest.approx(dice) == pytest.approx(2 * p * r / (p + r))


def test_no_labelled_pixel_no_scores():
    cm = ConfusionMatrix(2)
    cm.update(torch.tensor([0, 1]), torch.tensor([255, 255]))
    m = cm.compute()
    assert m["per_class_f1"] == [None, None] and math.isnan(m["mF1"]) and math.isnan(m["mPrecision"])
