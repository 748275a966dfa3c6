"""Converting the peer repositories' checkpoints (VainF/DeepLabV3Plus-Pytorch, bubbliiiing/deeplabv3-plus-pytorch).

The peer-format state dicts are built here from our own model: their key names, shapes and conventions are facts of
the peers' code (written out below as the inverse of the conversion, and anchored by key counts and spot shapes read
off the peers' own models), so every tensor's place can be checked. That the converted models give the peers' own
logits was checked against the peers' code itself, outside the project (README, Trained models).
"""

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from PIL import Image

from conftest import compose, make_voc_tree, one_sentence, tiny_train_overrides
from deeplab.cli import convert as convert_cli
from deeplab.cli import evaluate as evaluate_cli
from deeplab.cli import export as export_cli
from deeplab.convert import ConvertError, convert_checkpoint, convert_state_dict
from deeplab.engine.checkpoint import load_checkpoint
from deeplab.engine.run_config import validate_config
from deeplab.engine.trainer import train
from deeplab.errors import ConfigError
from deeplab.export import verify_onnx
from deeplab.inference import Predictor, model_from_checkpoint, prepare_for_inference
from deeplab.model import build_model, rebuild_model
from deeplab.model import deeplabv3plus as deeplabv3plus_module

VOC = {"format": "voc", "root": "datasets/VOCdevkit/VOC2012", "train_split": "train", "val_split": "val",
       "num_classes": 21, "ignore_index": 255, "class_names": [f"c{i}" for i in range(21)],
       "palette": [[i, i, i] for i in range(21)], "ignore_colour": None, "label_map": None,
       "allow_ignore_only_masks": False, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
VAINF_MODEL = {"backbone": {"name": "mobilenet_v2", "padding": "input"}, "decoder_convs": 1}
BUBBLIIIING_MODEL = {"align_corners": True}


def _randomised(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights and BatchNorm statistics (as after training), so folding and reordering are really checked."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                tensor.fill_(777)
            elif name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=g) + 0.5)
            elif tensor.is_floating_point():
                tensor.copy_(torch.randn(tensor.shape, generator=g) * (0.1 if tensor.dim() < 4 else 0.05))
    return model.eval()


# --- the peers' formats, written out as the inverse of the conversion -----------------------------------------------

def vainf_state(ours: dict) -> dict:
    """VainF's `model_state` for our weights (a decoder_convs=1, padding=input model): its MobileNetV2 is torchvision's
    features split into low_level_features.0-3 and high_level_features.4-17 (a sliced Sequential keeps its indices),
    its head `classifier.*`, and its decoder conv reads [low-level 48, ASPP 256] where ours reads [ASPP, low-level]."""
    head = {"aspp.branches.": "classifier.aspp.convs.", "aspp.project.": "classifier.aspp.project.",
            "decoder.reduce.": "classifier.project.", "decoder.fuse.0.0.": "classifier.classifier.0.",
            "decoder.fuse.0.1.": "classifier.classifier.1.", "decoder.classifier.": "classifier.classifier.3."}
    state = {}
    for key, tensor in ours.items():
        if key.startswith("backbone.features."):
            index = int(key.split(".")[2])
            part = "low_level_features" if index < 4 else "high_level_features"
            theirs = key.replace("backbone.features.", f"backbone.{part}.", 1)
        else:
            prefix = next(p for p in head if key.startswith(p))
            theirs = head[prefix] + key[len(prefix):]
        if key == "decoder.fuse.0.0.weight":
            tensor = torch.cat([tensor[:, 256:], tensor[:, :256]], dim=1)
        state[theirs] = tensor.clone()
    return state


BUBBLIIIING_BLOCK = {"conv.0.0.": "conv.0.", "conv.0.1.": "conv.1.", "conv.1.0.": "conv.3.", "conv.1.1.": "conv.4.",
                     "conv.2.": "conv.6.", "conv.3.": "conv.7."}
BUBBLIIIING_FIRST_BLOCK = {"conv.0.0.": "conv.0.", "conv.0.1.": "conv.1.", "conv.1.": "conv.3.", "conv.2.": "conv.4."}
BUBBLIIIING_HEAD = {"aspp.branches.0.": "aspp.branch1.", "aspp.branches.1.": "aspp.branch2.",
                    "aspp.branches.2.": "aspp.branch3.", "aspp.branches.3.": "aspp.branch4.",
                    "aspp.branches.4.1.": "aspp.branch5_conv.", "aspp.branches.4.2.": "aspp.branch5_bn.",
                    "aspp.project.": "aspp.conv_cat.", "decoder.reduce.": "shortcut_conv.",
                    "decoder.fuse.0.": "cat_conv.", "decoder.fuse.1.0.": "cat_conv.4.",
                    "decoder.fuse.1.1.": "cat_conv.5.", "decoder.classifier.": "cls_conv."}
