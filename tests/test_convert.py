"""Converting the peer repositories' checkpoints (VainF/DeepLabV3Plus-Pytorch, bubbliiiing/deeplabv3-plus-pytorch).

The peer-format state dicts are built here from our own model: their key names, shapes and conventions are facts of
the peers' code (written out below as the inverse of the conversion, and anchored by key counts and spot shapes read
off the peers' own models), so every tensor's place can be checked. That the converted models give the peers' own
logits was checked against the peers' code itself, outside the project (README, Trained models).
"""


import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from conftest import compose, one_sentence
from peer_formats import BUBBLIIIING_MODEL, VAINF_MODEL, bubbliiiing_state, randomised, vainf_state
from deeplab.convert import convert_state_dict
from deeplab.engine.run_config import validate_config
from deeplab.errors import ConfigError
from deeplab.inference import prepare_for_inference
from deeplab.model import build_model, rebuild_model
from deeplab.model import deeplabv3plus as deeplabv3plus_module


def test_the_peer_formats_written_here_are_the_peers():
    """Key counts and shapes read off the peers' own models (DeepLabV3+ MobileNetV2, 21 classes): 356 tensors for
    VainF's deeplabv3plus_mobilenet, 371 for bubbliiiing's DeepLab(backbone="mobilenet")."""
    vainf = vainf_state(build_model(num_classes=21, **VAINF_MODEL).state_dict())
    assert len(vainf) == 356
    assert {k: tuple(vainf[k].shape) for k in [
        "backbone.low_level_features.0.0.weight", "backbone.low_level_features.3.conv.0.0.weight",
        "backbone.high_level_features.4.conv.0.0.weight", "backbone.high_level_features.17.conv.2.weight",
        "classifier.project.0.weight", "classifier.aspp.convs.1.0.weight", "classifier.aspp.convs.4.1.weight",
        "classifier.aspp.project.0.weight", "classifier.classifier.0.weight", "classifier.classifier.3.bias"]} == {
        "backbone.low_level_features.0.0.weight": (32, 3, 3, 3),
        "backbone.low_level_features.3.conv.0.0.weight": (144, 24, 1, 1),
        "backbone.high_level_features.4.conv.0.0.weight": (144, 24, 1, 1),
        "backbone.high_level_features.17.conv.2.weight": (320, 960, 1, 1),
        "classifier.project.0.weight": (48, 24, 1, 1), "classifier.aspp.convs.1.0.weight": (256, 320, 3, 3),
        "classifier.aspp.convs.4.1.weight": (256, 320, 1, 1), "classifier.aspp.project.0.weight": (256, 1280, 1, 1),
        "classifier.classifier.0.weight": (256, 304, 3, 3), "classifier.classifier.3.bias": (21,)}
    bubbliiiing = bubbliiiing_state(build_model(num_classes=21, **BUBBLIIIING_MODEL).state_dict())
    assert len(bubbliiiing) == 371
    assert {k: tuple(bubbliiiing[k].shape) for k in [
        "backbone.features.1.conv.0.weight", "backbone.features.1.conv.4.running_var",
        "backbone.features.2.conv.3.weight", "backbone.features.17.conv.6.weight", "aspp.branch1.0.bias",
        "aspp.branch4.0.weight", "aspp.branch5_conv.weight", "aspp.branch5_bn.running_mean", "aspp.conv_cat.0.weight",
        "shortcut_conv.0.bias", "cat_conv.0.weight", "cat_conv.4.weight", "cls_conv.weight"]} == {
        "backbone.features.1.conv.0.weight": (32, 1, 3, 3), "backbone.features.1.conv.4.running_var": (16,),
        "backbone.features.2.conv.3.weight": (96, 1, 3, 3), "backbone.features.17.conv.6.weight": (320, 960, 1, 1),
        "aspp.branch1.0.bias": (256,), "aspp.branch4.0.weight": (256, 320, 3, 3),
        "aspp.branch5_conv.weight": (256, 320, 1, 1), "aspp.branch5_bn.running_mean": (256,),
        "aspp.conv_cat.0.weight": (256, 1280, 1, 1), "shortcut_conv.0.bias": (48,),
        "cat_conv.0.weight": (256, 304, 3, 3), "cat_conv.4.weight": (256, 256, 3, 3),
        "cls_conv.weight": (21, 256, 1, 1)}


