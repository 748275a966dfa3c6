import pytest
import torch

from deeplab.model.aspp import ASPP, default_rates


@pytest.mark.parametrize("output_stride,rates", [(16, (6, 12, 18)), (8, (12, 24, 36)), (32, (3, 6, 9))])
def test_rates_follow_output_stride(output_stride, rates):
    assert default_rates(output_stride) == rates
    assert ASPP(320, rates=default_rates(output_stride)).rates == rates


def test_unknown_output_stride_has_no_rates():
    with pytest.raises(ValueError, match="no ASPP rates for output_stride=4"):
        default_rates(4)


def test_branches_shape_and_projection():
    aspp = ASPP(40, rates=(2, 4, 6), channels=32).eval()
    assert len(aspp.branches) == 5  # 1x1 + three atrous + image pooling
    out = aspp(torch.randn(2, 40, 9, 7))
    assert out.shape == (2, 32, 9, 7)


def test_separable_branches_are_depthwise_then_pointwise():
    aspp = ASPP(40, rates=(6, 12, 18), channels=32, separable=True)
    for branch, rate in zip(aspp.branches[1:-1], (6, 12, 18)):
        depthwise, pointwise = branch[0], branch[3]
        assert depthwise.groups == 40 and depthwise.kernel_size == (3, 3) and depthwise.dilation == (rate, rate)
        assert pointwise.kernel_size == (1, 1) and pointwise.out_channels == 32
        # what separable buys: the 3x3 and 1x1 weights, plus at most a BatchNorm scale and shift per channel,
        # against a dense atrous 3x3's 40 * 32 * 9
        weights = 40 * 3 * 3 + 40 * 32
        assert weights <= sum(p.numel() for p in branch.parameters()) <= weights + 2 * (40 + 32) < 40 * 32 * 9 / 5
        out = branch.eval()(torch.randn(2, 40, 9, 7))
        assert out.shape == (2, 32, 9, 7) and (out >= 0).all(), "same size at any rate, ending in a ReLU"


def test_set_rates_checks_branch_count():
    aspp = ASPP(16, rates=(1, 2, 3), channels=8)
    aspp.set_rates((4, 5, 6))
    assert aspp.rates == (4, 5, 6)
    with pytest.raises(ValueError, match="3 atrous branches"):
        aspp.set_rates((1, 2))
