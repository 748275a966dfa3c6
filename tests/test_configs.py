"""Every config option and experiment composes, and builds what it describes."""

import pytest
from omegaconf import OmegaConf

from conftest import REPO, compose
from deeplab.data import DataError, build_dataset
from deeplab.data.transforms import train_transform
from deeplab.engine.optim import build_optimizer, build_scheduler
from deeplab.engine.run_config import validate_config
from deeplab.engine.trainer import TrainerSettings
from deeplab.errors import ConfigError
from deeplab.losses import SegmentationLoss
from deeplab.model import build_model

GROUPS = ["dataset", "model", "augment", "optim", "schedule", "trainer", "loss"]


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
    SegmentationLoss(ignore_index=c["dataset"]["ignore_index"], **c["loss"])
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
def test_every_experiment_composes_and_builds(experiment, tmp_path):
    c = _build_everything(compose("train", [f"experiment={experiment}"]), tmp_path)
    assert c["model"]["backbone_weights"] == "imagenet"
    assert c["trainer"]["iterations"] == 30000 and c["trainer"]["batch_size"] == 16
    assert c["optim"]["name"] == "sgd" and c["optim"]["momentum"] == 0.9 and c["schedule"]["power"] == 0.9


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
    for path in (REPO / "configs" / "experiment").glob("*.yaml"):
        assert "TARGET" in path.read_text(), f"{path.name} must name the number it targets"


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


@pytest.mark.parametrize("dataset", [o for o in _options("dataset") if o != "demo"])
def test_real_datasets_start_from_imagenet_and_the_demo_from_random(dataset):
    assert compose("train", [f"dataset={dataset}"]).model.backbone_weights == "imagenet"
    assert compose("train", []).model.backbone_weights is None  # the demo downloads nothing


def test_run_dirs_are_dated_and_sweeps_get_their_own():
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = hydra_compose("train", return_hydra_config=True)
    assert cfg.hydra.run.dir.startswith("outputs/train/")
    sweep = OmegaConf.to_container(cfg.hydra.sweep, resolve=False)
    assert sweep["dir"].startswith("outputs/multirun/") and sweep["subdir"] == "${hydra.job.num}"


def test_the_demo_recipe_applies_to_the_demo_only():
    demo = OmegaConf.to_container(compose("train", []), resolve=True)
    assert demo["dataset"]["format"] == "demo" and demo["trainer"]["iterations"] == 1100
    assert demo["optim"]["name"] == "adamw" and demo["model"]["separable"] is True
    voc = OmegaConf.to_container(compose("train", ["dataset=voc"]), resolve=True)
    assert voc["trainer"]["iterations"] == 30000 and voc["optim"]["name"] == "sgd"
    assert voc["augment"]["crop_size"] == [513, 513] and voc["model"]["width_mult"] == 1.0
    for name in ("evaluate", "check"):  # the other entry points compose the demo dataset without its recipe
        assert compose(name, ["dataset=demo"]).dataset.format == "demo"
