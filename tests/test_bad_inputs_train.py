"""Catalogue of a training user's mistakes: each ends in one sentence naming the key or file, loses nothing, and a
resumed run takes the safe overrides and refuses the others."""

import hashlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO, compose, make_voc_tree, tiny_train_overrides
from deeplab.data import DataError
from deeplab.engine.checkpoint import load_checkpoint
from deeplab.torch_files import CheckpointError
from deeplab.engine.step import TrainingDiverged
from deeplab.engine.trainer import train
from deeplab.errors import ConfigError, UserError


def _digest(root):
    """Path -> sha256 of every file under root: what must be byte-identical after a refused command."""
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def _cfg(tree, out, *extra, iterations=2):
    return compose("train", ["dataset=voc", *tiny_train_overrides(tree, out, iterations), *extra])


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A VOC tree and a finished 2-iteration run (run dir with last.pt and best.pt)."""
    tmp = tmp_path_factory.mktemp("finished")
    tree = make_voc_tree(tmp / "VOC", n_train=4, n_val=2, size=(48, 64))
    train(_cfg(tree, tmp / "outputs"), tmp / "outputs" / "run")
    return tree, tmp / "outputs" / "run"


@pytest.fixture
def run_copy(finished, tmp_path):
    """A private copy of the finished run and its data, so a test may resume, move or break them."""
    tree, run = finished
    shutil.copytree(tree, tmp_path / "VOC")
    shutil.copytree(run, tmp_path / "outputs" / "run")
    return tmp_path / "VOC", tmp_path / "outputs" / "run"


def _one_sentence(exc_info, *names):
    message = str(exc_info.value)
    assert "\n" not in message and "Traceback" not in message
    for name in names:
        assert name in message, (name, message)
    return message


# --- configuration values: refused before any data is read or any run dir is made ---------------------------------

BAD_VALUES = [
    ("model.output_stride=12", "model.output_stride=12"),
    ("optim.lr=-0.01", "optim.lr=-0.01"),
    ("trainer.batch_size=abc", "trainer.batch_size='abc'"),
    ("trainer.val_every=0", "trainer.val_every=0"),
    ("trainer.iterations=0", "trainer.iterations=0"),
    ("trainer.checkpoint_every=-5", "trainer.checkpoint_every=-5"),
    ("trainer.num_workers=1.5", "trainer.num_workers=1.5"),
    ("trainer.precision=fp8", "trainer.precision='fp8'"),
    ("trainer.precision=fp16", "trainer.precision=fp16"),
    ("trainer.device=cuda", "trainer.device=cuda"),
    ("trainer.device=gpu0", "trainer.device='gpu0'"),
    ("trainer.grad_accum=3", "trainer.grad_accum=3"),
    ("trainer.batch_size=1", "trainer.batch_size=1"),
    ("trainer.grad_accum=4", "trainer.grad_accum=4"),
    ("dataset.num_classes=4", "dataset.num_classes=4"),
    ("dataset.ignore_index=300", "dataset.ignore_index=300"),
    ("+trainer.epochs=5", "trainer.epochs"),
    ("model.backbone.name=resnet34", "resnet34"),
    ("+model.width_mult=0.5", "model.backbone.width_mult"),
    ("+model.backbone.depth=34", "model.backbone.depth"),
    ("optim.name=adam", "optim.name='adam'"),
    ("+optim.momentun=0.8", "optim.momentun"),
    ("schedule.power=0", "schedule.power=0"),
    ("loss.class_weights=[1,2]", "loss.class_weights"),
    ("loss.ohem_fraction=1.5", "loss.ohem_fraction=1.5"),
    ("augment.scale_range=[2.0,0.5]", "augment.scale_range"),
    ("augment.crop_size=[0,64]", "augment.crop_size"),
    ("augment.hflip=2", "augment.hflip=2"),
    ("model.separable=maybe", "model.separable='maybe'"),
    ("dataset.mean=[0.5]", "dataset.mean=[0.5]"),
    ("dataset.std=[0,0,0]", "dataset.std=[0, 0, 0]"),
    ("dataset.class_names=[a,a,b,c,d,e,f,g,h,i,j,k,l,m,n,o,p,q,r,s,t]", "dataset.class_names names 'a'"),
    ("optim=adamw optim.betas=[2,3]", "optim (adamw)"),
    ("seed=abc", "seed='abc'"),
    ("schedule.warmup_iters=5", "schedule.warmup_iters=5"),
]


@pytest.mark.parametrize("override,named", BAD_VALUES, ids=[b[0] for b in BAD_VALUES])
def test_bad_config_value_is_one_sentence_before_anything_is_touched(override, named, voc_root, tmp_path):
    if override == "trainer.device=cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    before = _digest(voc_root)
    run_dir = tmp_path / "outputs" / "run"
    with pytest.raises(ConfigError) as exc_info:
        train(_cfg(voc_root, tmp_path / "outputs", *override.split()), run_dir)
    _one_sentence(exc_info, named)
    assert not run_dir.exists()  # checked before the run dir is made
    assert _digest(voc_root) == before


def test_offline_imagenet_default_says_where_to_put_the_file_or_how_to_choose_random(voc_root, tmp_path,
                                                                                     monkeypatch):
    import urllib.error

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    overrides = [o for o in tiny_train_overrides(voc_root, tmp_path / "out", 2, model=())
                 if "backbone_weights" not in o]
    cfg = compose("train", ["dataset=voc", *overrides])
    assert cfg.model.backbone_weights == "imagenet"  # what `python train.py dataset=voc` asks for
    with pytest.raises(ConfigError) as exc_info:
        train(cfg, tmp_path / "run")
    _one_sentence(exc_info, "model.backbone_weights=imagenet", str(tmp_path / "torch"), "model.backbone_weights=null")


# --- resume: safe overrides applied, the others refused -------------------------------------------------------------

def test_resume_extends_a_finished_run_and_says_how_the_schedule_changes(run_copy, tmp_path, caplog):
    tree, run = run_copy
    with caplog.at_level("INFO"):
        train(_cfg(tree, tmp_path / "outputs", f"resume={run / 'last.pt'}", "trainer.iterations=4"),
              tmp_path / "outputs" / "stub", overrides=["resume=" + str(run / "last.pt"), "trainer.iterations=4"])
    last = load_checkpoint(run / "last.pt")
    assert last["iteration"] == 4 and last["config"]["trainer"]["iterations"] == 4
    assert "trainer.iterations 2 -> 4: the learning-rate schedule now ends at iteration 4" in caplog.text
    # at iteration 2 the old schedule had ended (LR 0); the new one is at 0.002 * (1 - 2/4)^0.9
    assert f"the LR at iteration 2 goes from 0 to {0.002 * 0.5 ** 0.9:.3g}" in caplog.text


def test_resume_after_the_data_moved_reads_the_new_root(run_copy, tmp_path):
    tree, run = run_copy
    moved = tmp_path / "moved" / "VOC"
    shutil.move(str(tree), moved)
    overrides = [f"resume={run}", f"dataset.root={moved}", "trainer.iterations=3"]
    train(_cfg(tree, tmp_path / "outputs", *overrides), tmp_path / "outputs" / "stub", overrides=overrides)
    last = load_checkpoint(run / "last.pt")
    assert last["iteration"] == 3 and last["config"]["dataset"]["root"] == str(moved)


REFUSED_ON_RESUME = ["model.separable=false", "model.output_stride=8", "dataset.num_classes=6", "optim=adamw",
                     "optim.lr=0.5", "trainer.batch_size=2", "loss.dice_weight=1.0", "seed=3", "experiment=voc_os8",
                     "dataset=cityscapes"]


@pytest.mark.parametrize("override", REFUSED_ON_RESUME)
def test_resume_refuses_what_would_change_the_model_or_the_optimisation(override, run_copy, tmp_path):
    tree, run = run_copy
    before = _digest(run)
    overrides = [f"resume={run / 'last.pt'}", override]
    cfg = _cfg(tree, tmp_path / "outputs", *overrides) if override != "dataset=cityscapes" else \
        compose("train", [*tiny_train_overrides(tree, tmp_path / "outputs", 2), *overrides])
    with pytest.raises(ConfigError) as exc_info:
        train(cfg, tmp_path / "outputs" / "stub", overrides=overrides)
    message = _one_sentence(exc_info, override, "init_from=")
    assert message.startswith(override)
    assert _digest(run) == before


def test_resume_with_the_original_command_line_repeated_is_fine(run_copy, tmp_path):
    tree, run = run_copy
    overrides = ["dataset=voc", *tiny_train_overrides(tree, tmp_path / "outputs", 3), f"resume={run}"]
    train(compose("train", overrides), tmp_path / "outputs" / "stub", overrides=overrides)
    assert load_checkpoint(run / "last.pt")["iteration"] == 3


def test_resume_below_the_reached_iteration_is_refused_and_equal_trains_nothing(run_copy, tmp_path, caplog):
    tree, run = run_copy
    before = _digest(run)
    overrides = [f"resume={run}", "trainer.iterations=1"]
    with pytest.raises(ConfigError) as exc_info:
        train(_cfg(tree, tmp_path / "outputs", *overrides), tmp_path / "stub", overrides=overrides)
    _one_sentence(exc_info, "trainer.iterations=1", "(2)")
    with caplog.at_level("INFO"):
        train(_cfg(tree, tmp_path / "outputs", f"resume={run}"), tmp_path / "stub", overrides=[f"resume={run}"])
    # the way on names the run: resume=auto with another trainer.iterations is another command, which starts a run
    assert "nothing to train" in caplog.text and f"resume={run / 'last.pt'} trainer.iterations=N" in caplog.text
    assert _digest(run) == before


def test_resume_from_an_older_checkpoint_of_a_run_would_overwrite_its_last_pt_so_is_refused(run_copy, tmp_path):
    tree, run = run_copy
    shutil.copy(run / "last.pt", run / "iter2.pt")  # e.g. a best.pt from before the run went on
    overrides = [f"resume={run}", "trainer.iterations=3"]
    train(_cfg(tree, tmp_path / "outputs", *overrides), tmp_path / "stub", overrides=overrides)  # last.pt: 3
    before = _digest(run)
    overrides = [f"resume={run / 'iter2.pt'}", "trainer.iterations=4"]
    with pytest.raises(ConfigError) as exc_info:
        train(_cfg(tree, tmp_path / "outputs", *overrides), tmp_path / "stub", overrides=overrides)
    _one_sentence(exc_info, f"resume={run / 'iter2.pt'}", "at iteration 2", "last.pt is at 3", "init_from=")
    assert _digest(run) == before


def test_resume_path_with_nothing_there_is_refused_naming_it(voc_root, tmp_path):
    with pytest.raises(CheckpointError) as exc_info:  # resume=auto with nothing to continue starts a new run instead
        train(_cfg(voc_root, tmp_path / "outputs", f"resume={tmp_path / 'nothing_here'}"), tmp_path / "run")
    _one_sentence(exc_info, str(tmp_path / "nothing_here"))
    assert not (tmp_path / "run").exists()


def test_a_second_process_writing_the_same_run_dir_is_refused(run_copy, tmp_path):
    tree, run = run_copy
    (run / ".train.lock").write_text("1")  # pid 1 runs: another training process holds the run
    before = _digest(run)
    overrides = [f"resume={run}", "trainer.iterations=3"]
    with pytest.raises(UserError) as exc_info:
        train(_cfg(tree, tmp_path / "outputs", *overrides), tmp_path / "stub", overrides=overrides)
    _one_sentence(exc_info, str(run), "pid 1", "hydra.run.dir=")
    assert _digest(run) == before
    (run / ".train.lock").write_text("999999999")  # left by a process that has ended: taken over
    train(_cfg(tree, tmp_path / "outputs", *overrides), tmp_path / "stub", overrides=overrides)
    assert load_checkpoint(run / "last.pt")["iteration"] == 3 and not (run / ".train.lock").exists()


def test_init_from_another_architecture_names_the_key(run_copy, tmp_path):
    tree, run = run_copy
    with pytest.raises(UserError) as exc_info:
        train(_cfg(tree, tmp_path / "outputs", f"init_from={run / 'last.pt'}", "model.separable=false"),
              tmp_path / "new")
    _one_sentence(exc_info, "model.separable=True", "model.separable=False")


def test_ctrl_c_saves_between_steps_and_keeps_the_last_checkpoint_during_one(tree_and_out, monkeypatch):
    from deeplab.engine import trainer as trainer_module
    from deeplab.engine.run_state import TrainingInterrupted

    tree, out = tree_and_out
    real_step, calls = trainer_module.train_step, {"n": 0}

    def interrupt_third(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "train_step", interrupt_third)
    with pytest.raises(TrainingInterrupted) as exc_info:  # during a step: last.pt of iteration 2 is what is kept
        train(_cfg(tree, out, iterations=4), out / "a")
    _one_sentence(exc_info, "interrupted at iteration 2: last.pt of iteration 2 kept", f"resume={out / 'a'}")
    monkeypatch.setattr(trainer_module, "train_step", real_step)
    monkeypatch.setattr(trainer_module, "validate", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(TrainingInterrupted) as exc_info:  # between steps (validating): saved where it was
        train(_cfg(tree, out, "trainer.checkpoint_every=100", iterations=4), out / "b")
    _one_sentence(exc_info, "last.pt saved at iteration 2")
    assert load_checkpoint(out / "b" / "last.pt")["iteration"] == 2


@pytest.fixture
def tree_and_out(tmp_path):
    return make_voc_tree(tmp_path / "VOC", n_train=4, n_val=1, size=(48, 64)), tmp_path / "outputs"


def test_a_tiny_image_is_named_before_training(tmp_path):
    tree = make_voc_tree(tmp_path / "VOC", n_train=4, n_val=1, size=(48, 64))
    first = (tree / "ImageSets/Segmentation/train.txt").read_text().split()[0]
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(tree / "JPEGImages" / f"{first}.jpg")
    Image.fromarray(np.zeros((1, 1), np.uint8)).save(tree / "SegmentationClass" / f"{first}.png")
    with pytest.raises(DataError) as exc_info:
        train(_cfg(tree, tmp_path / "outputs"), tmp_path / "run")
    _one_sentence(exc_info, f"{first}.jpg", "1x1", "4 px")


# --- a failure at validation keeps the training done -----------------------------------------------------------------

def test_bad_val_mask_found_at_validation_keeps_the_checkpoint_that_was_due(tmp_path):
    tree = make_voc_tree(tmp_path / "VOC", n_train=4, n_val=3, size=(48, 64))
    last_val = (tree / "ImageSets/Segmentation/val.txt").read_text().split()[-1]
    mask = tree / "SegmentationClass" / f"{last_val}.png"
    Image.fromarray(np.full((30, 30), 1, np.uint8)).save(mask)  # wrong size, past the preflight's one sample
    run_dir = tmp_path / "outputs" / "run"
    with pytest.raises(DataError) as exc_info:
        train(_cfg(tree, tmp_path / "outputs", "trainer.preflight_samples=1", "trainer.val_every=2",
                   "trainer.checkpoint_every=2", iterations=4), run_dir)
    message = _one_sentence(exc_info, str(mask), "saved in", "last.pt", "resume=")
    assert "stopped the run at iteration 2" in message
    assert load_checkpoint(run_dir / "last.pt")["iteration"] == 2


def test_bad_train_mask_met_mid_run_keeps_the_training_done(tmp_path):
    """A bad mask past the preflight, read by a DataLoader worker: one sentence, and the steps before it are kept."""
    tree = make_voc_tree(tmp_path / "VOC", n_train=8, n_val=1, size=(48, 64))
    ids = (tree / "ImageSets/Segmentation/train.txt").read_text().split()
    fifth = ids[np.random.default_rng([0, 0]).permutation(8)[4]]  # TrainBatches' order for seed 0, epoch 0
    mask = tree / "SegmentationClass" / f"{fifth}.png"  # in the third batch of two
    Image.fromarray(np.full((30, 30), 1, np.uint8)).save(mask)
    run_dir = tmp_path / "outputs" / "run"
    cfg = _cfg(tree, tmp_path / "outputs", "trainer.preflight_samples=0", "trainer.num_workers=1",
               "trainer.batch_size=2", "trainer.checkpoint_every=100", "trainer.val_every=100", iterations=6)
    with pytest.raises(DataError) as exc_info:
        train(cfg, run_dir)
    message = _one_sentence(exc_info, str(mask), f"saved in {run_dir / 'last.pt'}", "resume=")
    assert "Original Traceback" not in message and "DataLoader worker" not in message
    assert "stopped the run at iteration 2" in message
    assert load_checkpoint(run_dir / "last.pt")["iteration"] == 2
    _shut_down_left_over_loader_workers()


def _shut_down_left_over_loader_workers():
    """The failed run's loader iterator is left to the garbage collector (its traceback holds it in a cycle), and
    stopping its worker from there waits 5 s, in whichever later test the collection happens to run; a command exits
    instead. Stop it now."""
    import gc

    from torch.utils.data.dataloader import _MultiProcessingDataLoaderIter

    for obj in gc.get_objects():
        if issubclass(type(obj), _MultiProcessingDataLoaderIter):  # type(): isinstance() wakes torch's deprecated names
            obj._shutdown_workers()


# --- as a user runs it: one line, exit 1, no traceback ---------------------------------------------------------------

@pytest.mark.slow  # python train.py as a process
def test_train_py_with_a_bad_value_prints_one_line_and_no_traceback(tmp_path):
    done = subprocess.run([sys.executable, "train.py", "trainer.batch_size=abc", f"output_root={tmp_path}"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    out = done.stdout + done.stderr
    assert "Traceback" not in out
    errors = [line for line in out.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and "trainer.batch_size='abc': must be an integer" in errors[0]
    assert not any(p.name == "last.pt" for p in tmp_path.rglob("*"))


def test_user_error_base_class_covers_the_commands_errors():
    from deeplab.engine.checkpoint import CheckpointError

    assert all(issubclass(e, UserError) for e in (DataError, CheckpointError, ConfigError, TrainingDiverged))


def test_a_run_stopped_during_its_final_validation_finishes_it_on_resume(tree_and_out, monkeypatch, capsys):
    from deeplab.engine import trainer as trainer_module
    from deeplab.engine.run_state import TrainingInterrupted

    tree, out = tree_and_out
    real_validate = trainer_module.validate
    monkeypatch.setattr(trainer_module, "validate", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(TrainingInterrupted) as exc_info:  # Ctrl-C twice during the last validation
        train(_cfg(tree, out, iterations=2), out / "run")
    _one_sentence(exc_info, "last.pt saved at iteration 2", f"resume={out / 'run' / 'last.pt'}")
    assert not (out / "run" / "best.pt").exists()
    monkeypatch.setattr(trainer_module, "validate", real_validate)
    overrides = [f"resume={out / 'run' / 'last.pt'}"]
    train(_cfg(tree, out, *overrides, iterations=2), out / "stub", overrides=overrides)  # the printed command
    assert "final val: mIoU" in capsys.readouterr().out
    best, last = load_checkpoint(out / "run" / "best.pt"), load_checkpoint(out / "run" / "last.pt")
    assert best["iteration"] == last["iteration"] == 2 and last["validated_at"] == 2 and last["metrics"]
    before = _digest(out / "run")
    train(_cfg(tree, out, *overrides, iterations=2), out / "stub", overrides=overrides)  # now nothing is owed
    assert _digest(out / "run") == before


def test_one_class_is_refused_naming_binary_segmentation_as_two(tree_and_out):
    tree, out = tree_and_out
    with pytest.raises(ConfigError) as exc_info:
        train(_cfg(tree, out, "dataset.num_classes=1", "dataset.class_names=null", "dataset.palette=null"), out / "r")
    _one_sentence(exc_info, "dataset.num_classes=1", "num_classes=2", "masks of 0 and 1")
    assert not (out / "r").exists()


def test_a_run_killed_before_its_first_checkpoint_is_not_replaced_by_a_new_run_but_restarts_on_requeue(tree_and_out):
    tree, out = tree_and_out
    run = out / "run"
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text('{"kind": "train", "iteration": 1}\n')  # all a SIGKILL before a save leaves
    before = _digest(run)
    with pytest.raises(ConfigError) as exc_info:
        train(_cfg(tree, out), run, named_run_dir=True)
    _one_sentence(exc_info, f"hydra.run.dir={run}", "(metrics.jsonl)", "resume=auto")
    assert _digest(run) == before
    train(_cfg(tree, out, "resume=auto"), run, named_run_dir=True)  # the requeued command: its own run, from 0
    assert load_checkpoint(run / "last.pt")["iteration"] == 2
