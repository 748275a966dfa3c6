import pytest
import torch

from deeplab.engine.optim import build_optimizer, build_scheduler, poly_factor
from deeplab.model import build_model


def test_poly_with_linear_warmup():
    assert poly_factor(0, total=100, warmup_iters=10, warmup_ratio=0.1) == pytest.approx(0.1)
    assert poly_factor(5, total=100, warmup_iters=10, warmup_ratio=0.1) == pytest.approx(0.55)
    assert poly_factor(10, total=100, warmup_iters=10) == pytest.approx(0.9 ** 0.9)
    assert poly_factor(50, total=100) == pytest.approx(0.5 ** 0.9)
    assert poly_factor(100, total=100) == 0.0
    assert poly_factor(100, total=100, min_lr_ratio=0.01) == pytest.approx(0.01)


def test_backbone_gets_its_own_lr_and_the_schedule_steps_both():
    model = build_model(num_classes=3, separable=True, width_mult=0.5)
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
