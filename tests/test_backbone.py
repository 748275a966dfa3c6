import urllib.error

import pytest
import torch
import torchvision

from deeplab.errors import ConfigError
from deeplab.model.backbone import MobileNetV2Backbone, imagenet_cache_path, load_backbone_weights


def _conv3x3(block):
    return next(m for m in block.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3))


def _stride_dilation(backbone):
    return [(_conv3x3(b).stride[0], _conv3x3(b).dilation[0]) for b in backbone.features]


@pytest.mark.parametrize("output_stride", [8, 16, 32])
@pytest.mark.parametrize("width_mult", [0.5, 1.0])
def test_feature_strides_and_channels_match_declared(output_stride, width_mult):
    backbone = MobileNetV2Backbone(output_stride=output_stride, width_mult=width_mult).eval()
    x = torch.randn(1, 3, 128, 96)
    with torch.no_grad():
        features = backbone(x)
    assert [f.stride for f in backbone.feature_info] == [4, output_stride]
    for info in backbone.feature_info:
        feat = features[info.name]
        assert feat.shape[1] == info.channels
        assert feat.shape[-2:] == (128 // info.stride, 96 // info.stride)


def test_channels_follow_width_multiplier_rounded_to_8():
    assert [f.channels for f in MobileNetV2Backbone(width_mult=1.0).feature_info] == [24, 320]
    assert [f.channels for f in MobileNetV2Backbone(width_mult=0.5).feature_info] == [16, 160]
    assert [f.channels for f in MobileNetV2Backbone(width_mult=0.75).feature_info] == [24, 240]
    assert [f.channels for f in MobileNetV2Backbone(width_mult=1.4).feature_info] == [32, 448]


def test_expand_ratio_changes_the_t6_blocks_only():
    backbone = MobileNetV2Backbone(expand_ratio=4)
    assert backbone.features[1].conv[0][0].out_channels == 32  # t=1 block: depthwise on 32 channels, unchanged
    assert backbone.features[2].conv[0][0].out_channels == 16 * 4


def test_dilation_follows_tf_deeplab_rule():
    table = {
        32: [(2, 1), (1, 1), (2, 1), (1, 1), (2, 1), (1, 1), (1, 1), (2, 1)] + [(1, 1)] * 6 + [(2, 1)] + [(1, 1)] * 3,
        16: [(2, 1), (1, 1), (2, 1), (1, 1), (2, 1), (1, 1), (1, 1), (2, 1)] + [(1, 1)] * 6 + [(1, 1)] + [(1, 2)] * 3,
        8: [(2, 1), (1, 1), (2, 1), (1, 1), (2, 1), (1, 1), (1, 1), (1, 1)] + [(1, 2)] * 6 + [(1, 2)] + [(1, 4)] * 3,
    }
    for output_stride, expected in table.items():
        assert _stride_dilation(MobileNetV2Backbone(output_stride=output_stride)) == expected


def test_output_stride_can_change_after_construction():
    backbone = MobileNetV2Backbone(output_stride=8)
    backbone.set_output_stride(16)
    assert _stride_dilation(backbone) == _stride_dilation(MobileNetV2Backbone(output_stride=16))
    with pytest.raises(ConfigError, match=r"output_stride=4: must be one of \[8, 16, 32\]"):
        backbone.set_output_stride(4)


@pytest.fixture
def torchvision_state(tmp_path):
    torch.manual_seed(0)
    net = torchvision.models.mobilenet_v2(weights=None)
    for m in net.modules():  # non-trivial running stats so eval-mode BN is really checked
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    path = tmp_path / "mobilenet_v2.pth"
    torch.save(net.state_dict(), path)
    return net.eval(), path


def test_torchvision_state_dict_reproduces_torchvision_features(torchvision_state):
    net, path = torchvision_state
    backbone = MobileNetV2Backbone(output_stride=32).eval()
    assert load_backbone_weights(backbone, str(path)) == str(path)
    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        expected = net.features[:18](x)
        low = net.features[:4](x)
        features = backbone(x)
    assert torch.equal(features["out"], expected)
    assert torch.equal(features["low"], low)


@pytest.mark.parametrize("output_stride", [8, 16])
def test_dilated_backbone_holds_the_same_weights(torchvision_state, output_stride):
    net, path = torchvision_state
    backbone = MobileNetV2Backbone(output_stride=output_stride)
    load_backbone_weights(backbone, path)
    reference = {k: v for k, v in net.state_dict().items() if k.startswith("features.") and int(k.split(".")[1]) < 18}
    assert backbone.state_dict().keys() == reference.keys()
    assert all(torch.equal(backbone.state_dict()[k], v) for k, v in reference.items())


def test_missing_weights_file_is_a_clear_error(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(ConfigError, match="model.backbone_weights: file not found: .*nope.pth"):
        load_backbone_weights(MobileNetV2Backbone(), str(missing))


def test_state_dict_of_another_width_names_the_tensor(tmp_path):
    path = tmp_path / "half.pth"
    torch.save(torchvision.models.mobilenet_v2(width_mult=0.5).state_dict(), path)
    with pytest.raises(ValueError, match=r"half.pth does not fit this backbone .* features.0.0.weight"):
        load_backbone_weights(MobileNetV2Backbone(), path)


def test_file_that_is_not_a_state_dict_is_a_clear_error(tmp_path):
    path = tmp_path / "garbage.pth"
    path.write_bytes(b"not a torch file")
    with pytest.raises(ConfigError, match="model.backbone_weights: .*garbage.pth: a text file"):
        load_backbone_weights(MobileNetV2Backbone(), path)
    torch.save({"something": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match="garbage.pth is not a torchvision MobileNetV2 state dict"):
        load_backbone_weights(MobileNetV2Backbone(), path)


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"features.0.0.weight": torch.zeros(1), "payload": _Payload()}, path)
    with pytest.raises(ConfigError, match="model.backbone_weights: .*evil.pth: refused: it holds code or objects "
                                          "other than tensors"):
        load_backbone_weights(MobileNetV2Backbone(), path)


class _Payload:
    pass


def test_imagenet_offline_names_the_cache_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    expected = imagenet_cache_path()
    assert str(expected).startswith(str(tmp_path))
    with pytest.raises(ConfigError, match="copy that file to " + str(expected) + ".*model.backbone_weights=null"):
        load_backbone_weights(MobileNetV2Backbone(), "imagenet")


def test_imagenet_weights_come_from_the_torch_hub_cache(tmp_path, monkeypatch, torchvision_state):
    net, path = torchvision_state
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cached = imagenet_cache_path()
    cached.parent.mkdir(parents=True)
    cached.write_bytes(path.read_bytes())
    backbone = MobileNetV2Backbone()
    assert load_backbone_weights(backbone, "imagenet") == str(cached)
    assert torch.equal(backbone.features[0][0].weight, net.features[0][0].weight)


def test_imagenet_weights_refused_for_other_widths():
    with pytest.raises(ValueError, match="only for width_mult=1.0 and expand_ratio=6"):
        load_backbone_weights(MobileNetV2Backbone(width_mult=0.5), "imagenet")
    with pytest.raises(ValueError, match="only for width_mult=1.0 and expand_ratio=6"):
        load_backbone_weights(MobileNetV2Backbone(expand_ratio=4), "imagenet")
