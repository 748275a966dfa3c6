"""Every config option and experiment composes, and builds what it describes."""

import re
import shutil

import pytest
import torch
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from conftest import REPO, compose, tiny_train_overrides
from deeplab.cli.train import main as train_main
from deeplab.data import DataError, build_dataset
from deeplab.data.transforms import train_transform
from deeplab.engine.optim import build_optimizer, build_scheduler
from deeplab.engine.run_config import validate_config
from deeplab.engine.trainer import TrainerSettings
from deeplab.errors import ConfigError
from deeplab.losses import CrossEntropyLoss, build_loss
from deeplab.model import build_model

GROUPS = ["dataset", "model", "model/backbone", "augment", "optim", "schedule", "trainer", "loss"]


def _options(group):
    return sorted(p.stem for p in (REPO / "configs" / group).glob("*.yaml"))


def _build_everything(cfg, tmp_path):
    c = OmegaConf.to_container(cfg, resolve=True)
    validate_config(c)  # the trainer's check before anything is read: every shipped option passes it
    settings = TrainerSettings(**c["trainer"])
    model = build_model(**{**c["model"], "backbone_weights": None})  # weights are tested in test_backbone
    assert model.num_classes == c["dataset"]["num_classes"] == len(c["dataset"]["class_names"])
    optimizer = build_optimizer(model, **c["optim"])
    build_scheduler(optimizer, total_iters=settings.iterations, **c["schedule"])
    weights = {k: [1.0] * c["dataset"]["num_classes"] for k in ("class_weights", "alpha")  # the trainer computes
               if isinstance(c["loss"].get(k), str)}  # a named weighting from the training split's masks
    build_loss(ignore_index=c["dataset"]["ignore_index"], **{**c["loss"], **weights})
    data = c["dataset"]
    train_transform(mean=data["mean"], std=data["std"], ignore_index=data["ignore_index"], **c["augment"])
    if data["format"] != "demo":  # every dataset key is accepted by its format: a missing root, not a TypeError
        with pytest.raises(DataError):
            build_dataset(split=data["train_split"], **{**data, "root": str(tmp_path / "absent")})
    return c


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in _options(g)])
def test_every_group_option_composes_and_builds(group, option, tmp_path):
    _build_everything(compose("train", [f"{group}={option}"]), tmp_path)


@pytest.mark.parametrize("experiment", _options("experiment"))
def test_every_experiment_composes_builds_and_names_its_target(experiment, tmp_path):
    c = _build_everything(compose("train", [f"experiment={experiment}"]), tmp_path)  # passes validate_config too
    header = (REPO / "configs" / "experiment" / f"{experiment}.yaml").read_text()
    assert c["dataset"]["format"] != "demo"
    assert c["model"]["backbone_weights"] == "imagenet" or "from scratch" in header.split("\n")[1]
    assert re.search(r"TARGET: >= \d+(\.\d+)? mIoU on \w+", header), \
        f"{experiment}.yaml must name the mIoU it targets (TARGET: >= <number> mIoU on <split>)"


def test_published_recipes_are_what_they_claim():
    voc = OmegaConf.to_container(compose("train", ["experiment=voc_os16"]), resolve=True)
    assert voc["dataset"]["train_split"] == "train_aug" and voc["dataset"]["mask_dir"] == "SegmentationClassAug"
    assert voc["dataset"]["val_split"] == "val" and voc["augment"]["crop_size"] == [513, 513]
    assert voc["optim"]["lr"] == 0.01 and voc["optim"]["weight_decay"] == 1e-4 and voc["model"]["output_stride"] == 16
    os8 = OmegaConf.to_container(compose("train", ["experiment=voc_os8"]), resolve=True)
    assert os8["model"]["output_stride"] == 8 and os8["dataset"]["train_split"] == "train_aug"
    city = OmegaConf.to_container(compose("train", ["experiment=cityscapes"]), resolve=True)
    assert city["dataset"]["format"] == "cityscapes" and city["augment"]["crop_size"] == [768, 768]
    assert city["optim"]["lr"] == 0.1 and city["dataset"]["num_classes"] == 19
    for c in (voc, os8, city):
        assert c["optim"]["name"] == "sgd" and c["optim"]["momentum"] == 0.9 and c["schedule"]["power"] == 0.9


