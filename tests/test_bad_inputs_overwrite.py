"""Catalogue of the second sweep: nothing of the user's is ever overwritten or silently skipped. Each case runs the
real command (Hydra included, since Hydra itself wrote into run folders before the command could refuse), ends in
one line naming the file or key, and leaves every file that existed byte-identical."""

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, digest, make_voc_tree, tiny_train_overrides, write_image

pytestmark = pytest.mark.slow  # each case launches the command as a process


def _run(script: str, *args, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "DEEPLAB_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, script, *map(str, args)], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=env)


def _refusal(done: subprocess.CompletedProcess, *names) -> str:
    """The one ERROR line of a refused command, naming each of `names`."""
    out = done.stdout + done.stderr
    assert done.returncode == 1 and "Traceback" not in out, out[-3000:]
    errors = [line for line in out.splitlines() if "ERROR" in line]
    assert len(errors) == 1, out[-3000:]
    for name in names:
        assert str(name) in errors[0], f"{name!r} not in: {errors[0]}"
    return errors[0]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A VOC tree and a run finished by the real train.py: last.pt, best.pt, train.log, .hydra."""
    tmp = tmp_path_factory.mktemp("finished")
    tree = make_voc_tree(tmp / "VOC", n_train=4, n_val=2, size=(48, 64))
    run = tmp / "runs" / "run1"
    done = _run("train.py", "dataset=voc", *tiny_train_overrides(tree, tmp / "runs", 2), f"hydra.run.dir={run}")
    assert done.returncode == 0, done.stderr[-3000:]
    return tree, run


def test_a_first_run_keeps_its_config_and_log_in_its_run_folder(finished):
    _, run = finished
    assert {p.name for p in (run / ".hydra").iterdir()} == {"config.yaml", "hydra.yaml", "overrides.yaml"}
    assert "trainer.iterations=2" in (run / ".hydra" / "overrides.yaml").read_text()
    log = (run / "train.log").read_text()
    assert "training on cpu" in log and "val @ iter 2" in log


def test_a_new_run_into_a_folder_that_holds_a_run_is_refused_and_the_run_is_untouched(finished):
    tree, run = finished
    before = digest(run)
    done = _run("train.py", "dataset=voc", *tiny_train_overrides(tree, run.parent, 2), f"hydra.run.dir={run}")
    _refusal(done, f"hydra.run.dir={run}", "(last.pt, best.pt, metrics.jsonl, tb)", "resume=auto",
             "another hydra.run.dir")
    assert digest(run) == before  # best.pt, last.pt, train.log, .hydra: byte-identical


def test_a_command_refused_while_another_writes_the_run_leaves_its_record_alone(finished, tmp_path):
    tree, run = finished
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # "the running training"
    try:
        (run / ".train.lock").write_text(str(holder.pid))
        before = digest(run)
        done = _run("train.py", "dataset=voc", *tiny_train_overrides(tree, run.parent, 3), f"hydra.run.dir={run}",
                    "resume=auto")
        _refusal(done, str(run), f"pid {holder.pid}")
        assert digest(run) == before  # .hydra/config.yaml, overrides.yaml and train.log are the first run's
    finally:
        holder.kill()
        (run / ".train.lock").unlink(missing_ok=True)


def test_a_refused_command_leaves_no_folder_behind(tmp_path):
    done = _run("train.py", "trainer.batch_size=0", f"output_root={tmp_path / 'runs'}")
    _refusal(done, "trainer.batch_size")
    assert not [p for p in tmp_path.rglob("*") if p.is_file()] and not list((tmp_path / "runs").glob("*"))


def test_resume_logs_into_the_resumed_run_keeps_its_config_and_leaves_no_stub(finished, tmp_path):
    import shutil

    tree, finished_run = finished
    run = tmp_path / "runs" / "run1"
    shutil.copytree(finished_run, run)
    config = (run / ".hydra" / "config.yaml").read_text()
    done = _run("train.py", "dataset=voc", f"output_root={tmp_path / 'runs'}", f"resume={run / 'last.pt'}",
                "trainer.iterations=3")
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["run1"]  # no dated folder of this command
    assert (run / ".hydra" / "config.yaml").read_text() == config
    log = (run / "train.log").read_text()
    assert "val @ iter 2" in log and "resuming" in log and "val @ iter 3" in log  # appended, in one log


def test_evaluate_never_replaces_an_earlier_evaluations_results(finished, tmp_path):
    _, run = finished
    folder = tmp_path / "eval"
    first = _run("evaluate.py", f"checkpoint={run / 'last.pt'}", f"hydra.run.dir={folder}", "precision=fp32")
    assert first.returncode == 0, first.stderr[-3000:]
    before = digest(folder)
    done = _run("evaluate.py", f"checkpoint={run / 'last.pt'}", f"hydra.run.dir={folder}", "precision=fp32")
    _refusal(done, folder / "metrics.json", "overwrite=true")
    assert digest(folder) == before


def test_predict_into_a_folder_of_masks_is_refused_before_any_image_and_overwrite_replaces(finished, tmp_path):
    tree, run = finished
    images, masks = tmp_path / "ds" / "images", tmp_path / "ds" / "masks"
    masks.mkdir(parents=True)
    for i in range(3):  # a dataset's images and its ground truth, named alike
        write_image(images / f"im{i}.jpg", size=(48, 64), value=i)
        Image.fromarray(np.full((48, 64), i, np.uint8)).save(masks / f"im{i}.png")
    (masks / "a.png").write_bytes(b"the user's own file")
    before = digest(tmp_path / "ds")
    done = _run("predict.py", f"checkpoint={run / 'last.pt'}", f"input={images}", f"output={masks}",
                "precision=fp32", "save_color=false", "save_overlay=false")
    _refusal(done, masks / "im0.png", "2 more of the 4", "overwrite=true")  # areas.csv the 4th
    assert digest(tmp_path / "ds") == before
    done = _run("predict.py", f"checkpoint={run / 'last.pt'}", f"input={images}", f"output={masks}",
                "precision=fp32", "save_color=false", "save_overlay=false", "overwrite=true")
    assert done.returncode == 0, done.stderr[-3000:]
    after = digest(tmp_path / "ds")
    assert after[masks / "a.png"] == before[masks / "a.png"]  # not one of the outputs: untouched
    assert all(after[masks / f"im{i}.png"] != before[masks / f"im{i}.png"] for i in range(3))


def test_bench_never_replaces_an_earlier_json(tmp_path):
    path = tmp_path / "bench.json"
    path.write_text('{"earlier": true}')
    done = _run("-m", "deeplab.bench", "sections=model", f"json={path}")
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert f"json={path}" in done.stdout + done.stderr and "overwrite=true" in done.stdout + done.stderr
    assert path.read_text() == '{"earlier": true}'


def test_ctrl_c_before_the_first_checkpoint_saves_the_steps_done(tmp_path):
    import signal
    import time

    from deeplab.engine.checkpoint import load_checkpoint

    tree = make_voc_tree(tmp_path / "VOC", n_train=4, n_val=1, size=(48, 64))
    run = tmp_path / "runs" / "run"
    env = {**os.environ, "DEEPLAB_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    job = subprocess.Popen([sys.executable, "train.py", "dataset=voc", *tiny_train_overrides(tree, tmp_path / "runs",
                            500), f"hydra.run.dir={run}", "trainer.checkpoint_every=1000", "trainer.val_every=1000",
                            "trainer.num_workers=1"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)  # a loader worker too: it leaves Ctrl-C to training
    deadline = time.monotonic() + 200
    while time.monotonic() < deadline and not ((run / "train.log").is_file() and
                                               "iter 3 " in (run / "train.log").read_text()):
        time.sleep(0.1)
    job.send_signal(signal.SIGINT)  # what Ctrl-C in the terminal sends
    output, _ = job.communicate(timeout=120)
    assert job.returncode == 1 and "Traceback" not in output, output[-3000:]
    stopped = load_checkpoint(run / "last.pt")["iteration"]
    assert 3 <= stopped < 500
    assert f"interrupted (Ctrl-C) at iteration {stopped}: last.pt saved at iteration {stopped}" in output, output[-3000:]


def test_an_evaluate_into_a_folder_another_evaluate_is_writing_is_refused(finished, tmp_path):
    """Two evaluate.py at once into one run folder: both would pass the check for an earlier metrics.json and one
    would replace the other's. The second is refused while the first (here: pid 1, which runs) holds the folder."""
    _, run = finished
    folder = tmp_path / "eval"
    folder.mkdir()
    (folder / ".evaluate.lock").write_text("1")
    before = digest(folder)
    done = _run("evaluate.py", f"checkpoint={run / 'last.pt'}", f"hydra.run.dir={folder}", "precision=fp32")
    _refusal(done, folder, "pid 1", "another evaluate.py", "hydra.run.dir")
    assert digest(folder) == before
    (folder / ".evaluate.lock").write_text("999999999")  # left by a process that has ended: taken over
    done = _run("evaluate.py", f"checkpoint={run / 'last.pt'}", f"hydra.run.dir={folder}", "precision=fp32")
    assert done.returncode == 0 and (folder / "metrics.json").is_file(), done.stderr[-3000:]
    assert not (folder / ".evaluate.lock").exists()


def test_two_predicts_started_together_into_one_output_never_mix(finished, tmp_path):
    """Two real predict.py processes with different inputs into one output=: the folder is held by one at a time, so
    the second is refused with nothing written: by the first's lock while they overlap, or by the first's areas.csv
    (an output that exists, replaced only with overwrite=true) when the first ended before the second planned."""
    _, run = finished
    for name in ("a", "b"):
        for i in range(3):
            write_image(tmp_path / name / f"{name}{i}.jpg", size=(48, 64), value=i)
    out = tmp_path / "out"
    env = {**os.environ, "DEEPLAB_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "predict.py", f"checkpoint={run / 'last.pt'}", f"input={tmp_path / n}",
                               f"output={out}", "precision=fp32", "save_overlay=false"], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for n in ("a", "b")]
    results = [(p.wait(timeout=300), p.stdout.read()) for p in procs]
    written = {p.name[0] for p in out.glob("*.png")}
    for (code, text), name in zip(results, ("a", "b")):
        assert "Traceback" not in text, text
        if code == 0:
            assert name in written
        else:
            # held by the other (they overlap), or, if the other ended first, its areas.csv is there: refused either way
            assert code == 1 and ("another predict.py is writing into this output folder" in text
                                  or "areas.csv: exists already" in text), text
    assert sorted(code for code, _ in results) == [0, 1]
    assert len(written) == 1  # the refused one wrote nothing
    assert not (out / ".predict.lock").exists()


