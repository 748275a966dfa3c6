import pytest
import torch

from conftest import count_batchnorms
from deeplab.engine.tta import is_channels_last, predict_probs
from deeplab.inference import prepare_for_inference
from deeplab.model import build_model
from deeplab.model.fuse import fold_batchnorm


def _trained_like(**kwargs) -> torch.nn.Module:
    """A model whose BatchNorms hold non-trivial statistics and affine parameters, as after training."""
    torch.manual_seed(0)
    model = build_model(num_classes=5, **kwargs)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


@pytest.mark.parametrize("separable", [False, True])
def test_folded_model_matches_the_unfolded_one_to_1e4(separable):
    model = _trained_like(separable=separable)
    folded = fold_batchnorm(model)
    assert count_batchnorms(folded) == 0 and count_batchnorms(model) > 0  # the input model is untouched
    x = torch.randn(2, 3, 97, 65)
    with torch.inference_mode():
        expected, got = model(x), folded(x)
    assert (got - expected).abs().max() < 1e-4
    assert sum(p.numel() for p in folded.parameters()) < sum(p.numel() for p in model.parameters())


def test_folded_model_still_changes_output_stride():
    model = _trained_like()
    folded = fold_batchnorm(model)
    model.set_output_stride(8)
    folded.set_output_stride(8)
    assert folded.aspp.rates == (12, 24, 36)
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        assert (folded(x) - model(x)).abs().max() < 1e-4


def test_fast_path_is_channels_last_and_gives_the_same_probabilities_in_fp32():
    model = _trained_like()
    fast = prepare_for_inference(model)
    assert is_channels_last(fast) and not is_channels_last(model)
    x = torch.randn(1, 3, 81, 113)
    plain = predict_probs(model, x, scales=(1.0, 0.75), flip=True)
    quick = predict_probs(fast, x, scales=(1.0, 0.75), flip=True)
    assert (plain - quick).abs().max() < 1e-4
