"""The hostile sweep's conventions and costly defaults: masks saved lossy, precision=auto on huge photos, strict JSON,
predict on a list of inputs, a closed stdout pipe, a dataset of two images, and other frameworks' conventions."""

import io
import json
import logging
import os
import shutil
import sys

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from conftest import (compose, kill_at_step, make_mask, make_voc_tree, one_sentence, run_predict, tiny_train_overrides,
                      write_image)
import deeplab.data
from deeplab import metrics
from deeplab.cli import check as check_cli
from deeplab.cli import evaluate as evaluate_cli
from deeplab.cli import predict as predict_cli
from deeplab.data import DataError, build_dataset, read_mask
from deeplab.data.check import check_dataset
from deeplab.data.transforms import train_transform
from deeplab.engine import precision
from deeplab.engine import trainer as trainer_module
from deeplab.engine.checkpoint import load_checkpoint
from deeplab.engine.loaders import TrainBatches
from deeplab.engine.run_config import validate_config
from deeplab.engine.run_state import TrainingInterrupted
from deeplab.engine.trainer import probe_batch, train
from deeplab.errors import ConfigError
from deeplab.prediction_files import list_inputs
from deeplab.torch_files import CheckpointError

# --- masks saved lossy -----------------------------------------------------------------------------------------------


def _jpeg_bytes(mask: np.ndarray, quality: int) -> bytes:
    out = io.BytesIO()
    Image.fromarray(mask).save(out, format="JPEG", quality=quality)
    return out.getvalue()


def _voc_mask(size=(96, 128), seed=0) -> np.ndarray:
    """Background, objects of a few classes, each ringed by 255 as VOC's masks are."""
    return make_mask(np.random.default_rng(seed), *size, num_classes=5)


@pytest.mark.parametrize("quality", [75, 95])
def test_a_mask_damaged_by_jpeg_and_saved_as_png_asks_for_a_lossless_export(tmp_path, quality):
    path = tmp_path / "m.png"
    Image.open(io.BytesIO(_jpeg_bytes(_voc_mask(), quality))).save(path)  # JPEG's values, now in a PNG
    with pytest.raises(DataError) as info:
        read_mask(path, num_classes=5)
    text = one_sentence(info, "m.png", "losslessly", "PNG")
    assert "label_map" not in text


def test_jpeg_bytes_in_a_png_file_ask_for_a_lossless_export(tmp_path):
    path = tmp_path / "m.png"
    path.write_bytes(_jpeg_bytes(_voc_mask(), 100))  # whatever the extension says, the bytes are JPEG
    with pytest.raises(DataError) as info:
        read_mask(path, num_classes=5)
    one_sentence(info, "m.png", "JPEG data", "losslessly")


def test_an_rgb_mask_damaged_by_jpeg_asks_for_a_lossless_export_not_a_palette(tmp_path):
    palette = [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0], [0, 0, 128]]
    colours = np.array(palette + [[224, 224, 192]] * 251, np.uint8)
    path = tmp_path / "m.png"
    Image.open(io.BytesIO(_jpeg_bytes(colours[_voc_mask()], 90))).save(path)
    with pytest.raises(DataError) as info:
        read_mask(path, num_classes=5, palette=palette, ignore_colour=[224, 224, 192])
    assert "dataset.palette to match" not in one_sentence(info, "m.png", "losslessly")


@pytest.mark.parametrize("case", ["another id scheme", "instances", "scaled to 0-255"])
def test_masks_of_another_scheme_keep_the_label_map_advice(tmp_path, case):
    mask = np.zeros((64, 96), np.uint8)
    if case == "another id scheme":  # Cityscapes-like ids, 19 and over for a 19-class dataset, in regions
        mask[:20], mask[20:40, :30], mask[40:, 50:70], mask[5:60, 80:81] = 23, 26, 24, 17
    elif case == "instances":
        for i in range(1, 8):
            mask[4 + 7 * i:10 + 7 * i, 5 * i:5 * i + 9] = i
    else:
        mask[10:40, 10:40], mask[40:60, 50:90] = 127, 254
    Image.fromarray(mask).save(tmp_path / "m.png")
    with pytest.raises(DataError, match="dataset.label_map"):
        read_mask(tmp_path / "m.png", num_classes=19 if case == "another id scheme" else 3)


