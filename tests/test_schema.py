"""deeplab.schema: a config section checked by OmegaConf against the keywords of the code that takes it, with the
range rules on their type hints; every refusal names the key, the value and what is allowed."""

from collections.abc import Sequence

import pytest
from omegaconf import OmegaConf

from conftest import compose
from deeplab.engine.run_config import TrainerSettings, validate_config
from deeplab.errors import ConfigError
from deeplab.schema import Count, Positive, checked, describe, keyword_hints, ranged


def _takes(*, size: Count = 1, scale: Positive | None = None, names: list[str] | None = None,
           crop: int | Sequence[int] = 3, flag: bool = False, mode: str = "a"):
    """A builder as the project writes them: keyword arguments with their types and rules."""


def test_omegaconf_types_the_values_and_the_rules_on_the_hints_check_their_ranges():
    assert checked("s", {"size": "8", "scale": 2, "flag": "true"}, _takes) == {"size": 8, "scale": 2.0, "flag": True}
    assert checked("s", {"scale": None, "crop": [4, 5], "names": ["x"]}, _takes) == {
        "scale": None, "crop": [4, 5], "names": ["x"]}
    for values, named, allowed in [({"size": 0}, "s.size=0", "an integer >= 1"),
                                   ({"size": "abc"}, "s.size='abc'", "an integer >= 1"),
                                   ({"size": 1.5}, "s.size=1.5", "an integer >= 1"),
                                   ({"scale": -1}, "s.scale=-1", "a number > 0"),
                                   ({"flag": "maybe"}, "s.flag='maybe'", "true or false"),
                                   ({"names": 5}, "s.names=5", "a list of strings or null")]:
        with pytest.raises(ConfigError) as caught:
            checked("s", values, _takes)
        assert str(caught.value).startswith(f"{named}: ") and allowed in str(caught.value)  # the key, value, rule


def test_an_unknown_key_names_the_section_the_known_keys_and_the_nearest():
    with pytest.raises(ConfigError) as caught:
        checked("s", {"sise": 3}, _takes)
    message = str(caught.value)
    assert message.startswith("s.sise: no such key in the s section (known: crop, flag, mode, names, scale, size)")
    assert "did you mean s.size?" in message


def test_keyword_hints_leave_out_what_the_caller_passes_and_keep_the_rules():
    hints = keyword_hints(_takes, ("mode",))
    assert set(hints) == {"size", "scale", "names", "crop", "flag"}
    assert describe(hints["size"]) == "an integer >= 1" and describe(hints["names"]) == "a list of strings or null"
    assert describe(ranged(float, lambda v: True, "anything")) == "anything"


def test_the_trainer_receives_the_typed_values_of_its_config():
    """`trainer.batch_size='8'` (quoted on the command line, so a string) trains with 8, not '8'."""
    config = OmegaConf.to_container(compose("train", ["trainer.batch_size='8'", "optim.lr=1",
                                                      "model.backbone.width_mult='0.75'"]), resolve=True)
    assert config["trainer"]["batch_size"] == "8"
    typed = validate_config(config)
    assert typed["trainer"]["batch_size"] == 8 and typed["optim"]["lr"] == 1.0
    assert typed["model"]["backbone"] == {"name": "mobilenet_v2", "width_mult": 0.75, "expand_ratio": 6,
                                          "padding": "conv"}
    assert TrainerSettings(**typed["trainer"]).batch_size == 8


RULES_BESIDE_THE_TYPES = [  # (override, the key=value the sentence names): one per rule moved onto a type hint
    ("trainer.ema_decay=1", "trainer.ema_decay=1"), ("trainer.grad_clip=0", "trainer.grad_clip=0"),
    ("trainer.grid_images=-1", "trainer.grid_images=-1"), ("model.decoder_convs=3", "model.decoder_convs=3"),
    ("model.aspp_dropout=1", "model.aspp_dropout=1"), ("model.aspp_channels=0", "model.aspp_channels=0"),
    ("model.backbone.width_mult=0", "model.backbone.width_mult=0"),
    ("model.backbone.padding=same", "model.backbone.padding='same'"),
    ("model.backbone.expand_ratio=0", "model.backbone.expand_ratio=0"),
    ("optim.backbone_lr_mult=-1", "optim.backbone_lr_mult=-1"), ("optim.lr=0", "optim.lr=0"),
    ("schedule.min_lr_ratio=1", "schedule.min_lr_ratio=1"), ("schedule.warmup_ratio=2", "schedule.warmup_ratio=2"),
    ("loss.dice_weight=-1", "loss.dice_weight=-1"), ("loss.ohem_min_pixels=-1", "loss.ohem_min_pixels=-1"),
    ("augment.color_jitter=-1", "augment.color_jitter=-1"),
]


@pytest.mark.parametrize("override,named", RULES_BESIDE_THE_TYPES, ids=[r[0] for r in RULES_BESIDE_THE_TYPES])
def test_each_range_rule_is_checked_from_the_hint_beside_its_key(override, named):
    config = OmegaConf.to_container(compose("train", [override]), resolve=True)
    with pytest.raises(ConfigError) as caught:
        validate_config(config)
    message = str(caught.value)
    assert message.startswith(f"{named}: must be ") and "\n" not in message
