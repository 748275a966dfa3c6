"""Catalogue of a notebook user's mistakes with the Python API (`build_model`, `Predictor`, the transforms, the
prediction files): what has one obvious meaning is accepted, the rest is one sentence naming the argument and the
fix, the same sentence the config path gives for the same rule."""

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from conftest import one_sentence
from deeplab.data import check_dataset_config
from deeplab.data.transforms import eval_transform, train_transform
from deeplab.errors import ConfigError
from deeplab.inference import Predictor
from deeplab.model import build_model
from deeplab.prediction_files import save_outputs
from deeplab.schema import checked
from deeplab.visualization import colourize, palette_array

TINY = dict(backbone={"name": "mobilenet_v2", "width_mult": 0.5}, aspp_channels=16, low_level_channels=8,
            decoder_channels=16)
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def tiny_model(num_classes: int = 3, **options) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(num_classes=num_classes, **{**TINY, **options})


def predictor_of(model: torch.nn.Module) -> Predictor:
    names = [f"c{i}" for i in range(model.num_classes)]
    return Predictor(model, mean=MEAN, std=STD, class_names=names, device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return predictor_of(tiny_model())


RGB = np.random.default_rng(0).integers(0, 256, (37, 45, 3), dtype=np.uint8)
GREY = RGB[..., 0]


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


def test_backbone_weights_may_be_a_torchvision_segmentation_models(tmp_path):
    """torchvision's deeplabv3_resnet50(...).state_dict() names its backbone's tensors backbone.<the network's own
    names>, beside classifier.* and aux_classifier.*: its backbone part is loaded, not refused as a deeplab model's."""
    net = torchvision.models.mobilenet_v2()
    state = {**{f"backbone.{k}": v for k, v in net.state_dict().items() if k.startswith("features.")},
             "classifier.4.weight": torch.zeros(21, 256, 1, 1), "aux_classifier.4.weight": torch.zeros(21, 10, 1, 1)}
    torch.save(state, tmp_path / "segmentation.pth")
    model = build_model(num_classes=3, backbone_weights=tmp_path / "segmentation.pth")
    assert torch.equal(model.backbone.features[5].conv[1][0].weight, net.features[5].conv[1][0].weight)
    with pytest.raises(ConfigError) as info:
        build_model(num_classes=3, backbone="resnet50", backbone_weights=tmp_path / "segmentation.pth")
    text = one_sentence(info, "(the backbone of a torchvision segmentation model) is not a torchvision ResNet-50",
                        "use them with model/backbone=mobilenet_v2")
    assert "init_from" not in text


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
    (dict(mean=(123.675, 116.28, 103.53)), "dataset.mean=[123.675, 116.28, 103.53] dataset.std=[0.229, 0.224, 0.225]: "
                                           "on the 0-255 scale"),
    (dict(std=(0.2, 0.2)), "dataset.std=(0.2, 0.2): must be three numbers in (0, 1]"),
]


@pytest.mark.parametrize("options, sentence", BAD_AUGMENT, ids=[next(iter(o)) + str(i) for i, (o, _) in
                                                                enumerate(BAD_AUGMENT)])
def test_train_transform_refuses_a_value_in_one_sentence(options, sentence):
    with pytest.raises(ConfigError) as info:
        train_transform(**options)
    assert one_sentence(info).startswith(sentence)


def test_normalisation_is_on_the_0_1_scale_everywhere_with_one_sentence():
    """mmseg's 0-255 mean would make every normalised pixel about -2: the transforms, the Predictor and the dataset
    config check refuse it with the same sentence, giving the values to write."""
    mean = (123.675, 116.28, 103.53)
    sentences = set()
    for call in (lambda: eval_transform(mean=mean), lambda: train_transform(mean=mean),
                 lambda: Predictor(tiny_model(), mean=mean, std=STD, class_names=["a", "b", "c"], device="cpu")):
        with pytest.raises(ConfigError) as info:
            call()
        sentences.add(one_sentence(info, "dataset.mean=[123.675, 116.28, 103.53]", "0-255 scale",
                                   "write dataset.mean=[0.485,0.456,0.406]"))
    with pytest.raises(ConfigError) as info:
        check_dataset_config(format="folder", num_classes=3, ignore_index=255, class_names=None, palette=None,
                             ignore_colour=None, label_map=None, allow_ignore_only_masks=None, options={}, mean=mean,
                             std=STD)
    sentences.add(one_sentence(info))
    assert len(sentences) == 1  # one rule, one sentence: the transforms, the Predictor and the dataset config
    with pytest.raises(ConfigError, match=r"^dataset.mean=\(0.5, 0.5, 0.5, 0.5\): must be three numbers"):
        Predictor(tiny_model(), mean=(0.5,) * 4, std=STD, class_names=["a", "b", "c"], device="cpu")