def test_an_experiment_switches_groups_and_the_command_line_still_switches_them_back():
    voc = OmegaConf.to_container(compose("train", ["optim=adamw", "schedule=cosine", "experiment=voc_os16"]),
                                 resolve=True)  # the experiment's override /optim: sgd yields to the command line
    validate_config(voc)
    assert voc["optim"] == {"name": "adamw", "lr": 0.01, "betas": [0.9, 0.999], "weight_decay": 0.01,
                            "backbone_lr_mult": 1.0}
    assert voc["schedule"]["name"] == "cosine" and "power" not in voc["schedule"]


def test_misspelt_keys_fail_loudly():
    cfg = OmegaConf.to_container(compose("train", ["+trainer.iteratoins=5"]), resolve=True)
    with pytest.raises(TypeError, match="iteratoins"):
        TrainerSettings(**cfg["trainer"])
    with pytest.raises(ConfigError, match=r"^trainer.iteratoins: no such key in the trainer section \(known: .*"
                                          r"iterations"):
        validate_config(cfg)
    cfg = OmegaConf.to_container(compose("train", ["+model.outputstride=8"]), resolve=True)
    with pytest.raises(TypeError, match="outputstride"):
        build_model(**cfg["model"])
    with pytest.raises(ConfigError, match="^model.outputstride: no such key"):
        validate_config(cfg)


CHOSEN_ENTRY_ERRORS = [
    (["loss.name=dice"], r"^loss.name='dice': must be one of \['cross_entropy', 'focal'\]$"),
    (["schedule.name=step"], r"^schedule.name='step': must be one of \['cosine', 'poly'\]$"),
    (["loss=focal", "+loss.ohem_fraction=0.25"], (r"^loss.ohem_fraction: no such key in the loss section for "
                                                  r"loss.name=focal \(known: alpha, gamma, name\)")),
    (["loss.name=focal"], r"^loss.class_weights: no such key .* for loss.name=focal .*switch with loss=focal"),
    (["schedule=cosine", "+schedule.power=0.9"], (r"^schedule.power: no such key in the schedule section for "
                                                  r"schedule.name=cosine \(known: min_lr_ratio, name, warmup_iters, "
                                                  r"warmup_ratio\)")),
    (["loss=focal", "loss.gamma=-0.5"], r"^loss.gamma=-0.5: must be a number >= 0"),
    (["loss=focal", "loss.gamma=high"], r"^loss.gamma='high': must be a number >= 0"),
    (["loss=focal", "loss.alpha=[1,2]"], r"^loss.alpha has 2 values for dataset.num_classes=6"),
    (["schedule=cosine", "schedule.warmup_iters=1100"], r"^schedule.warmup_iters=1100 is not below"),
]


