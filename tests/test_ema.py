"""trainer.ema_decay: the moving average of the weights (deeplab.engine.ema), what validation scores, what checkpoints
hold, what a resumed run continues, and what inference and init_from load."""

import logging
import shutil

import pytest
import torch
from torch import nn

from conftest import compose, kill_at_step, make_voc_tree, tiny_train_overrides
from deeplab.engine import checkpoint as ckpt
from deeplab.engine import trainer as trainer_module
from deeplab.engine.checkpoint import load_checkpoint, save_checkpoint
from deeplab.engine.ema import ModelEma, ema_decay_at
from deeplab.engine.run_config import safe_on_resume
from deeplab.engine.run_state import TrainingInterrupted
from deeplab.engine.trainer import train
from deeplab.errors import ConfigError
from deeplab.inference import model_from_checkpoint
from deeplab.model import rebuild_model

# --- the update ---------------------------------------------------------------------------------------------------


def test_decay_warms_up_as_tensorflows_num_updates_rule():
    assert ema_decay_at(0.9999, 0) == pytest.approx(0.1)  # (1 + 0) / (10 + 0)
    assert ema_decay_at(0.9999, 8) == pytest.approx(0.5)  # 9 / 18
    assert ema_decay_at(0.9999, 10**6) == 0.9999
    assert ema_decay_at(0.99, 889) < 0.99 and ema_decay_at(0.99, 891) == 0.99  # 0.99 binds from update 890
    # before then the warmup alone sets the decay: a 300-iteration run averages the same with 0.99 or 0.9999
    assert all(ema_decay_at(0.99, n) == ema_decay_at(0.9999, n) for n in range(300))


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())


def test_update_averages_parameters_and_bn_statistics_and_copies_the_batch_count():
    model = _net()
    ema = ModelEma(model, decay=0.9)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    expected = {k: v.clone().float() for k, v in start.items()}
    for n in range(3):
        model.train()(torch.randn(2, 3, 8, 8))  # moves the BN running statistics and num_batches_tracked
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.5)  # stands in for an optimizer step
        d = ema_decay_at(0.9, n)
        for k, v in model.state_dict().items():
            expected[k] = d * expected[k] + (1 - d) * v.float() if v.is_floating_point() else v.clone()
        ema.update(model)
    assert ema.updates == 3
    averaged = ema.module.state_dict()
    for key in ("0.weight", "0.bias", "1.weight", "1.running_mean", "1.running_var"):
        assert torch.allclose(averaged[key], expected[key], atol=1e-6), key
        assert not torch.allclose(averaged[key], model.state_dict()[key]), key  # an average, not a copy
    assert averaged["1.num_batches_tracked"].item() == 3  # an integer buffer is copied
    assert not ema.module.training and not any(p.requires_grad for p in ema.module.parameters())


def test_averaged_model_gives_exactly_what_the_hand_written_average_gave():
    """The EMA through torch's AveragedModel against the loop it replaced (deeplab before 2026-12-02), bit for bit."""
    model = _net()
    ema = ModelEma(model, decay=0.99)
    reference = {k: v.clone() for k, v in model.state_dict().items()}
    for n in range(5):
        model.train()(torch.randn(2, 3, 8, 8))
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(0.9).add_(0.1)
        ema.update(model)
        floats = [k for k, v in reference.items() if v.is_floating_point()]
        torch._foreach_lerp_([reference[k] for k in floats], [model.state_dict()[k] for k in floats],
                             1.0 - ema_decay_at(0.99, n))
        for k, v in model.state_dict().items():
            if not v.is_floating_point():
                reference[k].copy_(v)
    for key, value in ema.module.state_dict().items():
        assert torch.equal(value, reference[key]), key