def test_vainf_maps_tensor_by_tensor(vainf_model):
    ours = vainf_model.state_dict()
    peer = vainf_state(ours)
    layout, converted = convert_state_dict(peer, "vainf")
    assert layout.model["backbone"] == {"name": "mobilenet_v2", "width_mult": 1.0, "expand_ratio": 6,
                                        "padding": "input"}
    assert (layout.model["decoder_convs"], layout.model["align_corners"], layout.model["output_stride"]) == (1, False,
                                                                                                              16)
    assert list(converted) == list(ours)
    for key, tensor in ours.items():
        assert converted[key].dtype == tensor.dtype and torch.equal(converted[key], tensor), key
    # the decoder conv's input channels really move: VainF's first 48 (low-level) are our last 48
    assert torch.equal(converted["decoder.fuse.0.0.weight"][:, 256:], peer["classifier.classifier.0.weight"][:, :48])


def test_bubbliiiing_maps_tensor_by_tensor_and_folds_conv_biases(bubbliiiing_model):
    ours = bubbliiiing_model.state_dict()
    layout, converted = convert_state_dict(bubbliiiing_state(ours), "bubbliiiing")
    assert layout.model["backbone"]["padding"] == "conv"
    assert (layout.model["decoder_convs"], layout.model["align_corners"]) == (2, True)
    assert list(converted) == list(ours)
    for key, tensor in ours.items():
        if key.endswith("running_mean"):  # the folded biases: mean + b - b
            assert torch.allclose(converted[key], tensor, atol=1e-6), key
        else:
            assert torch.equal(converted[key], tensor), key
    model = rebuild_model(layout.model)
    model.load_state_dict(converted)
    x = torch.randn(1, 3, 97, 130)
    with torch.no_grad():
        assert torch.allclose(model.eval()(x), bubbliiiing_model(x), atol=1e-5)


def test_a_conv_bias_before_batchnorm_folds_into_its_running_mean_exactly():
    g = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(2, 8, 9, 9, generator=g), torch.randn(5, 8, 3, 3, generator=g), torch.randn(5, generator=g)
    mean, var = torch.randn(5, generator=g), torch.rand(5, generator=g) + 0.5
    gamma, beta = torch.randn(5, generator=g), torch.randn(5, generator=g)
    peer = F.batch_norm(F.conv2d(x, w, b, padding=1), mean, var, gamma, beta)
    ours = F.batch_norm(F.conv2d(x, w, padding=1), mean - b, var, gamma, beta)
    assert (peer - ours).abs().max() < 1e-5
    # in training mode (batch statistics) the bias cancels altogether
    assert torch.allclose(F.batch_norm(F.conv2d(x, w, b), None, None, training=True),
                          F.batch_norm(F.conv2d(x, w), None, None, training=True), atol=1e-5)


# --- the model options ----------------------------------------------------------------------------------------------

