"""Catalogue of a prediction or evaluation user's mistakes, settings: a bad value, test-time settings that cannot
work, a switch given a word. Each is refused in one sentence naming the key, before anything is loaded or written."""

import pytest
import torch

from conftest import compose, one_sentence, predict_refused, write_image
from deeplab.cli import evaluate as evaluate_cli
from deeplab.cli import export as export_cli
from deeplab.cli import predict as predict_cli
from deeplab.errors import ConfigError


# --- settings: refused before the checkpoint is loaded --------------------------------------------------------------

BAD_SETTINGS = [
    ("batch_size=0", "batch_size=0"), ("batch_size=-2", "batch_size=-2"), ("batch_size=1.5", "batch_size=1.5"),
    ("alpha=1.5", "alpha=1.5"), ("alpha=-0.1", "alpha=-0.1"),
    ("precision=fp16", "precision=fp16"), ("precision=half", "half"), ("device=gpu", "gpu"),
    ("scales=[]", "scales=[]"), ("scales=[1.0,0]", "scales=[1.0, 0]"), ("window=[64]", "window=[64]"),
    ("stride=[32,32]", "stride=[32, 32]"),
]


@pytest.mark.parametrize("override, value", BAD_SETTINGS, ids=[o for o, _ in BAD_SETTINGS])
def test_a_bad_setting_is_one_sentence_naming_the_key(checkpoint, tmp_path, override, value):
    write_image(tmp_path / "photos" / "a.jpg")
    extra = [override] if override.startswith("device") else ["device=cpu", override]
    predict_refused(ConfigError, checkpoint, tmp_path / "photos", *extra, output=tmp_path / "out",
                    names=[override.split("=")[0] + "=", value])
    assert not (tmp_path / "out").exists()


def test_nothing_to_save_is_refused(checkpoint, tmp_path):
    write_image(tmp_path / "photos" / "a.jpg")
    predict_refused(ConfigError, checkpoint, tmp_path / "photos", "save_index=false", "save_color=false",
                    "save_overlay=false", "save_areas=false", output=tmp_path / "out",
                    names=["save_index, save_color, save_overlay, save_confidence and save_areas"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_on_a_machine_without_it_is_one_sentence(checkpoint, tmp_path):
    write_image(tmp_path / "photos" / "a.jpg")
    predict_refused(ConfigError, checkpoint, tmp_path / "photos", "device=cuda", output=tmp_path / "out",
                    names=["device=cuda", "CUDA", "device=cpu"])


# --- combinations and shapes of settings that used to pass silently or end in a traceback ---------------------------

def test_evaluate_refuses_a_checkpoint_and_predictions_together(checkpoint, tmp_path):

    (tmp_path / "preds").mkdir()
    cfg = compose("evaluate", [f"checkpoint={checkpoint}", f"predictions={tmp_path / 'preds'}", "device=cpu"])
    with pytest.raises(ConfigError) as info:
        evaluate_cli.run(cfg, tmp_path / "run")
    one_sentence(info, f"checkpoint={checkpoint}", f"predictions={tmp_path / 'preds'}", "not both")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("overrides, names", [
    (["window=[32,32]", "stride=[64,64]"], ["stride=[64, 64]", "window=[32, 32]", "at most the window side"]),
    (["window=[32,32]", "stride=[16,33]"], ["stride=[16, 33]", "window=[32, 32]"]),
    (["scales=1.5"], ["scales=1.5", "scales=[1.0]"]),
    (["window=512"], ["window=512", "window=[512,512]"]),
], ids=["stride-beyond-window", "one-side-beyond", "bare-scale", "bare-window"])
def test_test_time_settings_that_cannot_work_are_refused_by_predict_and_evaluate(checkpoint, tmp_path, overrides,
                                                                                 names):

    write_image(tmp_path / "photos" / "a.jpg")
    predict_refused(ConfigError, checkpoint, tmp_path / "photos", "device=cpu", *overrides, output=tmp_path / "out",
                    names=names)
    cfg = compose("evaluate", [f"checkpoint={checkpoint}", "device=cpu", *overrides])
    with pytest.raises(ConfigError) as info:
        evaluate_cli.run(cfg, tmp_path / "run")
    one_sentence(info, *names)
    assert not (tmp_path / "out").exists() and not (tmp_path / "run").exists()


def test_a_stride_up_to_the_window_covers_every_pixel():
    from deeplab.engine.tta import check_tta, sliding_logits

    for stride in ([32, 32], [16, 32], None):
        check_tta(scales=[1.0], window=[32, 32], stride=stride)
    logits = sliding_logits(lambda x: x[:, :2], torch.ones(1, 3, 70, 90), window=[32, 32], stride=[32, 32])
    assert not logits.isnan().any()


# --- a switch is true or false, never a word --------------------------------------------------------------------------

@pytest.mark.parametrize("command,key", [("predict", "save_color"), ("predict", "fast"), ("predict", "allow_inside_input"),
                                         ("evaluate", "compile"), ("export", "overwrite")])
def test_a_switch_given_a_word_is_refused_not_taken_as_true(command, key, trained, tmp_path):
    tree, checkpoint = trained
    extra = {"predict": [f"input={tree / 'JPEGImages'}", f"output={tmp_path / 'out'}"], "evaluate": [],
             "export": [f"output={tmp_path / 'm.onnx'}"]}[command]
    cfg = compose(command, [f"checkpoint={checkpoint}", *extra, f"{key}=maybe"])
    run = {"predict": lambda: predict_cli.run(cfg, tmp_path / "run"), "evaluate": lambda: evaluate_cli.run(cfg, tmp_path),
           "export": lambda: export_cli.run(cfg)}[command]
    with pytest.raises(ConfigError, match=rf"^{key}='maybe': must be true or false$"):
        run()
    assert not (tmp_path / "out").exists() and not (tmp_path / "m.onnx").exists()
