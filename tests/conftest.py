"""Tiny synthetic datasets built in temp dirs: nothing is downloaded."""

import hashlib
import logging
import os
import shutil
import socket
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

import peer_formats
from deeplab.engine import trainer as trainer_module

MAX_WORKERS = 4  # pytest-xdist processes for `-n auto` (pyproject's addopts): each imports torch and holds a model


def pytest_xdist_auto_num_workers(config) -> int:
    """`-n auto`: one test process per CPU this process may run on, up to MAX_WORKERS (xdist's own count would be the
    physical cores, 1 on a 2-vCPU machine)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(cpus, MAX_WORKERS)


if os.environ.get("PYTEST_XDIST_WORKER"):
    # Each of N test processes gets 1/N of the threads torch and OpenCV would take: N processes each running a pool
    # as wide as the machine spin against each other (measured: -n 2 without this is no faster than one process).
    _share = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    torch.set_num_threads(max(1, torch.get_num_threads() // _share))
    cv2.setNumThreads(max(1, cv2.getNumThreads() // _share))

VOC_PALETTE = [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0], [0, 0, 128]]


def palette_png(path: Path, mask: np.ndarray, palette=VOC_PALETTE) -> None:
    """Save a class-index mask as a palette PNG, the way VOC ships its masks."""
    img = Image.fromarray(mask.astype(np.uint8), mode="P")
    flat = [c for rgb in palette for c in rgb]
    img.putpalette(flat + [224, 224, 192] * (256 - len(palette)))
    img.save(path)


def make_mask(rng: np.random.Generator, height: int, width: int, num_classes: int) -> np.ndarray:
    """Background with one or two rectangles of object classes, each ringed by a 255 border like VOC."""
    mask = np.zeros((height, width), np.uint8)
    for _ in range(rng.integers(1, 3)):
        cls = int(rng.integers(1, num_classes))
        y0, x0 = int(rng.integers(0, height // 2)), int(rng.integers(0, width // 2))
        y1, x1 = y0 + int(rng.integers(6, height // 2)), x0 + int(rng.integers(6, width // 2))
        mask[y0:y1, x0:x1] = 255
        mask[y0 + 1:y1 - 1, x0 + 1:x1 - 1] = cls
    return mask


def image_for(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An RGB image whose colour encodes the class, so alignment with the mask can be checked."""
    colours = np.array(VOC_PALETTE + [[200, 200, 200]] * 251, np.int16)
    image = colours[mask] + rng.integers(-8, 9, (*mask.shape, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def make_voc_tree(root: Path, *, n_train: int = 4, n_val: int = 3, size=(48, 64), num_classes: int = 5,
                  mask_dir: str = "SegmentationClass", seed: int = 0) -> Path:
    """A VOC-layout root: JPEGImages/*.jpg, <mask_dir>/*.png (palette), ImageSets/Segmentation/{train,val}.txt."""
    rng = np.random.default_rng(seed)
    for sub in ("JPEGImages", mask_dir, "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    ids = {"train": [f"2007_{i:06d}" for i in range(n_train)],
           "val": [f"2008_{i:06d}" for i in range(n_val)]}
    for split, split_ids in ids.items():
        for i, sample_id in enumerate(split_ids):
            h, w = size if i % 2 == 0 else (size[1], size[0])  # mixed orientations
            mask = make_mask(rng, h, w, num_classes)
            Image.fromarray(image_for(mask, rng)).save(root / "JPEGImages" / f"{sample_id}.jpg", quality=95)
            palette_png(root / mask_dir / f"{sample_id}.png", mask)
        (root / "ImageSets/Segmentation" / f"{split}.txt").write_text("\n".join(split_ids) + "\n")
    return root


@pytest.fixture
def voc_root(tmp_path: Path) -> Path:
    return make_voc_tree(tmp_path / "VOC2012")


REPO = Path(__file__).resolve().parents[1]


# --- shared by the catalogues of mistakes (test_bad_inputs_*) -------------------------------------------------------

VOC = dict(format="voc", num_classes=5, class_names=["bg", "a", "b", "c", "d"],
           palette=[[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0], [0, 0, 128]])
FOLDER = dict(format="folder", num_classes=2, class_names=["background", "object"])


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under root with its bytes: a check must leave the user's data exactly as it was."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def one_sentence(exc, *names) -> str:
    """The message of `exc` (an exception, or what pytest.raises caught), asserted to be one line, with no traceback,
    that names each of `names`."""
    text = str(exc.value if isinstance(exc, pytest.ExceptionInfo) else exc)
    assert "\n" not in text and "Traceback" not in text, text
    for name in names:
        assert str(name) in text, f"{name!r} not in: {text}"
    return text


def object_mask(size=(24, 32), value=1) -> np.ndarray:
    """A binary mask: a filled rectangle of `value` on 0."""
    mask = np.zeros(size, np.uint8)
    mask[4:16, 6:20] = value
    return mask


def make_folder(root: Path, masks: dict[str, np.ndarray], *, image_ext=".png", splits=None) -> Path:
    """A folder dataset: images/<stem><image_ext> (lossless), masks/<stem>.png greyscale, optional splits/*.txt."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for stem, mask in masks.items():
        Image.fromarray(np.dstack([mask * 3] * 3)).save(root / "images" / f"{stem}{image_ext}")
        Image.fromarray(mask).save(root / "masks" / f"{stem}.png")
    if splits is not None:
        (root / "splits").mkdir()
        for split, ids in splits.items():
            (root / "splits" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    return root


def digest(root: Path) -> dict[Path, str]:
    """Path -> sha256 of every file under root: what must be byte-identical after a refused command."""
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def write_image(path: Path, size=(24, 32), value=0) -> Path:
    """A random RGB image (seeded by `value`) saved at path, its folders made."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(value).integers(0, 256, (*size, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path, quality=95)
    return path


@pytest.fixture
def checkpoint(trained, tmp_path):
    """A private copy of the session's trained checkpoint, so a test may hash it and try to break it."""
    shutil.copy(trained[1], tmp_path / "best.pt")
    return tmp_path / "best.pt"


def run_predict(checkpoint, inputs, *extra, output):
    """Run predict.py's body in-process; returns the number of unreadable images."""
    from deeplab.cli import predict as predict_cli

    cfg = compose("predict", [f"checkpoint={checkpoint}", f"input={inputs}", f"output={output}", "precision=fp32",
                              *extra])
    return predict_cli.run(cfg, output.parent / "run")


def predict_refused(error, checkpoint, inputs, *extra, output, names=()):
    """predict refuses with one sentence naming `names`; every file that existed is byte-identical and none is new."""
    root = checkpoint.parent
    before = digest(root)
    with pytest.raises(error) as info:
        run_predict(checkpoint, inputs, *extra, output=output)
    after = digest(root)
    assert after == before, f"files changed or were written: {set(after) ^ set(before)}"
    return one_sentence(info, *names)


def count_batchnorms(model: torch.nn.Module) -> int:
    """How many BatchNorm layers are left (0 after folding a DeepLabV3+)."""
    return sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


def compose(config_name: str, overrides: list[str]):
    """The real Hydra config, composed as the command line would, with test overrides."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        return hydra_compose(config_name, overrides=overrides)


# a narrower head and backbone for the tiny trainings: 0.5M parameters instead of 2.7M, a 7 MB checkpoint instead of
# 33 MB, half the step time; every code path is the default model's
TINY_MODEL = ("model.backbone.width_mult=0.5", "model.aspp_channels=32", "model.low_level_channels=16",
              "model.decoder_channels=32")


def tiny_train_overrides(root: Path, out: Path, iterations: int = 3, model=TINY_MODEL) -> list[str]:
    """A training run that takes seconds on a CPU: tiny crops, batch 4, no workers, checkpoints every 2 iters, and no
    TensorBoard images (the matplotlib figures and image grid are half of such a run; test_train's smoke test turns
    them on). `model=()` trains the default model's widths (what a test about the default architecture needs)."""
    return [f"dataset.root={root}", f"output_root={out}", f"trainer.iterations={iterations}",
            "trainer.batch_size=4", "trainer.val_every=2", "trainer.checkpoint_every=2", "trainer.log_every=1",
            "trainer.num_workers=0", "trainer.precision=fp32", "trainer.grid_images=0", "trainer.log_figures=false",
            "augment.crop_size=[64,64]",
            "model.separable=true", "model.backbone_weights=null", "optim.lr=0.002", *model]


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """A tiny VOC-layout dataset and a checkpoint trained on it for 2 iterations."""
    from deeplab.engine.trainer import train

    tmp = tmp_path_factory.mktemp("inference")
    tree = make_voc_tree(tmp / "VOC", n_train=4, n_val=3, size=(48, 64))
    train(compose("train", ["dataset=voc", *tiny_train_overrides(tree, tmp / "outputs", iterations=2)]), tmp / "run")
    return tree, tmp / "run" / "last.pt"


@pytest.fixture
def entry_point(monkeypatch):
    """run(main, *args): a command's Hydra main run in this process as `python <script> *args` runs it (the same
    argument parsing, config composition, logging setup and user_errors exit), without the 4-5 s of a new
    interpreter importing torch. Returns the exit code. The logging Hydra set up is undone afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level

    def run(main, *args) -> int:
        monkeypatch.setattr(sys, "argv", [main.__module__, *map(str, args)])
        try:
            main()
        except SystemExit as exc:
            return 0 if exc.code is None else exc.code
        return 0

    yield run
    for handler in root.handlers[:]:
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    for handler in handlers:
        if handler not in root.handlers:
            root.addHandler(handler)
    root.setLevel(level)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Split statistics (deeplab.data.statistics) are cached in a folder of this test session's, not the user's."""
    monkeypatch.setenv("DEEPLAB_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "deeplab-cache"))


@pytest.fixture(autouse=True)
def _thread_counts_restored():
    """Some code under test sets process-wide thread counts (the bench's loader section measures one worker with
    torch.set_num_threads(1)); every test gets back the counts it started with, so no later test runs on one thread."""
    torch_threads, cv2_threads = torch.get_num_threads(), cv2.getNumThreads()
    yield
    torch.set_num_threads(torch_threads)
    cv2.setNumThreads(cv2_threads)


def kill_at_step(monkeypatch, step: int):
    """Make the trainer's optimizer step raise KeyboardInterrupt (a Ctrl-C mid-step) on its `step`-th call; returns
    the real step, for a test that puts it back and resumes in the same process."""
    real_step, calls = trainer_module.train_step, {"n": 0}

    def dies(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == step:
            raise KeyboardInterrupt("killed")
        return real_step(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "train_step", dies)
    return real_step


@pytest.fixture(scope="module")
def vainf_model():
    """A randomised model in VainF's architecture (tests/peer_formats.py), one per test module."""
    return peer_formats.vainf_model()


@pytest.fixture(scope="module")
def bubbliiiing_model():
    """A randomised model in bubbliiiing's architecture (tests/peer_formats.py), one per test module."""
    return peer_formats.bubbliiiing_model()


def free_port() -> int:
    """A TCP port free on this machine now, for a process group or a torchrun rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