# its head convs carry a bias before their BN: (its conv, the BN after it)
BUBBLIIIING_BIASED = [("aspp.branch1.0", "aspp.branch1.1"), ("aspp.branch2.0", "aspp.branch2.1"),
                      ("aspp.branch3.0", "aspp.branch3.1"), ("aspp.branch4.0", "aspp.branch4.1"),
                      ("aspp.branch5_conv", "aspp.branch5_bn"), ("aspp.conv_cat.0", "aspp.conv_cat.1"),
                      ("shortcut_conv.0", "shortcut_conv.1"), ("cat_conv.0", "cat_conv.1"),
                      ("cat_conv.4", "cat_conv.5")]


def bubbliiiing_state(ours: dict, seed: int = 1) -> dict:
    """bubbliiiing's state dict for our weights (an align_corners=True model): its MobileNetV2 numbers each block's
    layers in one Sequential, and its head convs have biases; each bias b is drawn at random and its BN's running mean
    raised by b, so the peer model computes what ours does."""
    state = {}
    for key, tensor in ours.items():
        if key.startswith("backbone.features."):
            index, rest = int(key.split(".")[2]), key.split(".", 3)[3]
            table = {} if index == 0 else BUBBLIIIING_FIRST_BLOCK if index == 1 else BUBBLIIIING_BLOCK
            prefix = next((p for p in table if rest.startswith(p)), "")
            theirs = f"backbone.features.{index}.{table.get(prefix, '')}{rest[len(prefix):]}"
        else:
            prefix = max((p for p in BUBBLIIIING_HEAD if key.startswith(p)), key=len)
            theirs = BUBBLIIIING_HEAD[prefix] + key[len(prefix):]  # decoder.fuse.0.0/1 are cat_conv.0/1
        state[theirs] = tensor.clone()
    g = torch.Generator().manual_seed(seed)
    for conv, bn in BUBBLIIIING_BIASED:
        bias = torch.randn(state[f"{conv}.weight"].shape[0], generator=g)
        state[f"{conv}.bias"] = bias
        state[f"{bn}.running_mean"] = state[f"{bn}.running_mean"] + bias
    return dict(sorted(state.items(), key=lambda item: _peer_order(item[0])))


def _peer_order(key: str):
    """The peer's own key order: backbone, aspp, shortcut, cat, cls (as its modules are registered)."""
    order = ("backbone.", "aspp.", "shortcut_conv.", "cat_conv.", "cls_conv.")
    return next(i for i, p in enumerate(order) if key.startswith(p)), key


@pytest.fixture(scope="module")
def vainf_model():
    return _randomised(build_model(num_classes=21, **VAINF_MODEL))


