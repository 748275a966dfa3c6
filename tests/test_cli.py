"""The entry points as a user runs them: train.py's Hydra main, given a command line, in this process (the
`python train.py` process itself is run by test_bad_inputs_train and test_distributed, in the slow tier)."""

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import make_voc_tree, tiny_train_overrides
from deeplab.cli.command_line import unknown_override
from deeplab.cli.evaluate import main as evaluate_main
from deeplab.cli.predict import main as predict_main
from deeplab.cli.train import main as train_main
from deeplab.engine.checkpoint import load_checkpoint


def test_missing_data_is_one_clear_line_not_a_traceback(tmp_path, entry_point, capsys):
    code = entry_point(train_main, "dataset=voc", f"dataset.root={tmp_path / 'nowhere'}", f"output_root={tmp_path}")
    out = "".join(capsys.readouterr())
    assert code == 1
    assert "dataset not found: looked for" in out
    assert "prepare_voc.py --download" in out
    assert "Traceback" not in out


@pytest.mark.slow  # a Hydra sweep: two training runs
def test_sweep_runs_each_job_in_its_own_dir(tmp_path, entry_point, capsys):
    tree = make_voc_tree(tmp_path / "VOC", n_train=4, n_val=2, size=(48, 64))
    sweep = tmp_path / "sweep"
    code = entry_point(train_main, "-m", "optim.lr=0.005,0.01", "dataset=voc", f"hydra.sweep.dir={sweep}",
                       *[o for o in tiny_train_overrides(tree, tmp_path / "outputs", iterations=2)
                         if not o.startswith("optim.lr")])
    assert code == 0, "".join(capsys.readouterr())[-3000:]
    for job, lr in (("0", 0.005), ("1", 0.01)):
        assert (sweep / job / "last.pt").is_file() and (sweep / job / "tb").is_dir()
        assert f"lr: {lr}" in (sweep / job / ".hydra" / "config.yaml").read_text()


def test_focal_loss_and_cosine_schedule_train_from_the_command_line(tmp_path, entry_point, capsys):
    tree = make_voc_tree(tmp_path / "VOC", n_train=4, n_val=2, size=(48, 64))
    run = tmp_path / "run"
    code = entry_point(train_main, "dataset=voc", "loss=focal", "loss.gamma=1.5", "schedule=cosine",
                       "schedule.warmup_iters=1", f"hydra.run.dir={run}", *tiny_train_overrides(tree, tmp_path / "out"))
    assert code == 0, "".join(capsys.readouterr())[-3000:]
    config = load_checkpoint(run / "last.pt")["config"]
    assert config["loss"] == {"name": "focal", "gamma": 1.5, "alpha": None}
    assert config["schedule"] == {"name": "cosine", "warmup_iters": 1, "warmup_ratio": 0.1, "min_lr_ratio": 0.0}
    lrs = [e.value for e in EventAccumulator(str(run / "tb")).Reload().Scalars("train/lr")]
    # lr 0.002 over 3 iterations: the warmup ends at iteration 1, then half a cosine down to 0 at iteration 3
    assert lrs == pytest.approx([0.002, 0.001, 0.0], abs=1e-9)