def test_state_round_trips_through_a_weights_only_file(tmp_path):
    model = _net()
    ema = ModelEma(model, decay=0.99)
    with torch.no_grad():
        model[0].weight.mul_(2)
    ema.update(model)
    torch.save(ema.state_dict(), tmp_path / "ema.pt")
    other = ModelEma(_net(), decay=0.99)
    other.load_state_dict(torch.load(tmp_path / "ema.pt", weights_only=True), source="ema.pt")
    assert other.updates == 1
    for a, b in zip(ema.module.state_dict().values(), other.module.state_dict().values()):
        assert torch.equal(a, b)


# --- in training --------------------------------------------------------------------------------------------------


def _cfg(tree, out, *extra, iterations=3):
    return compose("train", ["dataset=voc", *tiny_train_overrides(tree, out, iterations), *extra])


@pytest.fixture(scope="module")
def ema_run(tmp_path_factory):
    """A 3-iteration run with trainer.ema_decay=0.9 (validations at 2 and 3), and the weights each validation
    scored."""
    tmp = tmp_path_factory.mktemp("ema")
    tree = make_voc_tree(tmp / "VOC", n_train=4, n_val=2, size=(48, 64))
    scored = []
    real = trainer_module.evaluate

    def recording(model, *args, **kwargs):
        matrix, kept = real(model, *args, **kwargs)
        scored.append(({k: v.clone() for k, v in model.state_dict().items()}, matrix.compute()["mIoU"]))
        return matrix, kept

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(trainer_module, "evaluate", recording)
        train(_cfg(tree, tmp / "outputs", "trainer.ema_decay=0.9"), tmp / "outputs" / "run")
    return tree, tmp / "outputs" / "run", scored


def test_checkpoints_hold_the_ema_beside_the_raw_weights(ema_run):
    _, run, _ = ema_run
    for name in ("last.pt", "best.pt"):
        raw = torch.load(run / name, weights_only=True)  # nothing that needs unpickling code
        assert raw["ema"]["decay"] == 0.9 and raw["ema"]["model"].keys() == raw["model"].keys()
    last = load_checkpoint(run / "last.pt")
    assert last["ema"]["updates"] == 3
    key = "decoder.classifier.weight"
    assert not torch.equal(last["ema"]["model"][key], last["model"][key])


def test_validation_scores_the_ema_weights_and_best_pt_follows_them(ema_run):
    _, run, scored = ema_run
    assert len(scored) == 2  # iterations 2 and 3
    weights, miou = scored[-1]
    last = load_checkpoint(run / "last.pt")
    for key, value in last["ema"]["model"].items():
        assert torch.equal(weights[key], value), key
    assert not torch.equal(weights["decoder.classifier.weight"], last["model"]["decoder.classifier.weight"])
    best = load_checkpoint(run / "best.pt")
    assert best["best_miou"] == pytest.approx(max(m for _, m in scored)) and last["metrics"]["mIoU"] == miou


def _logits(model):
    torch.manual_seed(1)
    with torch.no_grad():
        return model.eval()(torch.randn(1, 3, 32, 32))


def test_inference_loads_the_ema_weights_and_an_old_checkpoint_its_weights(ema_run, tmp_path, caplog):
    _, run, _ = ema_run
    state = load_checkpoint(run / "last.pt")
    with caplog.at_level(logging.INFO, logger="deeplab.inference"):
        model, config = model_from_checkpoint(run / "last.pt")
    assert "using its EMA weights (trainer.ema_decay=0.9, 3 updates)" in caplog.text
    ema_model, raw_model = rebuild_model(config["model"]), rebuild_model(config["model"])
    ema_model.load_state_dict(state["ema"]["model"])
    raw_model.load_state_dict(state["model"])
    logits, raw_logits = _logits(model), _logits(raw_model)
    assert torch.equal(logits, _logits(ema_model))
    assert not torch.allclose(logits, raw_logits)

    old = {k: v for k, v in state.items() if k not in ("ema", "format_version")}  # as saved before the EMA
    save_checkpoint(tmp_path / "old.pt", old)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="deeplab.inference"):
        model, _ = model_from_checkpoint(tmp_path / "old.pt")
    assert "EMA" not in caplog.text
    assert torch.equal(_logits(model), raw_logits)