@pytest.mark.parametrize("overrides,message", CHOSEN_ENTRY_ERRORS, ids=[" ".join(e[0]) for e in CHOSEN_ENTRY_ERRORS])
def test_loss_and_schedule_keys_are_those_of_the_chosen_name(overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate_config(OmegaConf.to_container(compose("train", overrides), resolve=True))


def test_a_saved_config_without_a_loss_name_means_cross_entropy():
    config = OmegaConf.to_container(compose("train", ["loss.dice_weight=0.5"]), resolve=True)
    del config["loss"]["name"]  # as saved by a run before losses had names
    validate_config(config)
    assert isinstance(build_loss(ignore_index=255, **config["loss"]), CrossEntropyLoss)


@pytest.mark.parametrize("dataset", [o for o in _options("dataset") if o != "demo"])
def test_real_datasets_start_from_imagenet_and_the_demo_from_random(dataset):
    assert compose("train", [f"dataset={dataset}"]).model.backbone_weights == "imagenet"
    assert compose("train", []).model.backbone_weights is None  # the demo downloads nothing


def test_run_dirs_are_dated_and_sweeps_get_their_own():
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = hydra_compose("train", return_hydra_config=True)
    assert cfg.hydra.run.dir.startswith("outputs/train/")
    sweep = OmegaConf.to_container(cfg.hydra.sweep, resolve=False)
    assert cfg.hydra.sweep.dir.startswith("outputs/multirun/") and sweep["subdir"] == "${hydra.job.num}"


def test_the_demo_recipe_applies_to_the_demo_only():
    demo = OmegaConf.to_container(compose("train", []), resolve=True)
    assert demo["dataset"]["format"] == "demo" and demo["trainer"]["iterations"] == 1100
    assert demo["optim"]["name"] == "adamw" and demo["model"]["separable"] is True
    voc = OmegaConf.to_container(compose("train", ["dataset=voc"]), resolve=True)
    assert voc["trainer"]["iterations"] == 30000 and voc["optim"]["name"] == "sgd"
    assert voc["augment"]["crop_size"] == [513, 513] and voc["model"]["backbone"]["width_mult"] == 1.0
    for name in ("evaluate", "check"):  # the other entry points compose the demo dataset without its recipe
        assert compose(name, ["dataset=demo"]).dataset.format == "demo"


def test_python_train_py_composes_the_demo_recipe_s_effective_values():
    demo = OmegaConf.to_container(compose("train", []), resolve=True)
    validate_config(demo)
    assert {k: v for k, v in demo["optim"].items() if v is not None} == {  # nulls are not passed (build_optimizer)
        "name": "adamw", "lr": 3e-3, "betas": [0.9, 0.999], "weight_decay": 1e-4, "backbone_lr_mult": 1.0}
    assert demo["schedule"] == {"name": "poly", "power": 0.9, "warmup_iters": 30, "warmup_ratio": 0.1,
                                "min_lr_ratio": 0.0}
    assert {k: demo["model"][k] for k in ("separable", "backbone_weights", "aspp_channels", "decoder_channels")} == {
        "separable": True, "backbone_weights": None, "aspp_channels": 128, "decoder_channels": 128}
    assert {k: demo["trainer"][k] for k in ("iterations", "batch_size", "val_every", "checkpoint_every",
                                            "num_workers")} == {
        "iterations": 1100, "batch_size": 8, "val_every": 550, "checkpoint_every": 100, "num_workers": 0}
    assert demo["augment"]["crop_size"] == [128, 128] and demo["loss"]["name"] == "cross_entropy"


def test_any_group_chosen_on_the_command_line_switches_the_demo_and_keeps_the_rest_of_its_recipe():
    """The demo's AdamW is chosen by dataset/demo.yaml, which the command line outranks; the recipe's settings for
    one optimizer (recipe/optim/demo_<optim>.yaml) apply to that optimizer only: optim=sgd is optim/sgd.yaml with the
    demo's SGD learning rate, and none of its AdamW keys."""
    sgd = compose("train", ["optim=sgd"])
    expected = {**OmegaConf.to_container(OmegaConf.load(REPO / "configs/optim/sgd.yaml")), "lr": 0.05}
    assert OmegaConf.to_container(sgd.optim) == expected
    assert sgd.trainer.iterations == 1100 and sgd.model.separable and sgd.augment.crop_size == [128, 128]
    switched = compose("train", ["schedule=cosine", "loss=focal", "model/backbone=resnet50"])
    assert switched.schedule.name == "cosine" and switched.loss.name == "focal" and switched.optim.name == "adamw"
    assert switched.model.backbone.name == "resnet50" and "width_mult" not in switched.model.backbone
    assert compose("train", ["dataset=voc"]).optim.name == "sgd"  # the general default away from the demo
    voc_adamw = compose("train", ["dataset=voc", "optim=adamw"]).optim  # the demo's AdamW settings stay with it
    assert OmegaConf.to_container(voc_adamw) == OmegaConf.to_container(OmegaConf.load(REPO / "configs/optim/adamw.yaml"))
    assert compose("train", ["experiment=voc_os16"]).optim.name == "sgd"
    general = compose("train", ["~recipe"])  # the demo data without its recipe: the general defaults, its AdamW
    assert general.optim.name == "adamw" and general.trainer.iterations == 30000


def test_python_train_py_optim_sgd_trains_the_demo_with_sgd(tmp_path, entry_point):
    root = tmp_path / "demo"
    code = entry_point(train_main, "optim=sgd", *tiny_train_overrides(root, tmp_path / "runs", iterations=2),
                       "dataset.num_train=8", "dataset.num_val=4", "dataset.size=64", "schedule.warmup_iters=0",
                       f"hydra.run.dir={tmp_path / 'run'}")
    assert code == 0
    saved = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert saved["config"]["optim"]["name"] == "sgd" and saved["config"]["optim"]["momentum"] == 0.9
    assert all("momentum_buffer" in state for state in saved["optimizer"]["state"].values())
