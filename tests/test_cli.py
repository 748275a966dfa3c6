"""The entry points as a user runs them."""

import subprocess
import sys

from conftest import REPO, make_voc_tree, tiny_train_overrides


def _run(*args, cwd=REPO):
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_missing_data_is_one_clear_line_not_a_traceback(tmp_path):
    done = _run("train.py", "dataset=voc", f"dataset.root={tmp_path / 'nowhere'}", f"output_root={tmp_path}")
    assert done.returncode == 1
    assert "dataset not found: looked for" in done.stdout + done.stderr
    assert "prepare_voc.py --download" in done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr


def test_sweep_runs_each_job_in_its_own_dir(tmp_path):
    tree = make_voc_tree(tmp_path / "VOC", n_train=4, n_val=2, size=(48, 64))
    sweep = tmp_path / "sweep"
    done = _run("train.py", "-m", "optim.lr=0.005,0.01", "dataset=voc", f"hydra.sweep.dir={sweep}",
                *[o for o in tiny_train_overrides(tree, tmp_path / "outputs", iterations=2)
                  if not o.startswith("optim.lr")])
    assert done.returncode == 0, done.stderr[-3000:]
    for job, lr in (("0", 0.005), ("1", 0.01)):
        assert (sweep / job / "last.pt").is_file() and (sweep / job / "tb").is_dir()
        assert f"lr: {lr}" in (sweep / job / ".hydra" / "config.yaml").read_text()
