import copy
import warnings

import pytest
import torch
import torch.nn.functional as F

import deeplab.model.fast_convs as fast_convs
from deeplab.inference import prepare_for_inference
from deeplab.model import build_model
from deeplab.model.decoder import use_fast_convs
from deeplab.model.fast_convs import (applicable, interpolation_matrix, upsample_concat_conv3x3, winograd_conv3x3,
                                      winograd_matrices)


def _close(got: torch.Tensor, expected: torch.Tensor, rel: float = 1e-4) -> bool:
    return got.shape == expected.shape and (got.double() - expected.double()).abs().max() <= rel * expected.abs().max()


def _inputs(shape, out_channels, *, bias=True, channels_last=False, seed=0):
    torch.manual_seed(seed)
    x = torch.randn(shape)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    weight = torch.randn(out_channels, shape[1], 3, 3) * 0.1
    b = torch.randn(out_channels) if bias else None
    return [t.requires_grad_() if t is not None else None for t in (x, weight, b)]


def _grads(output: torch.Tensor, inputs, upstream: torch.Tensor):
    wanted = [t for t in inputs if t is not None]
    return torch.autograd.grad(output, wanted, upstream)


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
    x, weight, b = _inputs(shape, 32, bias=bias)
    with torch.inference_mode():
        got = winograd_conv3x3(x, weight, b)
    expected = F.conv2d(x.double(), weight.double(), None if b is None else b.double(), padding=1)
    assert _close(got, expected) and got.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("bias", [True, False])
def test_winograd_conv_gradients_equal_the_direct_convs(channels_last, bias):
    x, weight, b = _inputs((2, 12, 23, 31), 20, bias=bias, channels_last=channels_last)
    upstream = torch.randn(2, 20, 23, 31)
    expected = F.conv2d(x.double(), weight.double(), None if b is None else b.double(), padding=1)
    got = winograd_conv3x3(x, weight, b)
    assert _close(got, expected)
    for g, e in zip(_grads(got, (x, weight, b), upstream), _grads(expected, (x, weight, b), upstream.double())):
        assert _close(g, e)
    weight_only = torch.autograd.grad(winograd_conv3x3(x.detach(), weight), weight, upstream)[0]  # no input grad
    assert _close(weight_only, torch.autograd.grad(F.conv2d(x.detach(), weight, padding=1), weight, upstream)[0])
    frozen = weight.detach()  # a frozen layer: the input gradient alone
    input_only = torch.autograd.grad(winograd_conv3x3(x, frozen), x, upstream)[0]
    assert _close(input_only, torch.autograd.grad(F.conv2d(x, frozen, padding=1), x, upstream)[0])


@pytest.mark.parametrize("chunk", [1, 1 << 12, 1 << 30])  # a tile row, a few rows, several whole images per block
def test_blocking_gives_the_same_values_and_gradients(monkeypatch, chunk):
    x, weight, b = _inputs((3, 8, 50, 31), 8, channels_last=True, seed=1)
    upstream = torch.randn(3, 8, 50, 31)
    expected = F.conv2d(x.double(), weight.double(), b.double(), padding=1)
    reference = _grads(expected, (x, weight, b), upstream.double())
    monkeypatch.setattr(fast_convs, "MAX_CHUNK_ELEMENTS", chunk)
    got = winograd_conv3x3(x, weight, b)
    assert _close(got, expected)
    for g, e in zip(_grads(got, (x, weight, b), upstream), reference):
        assert _close(g, e)


def test_fast_convs_apply_only_to_fp32_cpu_maps_outside_autocast_and_tracing():
    assert applicable(torch.randn(1, 8, 32, 32))
    assert not applicable(torch.randn(1, 8, 8, 40))                       # a side below MIN_SIDE
    assert not applicable(torch.randn(1, 8, 32, 32, dtype=torch.float64))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not applicable(torch.randn(1, 8, 32, 32))
    seen = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.trace is deprecated; torch.onnx.export(dynamo=False) uses it
        torch.jit.trace(lambda t: seen.append(applicable(t)) or t * 2, torch.randn(1, 8, 32, 32), check_trace=False)
    assert seen == [False]


