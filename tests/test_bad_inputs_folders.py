"""Catalogue of the third sweep's folder cases: run folders two commands share, cannot make, or cannot write (as a
user without write permission: root, as CI runs, is given up its power to write anywhere), names and paths at the
file system's limits, and a run's relative dataset root read from another folder. Each refusal is one sentence
naming the key to set, with nothing written."""

import os
import shutil
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest
import torch

from conftest import REPO, digest, make_voc_tree
from deeplab.cli.command_line import config_sources
from deeplab.cli.evaluate import main as evaluate_main
from deeplab.cli.run_dirs import making_run_dirs
from deeplab.cli.train import main as train_main
from deeplab.engine.checkpoint import load_checkpoint


class _OneSecond(datetime):
    """Every command starts in the same second."""

    @classmethod
    def now(cls, tz=None):
        return cls(2026, 1, 2, 3, 4, 5)


@pytest.mark.parametrize("config, folder, parent", [("train", "run", "outputs/train"),
                                                    ("train", "sweep", "outputs/multirun"),
                                                    ("evaluate", "run", "outputs/evaluate"),
                                                    ("predict", "run", "outputs/predict")])
def test_commands_started_in_one_second_never_share_a_run_folder(config, folder, parent, tmp_path, monkeypatch):
    """Each command's run folder (train's, its sweeps', evaluate's, predict's) is made by the command itself with an
    exclusive mkdir; the next one that second gets _02, then _03: names that still sort by time."""
    from hydra import compose

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("deeplab.cli.run_dirs.datetime", _OneSecond)
    made = []
    with config_sources():
        for _ in range(3):  # three commands, each its own process
            with making_run_dirs():
                cfg = compose(config, return_hydra_config=True)
                made.append(cfg.hydra[folder].dir)
                assert cfg.hydra[folder].dir == made[-1]  # resolved again: the same folder, not another
    first = f"{parent}/2026-01-02_03-04-05"
    assert made == [first, f"{first}_02", f"{first}_03"] == sorted(made)
    assert all((tmp_path / m).is_dir() for m in made)
    with config_sources():  # outside a command's run (its command-line check, --cfg): named, not made
        assert compose(config, return_hydra_config=True).hydra[folder].dir == first
    assert sorted(p.name for p in (tmp_path / parent).iterdir()) == [Path(m).name for m in made]


def test_two_evaluations_in_one_second_each_keep_their_metrics(trained, entry_point, tmp_path, monkeypatch):
    tree, checkpoint = trained
    monkeypatch.chdir(tmp_path)
    for clock in ("deeplab.cli.run_dirs.datetime", "hydra.core.utils.datetime"):  # ours, and Hydra's ${now:...}
        monkeypatch.setattr(clock, _OneSecond, raising=False)
    for _ in range(2):
        assert entry_point(evaluate_main, f"checkpoint={checkpoint}", f"data_root={tree}", "num_workers=0",
                           "precision=fp32") == 0
    runs = sorted((tmp_path / "outputs" / "evaluate").iterdir())
    assert [r.name for r in runs] == ["2026-01-02_03-04-05", "2026-01-02_03-04-05_02"]
    assert all((r / "metrics.json").is_file() and (r / "evaluate.log").is_file() for r in runs)


def test_a_run_trained_on_a_relative_root_evaluated_elsewhere_says_so_and_leaves_no_folder(
        trained, entry_point, capsys, tmp_path, monkeypatch):
    tree, checkpoint = trained
    state = load_checkpoint(checkpoint)
    state["config"]["dataset"]["root"] = "VOC"  # trained in the folder holding VOC/, as `dataset.root=VOC`
    relative = tmp_path / "relative.pt"
    torch.save(state, relative)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code = entry_point(evaluate_main, f"checkpoint={relative}", "num_workers=0")
    out = "".join(capsys.readouterr())
    errors = [line for line in out.splitlines() if "ERROR" in line]
    assert code == 1 and len(errors) == 1 and "Traceback" not in out, out[-3000:]
    assert "dataset.root=VOC (relative: read from the current folder " + str(elsewhere) in errors[0]
    assert "data_root=" in errors[0]
    assert [p.relative_to(elsewhere).as_posix() for p in elsewhere.rglob("*")] == ["outputs", "outputs/evaluate"]
    monkeypatch.chdir(tree.parent)  # from the folder it trained in, the same checkpoint evaluates
    assert entry_point(evaluate_main, f"checkpoint={relative}", "num_workers=0", "precision=fp32",
                       f"hydra.run.dir={tmp_path / 'ev'}") == 0


