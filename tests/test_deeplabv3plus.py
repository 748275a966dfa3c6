import pytest
import torch
import torchvision

from deeplab.errors import ConfigError
from deeplab.model import build_model, rebuild_model, upgrade_model_config
from deeplab.model.summary import count_parameters


@pytest.mark.parametrize("output_stride", [8, 16, 32])
@pytest.mark.parametrize("separable", [False, True])
@pytest.mark.parametrize("size", [(513, 513), (97, 65), (321, 481), (32, 32)])
def test_output_shape_for_any_size(output_stride, separable, size):
    model = build_model(num_classes=21, output_stride=output_stride, separable=separable).eval()
    with torch.no_grad():
        logits = model(torch.randn(1, 3, *size))
    assert logits.shape == (1, 21, *size)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("width_mult", [0.5, 0.75, 1.0, 1.4])
def test_width_multipliers_build_and_run(width_mult):
    model = build_model(num_classes=5, backbone={"name": "mobilenet_v2", "width_mult": width_mult}).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 65, 97)).shape == (1, 5, 65, 97)


def test_parameter_counts_match_the_reference_sizes():
    dense = count_parameters(build_model(num_classes=21))
    separable = count_parameters(build_model(num_classes=21, separable=True))
    assert 5.7e6 < dense < 5.9e6  # ~5.82M with two 3x3 256-ch decoder convs
    assert 2.6e6 < separable < 2.8e6  # ~2.7M TF-style separable head
    assert count_parameters(build_model(num_classes=21).backbone) == 1_811_712  # torchvision features[0:18]


@pytest.mark.parametrize("separable", [False, True])
def test_dilation_adds_no_weights(separable):
    counts = {os_: count_parameters(build_model(num_classes=21, output_stride=os_, separable=separable))
              for os_ in (8, 16, 32)}
    assert counts[8] == counts[16] == counts[32]


@pytest.mark.parametrize("separable", [False, True])
def test_every_parameter_gets_a_gradient_and_no_nan(separable):
    torch.manual_seed(0)
    model = build_model(num_classes=4, separable=separable).train()
    images = torch.randn(2, 3, 67, 75)
    target = torch.randint(0, 4, (2, 67, 75))
    target[:, :5] = 255
    loss = torch.nn.functional.cross_entropy(model(images), target, ignore_index=255)
    loss.backward()
    assert torch.isfinite(loss)
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{name} has an all-zero gradient"


def test_builder_is_keyword_only_and_checks_num_classes():
    with pytest.raises(TypeError):
        build_model(21)  # noqa: the point is that positional use fails
    with pytest.raises(TypeError, match="unexpected keyword argument 'separabel'; did you mean separable"):
        build_model(num_classes=21, separabel=True)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ConfigError, match=r"^model.num_classes=.*: must be an integer >= 1"):
            build_model(num_classes=bad)


def test_aspp_rates_follow_output_stride_and_can_be_overridden():
    assert build_model(num_classes=3, output_stride=8).aspp.rates == (12, 24, 36)
    assert build_model(num_classes=3, output_stride=16).aspp.rates == (6, 12, 18)
    assert build_model(num_classes=3, output_stride=32).aspp.rates == (3, 6, 9)
    assert build_model(num_classes=3, aspp_rates=[4, 8, 12]).aspp.rates == (4, 8, 12)


def test_output_stride_switch_after_training_matches_a_fresh_build():
    torch.manual_seed(0)
    model = build_model(num_classes=3, output_stride=16).eval()
    model.set_output_stride(8)
    assert model.output_stride == 8 and model.aspp.rates == (12, 24, 36)
    fresh = build_model(num_classes=3, output_stride=8).eval()
    fresh.load_state_dict(model.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), fresh(x))


def test_backbone_weights_path_is_loaded(tmp_path):
    net = torchvision.models.mobilenet_v2()
    path = tmp_path / "mv2.pth"
    torch.save(net.state_dict(), path)
    model = build_model(num_classes=3, backbone_weights=str(path))
    assert torch.equal(model.backbone.features[5].conv[1][0].weight, net.features[5].conv[1][0].weight)
    with pytest.raises(ConfigError, match="model.backbone_weights: file not found: .*missing.pth"):
        build_model(num_classes=3, backbone_weights=str(tmp_path / "missing.pth"))