# --- Predictor.predict: what notebooks hold ----------------------------------------------------------------------

def _pil(array, mode=None):
    return Image.fromarray(array, mode) if mode else Image.fromarray(array)


ACCEPTED = {  # the input -> the RGB uint8 image it means
    "PIL RGB": (lambda: _pil(RGB), RGB),
    "PIL L": (lambda: _pil(GREY), np.dstack([GREY] * 3)),
    "PIL RGBA": (lambda: _pil(np.dstack([RGB, np.full(GREY.shape, 9, np.uint8)])), RGB),
    "PIL palette": (lambda: _pil(RGB).convert("P"), np.asarray(_pil(RGB).convert("P").convert("RGB"))),
    "PIL 16-bit": (lambda: _pil(GREY.astype(np.uint16) * 257), np.dstack([GREY] * 3)),
    "nested list": (lambda: RGB.tolist(), RGB),
    "grey (H, W)": (lambda: GREY, np.dstack([GREY] * 3)),
    "grey (H, W, 1)": (lambda: GREY[..., None], np.dstack([GREY] * 3)),
    "RGBA (H, W, 4)": (lambda: np.dstack([RGB, GREY]), RGB),
    "channels first": (lambda: np.ascontiguousarray(RGB.transpose(2, 0, 1)), RGB),
    "float in [0, 1]": (lambda: RGB / 255.0, RGB),
    "float32 CHW tensor in [0, 1]": (lambda: torch.from_numpy(RGB).permute(2, 0, 1).float() / 255, RGB),
    "uint16": (lambda: RGB.astype(np.uint16) * 257, RGB),
    "int64 in 0-255": (lambda: RGB.astype(np.int64), RGB),
    "uint8 HWC tensor": (lambda: torch.from_numpy(RGB), RGB),
    "uint8 CHW tensor": (lambda: torch.from_numpy(RGB).permute(2, 0, 1), RGB),
    "non-contiguous": (lambda: np.ascontiguousarray(RGB[:, ::-1])[:, ::-1], RGB),
}


@pytest.mark.parametrize("name", ACCEPTED)
def test_predict_takes_an_image_in_any_form_that_means_one_image(predictor, name):
    image, meaning = ACCEPTED[name]
    labels, probs = predictor.predict(image(), return_probs=True)
    expected_labels, expected = predictor.predict(meaning, return_probs=True)
    assert labels.shape == meaning.shape[:2] and labels.dtype == np.uint8
    assert np.allclose(probs, expected, atol=1e-5) and (labels == expected_labels).all()


REFUSED = [
    (lambda: RGB.astype(np.float32), ValueError, "floats must be in [0, 1]"),  # 0-255 floats: no guessing
    (lambda: np.full((8, 8, 3), np.nan), ValueError, "floats must be in [0, 1]"),
    (lambda: RGB.astype(np.int64) * 2, ValueError, "must be in 0-255"),
    (lambda: RGB > 128, ValueError, "image: bool pixels; pass uint8"),
    (lambda: np.zeros((0, 10, 3), np.uint8), ValueError, "has no pixels"),
    (lambda: RGB[..., :2], ValueError, "is no image"),
    (lambda: RGB[None], ValueError, "a list of them to predict_batch"),
    (lambda: {"image": RGB}, TypeError, "image: got a dict"),
]


@pytest.mark.parametrize("image, error, words", REFUSED, ids=[w for _, _, w in REFUSED])
def test_predict_refuses_what_is_not_one_image_in_one_sentence(predictor, image, error, words):
    with pytest.raises(error) as info:
        predictor.predict(image())
    one_sentence(info, "image", words)


def test_predict_batch_of_no_images_mixed_sizes_or_one_image(predictor):
    assert predictor.predict_batch([]).shape == (0, 3, 0, 0)
    with pytest.raises(ValueError) as info:
        predictor.predict_batch([RGB, RGB[:20]])
    one_sentence(info, "a batch holds images of one size", "(20x45, 37x45)", "pass each to predict")
    with pytest.raises(TypeError) as info:
        predictor.predict_batch(RGB)  # its rows are not images
    one_sentence(info, "one image, not a batch", "predict(image)")
    mixed = predictor.predict_batch([RGB, _pil(RGB), torch.from_numpy(RGB).permute(2, 0, 1)])
    assert mixed.shape == (3, 3, 37, 45) and torch.allclose(mixed[0], mixed[2]) and torch.allclose(mixed[0], mixed[1])


def test_labels_of_more_than_256_classes_are_not_wrapped():
    model = tiny_model(300)
    with torch.no_grad():
        model.decoder.classifier.bias[299] = 50.0  # class 299 wins everywhere
    labels = predictor_of(model).predict(RGB)
    assert labels.dtype == np.uint16 and (labels == 299).all(), "299 was 43 as uint8"