class _Stop(Exception):
    """Ends a run once its starting weights are loaded: what init_from loads is all a test needs."""


def test_init_from_starts_from_the_ema_weights(ema_run, tmp_path, monkeypatch, caplog):
    tree, run, _ = ema_run
    loaded = []

    def capture(model, weights, **kwargs):
        loaded.append(weights)
        raise _Stop

    monkeypatch.setattr(ckpt, "load_model_weights", capture)
    with caplog.at_level(logging.INFO), pytest.raises(_Stop):
        train(_cfg(tree, tmp_path / "outputs", f"init_from={run / 'last.pt'}", iterations=1),
              tmp_path / "outputs" / "tuned")
    assert f"init_from {run / 'last.pt'}: starting from its EMA weights (trainer.ema_decay=0.9, 3 updates)" in caplog.text
    ema = load_checkpoint(run / "last.pt")["ema"]["model"]
    assert len(loaded) == 1 and loaded[0].keys() == ema.keys()
    assert all(torch.equal(loaded[0][k], v) for k, v in ema.items())


# --- the setting --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["0", "1", "1.5", "-0.1", "abc"])
def test_ema_decay_outside_0_1_is_one_sentence(value, voc_root, tmp_path):
    with pytest.raises(ConfigError) as info:
        train(_cfg(voc_root, tmp_path / "outputs", f"trainer.ema_decay={value}"), tmp_path / "outputs" / "run")
    message = str(info.value)
    assert "\n" not in message and message.startswith("trainer.ema_decay=")
    assert "(0, 1)" in message or "a number" in message
    assert not (tmp_path / "outputs" / "run").exists()


@pytest.mark.parametrize("override", ["trainer.ema_decay=0.99", "trainer.ema_decay=null"])
def test_changing_ema_decay_on_resume_is_refused(override, ema_run, tmp_path):
    assert not safe_on_resume("trainer.ema_decay")
    tree, run, _ = ema_run
    shutil.copytree(run, tmp_path / "run")
    overrides = [f"resume={tmp_path / 'run' / 'last.pt'}", override, "trainer.iterations=4"]
    with pytest.raises(ConfigError, match=rf"^{override}: a resumed run keeps its trainer settings as saved"):
        train(_cfg(tree, tmp_path / "outputs", *overrides), tmp_path / "stub", overrides=overrides)
    assert load_checkpoint(tmp_path / "run" / "last.pt")["iteration"] == 3


@pytest.mark.slow  # three trainings, 8 iterations
def test_interrupted_and_resumed_ema_run_reaches_the_same_ema_weights(tmp_path, monkeypatch):
    tree = make_voc_tree(tmp_path / "VOC", n_train=8, n_val=2, size=(48, 64))
    extra = ("trainer.deterministic=true", "trainer.ema_decay=0.9")
    straight = tmp_path / "straight"
    train(_cfg(tree, tmp_path, *extra, iterations=4), straight)

    real_step = kill_at_step(monkeypatch, 3)
    broken = tmp_path / "outputs" / "broken"
    with pytest.raises(TrainingInterrupted, match="last.pt of iteration 2 kept"):
        train(_cfg(tree, tmp_path / "outputs", *extra, iterations=4), broken)
    assert load_checkpoint(broken / "last.pt")["ema"]["updates"] == 2
    monkeypatch.setattr(trainer_module, "train_step", real_step)

    train(_cfg(tree, tmp_path / "outputs", f"resume={broken / 'last.pt'}"), tmp_path / "outputs" / "unused")
    a, b = load_checkpoint(straight / "last.pt"), load_checkpoint(broken / "last.pt")
    assert a["iteration"] == b["iteration"] == 4 and a["ema"]["updates"] == b["ema"]["updates"] == 4
    for weights in ("model", "ema"):
        x, y = (a[weights], b[weights]) if weights == "model" else (a["ema"]["model"], b["ema"]["model"])
        assert x.keys() == y.keys()
        for key in x:
            assert torch.equal(x[key], y[key]), (weights, key)
