"""The backbone contract (deeplab.model.contract) holds for every entry of BACKBONES, ResNet dilates exactly as
torchvision's replace_stride_with_dilation does, the model/backbone config group works, checkpoints of the
MobileNetV2-only layout still load, and a ResNet-101 model goes through training, evaluation, prediction and export."""

import urllib.error

import numpy as np
import pytest
import torch
import torchvision
from omegaconf import OmegaConf
from PIL import Image
from torch import nn
from torchvision.models._utils import IntermediateLayerGetter

from conftest import REPO, TINY_MODEL, compose, count_batchnorms, make_voc_tree, tiny_train_overrides
from deeplab.cli import evaluate as evaluate_cli
from deeplab.cli import export as export_cli
from deeplab.engine.checkpoint import load_checkpoint, save_checkpoint
from deeplab.engine.run_config import validate_config
from deeplab.engine.trainer import train
from deeplab.errors import ConfigError, UserError
from deeplab.export import verify_onnx
from deeplab.inference import Predictor, model_from_checkpoint
from deeplab.model import BACKBONES, build_model
from deeplab.model.backbone import imagenet_cache_path, load_backbone_weights
from deeplab.model.fuse import fold_batchnorm
from deeplab.model.summary import count_parameters

# where torchvision's own model of each family has our "low" and "out" features
TAPS = {"mobilenet_v2": (lambda net: net.features, {"3": "low", "17": "out"}),
        "resnet50": (lambda net: net, {"layer1": "low", "layer4": "out"}),
        "resnet101": (lambda net: net, {"layer1": "low", "layer4": "out"})}
# a state dict of another family for each backbone: the ResNets get each other's (ResNet-50's keys are a subset of
# ResNet-101's, with the same shapes: loading must still refuse it)
WRONG_FAMILY = {"mobilenet_v2": "resnet50", "resnet50": "resnet101", "resnet101": "resnet50"}
# replace_stride_with_dilation for layer2-4: torchvision's reference for each output stride
TORCHVISION_DILATION = {32: [False, False, False], 16: [False, False, True], 8: [False, True, True]}


def tiered(names) -> list:
    """The backbones as test parameters, ResNet-101's in the slow tier: it is ResNet-50's code with a deeper layer3,
    and twice its build time."""
    return [pytest.param(name, marks=pytest.mark.slow) if name == "resnet101" else name for name in names]


def _randomised(net: nn.Module) -> nn.Module:
    """Non-trivial BN statistics, so that eval-mode outputs really check the loaded running stats."""
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return net.eval()


@pytest.fixture(scope="module")
def torchvision_files(tmp_path_factory):
    """{name: (torchvision's randomly initialised model of that family, the path of its saved state dict)}."""
    folder = tmp_path_factory.mktemp("torchvision")
    torch.manual_seed(0)
    files = {}
    for name in BACKBONES:
        net = _randomised(getattr(torchvision.models, name)(weights=None))
        torch.save(net.state_dict(), folder / f"{name}.pth")
        files[name] = (net, folder / f"{name}.pth")
    return files


def _geometry(module: nn.Module) -> dict:
    """name -> (stride, dilation, padding) of every conv and pooling layer."""
    return {n: (m.stride, m.dilation, m.padding) for n, m in module.named_modules()
            if isinstance(m, (nn.Conv2d, nn.MaxPool2d))}


