import math

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import compose, kill_at_step, make_voc_tree, tiny_train_overrides
from deeplab.engine import trainer as trainer_module
from deeplab.engine.checkpoint import load_checkpoint
from deeplab.engine.step import TrainingDiverged
from deeplab.engine.run_state import TrainingInterrupted
from deeplab.engine.trainer import train


@pytest.fixture
def tree(tmp_path):
    return make_voc_tree(tmp_path / "VOC", n_train=8, n_val=3, size=(48, 64))


def _cfg(tree, tmp_path, *extra, iterations=3):
    return compose("train", ["dataset=voc", *tiny_train_overrides(tree, tmp_path / "outputs", iterations), *extra])


def test_smoke_run_writes_checkpoints_and_readable_event_files(tree, tmp_path):
    run_dir = tmp_path / "outputs" / "run"
    best = train(_cfg(tree, tmp_path, "trainer.grid_images=2", "trainer.log_figures=true"), run_dir)
    assert 0 <= best <= 1
    last = load_checkpoint(run_dir / "last.pt")
    assert last["iteration"] == 3
    assert {"model", "optimizer", "scheduler", "scaler", "iteration", "best_miou", "rng", "config"} <= set(last)
    assert last["config"]["dataset"]["root"] == str(tree)
    assert load_checkpoint(run_dir / "best.pt")["best_miou"] == pytest.approx(best)
    events = EventAccumulator(str(run_dir / "tb"), size_guidance={"images": 0}).Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/images_per_s", "val/mIoU", "val/pixel_acc", "val/mean_class_acc",
            "val/fwIoU", "val/iou/background"} <= scalars
    assert [e.step for e in events.Scalars("val/mIoU")] == [2, 3]
    images = {"val/input_truth_prediction", "val/confusion_matrix", "val/per_class_iou", "val/worst_images"}
    assert {tag: [e.step for e in events.Images(tag)] for tag in images} == dict.fromkeys(images, [2, 3])
    assert "val @ iter 3" in (run_dir / "train.log").read_text()


def test_poly_lr_is_stepped_every_iteration(tree, tmp_path):
    train(_cfg(tree, tmp_path, "optim.lr=0.01"), tmp_path / "run")
    events = EventAccumulator(str(tmp_path / "run" / "tb")).Reload()
    lrs = [e.value for e in events.Scalars("train/lr")]
    assert events.Tags()["images"] == []  # trainer.grid_images=0 and trainer.log_figures=false: no images
    assert lrs == pytest.approx([0.01 * (1 - i / 3) ** 0.9 for i in (1, 2, 3)], rel=1e-5)


def _weights(path):
    return load_checkpoint(path)["model"]


@pytest.mark.slow  # three trainings, 13 iterations
def test_interrupted_and_resumed_run_reaches_the_same_weights(tree, tmp_path, monkeypatch):
    straight = tmp_path / "straight"
    train(_cfg(tree, tmp_path, "trainer.deterministic=true", iterations=5), straight)

    real_step = kill_at_step(monkeypatch, 4)
    broken = tmp_path / "outputs" / "broken"
    with pytest.raises(TrainingInterrupted, match="interrupted at iteration 3: last.pt of iteration 2 kept"):
        train(_cfg(tree, tmp_path, "trainer.deterministic=true", iterations=5), broken)
    assert load_checkpoint(broken / "last.pt")["iteration"] == 2
    monkeypatch.setattr(trainer_module, "train_step", real_step)

    resumed_cfg = _cfg(tree, tmp_path, "resume=auto")  # finds broken/last.pt, the newest under output_root
    train(resumed_cfg, tmp_path / "outputs" / "new_dir_unused")
    assert load_checkpoint(broken / "last.pt")["iteration"] == 5
    a, b = _weights(straight / "last.pt"), _weights(broken / "last.pt")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_nan_loss_stops_cleanly_and_keeps_the_last_good_checkpoint(tree, tmp_path, monkeypatch):
    run_dir = tmp_path / "outputs" / "nan"
    calls = {"n": 0}

    class NaNAfterThree(torch.nn.Module):
        ignore_index = 255

        def forward(self, logits, target):
            calls["n"] += 1
            loss = torch.nn.functional.cross_entropy(logits.float(), target, ignore_index=255)
            return loss * math.nan if calls["n"] >= 3 else loss

    monkeypatch.setattr(trainer_module, "build_loss", lambda **kwargs: NaNAfterThree())
    with pytest.raises(TrainingDiverged, match=r"loss is nan at iteration 3: training stopped.*last.pt"):
        train(_cfg(tree, tmp_path, iterations=4), run_dir)
    good = load_checkpoint(run_dir / "last.pt")
    assert good["iteration"] == 2
    assert all(torch.isfinite(v).all() for v in good["model"].values() if v.is_floating_point())


