"""Run histories: metrics.jsonl, per-group LRs and TensorBoard hparams (deeplab/engine/tracking.py)."""

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from tensorboard.plugins.hparams.metadata import SESSION_END_INFO_TAG, SESSION_START_INFO_TAG
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

from conftest import compose, kill_at_step, make_voc_tree, tiny_train_overrides
from deeplab.cli.train import main as train_main
from deeplab.engine import trainer as trainer_module
from deeplab.engine.checkpoint import load_checkpoint
from deeplab.engine.tracking import (CORE_HPARAMS, HPARAM_METRICS, RunLogger, run_hparams, truncate_history,
                                     wait_to_sort_last)
from deeplab.engine.run_state import TrainingInterrupted
from deeplab.engine.trainer import train
from deeplab.metrics import ConfusionMatrix


def history(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def iterations(lines: list[dict], kind: str) -> list[int]:
    return [line["iteration"] for line in lines if line["kind"] == kind]


def hparams_data(tb: Path) -> dict[str, HParamsPluginData]:
    """{hparams tag: plugin data} as TensorBoard reads the run (the first summary of each tag)."""
    events = EventAccumulator(str(tb)).Reload()
    return {tag: HParamsPluginData.FromString(content)
            for tag, content in events.PluginTagToContent("hparams").items()}


def start_info(tb: Path) -> dict:
    """The hparams of the run's session start, as plain values."""
    hparams = hparams_data(tb)[SESSION_START_INFO_TAG].session_start_info.hparams
    return {key: getattr(value, value.WhichOneof("kind")) for key, value in hparams.items()}


def raw_hparams_tags(tb: Path) -> list[str]:
    """Every hparams summary in the run's event files, in file order: what a resumed run must not repeat."""
    return [value.tag for path in sorted(tb.glob("events.out.tfevents.*"))
            for event in EventFileLoader(str(path)).Load() for value in event.summary.value
            if value.tag.startswith("_hparams_/")]


def test_hparams_are_the_core_keys_and_what_the_command_line_set():
    overrides = ["dataset=voc", "optim=adamw", "optim.lr=0.02", "augment.crop_size=[64,64]",
                 "trainer.deterministic=true", "model.aspp_rates=null"]
    config = OmegaConf.to_container(compose("train", overrides), resolve=True)
    hparams = run_hparams(config, [*overrides, "~recipe", "hydra.sweep.dir=/tmp/x", "resume=auto"])
    assert list(hparams)[:len(CORE_HPARAMS)] == list(CORE_HPARAMS)  # every run has these columns
    assert hparams["model.backbone.name"] == "mobilenet_v2" and hparams["dataset.format"] == "voc"
    assert hparams["optim.name"] == "adamw" and hparams["optim.lr"] == 0.02
    assert hparams["dataset"] == "voc" and hparams["optim"] == "adamw"  # a group: the option chosen
    assert hparams["augment.crop_size"] == "[64, 64]"
    assert hparams["trainer.deterministic"] == "true" and hparams["model.aspp_rates"] == "null"
    assert hparams["recipe"] == "(deleted)"
    assert not any(key.startswith(("hydra", "resume")) for key in hparams)
    assert all(type(v) in (int, float, str) for v in hparams.values()), hparams


def val_metrics(seed: int) -> dict:
    """ConfusionMatrix.compute() of a small random prediction (class 2 absent: its IoU is None)."""
    matrix = ConfusionMatrix(3)
    generator = torch.Generator().manual_seed(seed)
    pred, truth = (torch.randint(0, 2, (2, 8, 8), generator=generator) for _ in range(2))
    matrix.update(pred, truth)
    return matrix.compute()


def logger(run_dir: Path, start_iter: int, lr: float) -> RunLogger:
    return RunLogger(run_dir, class_names=["bg", "cat", "dog"], palette=np.zeros((256, 3), np.uint8),
                     mean=[0.5] * 3, std=[0.25] * 3, start_iter=start_iter,
                     hparams={"optim.lr": lr, "optim.backbone_lr_mult": 0.1}, iterations=4)


def log_train(log: RunLogger, iteration: int, lr: float) -> None:
    log.train(iteration, 1.0 / iteration, lr, 10.0, group_lrs={"backbone": lr / 10, "head": lr})


def test_run_logger_writes_the_history_hparams_and_group_lrs_and_a_resume_continues_them(tmp_path):
    before = time.time()
    log = logger(tmp_path, 0, 0.01)
    for iteration in (1, 2, 3):
        log_train(log, iteration, 0.01 / iteration)
        if iteration >= 2:
            log.validation(iteration, val_metrics(iteration), [], best=0.5)
    log.close()  # as a kill after the checkpoint of iteration 2 leaves it: iteration 3 is logged again on resume
    lines = history(tmp_path)
    assert [(line["kind"], line["iteration"]) for line in lines] == \
        [("train", 1), ("train", 2), ("val", 2), ("train", 3), ("val", 3)]
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"kind": "train", "iteration": 4, "ti')  # a line a kill cut short

    train_line, val_line = lines[0], lines[2]
    assert train_line == {"kind": "train", "iteration": 1, "time": train_line["time"],
                          "elapsed_s": train_line["elapsed_s"], "loss": 1.0, "lr": {"backbone": 0.001, "head": 0.01},
                          "images_per_s": 10.0}
    assert before <= train_line["time"] <= time.time() and train_line["elapsed_s"] >= 0
    metrics = val_metrics(2)
    assert set(val_line) == {"kind", "iteration", "time", "elapsed_s", *metrics, "best_mIoU"}
    assert val_line["kind"] == "val" and val_line["iteration"] == 2 and val_line["best_mIoU"] == 0.5
    assert val_line["mIoU"] == pytest.approx(metrics["mIoU"]) and val_line["pixels"] == 128
    assert val_line["per_class_iou"] == {"bg": pytest.approx(metrics["per_class_iou"][0]),
                                         "cat": pytest.approx(metrics["per_class_iou"][1]), "dog": None}

    resumed = logger(tmp_path, 2, 0.05)  # resumed from the checkpoint of iteration 2, with another LR
    assert [(line["kind"], line["iteration"]) for line in history(tmp_path)] == \
        [("train", 1), ("train", 2), ("val", 2)]
    for iteration in (3, 4):
        log_train(resumed, iteration, 0.05 / iteration)
        resumed.validation(iteration, val_metrics(iteration), [], best=0.6)
    resumed.close()

    lines = history(tmp_path)
    assert iterations(lines, "train") == [1, 2, 3, 4] and iterations(lines, "val") == [2, 3, 4]
    tb = tmp_path / "tb"
    events = EventAccumulator(str(tb)).Reload()
    assert [e.step for e in events.Scalars("val/mIoU")] == [2, 3, 4]  # the step of the checkpoint is kept
    assert [e.value for e in events.Scalars("train/lr/backbone")] == \
        pytest.approx([0.001, 0.0005, 0.05 / 30, 0.05 / 40])
    assert [e.step for e in events.Scalars("train/lr/head")] == [1, 2, 3, 4]
    assert [e.step for e in events.Scalars("hparams/best_mIoU")] == [2, 3, 4]
    assert [e.step for e in events.Scalars("hparams/final_mIoU")] == [4]  # trainer.iterations: the run's end
    # one start and experiment summary for the run (the resumed session wrote none), and the end at iteration 4
    assert raw_hparams_tags(tb) == ["_hparams_/experiment", SESSION_START_INFO_TAG, SESSION_END_INFO_TAG]
    assert start_info(tb) == {"optim.lr": 0.01, "optim.backbone_lr_mult": 0.1}
    data = hparams_data(tb)
    assert [m.name.tag for m in data["_hparams_/experiment"].experiment.metric_infos] == list(HPARAM_METRICS)
    assert data[SESSION_END_INFO_TAG].session_end_info.status == 1  # STATUS_SUCCESS


def test_equal_group_lrs_log_only_train_lr(tmp_path):
    log = RunLogger(tmp_path, class_names=["bg"], palette=np.zeros((256, 3), np.uint8), mean=[0.5] * 3,
                    std=[0.25] * 3)
    log.train(1, 0.5, 0.01, 10.0, group_lrs={"backbone": 0.01, "head": 0.01})
    log.close()
    assert EventAccumulator(str(tmp_path / "tb")).Reload().Tags()["scalars"] == ["train/loss", "train/lr",
                                                                                 "train/images_per_s"]
    assert history(tmp_path)[0]["lr"] == {"backbone": 0.01, "head": 0.01}
    assert raw_hparams_tags(tmp_path / "tb") == []  # no hparams given, none written


def test_truncating_the_history_rewrites_only_when_lines_go(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"kind": "train", "iteration": i}) for i in (1, 2, 3)]
    path.write_text("".join(f"{line}\n" for line in lines))
    stamp = path.stat().st_mtime_ns
    assert truncate_history(path, 3) == 0 and path.stat().st_mtime_ns == stamp
    assert truncate_history(path, 1) == 2
    assert path.read_text() == f"{lines[0]}\n"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]  # no temp file left
    assert truncate_history(tmp_path / "missing.jsonl", 5) == 0


