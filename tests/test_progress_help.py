"""Progress bars behind one switch (DEEPLAB_PROGRESS; nothing on a stream that is not a terminal unless asked, and
never into train.log), and each command's --help: what it does, an example, and only its own config groups."""

import io
import logging
import re
import sys
import warnings

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from conftest import compose, make_voc_tree, tiny_train_overrides
from deeplab import progress
from deeplab.cli import bench, check, evaluate, export, predict, train
from deeplab.data.check import check_dataset
from deeplab.engine.evaluator import evaluate as evaluate_batches
from deeplab.engine.trainer import train as train_run
from deeplab.export import quantize_onnx
from deeplab.onnx_model import INPUT_NAME, OUTPUT_NAME
from test_prepare_voc import load_script, make_tree


class Terminal(io.StringIO):
    """A stderr that says it is a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.fixture
def every_tick(monkeypatch):
    """Bars redraw on every update (not twice a second), and no DEEPLAB_PROGRESS from the caller's shell."""
    monkeypatch.setattr(progress, "MININTERVAL", 0)
    monkeypatch.delenv(progress.ENV, raising=False)


def ticks(err: str, total: int) -> list[int]:
    """The counts a bar showed, in order, each once: [0, 1, ..., total] for a bar that ticked at every item."""
    return list(dict.fromkeys(int(n) for n in re.findall(rf"\| (\d+)/{total} \[", err)))


# --- the switch ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value, disable", [(None, None), ("auto", None), ("", None), ("1", False), ("on", False),
                                            ("TRUE", False), ("0", True), ("off", True), ("false", True)])
def test_the_switch_maps_to_tqdm_disable(monkeypatch, value, disable):
    if value is None:
        monkeypatch.delenv(progress.ENV, raising=False)
    else:
        monkeypatch.setenv(progress.ENV, value)
    assert progress.progress_disable() is disable  # None: tqdm draws only on a terminal
    assert progress.progress_disable(True) is False and progress.progress_disable(False) is True  # a call decides


def test_an_unknown_switch_value_warns_and_counts_as_auto(monkeypatch):
    monkeypatch.setenv(progress.ENV, "maybe")
    with pytest.warns(UserWarning, match="DEEPLAB_PROGRESS='maybe'"):
        assert progress.progress_disable() is None


# --- evaluation ------------------------------------------------------------------------------------------------------

def _scored(images: int = 3, **kwargs):
    """evaluate() of a 1x1-conv 'model' over `images` 8x8 images, one per batch."""
    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 3, 1)
    data = TensorDataset(torch.randn(images, 3, 8, 8), torch.randint(0, 3, (images, 8, 8)))
    matrix, _ = evaluate_batches(model, DataLoader(data, batch_size=1), num_classes=3, device=torch.device("cpu"),
                                 **kwargs)
    return int(matrix.mat.sum())


def test_evaluate_ticks_once_per_image_when_forced_on_a_non_tty_stream(every_tick, capsys):
    assert _scored(3, progress=True) == 3 * 64
    err = capsys.readouterr().err
    assert ticks(err, 3) == [0, 1, 2, 3]  # drawn at 0, then at every image (and once more when closed)
    assert err.lstrip("\r").startswith("evaluate:") and "images/s" in err


def test_evaluate_over_batches_of_unknown_number_counts_images_with_a_rate(every_tick, capsys):
    model = torch.nn.Conv2d(3, 3, 1)
    batches = ((torch.randn(2, 3, 8, 8), torch.zeros(2, 8, 8, dtype=torch.long)) for _ in range(2))  # no len()
    evaluate_batches(model, batches, num_classes=3, device=torch.device("cpu"), progress=True)
    err = capsys.readouterr().err
    assert "evaluate: 4 [" in err and "images/s]" in err and "s/ images" not in err


