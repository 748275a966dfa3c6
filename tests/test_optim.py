import math

import pytest
import torch

from deeplab.engine.optim import SCHEDULES, build_optimizer, build_scheduler, cosine_factor, poly_factor
from deeplab.model import build_model


def test_poly_with_linear_warmup():
    assert poly_factor(0, total=100, warmup_iters=10, warmup_ratio=0.1) == pytest.approx(0.1)
    assert poly_factor(5, total=100, warmup_iters=10, warmup_ratio=0.1) == pytest.approx(0.55)
    assert poly_factor(10, total=100, warmup_iters=10) == pytest.approx(0.9 ** 0.9)
    assert poly_factor(50, total=100) == pytest.approx(0.5 ** 0.9)
    assert poly_factor(100, total=100) == 0.0
    assert poly_factor(100, total=100, min_lr_ratio=0.01) == pytest.approx(0.01)


def test_cosine_with_linear_warmup():
    kw = {"total": 110, "warmup_iters": 10, "warmup_ratio": 0.1, "min_lr_ratio": 0.02}
    assert cosine_factor(0, **kw) == pytest.approx(0.1)
    assert cosine_factor(5, **kw) == pytest.approx(0.55)
    assert cosine_factor(9, **kw) == pytest.approx(0.91)
    assert cosine_factor(10, **kw) == pytest.approx(1.0)  # the warmup ends where the cosine starts: continuous
    assert cosine_factor(60, **kw) == pytest.approx(0.51)  # half-way down: (1 + min_lr_ratio) / 2
    assert cosine_factor(35, **kw) == pytest.approx(0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert cosine_factor(110, **kw) == pytest.approx(0.02)
    assert cosine_factor(200, **kw) == pytest.approx(0.02)  # past the end it stays at the floor
    assert cosine_factor(0, total=100) == 1.0 and cosine_factor(100, total=100) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="warmup_iters=100 must be below the total of 100"):
        cosine_factor(0, total=100, warmup_iters=100)


@pytest.mark.parametrize("name,options", [("poly", {"power": 0.9}), ("cosine", {"warmup_iters": 2})])
def test_a_schedule_is_picked_by_name_and_a_resumed_one_follows_its_new_total(name, options):
    model = torch.nn.Conv2d(1, 1, 1)
    opt = build_optimizer(model, name="sgd", lr=0.1)
    sched = build_scheduler(opt, total_iters=10, name=name, **options)
    for _ in range(4):
        opt.step()
        sched.step()
    factor = SCHEDULES[name]
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * factor(4, total=10, **options))
    longer = build_scheduler(build_optimizer(model, name="sgd", lr=0.1), total_iters=20, name=name, **options)
    longer.load_state_dict(sched.state_dict())  # what a resumed run with trainer.iterations=20 does
    assert longer.last_epoch == 4
    assert longer.lr_lambdas[0](4) == pytest.approx(factor(4, total=20, **options))


def test_unknown_schedules_and_misspelt_schedule_options_fail():
    opt = build_optimizer(torch.nn.Conv2d(1, 1, 1), name="sgd", lr=0.1)
    with pytest.raises(ValueError, match=r"unknown schedule 'step'; known: \['cosine', 'poly'\]"):
        build_scheduler(opt, total_iters=10, name="step")
    with pytest.raises(TypeError, match="power"):  # poly's option, not cosine's
        build_scheduler(opt, total_iters=10, name="cosine", power=0.9)


def test_backbone_gets_its_own_lr_and_the_schedule_steps_both():
    model = build_model(num_classes=3, separable=True, backbone={"name": "mobilenet_v2", "width_mult": 0.5})
    opt = build_optimizer(model, name="sgd", lr=0.01, backbone_lr_mult=0.1, momentum=0.9, weight_decay=1e-4)
    groups = {g["name"]: g for g in opt.param_groups}
    assert groups["backbone"]["lr"] == pytest.approx(0.001) and groups["head"]["lr"] == pytest.approx(0.01)
    n_params = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert n_params == sum(p.numel() for p in model.parameters())
    sched = build_scheduler(opt, total_iters=10)
    for _ in range(5):
        opt.step()
        sched.step()
    assert groups["head"]["lr"] == pytest.approx(0.01 * 0.5 ** 0.9)
    assert groups["backbone"]["lr"] == pytest.approx(0.001 * 0.5 ** 0.9)


def test_unknown_names_and_misspelt_options_fail():
    model = torch.nn.Conv2d(1, 1, 1)
    with pytest.raises(ValueError, match="unknown optimizer 'sdg'"):
        build_optimizer(model, name="sdg", lr=0.1)
    with pytest.raises(TypeError, match="momentm"):
        build_optimizer(model, name="sgd", lr=0.1, momentm=0.9)


def _small_model():
    torch.manual_seed(1)
    return build_model(num_classes=3, backbone={"name": "mobilenet_v2", "width_mult": 0.25}, backbone_weights=None,
                       separable=True, aspp_channels=16, low_level_channels=8, decoder_channels=16,
                       aspp_dropout=0.0).eval()


def test_two_accumulated_micro_batches_make_the_step_of_one_batch_twice_the_size():
    """trainer.grad_accum=2 is one batch of twice the size: the same loss and update (BatchNorm in eval mode, since
    its batch statistics are the one thing that differs by design), with halves of unequal labelled pixels."""
    from deeplab.engine.step import optimizer_step
    from deeplab.losses import build_loss

    torch.manual_seed(0)
    images, masks = torch.randn(4, 3, 32, 32), torch.randint(0, 3, (4, 32, 32))
    masks[0, :12] = 255  # the first half holds fewer labelled pixels: its share of the mean is smaller
    results = []
    for micro in ([(images, masks)], [(images[:2], masks[:2]), (images[2:], masks[2:])]):
        model = _small_model()
        loss = optimizer_step(model, torch.optim.SGD(model.parameters(), lr=0.1),
                              torch.amp.GradScaler("cpu", enabled=False), build_loss(ignore_index=255), micro,
                              device=torch.device("cpu"))
        results.append((loss, model.state_dict()))
    (whole_loss, whole), (accum_loss, accum) = results
    torch.testing.assert_close(accum_loss, whole_loss, rtol=1e-5, atol=1e-6)
    for key, value in whole.items():
        torch.testing.assert_close(accum[key], value, rtol=1e-5, atol=1e-6, msg=key)
    start = _small_model().state_dict()
    assert not torch.equal(whole["decoder.classifier.weight"], start["decoder.classifier.weight"])  # it stepped
