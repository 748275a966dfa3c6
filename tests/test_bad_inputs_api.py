"""Catalogue of a notebook user's mistakes with the Python API (`build_model`, `Predictor`, the transforms, the
prediction files): what has one obvious meaning is accepted, the rest is one sentence naming the argument and the
fix, the same sentence the config path gives for the same rule."""

import numpy as np
import pytest
import torch

from conftest import one_sentence
from deeplab.data.transforms import train_transform
from deeplab.errors import ConfigError
from deeplab.model import build_model
from deeplab.schema import checked

TINY = dict(backbone={"name": "mobilenet_v2", "width_mult": 0.5}, aspp_channels=16, low_level_channels=8,
            decoder_channels=16)


def tiny_model(num_classes: int = 3, **options) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(num_classes=num_classes, **{**TINY, **options})


# --- build_model: every value checked as the model config section is ----------------------------------------------

BAD_MODEL = [
    (dict(separable="maybe"), "model.separable='maybe': must be true or false"),
    (dict(aspp_rates=[0]), "model.aspp_rates=[0]: must be null (the rates of the output stride) or a list"),
    (dict(aspp_rates=[]), "model.aspp_rates=[]: must be null"),
    (dict(aspp_rates=[-6, 12]), "model.aspp_rates=[-6, 12]: must be null"),
    (dict(aspp_rates=6), "model.aspp_rates=6: must be null"),
    (dict(aspp_channels=0), "model.aspp_channels=0: must be an integer >= 1"),
    (dict(low_level_channels=0), "model.low_level_channels=0: must be an integer >= 1"),
    (dict(decoder_channels=-1), "model.decoder_channels=-1: must be an integer >= 1"),
    (dict(decoder_convs=3), "model.decoder_convs=3: must be 1 or 2"),
    (dict(aspp_dropout=1.5), "model.aspp_dropout=1.5: must be a number in [0, 1)"),
    (dict(backbone_weights=True), "model.backbone_weights=True: must be imagenet"),
    (dict(backbone_weights=""), "model.backbone_weights='': must be imagenet"),
    (dict(backbone={"name": "mobilenet_v2", "width_mult": 0}), "model.backbone.width_mult=0: must be a number > 0"),
    (dict(backbone={"name": "mobilenet_v2", "expand_ratio": 0}), "model.backbone.expand_ratio=0: must be an integer"),
]


@pytest.mark.parametrize("options, sentence", BAD_MODEL, ids=[next(iter(o)) + str(i) for i, (o, _) in
                                                               enumerate(BAD_MODEL)])
def test_build_model_refuses_a_value_that_cannot_work_in_one_sentence(options, sentence):
    with pytest.raises(ConfigError) as info:
        build_model(num_classes=3, **options)
    assert one_sentence(info).startswith(sentence)


def test_build_model_and_the_config_check_give_the_same_sentence():
    """One owner per rule: the model section's check and the builder raise the same words for the same value."""
    for options in ({"aspp_rates": [0]}, {"aspp_channels": 0}, {"backbone_weights": True}):
        with pytest.raises(ConfigError) as from_config:
            checked("model", {"num_classes": 3, **options}, build_model)
        with pytest.raises(ConfigError) as from_python:
            build_model(num_classes=3, **options)
        assert str(from_python.value) == str(from_config.value)


def test_build_model_reads_values_as_the_config_does():
    assert tiny_model(separable="no").decoder.dense, "'no' is false, as on the command line, not a truthy string"
    assert not tiny_model(separable="yes").decoder.dense
    assert tiny_model(num_classes=np.int64(5)).num_classes == 5, "a numpy integer is an integer"
    assert tiny_model(aspp_rates=(4, 8)).aspp.rates == (4, 8)


@pytest.mark.parametrize("keyword, fix", [("weights", "Predictor.from_checkpoint"),
                                          ("weights_backbone", "use backbone_weights='imagenet'"),
                                          ("pretrained_backbone", "use backbone_weights='imagenet'"),
                                          ("aux_loss", "no auxiliary FCN head")])
def test_torchvision_keywords_say_what_they_are_here(keyword, fix):
    with pytest.raises(TypeError) as info:
        build_model(num_classes=3, **{keyword: None})
    one_sentence(info, f"unexpected keyword argument {keyword!r}, torchvision's", fix)


# --- the transforms ----------------------------------------------------------------------------------------------

BAD_AUGMENT = [
    (dict(crop_size=0), "augment.crop_size=0: must be a whole number of pixels >= 1"),
    (dict(crop_size=[0, 0]), "augment.crop_size=[0, 0]: must be"),
    (dict(crop_size=[]), "augment.crop_size=[]: must be"),
    (dict(crop_size=[64, 64, 64]), "augment.crop_size=[64, 64, 64]: must be"),
    (dict(crop_size="513"), "augment.crop_size='513': must be"),  # was a 5x3 crop, read character by character
    (dict(crop_size=64.5), "augment.crop_size=64.5: must be"),
    (dict(scale_range=(0.5,)), "augment.scale_range=(0.5,): must be [low, high] with 0 < low <= high"),
    (dict(scale_range=(2.0, 1.0)), "augment.scale_range=(2.0, 1.0): must be"),
    (dict(hflip=2), "augment.hflip=2: must be a number in [0, 1]"),
    (dict(color_jitter=-0.5), "augment.color_jitter=-0.5: must be a number >= 0"),
    (dict(mean=(123.675, 116.28, 103.53)), "dataset.mean=(123.675, 116.28, 103.53): must be three numbers in [0, 1]"),
    (dict(std=(0.2, 0.2)), "dataset.std=(0.2, 0.2): must be three numbers in (0, 1]"),
]


@pytest.mark.parametrize("options, sentence", BAD_AUGMENT, ids=[next(iter(o)) + str(i) for i, (o, _) in
                                                                enumerate(BAD_AUGMENT)])
def test_train_transform_refuses_a_value_in_one_sentence(options, sentence):
    with pytest.raises(ConfigError) as info:
        train_transform(**options)
    assert one_sentence(info).startswith(sentence)