# --- the Predictor's model and checkpoint ------------------------------------------------------------------------

def test_a_model_put_back_in_training_mode_still_predicts_in_eval_mode():
    model = tiny_model()
    predictor = predictor_of(model)
    expected = predictor.predict_batch([RGB])
    model.train()  # a notebook that goes on training the model it made a Predictor of
    assert torch.allclose(predictor.predict_batch([RGB]), expected, atol=1e-6), "BN and dropout in eval mode"
    assert predictor.predict(RGB[:1, :1]).shape == (1, 1), "a 1x1 image: batch norm in training mode refuses it"
    assert model.training, "the caller's model is left in the mode it was in"


def test_predictor_wants_a_model_and_from_checkpoint_a_path(tmp_path):
    with pytest.raises(TypeError) as info:
        Predictor(str(tmp_path / "best.pt"), mean=MEAN, std=STD, class_names=["a", "b", "c"])
    one_sentence(info, "model: got a str", "Predictor.from_checkpoint(path)")
    for wrong in ({"model": {}, "config": {}}, tiny_model(), None):
        with pytest.raises(TypeError) as info:
            Predictor.from_checkpoint(wrong, device="cpu")
        one_sentence(info, "not a file path", "Predictor(model, mean=..., std=..., class_names=...)")
    with pytest.raises(ValueError) as info:
        Predictor(tiny_model(), mean=MEAN, std=STD, class_names=["a", "b"], device="cpu")
    one_sentence(info, "class_names: 2 names for a model of 3 classes")
    with pytest.raises(TypeError, match="unexpected keyword argument 'tta'"):  # before any file is read
        Predictor.from_checkpoint(tmp_path / "missing.pt", device="cpu", tta=True)


def test_the_model_itself_says_what_input_it_takes():
    model = tiny_model().eval()
    for wrong in (torch.zeros(1, 3, 32, 32, dtype=torch.uint8), torch.zeros(3, 32, 32), torch.zeros(1, 32, 32, 3),
                  np.zeros((1, 3, 32, 32), np.float32)):
        with pytest.raises(ValueError) as info:
            model(wrong)
        one_sentence(info, "images: the model takes a normalised float (N, 3, H, W) batch", "Predictor(model")


def test_class_names_may_be_left_out_but_not_be_a_string(tmp_path):
    assert Predictor(tiny_model(), mean=MEAN, std=STD, device="cpu").class_names == ["0", "1", "2"]
    with pytest.raises(TypeError) as info:
        Predictor(tiny_model(), mean=MEAN, std=STD, class_names="abc", device="cpu")
    one_sentence(info, "class_names: got 'abc'", "a list of one name per class")
    # a run whose dataset config left class_names out (dataset.class_names=null) is still predicted with, by a str path
    model = tiny_model()
    config = {"model": {"num_classes": 3, **TINY},
              "dataset": {"num_classes": 3, "mean": list(MEAN), "std": list(STD), "class_names": None}}
    torch.save({"model": model.state_dict(), "config": config}, tmp_path / "best.pt")
    predictor = Predictor.from_checkpoint(str(tmp_path / "best.pt"), device="cpu", fast=False, precision="fp32")
    assert predictor.class_names == ["0", "1", "2"]
    assert torch.allclose(predictor.predict_batch([RGB]), predictor_of(model.eval()).predict_batch([RGB]), atol=1e-6)


# --- the prediction files: label maps of more than 256 classes -----------------------------------------------------

def test_saved_index_png_holds_class_indices_past_255(tmp_path):
    labels = np.array([[0, 1], [299, 256]], np.uint16)
    targets = {"index": tmp_path / "x.png", "color": tmp_path / "x_color.png"}
    save_outputs(np.zeros((2, 2, 3), np.uint8), labels, targets, palette_array(None), alpha=0.5)
    assert np.array_equal(np.array(Image.open(targets["index"])), labels), "a 16-bit PNG, read back as saved"
    colours = np.array(Image.open(targets["color"])).reshape(4, 3)
    assert len({tuple(c) for c in colours}) == 4, "class 256 does not take class 0's colour, nor 299 class 43's"
    small = np.array([[0, 1], [2, 20]])
    save_outputs(np.zeros((2, 2, 3), np.uint8), small, {"index": tmp_path / "y.png"}, palette_array(None), alpha=0.5)
    assert Image.open(tmp_path / "y.png").mode == "P", "up to 255 it stays the palette PNG"


def test_a_palette_of_more_than_256_colours_is_a_longer_table():
    palette = [[i % 256, i // 256, 7] for i in range(300)]
    table = palette_array(palette)
    assert table.shape == (300, 3) and tuple(colourize(np.array([[299]]), table)[0, 0]) == (43, 1, 7)
    assert colourize(np.array([[True, False]]), table).shape == (1, 2, 3), "a bool mask is indices 1 and 0"