def test_init_from_another_class_count_reinitialises_the_classifier(tree, tmp_path, caplog):
    source = tmp_path / "outputs" / "src"
    train(_cfg(tree, tmp_path, iterations=2), source)
    cfg = _cfg(tree, tmp_path, f"init_from={source / 'last.pt'}", "dataset.num_classes=6",
               "dataset.class_names=[a,b,c,d,e,f]", "trainer.freeze_backbone_iters=2", iterations=2)
    with caplog.at_level("WARNING"):
        train(cfg, tmp_path / "outputs" / "finetune")
    assert "classifier starts fresh" in caplog.text
    tuned, started = _weights(tmp_path / "outputs" / "finetune" / "last.pt"), _weights(source / "last.pt")
    assert tuned["decoder.classifier.weight"].shape[0] == 6
    # the frozen backbone's weights are the source run's, value for value (its BatchNorm statistics move on)
    backbone = [k for k in started if k.startswith("backbone.") and not k.endswith(
        ("running_mean", "running_var", "num_batches_tracked"))]
    assert backbone and all(torch.equal(tuned[k], started[k]) for k in backbone)
    assert not torch.equal(tuned["decoder.classifier.bias"][:3], started["decoder.classifier.bias"][:3])


def test_grad_accumulation_and_frozen_backbone(tree, tmp_path):
    run_dir = tmp_path / "outputs" / "accum"
    train(_cfg(tree, tmp_path, "trainer.grad_accum=2", "trainer.freeze_backbone_iters=2", iterations=2), run_dir)
    after = _weights(run_dir / "last.pt")
    torch.manual_seed(0)
    from deeplab.model import build_model

    fresh = build_model(**load_checkpoint(run_dir / "last.pt")["config"]["model"]).state_dict()  # the run's init
    assert torch.equal(after["backbone.features.3.conv.1.0.weight"], fresh["backbone.features.3.conv.1.0.weight"])
    assert not torch.equal(after["decoder.classifier.weight"], fresh["decoder.classifier.weight"])


@pytest.mark.slow  # two trainings of the dense head at 96 px; test_fast_convs checks the same in the fast tier
def test_fast_decoder_convs_train_as_the_plain_convs(tree, tmp_path, monkeypatch):
    """A dense head at a crop whose stride-4 map is big enough for the fast convs: they run, and the logged losses
    are the plain run's."""
    import deeplab.model.fast_convs as fast_convs

    calls = []
    original = fast_convs.winograd_conv3x3
    monkeypatch.setattr(fast_convs, "winograd_conv3x3", lambda *a, **k: calls.append(1) or original(*a, **k))
    losses = {}
    for fast in (True, False):
        run_dir = tmp_path / f"run_{fast}"
        train(_cfg(tree, tmp_path, "model.separable=false", "augment.crop_size=[96,96]", f"trainer.fast_convs={fast}",
                   "trainer.deterministic=true", iterations=2), run_dir)
        losses[fast] = [e.value for e in EventAccumulator(str(run_dir / "tb")).Reload().Scalars("train/loss")]
        if fast:
            assert len(calls) == 2  # one per training iteration (validation images are too small for them)
    assert len(calls) == 2 and len(losses[True]) == 2
    assert losses[True] == pytest.approx(losses[False], rel=1e-4)