def test_the_checker_reports_jpeg_damage_as_lossy_saving(tmp_path):
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for stem in ("a", "b"):
        mask = _voc_mask(seed=ord(stem)).clip(0, 1) * 255  # binary 0/255 masks, the commonest saved as JPEG
        Image.fromarray(np.dstack([mask] * 3)).save(root / "images" / f"{stem}.png")
        Image.open(io.BytesIO(_jpeg_bytes(mask, 90))).save(root / "masks" / f"{stem}.png")
    reports = check_dataset(splits=["train"], format="folder", root=str(root), num_classes=2, ignore_index=255,
                            label_map={255: 1}, val_ratio=0.5)
    problems = reports[0].problems
    assert problems and all("saved lossy" in p and "label_map" not in p for p in problems), problems


# --- precision=auto on a huge photo ----------------------------------------------------------------------------------

def test_precision_auto_times_a_bounded_crop_of_a_huge_image(monkeypatch):
    monkeypatch.setattr(precision, "_CHOSEN", {})
    monkeypatch.setattr(precision, "cpu_capabilities", lambda: dict(avx2=True, avx512=True, vnni=True,
                                                                    avx512_bf16=True, amx=True))
    seen = []

    class Recording(torch.nn.Conv2d):
        def forward(self, x):
            seen.append(tuple(x.shape))
            return super().forward(x)

    photo = torch.randn(2, 3, 2000, 3000)
    precision.inference_precision(Recording(3, 2, 1).eval(), photo)
    assert seen and all(n == 1 and h <= 512 and w <= 512 for n, _, h, w in seen), seen
    crop = precision.timing_probe(photo)  # the centre of the first image, at its own scale
    assert torch.equal(crop, photo[:1, :, 744:1256, 1244:1756])
    assert precision.timing_probe(photo[:, :, :100, :64]).shape == (1, 3, 100, 64)  # a small image: all of it


# --- strict JSON -----------------------------------------------------------------------------------------------------

def _strict(text: str):
    """json.loads as a strict reader (JavaScript's JSON.parse, jq) reads: NaN and Infinity are not JSON."""
    def refuse(name):
        raise ValueError(f"{name} is not JSON")
    return json.loads(text, parse_constant=refuse)