def test_evaluate_prints_nothing_when_off_or_when_stderr_is_not_a_terminal(every_tick, monkeypatch, capsys):
    _scored(2, progress=False)
    _scored(2)  # the switch unset: capsys's stderr is not a terminal
    monkeypatch.setenv(progress.ENV, "auto")
    _scored(2)
    assert capsys.readouterr().err == ""


def test_the_switch_turns_a_terminal_bar_off_and_a_file_bar_on(every_tick, monkeypatch, capsys):
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    _scored(2)  # unset: a terminal gets a bar
    assert "evaluate: 100%" in terminal.getvalue() and "2/2" in terminal.getvalue()
    terminal.truncate(0)
    monkeypatch.setenv(progress.ENV, "0")
    _scored(2)
    assert terminal.getvalue().strip("\0") == ""
    monkeypatch.undo()  # stderr back to capsys's (not a terminal), the switch unset again
    monkeypatch.setattr(progress, "MININTERVAL", 0)
    monkeypatch.setenv(progress.ENV, "1")
    _scored(2)
    assert "2/2" in capsys.readouterr().err


# --- validation inside training ------------------------------------------------------------------------------------

def test_validation_bar_sits_under_the_training_bar_and_never_reaches_train_log(tmp_path, every_tick, monkeypatch,
                                                                               capsys):
    monkeypatch.setenv(progress.ENV, "1")  # both bars drawn, into capsys's stderr
    tree = make_voc_tree(tmp_path / "VOC", n_train=4, n_val=2, size=(48, 64))
    console = logging.StreamHandler(sys.stderr)  # a console log handler, as Hydra's, on the bars' stream
    console.setFormatter(logging.Formatter("LOG %(message)s"))
    logging.getLogger().addHandler(console)
    try:
        train_run(compose("train", ["dataset=voc", *tiny_train_overrides(tree, tmp_path / "out", iterations=2)]),
                  tmp_path / "run")
    finally:
        logging.getLogger().removeHandler(console)
    err = capsys.readouterr().err
    assert "train:" in err and "validate:" in err and "2/2" in err
    logged = [line.split("\r")[-1] for line in err.split("\n") if "iter 1  loss" in line or "val @ iter 2" in line]
    assert len(logged) == 2 and all(line.startswith("LOG ") for line in logged), logged  # on lines of their own
    log = (tmp_path / "run" / "train.log").read_text()
    assert "val @ iter 2" in log and "iter 2  loss" in log  # the log lines still go through logging
    for fragment in ("\r", "it/s", "images/s", "validate:", "%|", "\x1b["):
        assert fragment not in log, f"tqdm output {fragment!r} in train.log"


def test_a_bar_opened_under_another_goes_below_it_and_is_cleared(every_tick):
    outer = progress.progress_bar(desc="train", total=4, progress=True)
    inner = progress.progress_bar(desc="validate", total=2, progress=True)
    try:
        assert (outer.pos, inner.pos) == (0, 1)
    finally:
        inner.close()
        outer.close()
    assert outer.leave is None and inner.leave is None  # tqdm: kept at position 0 only


# --- the dataset checker, int8 calibration, prepare_voc ------------------------------------------------------------

def test_checker_shows_one_bar_per_split_in_samples_per_second(voc_root, every_tick, capsys):
    data = dict(format="voc", root=str(voc_root), num_classes=5, ignore_index=255, train_split="train",
                val_split="val")
    check_dataset(**data)
    assert capsys.readouterr().err == ""
    reports = check_dataset(progress=True, **data)
    err = capsys.readouterr().err
    assert [r.samples for r in reports] == [4, 3]
    assert "check train: 100%" in err and "4/4" in err and "check val: 100%" in err and "3/3" in err
    assert "samples/s" in err