def test_interpolation_matrices_resize_as_bilinear_interpolate_does():
    x = torch.randn(2, 3, 9, 14, dtype=torch.float64)
    expected = F.interpolate(x, size=(37, 50), mode="bilinear", align_corners=False)
    got = interpolation_matrix(9, 37) @ x @ interpolation_matrix(14, 50).T
    assert torch.allclose(got, expected, atol=1e-12)


@pytest.mark.parametrize("coarse,fine", [((33, 33), (129, 129)), ((9, 14), (33, 53)), ((7, 5), (20, 20))])
def test_upsample_concat_conv_equals_upsample_cat_conv_with_its_gradients(coarse, fine):
    torch.manual_seed(0)
    x, low = torch.randn(2, 24, *coarse, requires_grad=True), torch.randn(2, 8, *fine, requires_grad=True)
    weight, bias = (torch.randn(16, 32, 3, 3) * 0.1).requires_grad_(), torch.randn(16, requires_grad=True)
    upstream = torch.randn(2, 16, *fine)

    def reference(*tensors):
        x, low, weight, bias = (t.double() for t in tensors)
        upsampled = F.interpolate(x, size=fine, mode="bilinear", align_corners=False)
        return F.conv2d(torch.cat([upsampled, low], 1), weight, bias, padding=1)

    expected = reference(x, low, weight, bias)
    with torch.inference_mode():
        assert _close(upsample_concat_conv3x3(x, low, weight, bias), expected)
    got = upsample_concat_conv3x3(x, low, weight, bias)
    assert _close(got, expected)
    for g, e in zip(_grads(got, (x, low, weight, bias), upstream),
                    _grads(expected, (x, low, weight, bias), upstream.double())):
        assert _close(g, e)
    with pytest.raises(ValueError, match="weight"):
        upsample_concat_conv3x3(x, low, weight[:, :30])


def test_dense_decoders_take_the_fast_convs_without_renaming_weights():
    dense = build_model(num_classes=3)
    keys = list(dense.state_dict())
    assert use_fast_convs(dense) == 2 and dense.decoder.fast_convs
    assert list(dense.state_dict()) == keys
    assert use_fast_convs(dense, enabled=False) == 0 and not dense.decoder.fast_convs
    assert use_fast_convs(build_model(num_classes=3, separable=True)) == 0


def test_training_with_fast_convs_gives_the_plain_models_loss_and_gradients():
    torch.manual_seed(0)
    plain = build_model(num_classes=5).train()
    fast = copy.deepcopy(plain)
    use_fast_convs(fast)
    images, masks = torch.randn(2, 3, 97, 129), torch.randint(0, 5, (2, 97, 129))
    losses = []
    # oneDNN's own fp32 conv kernels (which it picks per process and CPU) alone move some gradients by up to 5%
    # against float64 on AVX-512 CPUs; with them off, the other convs run the same reference code in both models
    with torch.backends.mkldnn.flags(enabled=False):
        for model in (plain, fast):
            torch.manual_seed(1)  # the same dropout mask
            loss = F.cross_entropy(model(images), masks)
            loss.backward()
            losses.append(loss.item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    largest = max(p.grad.abs().max() for p in plain.parameters())
    for (name, p), q in zip(plain.named_parameters(), fast.parameters()):
        # BN-before-BN biases have near-zero gradients; compare those against the largest gradient
        assert (p.grad - q.grad).abs().max() <= 1e-3 * p.grad.abs().max() + 1e-5 * largest, name


def test_fast_path_predicts_what_the_plain_model_predicts():
    torch.manual_seed(0)
    model = build_model(num_classes=5).eval()
    fast = prepare_for_inference(model)
    assert fast.decoder.fast_convs and not model.decoder.fast_convs
    assert not prepare_for_inference(model, fast_convs=False).decoder.fast_convs
    x = torch.randn(2, 3, 97, 129)
    with torch.inference_mode():
        plain, quick = model(x), fast(x.contiguous(memory_format=torch.channels_last))
    assert _close(quick, plain)
    assert (plain.argmax(1) == quick.argmax(1)).float().mean() > 0.999