@pytest.mark.parametrize("name", tiered(BACKBONES))
def test_declared_features_match_the_forward_pass_at_every_output_stride(name):
    backbone = BACKBONES[name](output_stride=32).eval()
    x = torch.randn(1, 3, 64, 96)
    for output_stride in (8, 16, 32):
        backbone.set_output_stride(output_stride)
        with torch.no_grad():
            features = backbone(x)
        assert backbone.output_stride == output_stride
        assert [(f.name, f.stride) for f in backbone.feature_info] == [("low", 4), ("out", output_stride)]
        assert set(features) == {"low", "out"}
        for info in backbone.feature_info:
            assert features[info.name].shape == (1, info.channels, 64 // info.stride, 96 // info.stride), info
    with pytest.raises(ConfigError, match=r"^output_stride=4: must be one of"):
        backbone.set_output_stride(4)


@pytest.mark.parametrize("name", tiered(BACKBONES))
def test_set_output_stride_changes_no_weight_and_equals_a_fresh_build(name):
    backbone = BACKBONES[name](output_stride=16)
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    for output_stride in (8, 32, 16):
        backbone.set_output_stride(output_stride)
        after = backbone.state_dict()
        assert after.keys() == before.keys() and all(torch.equal(after[k], v) for k, v in before.items())
        assert _geometry(backbone) == _geometry(BACKBONES[name](output_stride=output_stride))


@pytest.mark.parametrize("output_stride", [8, 16, 32])
@pytest.mark.parametrize("name", tiered(["resnet50", "resnet101"]))
def test_resnet_dilation_is_torchvisions_replace_stride_with_dilation(name, output_stride):
    reference = getattr(torchvision.models, name)(replace_stride_with_dilation=TORCHVISION_DILATION[output_stride])
    expected = _geometry(reference)
    assert _geometry(BACKBONES[name](output_stride=output_stride)) == expected
    switched = BACKBONES[name](output_stride=8 if output_stride != 8 else 32)
    switched.set_output_stride(output_stride)  # changeable after construction, to the same geometry
    assert _geometry(switched) == expected


@pytest.mark.parametrize("name", tiered(BACKBONES))
def test_torchvision_state_dict_loads_from_a_local_file_and_gives_torchvisions_features(name, torchvision_files):
    net, path = torchvision_files[name]
    model = build_model(num_classes=3, backbone=name, output_stride=32, backbone_weights=str(path)).eval()
    reference = net.state_dict()
    own = model.backbone.state_dict()
    assert own and all(torch.equal(tensor, reference[key]) for key, tensor in own.items())
    assert set(reference) - set(own) <= {k for k in reference if k.startswith(BACKBONES[name].ignored_prefixes)}
    body, taps = TAPS[name]
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected, features = IntermediateLayerGetter(body(net), taps)(x), model.backbone(x)
    assert torch.equal(features["low"], expected["low"]) and torch.equal(features["out"], expected["out"])


@pytest.mark.parametrize("name", tiered(["resnet50", "resnet101"]))
def test_dilated_resnet_computes_what_torchvisions_dilated_resnet_does(name, torchvision_files):
    _, path = torchvision_files[name]
    reference = getattr(torchvision.models, name)(replace_stride_with_dilation=TORCHVISION_DILATION[8])
    reference.load_state_dict(torch.load(path, weights_only=True))
    backbone = BACKBONES[name](output_stride=8)
    load_backbone_weights(backbone, path)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = IntermediateLayerGetter(reference.eval(), {"layer4": "out"})(x)["out"]
        assert torch.equal(backbone.eval()(x)["out"], expected)


@pytest.mark.parametrize("name", tiered(BACKBONES))
def test_a_state_dict_of_another_family_is_one_sentence_naming_it(name, torchvision_files):
    other = WRONG_FAMILY[name]
    _, path = torchvision_files[other]
    with pytest.raises(ConfigError) as info:
        build_model(num_classes=3, backbone=name, backbone_weights=str(path))
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"model.backbone_weights: {path} is not a torchvision {BACKBONES[name].family} "
                              f"state dict: ")
    assert message.endswith(f"it holds torchvision {BACKBONES[other].family} weights: use them with "
                            f"model/backbone={other}")


def test_a_deeplab_models_weights_as_backbone_weights_point_to_init_from(tmp_path):
    path = tmp_path / "deeplab_weights.pth"
    torch.save(build_model(num_classes=3, backbone="resnet50").state_dict(), path)
    with pytest.raises(ConfigError, match=r"is not a torchvision ResNet-50 state dict: .*expected keys like "
                                          r"'conv1.weight'; it holds a deeplab model's weights: start from it with "
                                          r"init_from=FILE instead$"):
        build_model(num_classes=3, backbone="resnet50", backbone_weights=str(path))


