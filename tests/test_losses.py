import pytest
import torch
import torch.nn.functional as F

from deeplab.errors import ConfigError
from deeplab.losses import LOSSES, CrossEntropyLoss, FocalLoss, build_loss


def _batch():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5, 6, requires_grad=True)
    target = torch.randint(0, 3, (2, 5, 6))
    target[0, 0] = 255
    return logits, target


def test_default_is_cross_entropy_ignoring_255_bit_for_bit():
    logits, target = _batch()
    loss = build_loss(ignore_index=255)  # a saved config without loss.name means cross-entropy
    assert isinstance(loss, CrossEntropyLoss)
    assert torch.equal(loss(logits, target), F.cross_entropy(logits, target, ignore_index=255))


def test_class_weights_are_used_and_checked():
    logits, target = _batch()
    weighted = CrossEntropyLoss(class_weights=[1.0, 2.0, 0.5])(logits, target)
    expected = F.cross_entropy(logits, target, weight=torch.tensor([1.0, 2.0, 0.5]), ignore_index=255)
    assert weighted.item() == pytest.approx(expected.item())
    with pytest.raises(ValueError, match="2 class_weights for 3 classes"):
        CrossEntropyLoss(class_weights=[1.0, 2.0])(logits, target)


def test_ohem_averages_only_the_hardest_pixels():
    logits, target = _batch()
    pixel = F.cross_entropy(logits, target, ignore_index=255, reduction="none")[target != 255]
    hardest = pixel.sort(descending=True).values[: int(pixel.numel() * 0.25)].mean()
    assert CrossEntropyLoss(ohem_fraction=0.25)(logits, target).item() == pytest.approx(hardest.item())
    assert CrossEntropyLoss(ohem_fraction=1.0)(logits, target).item() == pytest.approx(pixel.mean().item())


def test_dice_term_is_zero_for_a_perfect_prediction_and_adds_otherwise():
    target = torch.tensor([[[0, 1], [2, 255]]])
    perfect = F.one_hot(target.clamp(max=2), 3).permute(0, 3, 1, 2).float() * 50
    ce_only = CrossEntropyLoss()(perfect, target)
    assert CrossEntropyLoss(dice_weight=1.0)(perfect, target) == pytest.approx(ce_only.item(), abs=1e-3)
    logits, t = _batch()
    assert CrossEntropyLoss(dice_weight=1.0)(logits, t) > CrossEntropyLoss()(logits, t)


@pytest.mark.parametrize("name,options", [("cross_entropy", {"ohem_fraction": 0.5}), ("focal", {"gamma": 2.0})])
def test_all_ignored_batch_still_backpropagates(name, options):
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    loss = build_loss(name=name, ignore_index=255, **options)(logits, torch.full((1, 2, 2), 255))
    loss.backward()
    assert loss.item() == 0 and logits.grad is not None and torch.equal(logits.grad, torch.zeros_like(logits))


def test_focal_at_gamma_zero_is_cross_entropy():
    logits, target = _batch()
    focal = FocalLoss(gamma=0.0)(logits, target)
    assert focal.item() == pytest.approx(F.cross_entropy(logits, target, ignore_index=255).item(), rel=1e-6)
    alpha = torch.tensor([1.0, 2.0, 0.5])  # alpha_t weighs each pixel; the mean stays over the valid pixels
    pixel = F.cross_entropy(logits, target, weight=alpha, ignore_index=255, reduction="none")
    weighted = FocalLoss(gamma=0.0, alpha=alpha.tolist())(logits, target)
    assert weighted.item() == pytest.approx((pixel.sum() / (target != 255).sum()).item(), rel=1e-6)


def test_focal_downweights_easy_pixels_by_one_minus_p_to_the_gamma():
    # one pixel per image: the first predicted right with p_t = 0.9 (easy), the second with p_t = 0.2 (hard)
    probs = torch.tensor([[0.9, 0.05, 0.05], [0.2, 0.4, 0.4]])
    logits = probs.log().reshape(2, 3, 1, 1)
    target = torch.zeros(2, 1, 1, dtype=torch.long)
    ce = F.cross_entropy(logits, target, reduction="none").flatten()
    per_pixel = [FocalLoss(gamma=2.0)(logits[i:i + 1], target[i:i + 1]) for i in range(2)]
    assert per_pixel[0].item() == pytest.approx(0.1 ** 2 * ce[0].item(), rel=1e-5)
    assert per_pixel[1].item() == pytest.approx(0.8 ** 2 * ce[1].item(), rel=1e-5)
    assert FocalLoss(gamma=2.0)(logits, target) < F.cross_entropy(logits, target)


def test_focal_skips_ignored_pixels_and_averages_over_the_valid_ones():
    logits, target = _batch()
    target[1, 2:4, 1:5] = 255
    ignored = (target == 255).unsqueeze(1).expand_as(logits)
    moved = logits.detach().clone()
    moved[ignored] += torch.randn(int(ignored.sum())) * 100  # whatever the model says where the label is ignored
    loss = FocalLoss(gamma=2.0)
    assert torch.equal(loss(logits.detach(), target), loss(moved, target))
    pixel = [loss(logits[n:n + 1, :, i:i + 1, j:j + 1], target[n:n + 1, i:i + 1, j:j + 1])
             for n in range(2) for i in range(5) for j in range(6) if target[n, i, j] != 255]
    assert len(pixel) == 2 * 5 * 6 - 6 - 8  # _batch ignores row 0 of image 0; here 8 pixels of image 1
    assert loss(logits, target).item() == pytest.approx(torch.stack(pixel).mean().item(), rel=1e-5)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_focal_gradient_flows_and_stays_finite_for_certain_pixels(gamma):
    logits, target = _batch()
    certain = logits.detach().clone()
    certain[1, :, 0, 0] = 0.0
    certain[1, target[1, 0, 0], 0, 0] = 200.0  # p_t rounds to exactly 1: (1 - p_t)^gamma at 0
    certain.requires_grad_(True)
    FocalLoss(gamma=gamma)(certain, target).backward()
    assert torch.isfinite(certain.grad).all()
    assert (certain.grad[0, :, 0, 0] == 0).all()  # the ignored pixel gets no gradient
    assert certain.grad[:, :, 1:].abs().sum() > 0


def test_losses_are_picked_by_name_and_refuse_unknown_names_and_options():
    assert set(LOSSES) == {"cross_entropy", "focal"}
    focal = build_loss(name="focal", ignore_index=7, gamma=1.5, alpha=[1.0, 2.0, 3.0])
    assert isinstance(focal, FocalLoss) and focal.gamma == 1.5 and focal.ignore_index == 7
    assert focal.alpha.tolist() == [1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match=r"unknown loss 'focall'; known: \['cross_entropy', 'focal'\]"):
        build_loss(name="focall", ignore_index=255)
    with pytest.raises(TypeError, match="class_weights"):  # each loss takes only its own options
        build_loss(name="focal", ignore_index=255, class_weights=[1.0, 1.0, 1.0])
    with pytest.raises(ConfigError, match=r"^loss.gamma=-1(\.0)?: must be a number >= 0"):
        build_loss(name="focal", ignore_index=255, gamma=-1.0)
    logits, target = _batch()
    with pytest.raises(ValueError, match="2 alpha values for 3 classes"):
        build_loss(name="focal", ignore_index=255, alpha=[1.0, 2.0])(logits, target)