def _check_history(run_dir: Path, lr: float, total: int, *, train_iters: list[int], val_iters: list[int]) -> None:
    """metrics.jsonl of a tiny VOC run with optim.backbone_lr_mult=0.1 and the poly schedule over `total`."""
    lines = history(run_dir)
    assert iterations(lines, "train") == train_iters and iterations(lines, "val") == val_iters
    for line in lines:
        if line["kind"] == "train":
            assert line["lr"]["head"] == pytest.approx(lr * (1 - line["iteration"] / total) ** 0.9, abs=1e-12)
            assert line["lr"] == {"backbone": pytest.approx(line["lr"]["head"] * 0.1), "head": line["lr"]["head"]}
        else:
            assert list(line["per_class_iou"])[:3] == ["background", "aeroplane", "bicycle"]
            assert len(line["per_class_iou"]) == 21 and 0 <= line["mIoU"] <= line["best_mIoU"] <= 1


@pytest.mark.slow  # a Hydra sweep: two tiny trainings
def test_a_sweeps_runs_line_up_in_the_hparams_view(tmp_path, entry_point, capsys):
    tree = make_voc_tree(tmp_path / "VOC", n_train=4, n_val=2, size=(48, 64))
    sweep = tmp_path / "sweep"
    code = entry_point(train_main, "-m", "optim.lr=0.005,0.01", "dataset=voc", "optim.backbone_lr_mult=0.1",
                       f"hydra.sweep.dir={sweep}",
                       *[o for o in tiny_train_overrides(tree, tmp_path / "outputs", iterations=2)
                         if not o.startswith("optim.lr")])
    assert code == 0, "".join(capsys.readouterr())[-3000:]
    columns = []
    for job, lr in (("0", 0.005), ("1", 0.01)):
        run = sweep / job
        _check_history(run, lr, 2, train_iters=[1, 2], val_iters=[2])
        hparams = start_info(run / "tb")
        assert hparams["optim.lr"] == lr and hparams["optim.backbone_lr_mult"] == 0.1
        assert hparams["dataset"] == "voc" and hparams["trainer.iterations"] == 2
        assert hparams["model.backbone.name"] == "mobilenet_v2" and hparams["optim.name"] == "sgd"
        assert not any(key.startswith("hydra") for key in hparams)
        columns.append(sorted(hparams))
        scalars = EventAccumulator(str(run / "tb")).Reload().Tags()["scalars"]
        assert {"train/lr", "train/lr/backbone", "train/lr/head", *HPARAM_METRICS} <= set(scalars)
        assert SESSION_END_INFO_TAG in hparams_data(run / "tb")
    assert columns[0] == columns[1]  # the same hparams in both runs: one table, one row per run