def _one_sentence(code: int, err: str, *words) -> None:
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in err, err[-3000:]
    for word in words:
        assert word in err, f"{word!r} not in: {err}"


def test_run_folder_names_and_paths_longer_than_the_file_system_takes_are_one_sentence(
        entry_point, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    long_name = tmp_path / ("a" * 256) / "run"  # one name over NAME_MAX (255 bytes)
    _one_sentence(entry_point(evaluate_main, "checkpoint=x.pt", f"hydra.run.dir={long_name}"),
                  capsys.readouterr().err, "hydra.run.dir: the folder name aaaa", "256 bytes", "at most 255")
    deep = tmp_path.joinpath(*["abcdefghi"] * 420)  # names of 9 bytes, a path over PATH_MAX (4096 bytes)
    _one_sentence(entry_point(train_main, f"output_root={deep}"), capsys.readouterr().err,
                  "output_root: the run folder's full path", "choose a shorter path")
    near = tmp_path.joinpath(*["abcdefghi"] * 395)  # itself under 4096 bytes, but not with the files of a run
    _one_sentence(entry_point(train_main, f"output_root={near}"), capsys.readouterr().err, "output_root:",
                  "no room for its files' names")
    assert list(tmp_path.iterdir()) == []


def test_a_run_folder_under_a_broken_link_is_one_sentence(entry_point, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").symlink_to(tmp_path / "unmounted" / "runs")  # a link to storage that is not there
    _one_sentence(entry_point(train_main, "output_root=runs"), capsys.readouterr().err,
                  "output_root=runs: runs is a link to", "which does not exist")
    assert [p.name for p in tmp_path.iterdir()] == ["runs"]


def test_an_empty_output_root_is_one_sentence_not_a_folder_at_the_top_of_the_file_system(
        entry_point, capsys, tmp_path, monkeypatch):
    """output_root= made Hydra's ${output_root}/${now:...} a folder in / (as root, it was made), null one named None."""
    monkeypatch.chdir(tmp_path)
    for value in ("", "null"):  # (a missing dataset: a run that got past the check stops at once)
        code = entry_point(train_main, "dataset=voc", f"dataset.root={tmp_path / 'VOC'}", f"output_root={value}")
        _one_sentence(code, capsys.readouterr().err, f"output_root={value}: empty", "output_root=outputs/train")
    assert list(tmp_path.iterdir()) == []


# --- as a user who cannot write: each command as a process ------------------------------------------------------

def _as_user(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """`python args` as a user without root's power over file permissions (root: the same uid, with the two
    capabilities that let it write and search anywhere dropped from the process), so a folder without write
    permission is one for it too; the environment, its interpreter and the checkout stay readable."""
    prefix = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        drop = [setpriv, "--bounding-set=-dac_override,-dac_read_search", "--"] if setpriv else None
        if drop is None or subprocess.run([*drop, "true"], capture_output=True).returncode != 0:
            pytest.skip("running as root, and cannot drop root's power over file permissions here (setpriv)")
        prefix = drop
    env = {**os.environ, "DEEPLAB_PROGRESS": "0", "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run([*prefix, sys.executable, *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env=env)


@pytest.fixture
def read_only(tmp_path):
    """A folder nobody may write into (a read-only checkout, or someone else's folder)."""
    folder = tmp_path / "read_only"
    folder.mkdir()
    (folder / "notes.txt").write_text("theirs")
    folder.chmod(0o555)
    yield folder
    folder.chmod(0o755)


def _refused(done: subprocess.CompletedProcess, *words) -> str:
    out = done.stdout + done.stderr
    assert done.returncode == 1 and "Traceback" not in out, out[-3000:]
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1, out[-3000:]
    for word in words:
        assert word in lines[0], f"{word!r} not in: {lines[0]}"
    return lines[0]


@pytest.mark.slow  # the command as a process, as another user
def test_training_in_a_read_only_folder_names_output_root(trained, read_only):
    tree, _ = trained
    before = digest(read_only)
    done = _as_user([REPO / "train.py", "dataset=voc", f"dataset.root={tree}"], cwd=read_only)
    _refused(done, "output_root=outputs/train: ", f"{read_only} cannot be written", "no write permission",
             "set output_root= to a folder you can write")
    done = _as_user([REPO / "train.py", "-m", "optim.lr=0.1,0.2", "dataset=voc", f"dataset.root={tree}"],
                    cwd=read_only)  # a sweep's folder: outputs/multirun/<date_time> here
    _refused(done, "hydra.sweep.dir=outputs/multirun/", "set hydra.sweep.dir= to a folder you can write")
    assert digest(read_only) == before


@pytest.mark.slow  # the command as a process, as another user
def test_an_evaluation_whose_run_folder_is_under_a_read_only_folder_names_hydra_run_dir(trained, read_only, tmp_path):
    _, checkpoint = trained
    before = digest(read_only)
    done = _as_user([REPO / "evaluate.py", f"checkpoint={checkpoint}", f"hydra.run.dir={read_only / 'eval'}"],
                    cwd=tmp_path)
    _refused(done, f"hydra.run.dir={read_only / 'eval'}: ", "cannot be made", "set hydra.run.dir=")
    assert digest(read_only) == before


@pytest.mark.slow  # the command as a process, as another user
def test_predict_into_a_writable_output_works_from_a_read_only_folder(trained, read_only, tmp_path):
    """predict's run folder is its output= folder (predict.log and .hydra/ go with the outputs), so nothing is made
    in the current folder; without output= the sentence names the key to set."""
    tree, checkpoint = trained
    before = digest(read_only)
    out = tmp_path / "masks"
    done = _as_user([REPO / "predict.py", f"checkpoint={checkpoint}", f"input={tree / 'JPEGImages'}",
                     f"output={out}", "precision=fp32", "save_color=false", "save_overlay=false"], cwd=read_only)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert len(list(out.glob("*.png"))) == 7 and (out / "predict.log").is_file() and (out / ".hydra").is_dir()
    done = _as_user([REPO / "predict.py", f"checkpoint={checkpoint}", f"input={tree / 'JPEGImages'}"], cwd=read_only)
    _refused(done, "hydra.run.dir=outputs/predict/", "set output= to a folder you can write")
    assert digest(read_only) == before


@pytest.mark.slow  # the command as a process, as another user
def test_a_demo_dataset_that_cannot_be_written_names_dataset_root(read_only, tmp_path):
    before = digest(read_only)
    done = _as_user([REPO / "train.py", f"output_root={tmp_path / 'runs'}", "trainer.iterations=1",
                     "schedule.warmup_iters=0"], cwd=read_only)
    out = done.stdout + done.stderr
    errors = [line for line in out.splitlines() if "ERROR" in line]
    assert done.returncode == 1 and len(errors) == 1 and "Traceback" not in out, out[-3000:]
    assert "dataset.root=datasets/demo (relative: read from the current folder " in errors[0]
    assert "Permission denied" in errors[0] and "set dataset.root= to a folder you can write" in errors[0]
    assert digest(read_only) == before


@pytest.mark.slow  # the command as a process, as another user
def test_coco_on_a_read_only_root_names_dataset_cache_dir(read_only, tmp_path):
    """COCO's masks are rasterised into a cache under the root on first use: a shared read-only copy of COCO says
    which key moves the cache, not only that a folder could not be made."""
    from test_coco import make_coco_tree

    read_only.chmod(0o755)
    root = make_coco_tree(read_only / "coco")
    folders = [root, *(p for p in root.rglob("*") if p.is_dir())]
    for folder in folders:
        folder.chmod(0o555)
    try:
        before = digest(read_only)
        check = ["-m", "deeplab.data.check", "dataset=coco", f"dataset.root={root}", "splits=val2017", "workers=0"]
        done = _as_user(check, cwd=tmp_path)
        out = done.stdout + done.stderr
        assert done.returncode == 1 and "Traceback" not in out, out[-3000:]
        assert f"dataset.cache_dir={root / 'semantic_masks'}: the rasterised masks' cache is written there" in out
        assert "set dataset.cache_dir= to a folder you can write" in out
        assert digest(read_only) == before
        done = _as_user([*check, f"dataset.cache_dir={tmp_path / 'cache'}"], cwd=tmp_path)
        assert done.returncode == 0 and "no problems found" in done.stdout, (done.stdout + done.stderr)[-3000:]
    finally:
        for folder in folders:
            folder.chmod(0o755)


@pytest.mark.slow  # the command as a process, as another user
def test_a_dataset_folder_this_user_cannot_read_says_to_give_access_not_to_free_space(tmp_path):
    tree = make_voc_tree(tmp_path / "VOC", n_train=2, n_val=1, size=(24, 32))
    (tree / "JPEGImages").chmod(0o000)
    try:
        done = _as_user(["-m", "deeplab.data.check", "dataset=voc", f"dataset.root={tree}", "workers=0"],
                        cwd=tmp_path)
    finally:
        (tree / "JPEGImages").chmod(0o755)
    out = done.stdout + done.stderr
    assert done.returncode == 1 and "Traceback" not in out, out[-3000:]
    assert f"{tree / 'JPEGImages'}: permission denied" in out and "give this user access to it" in out, out[-3000:]
    assert "free space" not in out