def test_resnet_imagenet_offline_names_the_cache_file_and_a_cached_file_is_used(tmp_path, monkeypatch,
                                                                                torchvision_files):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    cached = imagenet_cache_path(backbone="resnet101")
    assert cached == tmp_path / "torch" / "hub" / "checkpoints" / "resnet101-63fe2227.pth"
    with pytest.raises(ConfigError, match=r"^model.backbone_weights=imagenet: could not download the ImageNet "
                                          r"ResNet-101 weights from https://download.pytorch.org/models/"
                                          r"resnet101-63fe2227.pth \(.*no network.*\); offline, copy that file to "
                                          + str(cached) + ".*model.backbone_weights=null"):
        build_model(num_classes=3, backbone="resnet101", backbone_weights="imagenet")
    net, path = torchvision_files["resnet50"]
    cached = imagenet_cache_path(backbone="resnet50")
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.symlink_to(path)
    model = build_model(num_classes=3, backbone="resnet50", backbone_weights="imagenet")
    assert torch.equal(model.backbone.layer3[2].conv2.weight, net.layer3[2].conv2.weight)


@pytest.mark.parametrize("name,weights", [("resnet50", torchvision.models.ResNet50_Weights),
                                          ("resnet101", torchvision.models.ResNet101_Weights)])
def test_resnet_parameter_counts_are_torchvisions_without_fc(name, weights):
    backbone = BACKBONES[name]()
    fc = 2048 * 1000 + 1000
    assert count_parameters(backbone) + fc == weights.IMAGENET1K_V1.meta["num_params"]  # 25,557,032 / 44,549,160
    assert count_parameters(backbone) == {"resnet50": 23_508_032, "resnet101": 42_500_160}[name]


def test_deeplabv3plus_resnet101_size_and_its_48_channel_low_level_projection():
    model = build_model(num_classes=21, backbone="resnet101")
    assert model.decoder.reduce[0].in_channels == 256 and model.decoder.reduce[0].out_channels == 48
    assert model.aspp.branches[0][0].in_channels == 2048
    # 42.5M backbone + 15.5M dense ASPP on 2048 channels + 1.3M decoder with the paper's two 3x3 convs
    assert count_parameters(model) == 59_344_309


@pytest.mark.parametrize("name", tiered(["resnet50", "resnet101"]))
def test_folding_batchnorm_covers_the_resnet_blocks(name):
    torch.manual_seed(0)
    model = build_model(num_classes=4, backbone=name, output_stride=8)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    model.eval()
    folded = fold_batchnorm(model)
    assert count_batchnorms(folded) == 0 and count_batchnorms(model) > 0
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        # random ResNet weights give logits in the hundreds: fp32 rounding relative to their size
        assert (folded(x) - expected).abs().max() < 1e-5 * expected.abs().max()
    folded.set_output_stride(16)  # the fused convs keep their names: the output stride still changes
    assert folded.backbone.layer3[0].conv2.stride == (2, 2) and folded.backbone.layer4[1].conv2.dilation == (2, 2)


# --- configs and checkpoints ---------------------------------------------------------------------------------------

def test_resnet101_experiment_composes_to_the_paper_recipe(tmp_path):
    config = OmegaConf.to_container(compose("train", ["experiment=voc_resnet101"]), resolve=True)
    validate_config(config)
    assert config["model"]["backbone"] == {"name": "resnet101"} and config["model"]["output_stride"] == 16
    assert config["model"]["backbone_weights"] == "imagenet" and config["dataset"]["train_split"] == "train_aug"
    assert config["augment"]["crop_size"] == [513, 513] and config["trainer"]["batch_size"] == 16
    assert config["trainer"]["iterations"] == 30000 and config["optim"]["lr"] == 0.01
    assert config["optim"]["name"] == "sgd" and config["optim"]["backbone_lr_mult"] == 0.1
    text = (REPO / "configs" / "experiment" / "voc_resnet101.yaml").read_text()
    assert "TARGET: >= 78.3 mIoU" in text and "78.85" in text
    switched = OmegaConf.to_container(compose("train", ["experiment=voc_resnet101", "model/backbone=resnet50"]))
    assert switched["model"]["backbone"] == {"name": "resnet50"}  # the command line wins over the experiment


