import pytest
import torch
import torch.nn.functional as F

import deeplab.model.fast_convs as fast_convs
from deeplab.inference import prepare_for_inference
from deeplab.model import build_model
from deeplab.model.fast_convs import (UpsampleConcatConv, WinogradConv2d, interpolation_matrix, use_fast_convs,
                                      use_winograd, winograd_matrices)


def _reference(conv: torch.nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    bias = None if conv.bias is None else conv.bias.double()
    return F.conv2d(x.double(), conv.weight.double(), bias, padding=1)


@pytest.mark.parametrize("m", [2, 4, 6])
def test_transforms_compute_a_1d_correlation_exactly(m):
    points = fast_convs.POINTS[:m + 1]
    a_t, g, b_t = winograd_matrices(m, 3, points)
    d, w = torch.randn(m + 2, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    expected = torch.stack([(d[i:i + 3] * w).sum() for i in range(m)])
    assert torch.allclose(a_t @ ((g @ w) * (b_t @ d)), expected, atol=1e-10)


@pytest.mark.parametrize("shape", [(1, 40, 37, 50), (2, 24, 21, 26), (1, 16, 25, 61)])
@pytest.mark.parametrize("bias", [True, False])
def test_winograd_conv_equals_the_direct_conv(shape, bias):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(shape[1], 32, 3, padding=1, bias=bias)
    x = torch.randn(shape)
    with torch.inference_mode():
        got = WinogradConv2d(conv)(x)
    expected = _reference(conv, x)
    assert got.shape == expected.shape and got.is_contiguous(memory_format=torch.channels_last)
    assert (got.double() - expected).abs().max() < 1e-4 * expected.abs().max()


def test_large_maps_are_done_in_blocks_with_the_same_result(monkeypatch):
    torch.manual_seed(1)
    conv = torch.nn.Conv2d(8, 8, 3, padding=1)
    x = torch.randn(2, 8, 50, 31).contiguous(memory_format=torch.channels_last)
    layer = WinogradConv2d(conv)
    with torch.inference_mode():
        whole = layer(x)
        monkeypatch.setattr(fast_convs, "MAX_CHUNK_ELEMENTS", 1)  # one row of tiles at a time
        blocks = layer(x)
    assert torch.equal(whole, blocks) or (whole - blocks).abs().max() < 1e-5
    assert (blocks.double() - _reference(conv, x)).abs().max() < 1e-4 * blocks.abs().max()


def test_training_autocast_and_small_maps_use_the_plain_conv():
    conv = torch.nn.Conv2d(8, 8, 3, padding=1)
    layer = WinogradConv2d(conv)
    x = torch.randn(1, 8, 32, 32, requires_grad=True)
    layer(x).sum().backward()  # autograd recording: the original conv, so gradients flow
    assert conv.weight.grad is not None and x.grad is not None
    with torch.inference_mode():
        assert layer.use_direct(torch.randn(1, 8, 8, 40))  # a side below MIN_SIDE
        assert not layer.use_direct(torch.randn(1, 8, 32, 32))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert layer.use_direct(torch.randn(1, 8, 32, 32))
            assert layer(torch.randn(1, 8, 32, 32)).dtype == torch.bfloat16


def test_only_dense_3x3_stride_1_convs_are_eligible():
    with pytest.raises(ValueError, match="3x3"):
        WinogradConv2d(torch.nn.Conv2d(8, 8, 3, padding=2, dilation=2))
    dense = build_model(num_classes=3).eval()
    assert use_winograd(dense) == 2  # the decoder's two 3x3 convs; the backbone's are strided or depthwise
    assert use_winograd(build_model(num_classes=3, separable=True).eval()) == 0


def test_interpolation_matrices_resize_as_bilinear_interpolate_does():
    x = torch.randn(2, 3, 9, 14, dtype=torch.float64)
    expected = F.interpolate(x, size=(37, 50), mode="bilinear", align_corners=False)
    got = interpolation_matrix(9, 37) @ x @ interpolation_matrix(14, 50).T
    assert torch.allclose(got, expected, atol=1e-12)


@pytest.mark.parametrize("coarse,fine", [((33, 33), (129, 129)), ((9, 14), (33, 53)), ((7, 5), (20, 20))])
def test_upsample_concat_conv_equals_upsample_cat_conv(coarse, fine):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(24 + 8, 16, 3, padding=1)
    layer = UpsampleConcatConv(conv, upsampled_channels=24)
    x, low = torch.randn(2, 24, *coarse), torch.randn(2, 8, *fine)
    upsampled = F.interpolate(x.double(), size=fine, mode="bilinear", align_corners=False)
    expected = _reference(conv, torch.cat([upsampled, low.double()], 1))
    with torch.inference_mode():
        got = layer(x, low)
    assert got.shape == expected.shape
    assert (got.double() - expected).abs().max() < 1e-4 * expected.abs().max()
    got = layer(x, low)  # autograd recording: the original upsample + cat + conv, gradients reach the conv
    got.sum().backward()
    assert conv.weight.grad is not None and (got.double() - expected).abs().max() < 1e-4 * expected.abs().max()


def test_fast_path_predicts_what_the_plain_model_predicts():
    torch.manual_seed(0)
    model = build_model(num_classes=5).eval()
    fast = prepare_for_inference(model)
    assert sum(isinstance(m, WinogradConv2d) for m in fast.modules()) == 1
    assert sum(isinstance(m, UpsampleConcatConv) for m in fast.modules()) == 1
    plain_fast = prepare_for_inference(model, fast_convs=False).modules()
    assert not any(isinstance(m, (WinogradConv2d, UpsampleConcatConv)) for m in plain_fast)
    assert use_fast_convs(prepare_for_inference(build_model(num_classes=3, separable=True), fast_convs=False)) == 0
    x = torch.randn(2, 3, 97, 129)
    with torch.inference_mode():
        plain, quick = model(x), fast(x.contiguous(memory_format=torch.channels_last))
    assert (plain - quick).abs().max() < 1e-4 * plain.abs().max()
    assert (plain.argmax(1) == quick.argmax(1)).float().mean() > 0.999
