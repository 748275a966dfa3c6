import pytest
import torch
import torch.nn.functional as F

from deeplab.losses import SegmentationLoss


def _batch():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5, 6, requires_grad=True)
    target = torch.randint(0, 3, (2, 5, 6))
    target[0, 0] = 255
    return logits, target


def test_default_is_cross_entropy_ignoring_255():
    logits, target = _batch()
    assert SegmentationLoss()(logits, target).item() == pytest.approx(F.cross_entropy(logits, target, ignore_index=255).item())


def test_class_weights_are_used_and_checked():
    logits, target = _batch()
    weighted = SegmentationLoss(class_weights=[1.0, 2.0, 0.5])(logits, target)
    expected = F.cross_entropy(logits, target, weight=torch.tensor([1.0, 2.0, 0.5]), ignore_index=255)
    assert weighted.item() == pytest.approx(expected.item())
    with pytest.raises(ValueError, match="2 class_weights for 3 classes"):
        SegmentationLoss(class_weights=[1.0, 2.0])(logits, target)


def test_ohem_averages_only_the_hardest_pixels():
    logits, target = _batch()
    pixel = F.cross_entropy(logits, target, ignore_index=255, reduction="none")[target != 255]
    hardest = pixel.sort(descending=True).values[: int(pixel.numel() * 0.25)].mean()
    assert SegmentationLoss(ohem_fraction=0.25)(logits, target).item() == pytest.approx(hardest.item())
    assert SegmentationLoss(ohem_fraction=1.0)(logits, target).item() == pytest.approx(pixel.mean().item())


def test_dice_term_is_zero_for_a_perfect_prediction_and_adds_otherwise():
    target = torch.tensor([[[0, 1], [2, 255]]])
    perfect = F.one_hot(target.clamp(max=2), 3).permute(0, 3, 1, 2).float() * 50
    ce_only = SegmentationLoss()(perfect, target)
    assert SegmentationLoss(dice_weight=1.0)(perfect, target) == pytest.approx(ce_only.item(), abs=1e-3)
    logits, t = _batch()
    assert SegmentationLoss(dice_weight=1.0)(logits, t) > SegmentationLoss()(logits, t)


def test_all_ignored_batch_still_backpropagates():
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    loss = SegmentationLoss(ohem_fraction=0.5)(logits, torch.full((1, 2, 2), 255))
    loss.backward()
    assert loss.item() == 0 and logits.grad is not None