def test_backbone_group_switches_and_checks_its_own_keys():
    for name in BACKBONES:
        config = OmegaConf.to_container(compose("train", ["dataset=voc", f"model/backbone={name}"]), resolve=True)
        validate_config(config)
        assert config["model"]["backbone"]["name"] == name
    demo = OmegaConf.to_container(compose("train", []), resolve=True)
    assert demo["model"]["backbone"]["width_mult"] == 0.5  # the demo recipe's MobileNetV2 width...
    demo = OmegaConf.to_container(compose("train", ["model/backbone=resnet50"]), resolve=True)
    assert demo["model"]["backbone"] == {"name": "resnet50"}  # ...is not given to another backbone
    assert demo["model"]["aspp_channels"] == 128 and demo["trainer"]["iterations"] == 1100  # the rest of it is
    validate_config(demo)
    leaked = OmegaConf.to_container(compose("train", ["model/backbone=resnet50", "+model.backbone.width_mult=0.5"]),
                                    resolve=True)
    with pytest.raises(ConfigError, match=r"^model.backbone.width_mult: the resnet50 backbone has no such option "
                                          r"\(it takes no options\); it is an option of mobilenet_v2, .*drop it with "
                                          r"~model.backbone.width_mult$"):
        validate_config(leaked)
    bench = OmegaConf.to_container(compose("bench", ["model/backbone=resnet101"]), resolve=True)
    assert bench["model"]["backbone"] == {"name": "resnet101"}


def _old_layout(model: dict) -> dict:
    """A model section as train.py saved it before backbones had names: MobileNetV2's options at the top."""
    backbone = model["backbone"]
    assert backbone["name"] == "mobilenet_v2"
    keys = ["num_classes", "output_stride", "separable", "backbone_weights"]
    rest = {k: v for k, v in model.items() if k not in [*keys, "backbone"]}
    return {**{k: model[k] for k in keys}, "width_mult": backbone["width_mult"],
            "expand_ratio": backbone["expand_ratio"], **rest}


@pytest.fixture
def old_and_new(trained, tmp_path):
    """The session's tiny trained checkpoint twice: as written today, and rewritten with the old model layout."""
    tree, last = trained
    state = torch.load(last, weights_only=True)
    state.pop("format_version")
    new, old = tmp_path / "new" / "last.pt", tmp_path / "old" / "last.pt"
    save_checkpoint(new, state)
    save_checkpoint(old, {**state, "config": {**state["config"], "model": _old_layout(state["config"]["model"])}})
    assert "backbone" not in load_checkpoint(old)["config"]["model"]
    return tree, old, new


def _logits(model: nn.Module) -> torch.Tensor:
    torch.manual_seed(1)
    with torch.no_grad():
        return model(torch.randn(2, 3, 48, 64))


def test_a_checkpoint_of_the_old_layout_loads_for_inference(old_and_new):
    tree, old, new = old_and_new
    old_model, old_config = model_from_checkpoint(old)
    new_model, new_config = model_from_checkpoint(new)
    assert old_config["model"] == new_config["model"] and old_config["model"]["backbone"]["name"] == "mobilenet_v2"
    assert torch.equal(_logits(old_model), _logits(new_model))
    image = np.asarray(Image.open(next((tree / "JPEGImages").glob("*.jpg"))).convert("RGB"))
    old_labels, old_probs = Predictor.from_checkpoint(old, precision="fp32").predict(image, return_probs=True)
    new_labels, new_probs = Predictor.from_checkpoint(new, precision="fp32").predict(image, return_probs=True)
    assert np.array_equal(old_labels, new_labels) and np.array_equal(old_probs, new_probs)


