"""Per-class loss weights computed from the training split: the formulas, the per-split cache, and a run that
records them in its checkpoint and keeps them on resume."""

import logging

import numpy as np
import pytest
from PIL import Image

from conftest import compose, make_voc_tree, one_sentence, tiny_train_overrides
from deeplab.data import build_dataset
from deeplab.data import statistics
from deeplab.engine.checkpoint import load_checkpoint
from deeplab.engine.trainer import train
from deeplab.errors import ConfigError
from deeplab.losses import CLASS_WEIGHTINGS, build_loss, enet_log, median_frequency


def test_median_frequency_is_segnets_formula():
    pixels = np.array([600, 100, 30, 0])    # class 3 never appears
    present = np.array([1000, 400, 300, 0])  # labelled pixels of the images holding each class
    freq = np.array([0.6, 0.25, 0.1])
    expected = np.median(freq) / freq
    assert median_frequency(pixels, present) == pytest.approx([*expected, 0.0])


def test_enet_weights_are_one_over_log_of_c_plus_share_and_bounded():
    pixels = np.array([900, 99, 1, 0])
    share = pixels[:3] / 1000
    assert enet_log(pixels, pixels) == pytest.approx([*(1 / np.log(1.02 + share)), 0.0])
    assert enet_log(pixels, pixels).max() < 1 / np.log(1.02)


def _dataset(tree, num_classes=5):
    return build_dataset(split="train", format="voc", root=str(tree), num_classes=num_classes)


def test_counts_are_cached_per_split_and_recounted_when_a_mask_changes(tmp_path, monkeypatch):
    tree = make_voc_tree(tmp_path / "VOC", n_train=4, n_val=2)
    dataset = _dataset(tree)
    pixels, present = statistics.class_pixels(dataset)
    masks = [np.array(Image.open(m)) for _, m in dataset.samples]
    assert pixels.tolist() == [sum(int((m == c).sum()) for m in masks) for c in range(5)]
    assert present.tolist() == [sum(int((m != 255).sum()) for m in masks if (m == c).any()) for c in range(5)]

    def no_reading(_dataset):
        raise AssertionError("the masks were read again")

    monkeypatch.setattr(statistics, "count_pixels", no_reading)
    assert statistics.class_pixels(_dataset(tree))[0].tolist() == pixels.tolist()  # from the cache
    other = build_dataset(split="val", format="voc", root=str(tree), num_classes=5)
    with pytest.raises(AssertionError, match="read again"):  # another split has its own entry
        statistics.class_pixels(other)
    monkeypatch.undo()
    monkeypatch.setenv("DEEPLAB_CACHE_DIR", str(tmp_path / "cache"))
    statistics.class_pixels(dataset)
    mask_path = dataset.samples[0][1]
    Image.fromarray(np.zeros_like(masks[0]), mode="L").save(mask_path)  # an edited mask: counted again
    assert statistics.class_pixels(_dataset(tree))[0][0] > pixels[0]


def test_an_unwritable_cache_only_costs_a_recount(tmp_path, monkeypatch, caplog):
    tree = make_voc_tree(tmp_path / "VOC", n_train=2, n_val=1)
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("DEEPLAB_CACHE_DIR", str(tmp_path / "file"))  # a file where the folder would go
    with caplog.at_level(logging.WARNING, logger="deeplab.data"):
        pixels, _ = statistics.class_pixels(_dataset(tree))
    assert pixels.sum() > 0 and "not cached" in caplog.text


def test_a_named_weighting_reaching_the_loss_itself_is_refused():
    with pytest.raises(ValueError, match="computed from a training split"):
        build_loss(ignore_index=255, class_weights="median_frequency")


@pytest.fixture
def tree(tmp_path):
    return make_voc_tree(tmp_path / "VOC", n_train=8, n_val=3, size=(48, 64))


@pytest.mark.parametrize("option", ["loss.class_weights=median_frequency", "loss.class_weights=enet",
                                    "loss=focal loss.alpha=median_frequency"])
def test_a_run_records_the_weights_in_its_checkpoint_and_keeps_them_on_resume(tree, tmp_path, option, caplog):
    def overrides(iterations):
        return ["dataset=voc", *tiny_train_overrides(tree, tmp_path / "outputs", iterations), *option.split()]

    with caplog.at_level(logging.INFO, logger="deeplab.train"):
        train(compose("train", overrides(2)), tmp_path / "run")
    method = option.split("=")[-1]
    key = "loss.alpha" if "alpha" in option else "loss.class_weights"
    record = load_checkpoint(tmp_path / "run" / "last.pt")["config"]["class_weights"]
    pixels, present = statistics.class_pixels(_dataset(tree, 21))  # dataset=voc: 21 classes
    assert record["method"] == method and record["key"] == key and record["split"] == "train"
    assert record["weights"] == pytest.approx(CLASS_WEIGHTINGS[method](pixels, present).tolist(), rel=1e-5)
    assert f"{key}={method} from split 'train'" in caplog.text
    assert "16 class(es) have no pixels in split 'train' and get weight 0" in caplog.text  # the tree uses 5 of 21
    # the data changes after the run started: the resumed run keeps the weights it trained with
    for _, mask in _dataset(tree).samples:
        Image.fromarray(np.zeros_like(np.array(Image.open(mask))), mode="L").save(mask)
    last = tmp_path / "run" / "last.pt"
    again = [*overrides(3), f"resume={last}"]  # the same command, as a requeued job gives it, one iteration more
    train(compose("train", again), tmp_path / "resumed", again)
    resumed = load_checkpoint(last)
    assert resumed["iteration"] == 3 and resumed["config"]["class_weights"] == record


def test_an_unknown_weighting_is_one_sentence(tree, tmp_path):
    cfg = compose("train", ["dataset=voc", *tiny_train_overrides(tree, tmp_path / "outputs"),
                            "loss.class_weights=median_freq"])
    with pytest.raises(ConfigError) as exc:
        train(cfg, tmp_path / "run")
    one_sentence(exc, "loss.class_weights='median_freq'", "median_frequency", "enet")
    assert not (tmp_path / "run").exists()