def test_input_padding_pads_each_block_before_its_expansion_and_not_the_stem():
    """VainF's MobileNetV2: the stem conv is unpadded; a block zero-pads its input by its dilation, then runs all
    its layers (the 1x1 expansion sees the zeros), and adds the unpadded input back where it has a residual."""
    backbone = randomised(build_model(num_classes=3, **VAINF_MODEL)).backbone
    x = torch.randn(1, 3, 67, 90)
    with torch.no_grad():
        stem = backbone.features[0](x)
        assert stem.shape[-2:] == ((67 - 3) // 2 + 1, (90 - 3) // 2 + 1)  # 32 x 44, not 34 x 45
        # features 1 (no expansion) and 2 (stride 2) have no residual; 3 has one
        inp = backbone.features[2].conv(F.pad(backbone.features[1].conv(F.pad(stem, (1,) * 4)), (1,) * 4))
        expected = inp + backbone.features[3].conv(F.pad(inp, (1,) * 4))
        assert torch.allclose(backbone(x)["low"], expected, atol=1e-6)
    dilated = build_model(num_classes=3, **VAINF_MODEL).backbone
    assert [dilated.features[i].conv[1][0].dilation[0] for i in (13, 14, 15, 17)] == [1, 1, 2, 2]  # OS16
    assert all(m.padding == (0, 0) for m in dilated.modules() if isinstance(m, torch.nn.Conv2d))
    assert build_model(num_classes=3).backbone.features[0][0].padding == (1, 1)  # the default is torchvision's


def test_align_corners_reaches_every_resize_of_the_head(monkeypatch):
    seen = []
    real = F.interpolate

    def recording(*args, **kwargs):
        seen.append(kwargs.get("align_corners"))
        return real(*args, **kwargs)

    for module in ("deeplab.model.aspp", "deeplab.model.decoder", "deeplab.model.deeplabv3plus"):
        monkeypatch.setattr(f"{module}.F.interpolate", recording)
    for align in (False, True):
        seen.clear()
        with torch.no_grad():
            build_model(num_classes=3, align_corners=align, separable=True,
                        backbone={"name": "mobilenet_v2", "width_mult": 0.5}).eval()(torch.randn(1, 3, 64, 64))
        assert seen == [align] * 3  # image pooling, decoder upsampling, logits to the input size


@pytest.mark.parametrize("convs, align, padding", [(1, False, "input"), (1, True, "conv"), (2, True, "conv"),
                                                   (2, False, "input")])
def test_the_inference_form_matches_the_plain_model_for_each_option(convs, align, padding):
    model = randomised(build_model(num_classes=5, decoder_convs=convs, align_corners=align,
                                    backbone={"name": "mobilenet_v2", "width_mult": 0.5, "padding": padding}))
    fast = prepare_for_inference(model)
    assert fast.decoder.fast_convs and len(fast.decoder.fuse) == convs
    x = torch.randn(2, 3, 97, 129)
    with torch.inference_mode():
        plain, quick = model(x), fast(x.contiguous(memory_format=torch.channels_last))
    assert (plain - quick).abs().max() <= 1e-4 * max(1.0, plain.abs().max().item())


def test_configs_without_the_new_keys_build_the_model_they_always_built():
    old = {"num_classes": 3, "backbone": {"name": "mobilenet_v2", "width_mult": 1.0, "expand_ratio": 6},
           "output_stride": 16, "separable": False}
    model = rebuild_model(old)
    assert len(model.decoder.fuse) == 2 and not model.align_corners and not model.decoder.align_corners
    assert model.backbone.padding == "conv"
    assert list(model.state_dict()) == list(build_model(num_classes=3).state_dict())
    assert deeplabv3plus_module.ADDED_DEFAULTS == {"decoder_convs": 2, "align_corners": False}


@pytest.mark.parametrize("override, message", [
    ("model.decoder_convs=3", "model.decoder_convs=3: must be 1 or 2"),
    ("model.backbone.padding=same", "model.backbone.padding='same': must be one of conv, input"),
    ("model.align_corners=maybe", "model.align_corners='maybe': must be true or false"),
])
def test_the_new_model_keys_are_checked_like_the_others(override, message):
    config = OmegaConf.to_container(compose("train", [override]), resolve=True)
    with pytest.raises(ConfigError) as info:
        validate_config(config)
    assert one_sentence(info).startswith(message)
    for ok in ("model.decoder_convs=1", "model.backbone.padding=input", "model.align_corners=true"):
        validate_config(OmegaConf.to_container(compose("train", [ok]), resolve=True))