def test_a_checkpoint_of_the_old_layout_resumes_as_todays_does(old_and_new, tmp_path):
    tree, old, new = old_and_new
    switch = ["dataset=voc", *tiny_train_overrides(tree, tmp_path / "outputs", 3, model=()), f"resume={old}",
              "model/backbone=resnet50"]
    with pytest.raises(ConfigError, match=r"^model/backbone=resnet50: a resumed run keeps its model settings as "
                                          r"saved, and model.backbone.name would change the model"):
        train(compose("train", switch), tmp_path / "stub", overrides=switch)
    for path in (old, new):
        overrides = ["dataset=voc", *tiny_train_overrides(tree, tmp_path / "outputs", 3), f"resume={path}",
                     "model/backbone=mobilenet_v2"]  # the same backbone chosen again is not a change
        train(compose("train", overrides), tmp_path / "stub", overrides=overrides)
    resumed_old, resumed_new = load_checkpoint(old), load_checkpoint(new)
    assert resumed_old["iteration"] == resumed_new["iteration"] == 3
    assert resumed_old["config"]["model"] == resumed_new["config"]["model"]  # saved again in today's layout
    assert torch.equal(_logits(model_from_checkpoint(old)[0]), _logits(model_from_checkpoint(new)[0]))


def test_init_from_an_old_layout_checkpoint_compares_backbone_options(old_and_new, tmp_path):
    tree, old, _ = old_and_new
    overrides = ["dataset=voc", *tiny_train_overrides(tree, tmp_path / "outputs", 1, model=()), f"init_from={old}"]
    train(compose("train", [*overrides, *TINY_MODEL, "trainer.val_every=1"]), tmp_path / "fine")
    assert load_checkpoint(tmp_path / "fine" / "last.pt")["config"]["model"]["backbone"]["width_mult"] == 0.5
    with pytest.raises(UserError, match=r"^init_from=.*: the checkpoint has model.backbone.width_mult=0.5 but this "
                                        r"run has model.backbone.width_mult=1.0; set model.backbone.width_mult=0.5 "):
        train(compose("train", overrides), tmp_path / "full")
    with pytest.raises(UserError, match=r"the checkpoint has model.backbone.name=mobilenet_v2 but this run has "
                                        r"model.backbone.name=resnet50; set model/backbone=mobilenet_v2 "):
        train(compose("train", [*overrides, "model/backbone=resnet50"]), tmp_path / "resnet")


@pytest.mark.slow
def test_resnet101_trains_evaluates_predicts_and_exports_from_torchvision_weights(tmp_path, caplog):
    tree = make_voc_tree(tmp_path / "VOC", n_train=4, n_val=2, size=(48, 64))
    torch.manual_seed(0)
    net = _randomised(torchvision.models.resnet101(weights=None))
    weights = tmp_path / "resnet101.pth"
    torch.save(net.state_dict(), weights)
    overrides = ["dataset=voc", *tiny_train_overrides(tree, tmp_path / "outputs", 2, model=()), "model/backbone=resnet101",
                 f"model.backbone_weights={weights}"]
    with caplog.at_level("INFO"):
        train(compose("train", overrides), tmp_path / "run")
    assert f"backbone weights loaded from {weights}" in caplog.text
    last = tmp_path / "run" / "last.pt"
    state = load_checkpoint(last)
    assert state["config"]["model"]["backbone"] == {"name": "resnet101"} and state["iteration"] == 2
    start = net.state_dict()["layer3.20.conv2.weight"]  # two small SGD steps from torchvision's tensor
    assert 0 < (state["model"]["backbone.layer3.20.conv2.weight"] - start).abs().max() < 1e-2

    metrics = evaluate_cli.run(compose("evaluate", [f"checkpoint={last}", "device=cpu", "num_workers=0"]),
                               tmp_path / "eval")
    assert metrics["images"] == 2 and 0 <= metrics["mIoU"] <= 1

    predictor = Predictor.from_checkpoint(last, precision="fp32")
    for path in sorted((tree / "JPEGImages").glob("*.jpg")):
        image = np.asarray(Image.open(path).convert("RGB"))
        labels = predictor.predict(image)
        assert labels.shape == image.shape[:2] and labels.max() < 21

    onnx = export_cli.run(compose("export", [f"checkpoint={last}", "format=onnx", f"output={tmp_path / 'r101.onnx'}"]))
    model, _ = model_from_checkpoint(last)
    assert verify_onnx(onnx, model, sizes=((1, 64, 48),)) < 1e-3