def test_a_training_refused_for_its_data_leaves_no_run_folder(tmp_path):
    """The data is found missing only once the run is being built: the dated folder Hydra's run made is removed and
    no train.log or .hydra is kept anywhere (the record is kept only once the data and model are built)."""
    runs = tmp_path / "runs"
    done = _run("train.py", "dataset=voc", *tiny_train_overrides(tmp_path / "no_such_voc", runs, 2))
    _refusal(done, "dataset.root=")
    assert not runs.exists() or not any(runs.iterdir()), sorted(runs.rglob("*"))


def test_a_sweep_with_resume_auto_beside_a_finished_run_starts_its_own_runs(finished, tmp_path):
    """`train.py -m "trainer.iterations=3,4" resume=auto` with the same other settings as a finished run under the
    same output_root: each job's command (its own value included) started no run, so each starts its own; the
    finished run is byte-identical."""
    tree, run = finished
    before = digest(run)
    sweep = tmp_path / "sweep"
    overrides = [o for o in tiny_train_overrides(tree, run.parent, 2) if not o.startswith("trainer.iterations=")]
    done = _run("train.py", "-m", "dataset=voc", *overrides, "trainer.iterations=3,4", "resume=auto",
                f"hydra.sweep.dir={sweep}")
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert digest(run) == before
    from deeplab.engine.checkpoint import load_checkpoint
    assert [load_checkpoint(sweep / str(n) / "last.pt")["iteration"] for n in (0, 1)] == [3, 4]