def test_backbone_is_a_name_or_a_mapping_of_name_and_options():
    assert build_model(num_classes=3).backbone.width_mult == 1.0  # MobileNetV2 stays the default
    assert type(build_model(num_classes=3, backbone="resnet50").backbone).__name__ == "ResNet50Backbone"
    half = build_model(num_classes=3, backbone={"name": "mobilenet_v2", "width_mult": 0.5, "expand_ratio": 4})
    assert (half.backbone.width_mult, half.backbone.expand_ratio) == (0.5, 4)
    with pytest.raises(ConfigError, match=r"^model.backbone.name='resnet34': no such backbone; use one of "
                                          r"mobilenet_v2, resnet50, resnet101"):
        build_model(num_classes=3, backbone="resnet34")
    with pytest.raises(ConfigError, match=r"^model.backbone.width_mult: the resnet101 backbone has no such option "
                                          r"\(it takes no options\); it is an option of mobilenet_v2"):
        build_model(num_classes=3, backbone={"name": "resnet101", "width_mult": 0.5})
    with pytest.raises(ConfigError, match=r"^model.backbone.widht_mult: the mobilenet_v2 backbone has no such option "
                                          r"\(its options: expand_ratio, padding, width_mult\); check the spelling"):
        build_model(num_classes=3, backbone={"name": "mobilenet_v2", "widht_mult": 0.5})


def test_old_model_configs_upgrade_to_the_backbone_layout():
    old = {"num_classes": 3, "output_stride": 16, "separable": True, "backbone_weights": None, "width_mult": 0.5,
           "expand_ratio": 4, "aspp_rates": None, "aspp_channels": 128}
    new = upgrade_model_config(old)
    # keys added since (the decoder's convs, the resizes' align_corners, MobileNetV2's padding) come with the values
    # older checkpoints were built with
    assert new == {"num_classes": 3, "output_stride": 16, "separable": True, "backbone_weights": None,
                   "aspp_rates": None, "aspp_channels": 128,
                   "backbone": {"name": "mobilenet_v2", "width_mult": 0.5, "expand_ratio": 4, "padding": "conv"},
                   "decoder_convs": 2, "align_corners": False}
    assert "width_mult" in old  # the saved config itself is left as it was
    assert upgrade_model_config(new) == new and upgrade_model_config(new) is not new  # idempotent
    assert upgrade_model_config({"num_classes": 3, "backbone": "resnet101"}) == {
        "num_classes": 3, "backbone": "resnet101", "decoder_convs": 2, "align_corners": False}
    assert upgrade_model_config({"num_classes": 3})["backbone"] == {"name": "mobilenet_v2", "padding": "conv"}
    converted = {"num_classes": 3, "backbone": {"name": "mobilenet_v2", "padding": "input"}, "decoder_convs": 1,
                 "align_corners": True}
    assert upgrade_model_config(converted) == converted  # values that are there are kept
    model = build_model(**new)
    assert (model.backbone.width_mult, model.backbone.expand_ratio, model.aspp.out_channels) == (0.5, 4, 128)


def test_rebuild_model_takes_any_layout_fetches_no_weights_and_applies_changes(monkeypatch):
    """The one rebuild path: an old flat section and today's give the same architecture, 'imagenet' is not fetched
    (a checkpoint's own weights follow), and a change such as separable=True is applied."""
    monkeypatch.setattr("deeplab.model.deeplabv3plus.load_backbone_weights",
                        lambda *a, **k: pytest.fail("rebuild_model fetched backbone weights"))
    old = {"num_classes": 3, "width_mult": 0.5, "expand_ratio": 6, "backbone_weights": "imagenet"}
    new = {"num_classes": 3, "backbone": {"name": "mobilenet_v2", "width_mult": 0.5}, "backbone_weights": "imagenet"}
    shapes = [{k: v.shape for k, v in rebuild_model(cfg).state_dict().items()} for cfg in (old, new)]
    assert shapes[0] == shapes[1]
    twin = rebuild_model(new, separable=True)
    assert count_parameters(twin) < count_parameters(rebuild_model(new))
    half = build_model(num_classes=3, backbone={"name": "mobilenet_v2", "width_mult": 0.5})
    assert {k: v.shape for k, v in twin.backbone.state_dict().items()} == \
        {k: v.shape for k, v in half.backbone.state_dict().items()}  # still the half-width encoder