def test_int8_calibration_ticks_once_per_image(tmp_path, every_tick, capsys):
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter's deprecation notice
        torch.onnx.export(net, (torch.randn(1, 3, 8, 8),), str(tmp_path / "f.onnx"), dynamo=False, opset_version=17,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME])
    rng = np.random.default_rng(0)
    images = [rng.normal(size=(1, 3, 8, 8)).astype(np.float32) for _ in range(3)]
    quantize_onnx(tmp_path / "f.onnx", tmp_path / "a.onnx", images)
    assert capsys.readouterr().err == ""
    quantize_onnx(tmp_path / "f.onnx", tmp_path / "b.onnx", images, progress=True)
    err = capsys.readouterr().err
    assert ticks(err, 3) == [0, 1, 2, 3]
    assert err.lstrip("\r").startswith("int8 calibration:") and "images/s" in err


def test_prepare_voc_draws_a_bar_only_when_asked(tmp_path, every_tick, monkeypatch, capsys):
    prep = load_script()
    make_tree(tmp_path)
    assert prep.main(["--root", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert err == "" and "SBD masks converted:" in out and "SBD masks:" not in out  # no more every-1,000 count
    monkeypatch.setenv(progress.ENV, "1")
    assert prep.main(["--root", str(tmp_path)]) == 0  # a second run: identical files, the same two bars
    err = capsys.readouterr().err
    assert "VOC masks: 100%" in err and "SBD masks: 100%" in err and "masks/s" in err


# --- --help --------------------------------------------------------------------------------------------------------

TRAIN_GROUPS = {"augment", "dataset", "experiment", "loss", "model", "model/backbone", "optim", "recipe",
                "recipe/backbone", "recipe/optim", "schedule", "trainer"}
HELP = [  # command, what the page says it does, an example it gives, the config groups it lists
    (train, "train.py: train DeepLabV3+", "python train.py experiment=voc_os16", TRAIN_GROUPS),
    (predict, "predict.py: label maps", "python predict.py checkpoint=", set()),
    (evaluate, "evaluate.py: the mIoU of a checkpoint", "python evaluate.py checkpoint=", {"dataset"}),
    (export, "python -m deeplab.export: a trained checkpoint in a deployment format",
     "python -m deeplab.export checkpoint=", set()),
    (bench, "python -m deeplab.bench: the speed levers", "python -m deeplab.bench sections=", {"model/backbone"}),
    (check, "python -m deeplab.data.check: read every sample", "python -m deeplab.data.check dataset=", {"dataset"}),
]


def listed_groups(page: str) -> dict[str, str]:
    """{group: its options line} from the page's '== Configuration groups ==' section."""
    section = page.split("== Configuration groups ==", 1)[1].split("Every key with its default", 1)[0]
    return dict(re.findall(r"^([\w/]+): (.+)$", section, re.M))


@pytest.mark.parametrize("command, says, example, groups", HELP, ids=[c[0].__name__.split(".")[-1] for c in HELP])
def test_help_says_what_the_command_does_gives_examples_and_lists_only_its_groups(command, says, example, groups,
                                                                                 entry_point, capsys):
    assert entry_point(command.main, "--help") == 0
    page = capsys.readouterr().out
    assert page.startswith(says), page[:300]
    assert "Main options" in page and "\nExamples\n" in page and example in page
    assert set(listed_groups(page)) == groups, page
    assert "--hydra-help" in page and "--cfg job" in page
    if command is predict:
        assert "optim" not in page and "schedule" not in page and "trainer" not in page


def test_help_stars_the_options_in_use_after_the_command_line(entry_point, capsys):
    assert entry_point(train.main, "dataset=voc", "optim=adamw", "--help") == 0
    groups = listed_groups(capsys.readouterr().out)
    assert groups["dataset"] == "camvid, cityscapes, coco, demo, folder, voc*, voc_aug"
    assert groups["optim"] == "adamw*, sgd"
    assert groups["experiment"].endswith("(none in use)")


def test_hydra_help_is_still_hydras_own_page(entry_point, capsys):
    assert entry_point(predict.main, "--hydra-help") == 0
    page = capsys.readouterr().out
    assert "Hydra (" in page and "hydra/help: " in page and "--cfg,-c" in page