@pytest.mark.slow  # two trainings, 8 iterations and 3 validations
def test_a_resumed_run_continues_its_history_without_doubling_back(tmp_path, monkeypatch):
    tree = make_voc_tree(tmp_path / "VOC", n_train=8, n_val=3, size=(48, 64))

    def cfg(*extra):
        return compose("train", ["dataset=voc", *tiny_train_overrides(tree, tmp_path / "outputs", 5),
                                 "trainer.val_every=3", "optim.backbone_lr_mult=0.1", *extra])

    real_step = kill_at_step(monkeypatch, 4)
    run = tmp_path / "outputs" / "run"
    with pytest.raises(TrainingInterrupted, match="last.pt of iteration 2 kept"):
        train(cfg(), run, overrides=["optim.backbone_lr_mult=0.1"])
    _check_history(run, 0.002, 5, train_iters=[1, 2, 3], val_iters=[3])  # iteration 3: after the checkpoint
    monkeypatch.setattr(trainer_module, "train_step", real_step)

    train(cfg("resume=auto"), tmp_path / "outputs" / "unused", overrides=["optim.backbone_lr_mult=0.1", "resume=auto"])
    assert load_checkpoint(run / "last.pt")["iteration"] == 5
    lines = history(run)
    _check_history(run, 0.002, 5, train_iters=[1, 2, 3, 4, 5], val_iters=[3, 5])
    assert [line["iteration"] for line in lines] == sorted(line["iteration"] for line in lines)
    assert len({(line["kind"], line["iteration"]) for line in lines}) == len(lines)
    assert [e.step for e in EventAccumulator(str(run / "tb")).Reload().Scalars("val/mIoU")] == [3, 5]
    assert raw_hparams_tags(run / "tb") == ["_hparams_/experiment", SESSION_START_INFO_TAG, SESSION_END_INFO_TAG]
    assert start_info(run / "tb")["optim.backbone_lr_mult"] == 0.1  # the first session's, not resume=auto's


def test_a_resumed_runs_event_file_sorts_after_those_of_the_same_second(tmp_path):
    """TensorBoard reads event files in name order (creation second first): a writer opened in the second of the run's
    newest file waits, so purge_step applies to the killed run's file (in-process resumes took under a second)."""
    tb = tmp_path / "tb"
    tb.mkdir()
    now = int(time.time())
    killed = tb / f"events.out.tfevents.{now}.host.99.9"  # uid 9: a same-second uid 10 would sort before it
    killed.write_bytes(b"")
    wait_to_sort_last(tb)
    assert int(time.time()) > now
    logger = RunLogger(tmp_path, class_names=["a", "b"], palette=np.zeros((256, 3), np.uint8), mean=[0.5] * 3,
                       std=[0.5] * 3, start_iter=2)
    logger.close()
    files = sorted(p.name for p in tb.glob("events.out.tfevents.*"))
    assert files[0] == killed.name and len(files) == 2