def test_evaluate_on_a_split_whose_masks_are_all_ignore_writes_strict_json(trained, tmp_path):
    tree = shutil.copytree(trained[0], tmp_path / "VOC")
    for mask in (tree / "SegmentationClass").glob("2008_*.png"):  # the val split
        Image.fromarray(np.full(np.array(Image.open(mask)).shape, 255, np.uint8)).save(mask)
    shutil.copy(trained[1], tmp_path / "last.pt")
    cfg = compose("evaluate", [f"checkpoint={tmp_path / 'last.pt'}", f"data_root={tree}", "precision=fp32",
                               "num_workers=0"])
    evaluate_cli.run(cfg, tmp_path / "eval")
    metrics = _strict((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["mIoU"] is None and metrics["pixels"] == 0


def test_json_text_writes_nan_and_infinity_as_null():
    value = {"a": float("nan"), "b": [1.0, float("inf"), {"c": -float("inf")}], "d": np.float64("nan"), "e": 2}
    assert _strict(metrics.json_text(value)) == {"a": None, "b": [1.0, None, {"c": None}], "d": None, "e": 2}


# --- predict on a list of inputs -------------------------------------------------------------------------------------

def test_predict_takes_a_list_of_images_folders_and_globs(checkpoint, tmp_path, monkeypatch):
    photos = tmp_path / "photos"
    for name in ("a.jpg", "b.jpg", "sub/c.png", "more/d.jpg", "more/e.jpg"):
        write_image(photos / name)
    (photos / "sub" / "notes.txt").write_text("not an image")
    monkeypatch.chdir(photos)
    cfg = compose("predict", [f"checkpoint={checkpoint}", "input=[a.jpg,b.jpg,sub,'more/*.jpg',a.jpg]",
                              f"output={tmp_path / 'out'}", "precision=fp32", "save_color=false",
                              "save_overlay=false"])
    assert predict_cli.run(cfg, tmp_path / "run") == 0
    written = sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*.png"))
    assert written == ["a.png", "b.png", "more/d.png", "more/e.png", "sub/c.png"]  # a.jpg listed twice: once


def test_predict_plans_a_list_as_one_input(checkpoint, tmp_path):
    for folder in ("x", "y"):
        write_image(tmp_path / "in" / folder / "same.jpg")
    base, paths, _ = list_inputs([str(tmp_path / "in" / "x" / "same.jpg"), str(tmp_path / "in" / "y")])
    assert base == tmp_path / "in" and len(paths) == 2  # the deepest common folder: outputs keep x/ and y/
    with pytest.raises(DataError, match="inside the input folder"):  # the output-inside-input rule, as for a folder
        run_predict(checkpoint, f"[{tmp_path / 'in' / 'x'},{tmp_path / 'in' / 'y'}]", output=tmp_path / "in" / "out")
    with pytest.raises(DataError, match=r"input=.*missing\.jpg: no such file"):  # a wrong entry is named
        list_inputs([str(tmp_path / "in" / "x"), str(tmp_path / "in" / "missing.jpg")])


# --- a closed stdout pipe --------------------------------------------------------------------------------------------

def _close_stdout(monkeypatch) -> None:
    """sys.stdout writing into a pipe whose reader has gone, as `... | head -n 2` leaves it once head has exited (set
    in the test itself: pytest puts its own capture back between a fixture's setup and the test)."""
    read, write = os.pipe()
    os.close(read)
    monkeypatch.setattr(sys, "stdout", open(write, "w", buffering=1))


@pytest.mark.parametrize("command", ["evaluate", "check"])
def test_printing_into_a_closed_pipe_ends_quietly(command, trained, tmp_path, entry_point, monkeypatch, capfd):
    shutil.copy(trained[1], tmp_path / "last.pt")
    main, args = {"evaluate": (evaluate_cli.main, [f"checkpoint={tmp_path / 'last.pt'}", "precision=fp32",
                                                   f"hydra.run.dir={tmp_path / 'eval'}", "num_workers=0"]),
                  "check": (check_cli.main, ["dataset=voc", f"dataset.root={trained[0]}", "workers=0"])}[command]
    _close_stdout(monkeypatch)
    assert entry_point(main, *args) == 141  # as `cat` and `yes` end, killed by SIGPIPE: 128 + 13
    err = capfd.readouterr().err
    assert "Traceback" not in err and "BrokenPipeError" not in err and "Logging error" not in err, err


# --- a dataset of two images -----------------------------------------------------------------------------------------

def test_a_split_smaller_than_the_batch_fills_it_with_its_samples_again(caplog):
    with caplog.at_level(logging.WARNING, logger="deeplab.train"):
        batches = TrainBatches(3, batch_size=8, total_iters=4, seed=5)
    assert "3 sample(s), fewer than trainer.batch_size=8: each batch repeats them" in caplog.text
    steps = list(batches)
    for step in steps:
        ids, seeds = [i for i, _ in step], [s for _, s in step]
        assert sorted(np.bincount(ids, minlength=3)) == [2, 3, 3]  # each once per epoch, as evenly as it fills
        assert len(set(seeds)) == 8  # a repeated image gets another augmentation each time
    assert steps[2:] == list(TrainBatches(3, batch_size=8, total_iters=4, seed=5, start_iter=2))  # exact resume
    ranks = [list(TrainBatches(3, batch_size=8, total_iters=4, seed=5, rank=r, world_size=2)) for r in (0, 1)]
    assert all(sorted(a + b) == sorted(s) for a, b, s in zip(*ranks, steps))  # two processes: the same batch


def test_a_dataset_of_two_images_trains_with_a_batch_of_two(tmp_path):
    tree = make_voc_tree(tmp_path / "VOC", n_train=1, n_val=1)
    train(compose("train", ["dataset=voc", *tiny_train_overrides(tree, tmp_path / "out", 2),
                            "trainer.batch_size=2"]), tmp_path / "run")
    assert load_checkpoint(tmp_path / "run" / "last.pt")["iteration"] == 2
    dataset = build_dataset(split="train", format="voc", root=str(tree), num_classes=5,
                            transform=train_transform(crop_size=32))
    images, masks = probe_batch(dataset, 2)  # precision=auto times BatchNorm in training mode: two crops of one
    assert images.shape[0] == masks.shape[0] == 2 and not torch.equal(images[0], images[1])


@pytest.mark.slow  # two short trainings and a resume
def test_a_dataset_of_two_images_resumes_exactly(tmp_path, monkeypatch):
    tree = make_voc_tree(tmp_path / "VOC", n_train=1, n_val=1)

    def cfg(*extra):
        return compose("train", ["dataset=voc", *tiny_train_overrides(tree, tmp_path / "outputs", 4),
                                 "trainer.batch_size=2", "trainer.deterministic=true", *extra])

    train(cfg(), tmp_path / "straight")
    real_step = kill_at_step(monkeypatch, 3)
    with pytest.raises(TrainingInterrupted):
        train(cfg(), tmp_path / "broken")
    monkeypatch.setattr(trainer_module, "train_step", real_step)
    resume = f"resume={tmp_path / 'broken' / 'last.pt'}"
    train(cfg(resume), tmp_path / "unused", overrides=[resume])
    a, b = (load_checkpoint(tmp_path / run / "last.pt") for run in ("straight", "broken"))
    assert b["iteration"] == 4 and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


# --- other frameworks' conventions -----------------------------------------------------------------------------------

def _train_config(*overrides):
    return OmegaConf.to_container(compose("train", ["dataset=voc", *overrides]), resolve=True)


@pytest.mark.parametrize("overrides,fix", [
    (["dataset.mean=[123.675,116.28,103.53]", "dataset.std=[58.395,57.12,57.375]"], "0-255 scale"),
    (["dataset.std=[58.395,57.12,57.375]"], "0-255 scale"),
    (["dataset.mean=[0.406,0.456,0.485]", "dataset.std=[0.225,0.224,0.229]"], "BGR order"),
    (["dataset.mean=[103.53,116.28,123.675]", "dataset.std=[57.375,57.12,58.395]"], "BGR order"),
])
def test_mean_and_std_in_another_convention_are_refused_with_the_values_to_write(overrides, fix):
    with pytest.raises(ConfigError) as info:
        validate_config(_train_config(*overrides))
    one_sentence(info, fix, "dataset.mean=[0.485,0.456,0.406] dataset.std=[0.229,0.224,0.225]")


def test_evaluate_of_saved_predictions_refuses_0_255_mean_too(tmp_path):
    with pytest.raises(ConfigError, match=r"0-255 scale.*dataset.mean=\[0.485,0.456,0.406\]"):
        build_dataset(split="val", format="voc", root=str(tmp_path), num_classes=5,
                      mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375])


@pytest.mark.parametrize("override,words", [
    ("dataset.palette=[0,0,0,128,0,0]", ["flat list of 6 numbers", "[[0, 0, 0], [128, 0, 0]]"]),
    ("dataset.ignore_index=-1", ["dataset.ignore_index=-1", "not a loss's"]),
    ("dataset.ignore_index=0", ["dataset.ignore_index=0", "label_map='{0: 255, 1: 0, 2: 1, 3: 2, ..., 21: 20}'"]),
    ("+dataset.reduce_zero_label=true", ["dataset.reduce_zero_label", "dataset.label_map='{0: 255, 1: 0"]),
    ("+augment.img_scale=[2048,512]", ["augment.img_scale", "augment.scale_range", "augment.crop_size"]),
    ("+augment.ratio_range=[0.5,2.0]", ["augment.ratio_range", "augment.scale_range=[0.5,2.0]"]),
])
def test_settings_in_another_frameworks_form_say_what_they_are_here(override, words):
    with pytest.raises(ConfigError) as info:
        validate_config(_train_config(override))
    one_sentence(info, *words)


# --- a dataset config that differs from the checkpoint's -------------------------------------------------------------

SAVED = {"format": "voc", "num_classes": 3, "class_names": ["bg", "cat", "dog"], "ignore_index": 255, "label_map": None,
         "palette": [[0, 0, 0], [1, 1, 1], [2, 2, 2]], "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def test_a_dataset_naming_the_checkpoints_classes_in_another_order_is_read_in_the_checkpoints(caplog):
    given = {**SAVED, "class_names": ["dog", "bg", "cat"], "label_map": {7: 0}, "mean": [0.5, 0.5, 0.5]}
    with caplog.at_level(logging.WARNING, logger="deeplab.data"):
        data = deeplab.data.checkpoint_dataset(SAVED, given, checkpoint="best.pt")
    # the masks' 0 (dog) is the checkpoint's 2, 1 (bg) its 0, 2 (cat) its 1; raw 7 (the dataset's dog) too
    assert data["label_map"] == {0: 2, 1: 0, 2: 1, 7: 2}
    assert data["class_names"] == SAVED["class_names"] and data["mean"] == SAVED["mean"]
    assert "its class 0 is 'dog', the checkpoint's 'bg'" in caplog.text
    assert "dataset.mean=[0.5, 0.5, 0.5] differs from the checkpoint's" in caplog.text and "using the checkpoint's" \
        in caplog.text
    with pytest.raises(CheckpointError, match="checkpoint is for 3 classes but the dataset"):
        deeplab.data.checkpoint_dataset(SAVED, {**given, "num_classes": 4}, checkpoint="best.pt")


def test_evaluate_with_another_mean_normalises_as_the_checkpoint_and_says_so(trained, tmp_path, caplog):
    def evaluate(*extra):
        cfg = compose("evaluate", [f"checkpoint={trained[1]}", "precision=fp32", "num_workers=0", *extra])
        return evaluate_cli.run(cfg, tmp_path / str(len(extra)))

    plain = evaluate()
    with caplog.at_level(logging.WARNING, logger="deeplab.data"):
        given = evaluate("dataset=voc", f"dataset.root={trained[0]}", "dataset.mean=[0.9,0.1,0.9]",
                         "dataset.std=[0.05,0.05,0.05]")
    assert "dataset.mean=[0.9, 0.1, 0.9] differs from the checkpoint's" in caplog.text
    assert given["confusion_matrix"] == plain["confusion_matrix"]  # the model saw the input it was trained on


def test_init_from_a_checkpoint_of_other_class_names_and_mean_says_what_the_run_uses(trained, tmp_path, caplog):
    names = ",".join(["sky", *(f"c{i}" for i in range(1, 21))])
    cfg = compose("train", ["dataset=voc", *tiny_train_overrides(trained[0], tmp_path / "out", 1),
                            f"init_from={trained[1]}", f"dataset.class_names=[{names}]", "dataset.mean=[0.5,0.5,0.5]"])
    with caplog.at_level(logging.WARNING, logger="deeplab.data"):
        train(cfg, tmp_path / "run")
    assert "init_from=" in caplog.text and "its class 0 is 'sky', the checkpoint's 'background'" in caplog.text
    assert "dataset.mean=[0.5, 0.5, 0.5] differs from the checkpoint's" in caplog.text


@pytest.mark.parametrize("command, arg", [("predict", "dataset=voc"), ("predict", "+dataset=voc"),
                                          ("predict", "+foo=1"), ("export", "+dataset=voc"), ("bench", "+dataset=voc")])
def test_a_dataset_or_key_a_command_would_ignore_is_refused(command, arg, entry_point, checkpoint, tmp_path, capsys,
                                                            monkeypatch):
    """predict and export take the classes, palette and mean/std from the checkpoint: `dataset=voc` ended in Hydra's
    advice to write `+dataset=voc`, which (like any `+key=` the command's config lacks) was then silently ignored."""
    from deeplab.cli import bench, export, predict

    write_image(tmp_path / "in" / "a.jpg")
    monkeypatch.chdir(tmp_path)
    main = {"predict": predict.main, "export": export.main, "bench": bench.main}[command]
    code = entry_point(main, f"checkpoint={checkpoint}", f"input={tmp_path / 'in'}", f"output={tmp_path / 'out'}",
                       arg) if command == "predict" else entry_point(main, f"checkpoint={checkpoint}", arg)
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and err.startswith(f"{arg}: ") and "drop it" in err, err
    assert not (tmp_path / "out").exists() and not (tmp_path / "outputs").exists()