@pytest.mark.parametrize("command, args, expected", [
    (train_main, ["trainer.iteration=5"], "did you mean trainer.iterations=5?"),
    (train_main, ["traner.iterations=5"], "no key traner; did you mean trainer.iterations=5?"),
    (train_main, ["dataset=voc", "dataset.num_clases=3"], "did you mean dataset.num_classes=3?"),
    (train_main, ["optimizer=sgd"], "did you mean optim=sgd?"),
    (train_main, ["optim=sdg"], "configs/optim/ has no option sdg; did you mean optim=sgd? (its options: adamw, sgd)"),
    (train_main, ["model.width_mult=0.5"], "model.width_mult is now model.backbone.width_mult; write "
                                           "model.backbone.width_mult=0.5"),
    (train_main, ["model/backbone=resnet50", "model.backbone.width_mult=0.5"], "model.backbone holds name"),
    (predict_main, ["checkpoint=x.pt", "inptu=images/"], "did you mean input=images/?"),
    # values Hydra's grammar reads otherwise than meant, or not at all (the second sweep's own cases)
    (predict_main, ["checkpoint=x.pt", "input=photos/img[1].jpg"],
     "quote the value inside the argument: input='photos/img[1].jpg' (in a shell, \"input='photos/img[1].jpg'\")"),
    (predict_main, ["checkpoint=x.pt", "input=photos/a,b.jpg"], "the comma makes Hydra read several values"),
    (predict_main, ["checkpoint=x.pt", "input=photos/img[1].jpg"], "Hydra cannot read '[', ']' unquoted"),
    (predict_main, ["checkpoint=~/x.pt", "input=a.jpg"], "Hydra cannot read '~' unquoted"),
    (predict_main, ["checkpoint=x.pt", "input=фото"], "input='фото'"),
    (predict_main, ["checkpoint=x.pt", "input=it's.jpg"], "input=\"it's.jpg\""),
    (predict_main, ["checkpoint=x.pt", "input=${oops}/a.jpg"], "which the config cannot resolve"),
    (train_main, ["output_root='~/runs'"], "output_root=~/runs: Hydra does not expand ~ in its run folder"),
])
def test_an_unknown_key_or_option_is_one_sentence_with_the_closest_and_nothing_is_written(
        command, args, expected, entry_point, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = entry_point(command, *args)
    err = capsys.readouterr().err
    assert code == 1 and expected in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert list(tmp_path.iterdir()) == []  # no run dir, no log: Hydra's main never started


def test_a_run_folder_under_a_file_is_one_sentence_naming_the_key(entry_point, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "last.pt").write_bytes(b"a checkpoint")
    for args, key in ((["output_root=last.pt/runs"], "output_root=last.pt/runs"),
                      (["checkpoint=x.pt", "hydra.run.dir=last.pt"], "hydra.run.dir=last.pt")):
        code = entry_point(train_main if args[0].startswith("output") else evaluate_main, *args)
        err = capsys.readouterr().err
        assert code == 1 and err.startswith(f"{key}: last.pt is a file, not a folder") and err.count("\n") == 1, err
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


@pytest.mark.parametrize("args, expected", [
    (["trainer.iteration=5"], "did you mean trainer.iterations=5?"),
    (["optim=sdg"], "did you mean optim=sgd?"),
    (["model/backbone=resnet5"], "did you mean model/backbone=resnet50?"),
    (["dataset=voc", "optim=adamw", "optim.momentum=0.9"], "have no key optim.momentum; optim holds name, lr, betas"),
])
def test_suggestions_come_from_the_configs_not_from_the_wording_of_hydras_errors(args, expected, monkeypatch):
    import hydra.errors

    for error in (hydra.errors.ConfigCompositionException, hydra.errors.MissingConfigException):
        monkeypatch.setattr(error, "__str__", lambda self: "a later Hydra words this otherwise")
    assert expected in unknown_override("train", args)


def test_overrides_that_compose_and_flags_are_left_to_hydra():
    assert unknown_override("train", ["dataset=voc", "trainer.iterations=5", "model/backbone=resnet50"]) is None
    assert unknown_override("train", ["+trainer.iteration=5"]) is None  # an addition: the trainer names it
    assert unknown_override("train", ["-m", "trainer.iteration=1,2"]) is None  # sweeps and --help: Hydra's own
    assert unknown_override("train", ["--cfg", "job"]) is None  # a flag's word is not an override
    assert unknown_override("train", ["--cfg", "hydra", "--package", "trainer"]) is None
    assert "Hydra cannot read '['" in unknown_override("train", ["-m", "output_root=a[1]"])  # a sweep's still read
    assert unknown_override("predict", ["checkpoint=x.pt", "input=images/"]) is None
    assert unknown_override("train", ["hydra.run.dri=x"]) is None  # Hydra's own keys: Hydra's own message


@pytest.fixture
def own_configs(tmp_path):
    """A user's config folder adding an experiment of their own, configs/experiment/ lacks it."""
    folder = tmp_path / "my_configs"
    (folder / "experiment").mkdir(parents=True)
    (folder / "experiment" / "mine.yaml").write_text("# @package _global_\ntrainer:\n  iterations: 7\n")
    (folder / "mytrain.yaml").write_text("defaults:\n  - train\n  - _self_\ntrainer:\n  iterations: 3\n")
    return folder


@pytest.mark.parametrize("how", ["searchpath", "--config-dir", "-cd"])
def test_a_typo_beside_an_option_from_the_users_own_config_folder_gets_the_closest_key(how, own_configs, entry_point,
                                                                                       capsys, tmp_path, monkeypatch):
    """The command line check reads every config source Hydra's main reads (hydra.searchpath, --config-dir): the
    user's own option is valid, and the typo next to it is the one named, with the closest key."""
    source = [f"hydra.searchpath=[file://{own_configs}]"] if how == "searchpath" else [how, str(own_configs)]
    assert unknown_override("train", [*source, "experiment=mine"]) is None
    assert "did you mean experiment=mine?" in unknown_override("train", [*source, "experiment=mnie"])
    monkeypatch.chdir(tmp_path)
    code = entry_point(train_main, *source, "experiment=mine", "trainer.iteration=5")
    err = capsys.readouterr().err
    assert code == 1 and "no key trainer.iteration; did you mean trainer.iterations=5?" in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert [p.name for p in tmp_path.iterdir()] == ["my_configs"]  # nothing written


def test_a_typo_in_a_primary_config_of_the_users_own_names_that_config(own_configs):
    assert unknown_override("train", ["-cd", str(own_configs), "-cn", "mytrain", "trainer.iterations=5"]) is None
    assert "mytrain.yaml (--config-name) and its groups have no key trainer.iteration; did you mean " \
           "trainer.iterations=5?" in unknown_override("train", ["-cd", str(own_configs), "--config-name=mytrain",
                                                                 "trainer.iteration=5"])


@pytest.mark.parametrize("multirun", [[], ["-m"]])
def test_a_config_file_that_is_not_yaml_is_one_sentence_naming_its_line(multirun, own_configs):
    (own_configs / "experiment" / "broken.yaml").write_text("trainer:\n  iterations: [1,\n")
    problem = unknown_override("train", [*multirun, "-cd", str(own_configs), "experiment=broken"])
    assert problem.startswith(f"{own_configs / 'experiment' / 'broken.yaml'}: not valid YAML at line 3, column 1 (")


def test_the_help_page_lists_the_options_of_the_users_own_config_folder(own_configs, entry_point, capsys):
    assert entry_point(train_main, "--config-dir", str(own_configs), "--help") == 0
    groups = capsys.readouterr().out.split("== Configuration groups ==")[1]
    assert "experiment: camvid, camvid_cpu, cityscapes, mine, voc_os16" in groups