@pytest.fixture(scope="module")
def bubbliiiing_model():
    return _randomised(build_model(num_classes=21, **BUBBLIIIING_MODEL), seed=3)


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
    backbone = _randomised(build_model(num_classes=3, **VAINF_MODEL)).backbone
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
    model = _randomised(build_model(num_classes=5, decoder_convs=convs, align_corners=align,
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


# --- files and refusals ---------------------------------------------------------------------------------------------

def _vainf_file(path, model, **extra):
    torch.save({"cur_itrs": 30000, "model_state": vainf_state(model.state_dict()),
                "optimizer_state": {"state": {}, "param_groups": [{"lr": 0.01, "params": [0, 1]}]},
                "scheduler_state": {"last_epoch": 30000, "base_lrs": [0.01]}, "best_score": np.float64(0.711),
                **extra}, path)
    return path


def test_vainf_file_with_its_numpy_best_score_converts_to_a_self_describing_checkpoint(vainf_model, tmp_path):
    source = _vainf_file(tmp_path / "best_deeplabv3plus_mobilenet_voc_os16.pth", vainf_model)
    done = convert_checkpoint(source, source="vainf", dataset=VOC, output=tmp_path / "out.pt")
    state = load_checkpoint(done.path)
    assert state["config"]["dataset"]["mean"] == [0.485, 0.456, 0.406]  # VainF's normalisation, not the config's
    assert state["config"]["dataset"]["class_names"] == VOC["class_names"]
    assert state["converted_from"]["repository"] == "VainF/DeepLabV3Plus-Pytorch"
    assert state["converted_from"]["best_score"] == pytest.approx(0.711)
    assert state["converted_from"]["cur_itrs"] == 30000
    model, _ = model_from_checkpoint(done.path)
    x = torch.randn(1, 3, 65, 66)
    with torch.no_grad():
        assert torch.allclose(model(x), vainf_model(x), atol=1e-5)


def test_numpy_1_pickles_of_the_best_score_load_too(vainf_model, tmp_path):
    """numpy 1.x (what VainF's checkpoints were written with) names the scalar numpy.core.multiarray.scalar."""
    buffer = io.BytesIO()
    torch.save({"model_state": vainf_state(vainf_model.state_dict()), "best_score": np.float64(0.7)}, buffer,
               _use_new_zipfile_serialization=False)
    raw = buffer.getvalue()
    assert b"numpy._core.multiarray" in raw or b"numpy.core.multiarray" in raw
    (tmp_path / "old.pth").write_bytes(raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    done = convert_checkpoint(tmp_path / "old.pth", source="vainf", dataset=VOC, output=tmp_path / "old.pt")
    assert load_checkpoint(done.path)["converted_from"]["best_score"] == pytest.approx(0.7)


class _Code:
    """Stands for a pickled object whose class would have to be imported (and could run code) to load."""


def _refused(tmp_path, source_file, source, *, dataset=VOC, names=(), output=None):
    output = output or tmp_path / "converted.pt"
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(ConvertError) as info:
        convert_checkpoint(source_file, source=source, dataset=dataset, output=output)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written, not even a temp file
    return one_sentence(info, *names)


@pytest.fixture
def vainf_peer(vainf_model):
    return vainf_state(vainf_model.state_dict())


@pytest.fixture
def bubbliiiing_peer(bubbliiiing_model):
    return bubbliiiing_state(bubbliiiing_model.state_dict())


def test_refusals_are_one_sentence_and_write_nothing(tmp_path, vainf_peer, bubbliiiing_peer):
    text = tmp_path / "page.pth"
    text.write_text("<html><body>Dropbox - sign in</body></html>")
    assert "a text file" in _refused(tmp_path, text, "vainf", names=[text])

    code = tmp_path / "code.pth"
    torch.save({"model_state": vainf_peer, "trainer": _Code()}, code)
    message = _refused(tmp_path, code, "vainf", names=[code, "weights_only=True", "_Code"])
    assert "never runs code" in message

    missing = tmp_path / "missing.pth"
    torch.save({"model_state": {k: v for k, v in vainf_peer.items() if k != "classifier.aspp.convs.2.1.weight"}},
               missing)
    assert "has no classifier.aspp.convs.2.1.weight" in _refused(tmp_path, missing, "vainf", names=[missing])

    extra = tmp_path / "extra.pth"
    torch.save({**bubbliiiing_peer, "aspp.branch6.0.weight": torch.zeros(1)}, extra)
    assert _refused(tmp_path, extra, "bubbliiiing").startswith(f"{extra}: aspp.branch6.0.weight: no tensor of the "
                                                               "bubbliiiing DeepLabV3+ MobileNetV2 model")
    unfolded = tmp_path / "no_bias.pth"
    torch.save({k: v for k, v in bubbliiiing_peer.items() if k != "cat_conv.4.bias"}, unfolded)
    assert "has no cat_conv.4.bias" in _refused(tmp_path, unfolded, "bubbliiiing")

    shape = tmp_path / "shape.pth"
    torch.save({"model_state": {**vainf_peer, "classifier.aspp.project.0.weight": torch.zeros(256, 1024, 1, 1)}},
               shape)
    assert "classifier.aspp.project.0.weight has shape (256, 1024, 1, 1) where the VainF DeepLabV3+ MobileNetV2 " \
           "model has (256, 1280, 1, 1)" in _refused(tmp_path, shape, "vainf")

    vainf = tmp_path / "vainf.pth"
    torch.save({"model_state": vainf_peer, "best_score": np.float64(0.7)}, vainf)
    assert "is a VainF/DeepLabV3Plus-Pytorch checkpoint, not a bubbliiiing one: convert it with from=vainf" in \
        _refused(tmp_path, vainf, "bubbliiiing")
    bubbliiiing = tmp_path / "bubbliiiing.pth"
    torch.save(bubbliiiing_peer, bubbliiiing)
    assert "is a bubbliiiing/deeplabv3-plus-pytorch checkpoint, not a vainf one: convert it with from=bubbliiiing" \
           in _refused(tmp_path, bubbliiiing, "vainf")
    assert _refused(tmp_path, vainf, "tensorflow").startswith("from=tensorflow: not a format deeplab converts")

    cityscapes = {**VOC, "num_classes": 19, "class_names": VOC["class_names"][:19]}
    assert _refused(tmp_path, vainf, "vainf", dataset=cityscapes) == (
        f"{vainf}: its model gives 21 classes but the dataset (voc) has dataset.num_classes=19; choose dataset=voc")

    assert "is the source checkpoint, which converting never replaces" in _refused(tmp_path, vainf, "vainf",
                                                                                   output=vainf)
    taken = tmp_path / "taken.pt"
    taken.write_bytes(b"")
    assert f"{taken} exists; choose another output=FILE or set overwrite=true" in _refused(tmp_path, vainf, "vainf",
                                                                                         output=taken)


def test_vainf_checkpoints_that_have_no_counterpart_here_are_named(tmp_path, vainf_peer):
    deeplabv3 = {k.replace("classifier.aspp.", "classifier.classifier.0."): v for k, v in vainf_peer.items()
                 if not k.startswith(("classifier.project", "classifier.classifier."))}
    deeplabv3["classifier.classifier.4.weight"] = torch.zeros(21, 256, 1, 1)
    torch.save({"model_state": deeplabv3}, tmp_path / "v3.pth")
    with pytest.raises(ConvertError) as info:
        convert_checkpoint(tmp_path / "v3.pth", source="vainf", dataset=VOC, output=tmp_path / "v3.pt")
    assert "is a VainF DeepLabV3 checkpoint (no decoder" in one_sentence(info)
    separable = {k.replace("classifier.classifier.0.weight", "classifier.classifier.0.body.0.weight"): v
                 for k, v in vainf_peer.items()}
    torch.save({"model_state": separable}, tmp_path / "sep.pth")
    with pytest.raises(ConvertError) as info:
        convert_checkpoint(tmp_path / "sep.pth", source="vainf", dataset=VOC, output=tmp_path / "sep.pt")
    assert "was trained with --separable_conv" in one_sentence(info)
    assert not list(tmp_path.glob("*.pt"))


# --- the command, and what takes a converted checkpoint -------------------------------------------------------------

@pytest.fixture(scope="module")
def converted(vainf_model, bubbliiiing_model, tmp_path_factory):
    """Both formats converted with the command, and a tiny VOC tree to evaluate them on."""
    tmp = tmp_path_factory.mktemp("converted")
    vainf = _vainf_file(tmp / "best_deeplabv3plus_mobilenet_voc_os16.pth", vainf_model)
    bubbliiiing = tmp / "deeplab_mobilenetv2.pth"
    torch.save(bubbliiiing_state(bubbliiiing_model.state_dict()), bubbliiiing)
    paths = {}
    for name, source in (("vainf", vainf), ("bubbliiiing", bubbliiiing)):
        paths[name] = convert_cli.run(compose("convert", [f"source={source}", f"from={name}", "dataset=voc",
                                                          f"output={tmp / name}.pt"]))
    return make_voc_tree(tmp / "VOC", n_train=4, n_val=2, size=(48, 64)), paths


def test_the_command_writes_a_checkpoint_with_the_dataset_config(converted):
    _, paths = converted
    for name, mean in (("vainf", [0.485, 0.456, 0.406]), ("bubbliiiing", [0.0, 0.0, 0.0])):
        config = load_checkpoint(paths[name])["config"]
        assert config["dataset"]["class_names"][15] == "person" and config["dataset"]["palette"][1] == [128, 0, 0]
        assert config["dataset"]["mean"] == mean and config["model"]["num_classes"] == 21


def test_the_command_refuses_in_one_line(tmp_path, entry_point, capsys):
    code = entry_point(convert_cli.main, f"source={tmp_path / 'nowhere.pth'}", "from=vainf")
    out = "".join(capsys.readouterr())
    assert code == 1 and "nowhere.pth: no such checkpoint file" in out and "Traceback" not in out
    code = entry_point(convert_cli.main, f"source={tmp_path / 'nowhere.pth'}", "from=caffe")
    out = "".join(capsys.readouterr())
    assert code == 1 and "from=caffe: not a format deeplab converts; use from=vainf" in out
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("name", ["vainf", "bubbliiiing"])
def test_converted_checkpoints_predict_with_the_peers_normalisation(converted, name):
    tree, paths = converted
    predictor = Predictor.from_checkpoint(paths[name], fast=False, precision="fp32")
    image = np.array(Image.open(next((tree / "JPEGImages").glob("*.jpg"))).convert("RGB"))
    labels, probs = predictor.predict(image, return_probs=True)
    assert labels.shape == image.shape[:2] and probs.shape == (21, *image.shape[:2])
    data = load_checkpoint(paths[name])["config"]["dataset"]
    x = torch.from_numpy(image).permute(2, 0, 1).float()[None] / 255  # VainF: ImageNet mean/std; bubbliiiing: / 255
    x = (x - torch.tensor(data["mean"]).view(1, 3, 1, 1)) / torch.tensor(data["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = predictor.model(x).softmax(1)[0].numpy()
    assert np.abs(probs - expected).max() < 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vainf", "bubbliiiing"])
def test_converted_checkpoints_evaluate_at_os16_and_os8_and_predict_fast(converted, name, tmp_path):
    tree, paths = converted
    for stride in (None, 8):
        overrides = [f"checkpoint={paths[name]}", f"data_root={tree}", "num_workers=0", "device=cpu",
                     "precision=fp32"] + ([f"output_stride={stride}"] if stride else [])
        metrics = evaluate_cli.run(compose("evaluate", overrides), tmp_path / f"eval{stride}")
        assert metrics["images"] == 2 and 0 <= metrics["mIoU"] <= 1 and len(metrics["class_names"]) == 21
    model, _ = model_from_checkpoint(paths[name], output_stride=8)
    assert model.output_stride == 8 and model.aspp.rates == (12, 24, 36)
    image = np.array(Image.open(next((tree / "JPEGImages").glob("*.jpg"))).convert("RGB"))
    _, fast = Predictor.from_checkpoint(paths[name], precision="fp32").predict(image, return_probs=True)
    _, plain = Predictor.from_checkpoint(paths[name], fast=False, precision="fp32").predict(image, return_probs=True)
    assert np.abs(fast - plain).max() < 1e-4


def test_resuming_a_converted_checkpoint_is_refused_pointing_to_init_from(converted, tmp_path):
    tree, paths = converted
    overrides = ["dataset=voc", *tiny_train_overrides(tree, tmp_path / "outputs", 2), f"resume={paths['vainf']}"]
    with pytest.raises(ConfigError) as info:
        train(compose("train", overrides), tmp_path / "stub", overrides=overrides)
    assert "converted from VainF/DeepLabV3Plus-Pytorch" in one_sentence(info, f"init_from={paths['vainf']}")


@pytest.mark.slow
def test_converted_checkpoints_export_to_onnx(converted, tmp_path):
    _, paths = converted
    for name in ("vainf", "bubbliiiing"):
        onnx = export_cli.run(compose("export", [f"checkpoint={paths[name]}", "format=onnx",
                                                 f"output={tmp_path / name}.onnx"]))
        model, _ = model_from_checkpoint(paths[name])
        assert verify_onnx(onnx, model, sizes=((1, 65, 97),)) < 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("name, options", [
    ("vainf", ["model.decoder_convs=1", "model.backbone.padding=input"]),
    ("bubbliiiing", ["model.align_corners=true", "dataset.mean=[0,0,0]", "dataset.std=[1,1,1]"]),
])
def test_converted_checkpoints_start_a_training_run(converted, name, options, tmp_path):
    tree, paths = converted
    overrides = ["dataset=voc", *tiny_train_overrides(tree, tmp_path / "outputs", 2), "model.separable=false",
                 f"init_from={paths[name]}", *options]
    train(compose("train", overrides), tmp_path / "run")
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    start = load_checkpoint(paths[name])["model"]
    assert state["iteration"] == 2 and set(state["model"]) == set(start)
    moved = (state["model"]["aspp.project.0.weight"] - start["aspp.project.0.weight"]).abs().max()
    assert 0 < moved < 0.1  # two small steps from the converted weights, not from scratch
