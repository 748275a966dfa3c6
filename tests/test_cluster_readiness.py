"""The GPU and cluster paths no machine here runs, checked on this one in a single process: wrappers in either
order, the device a single process trains on, all-ignored micro-batches, GPU RNG state on fewer GPUs, requeue with
resume=auto, SIGTERM. The checks with several processes (spawned ranks, torchrun, two "nodes") are in
test_cluster_processes.py."""

import logging
import os
import signal
import types

import pytest
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from conftest import compose, free_port as _free_port, kill_at_step, make_voc_tree, tiny_train_overrides
from deeplab.engine import checkpoint as ckpt
from deeplab.engine import trainer as trainer_module
from deeplab.engine.checkpoint import load_checkpoint
from deeplab.engine.distributed import DistInfo
from deeplab.engine.step import ddp_of, optimizer_step, unwrap
from deeplab.engine.run_state import TrainingInterrupted
from deeplab.engine.trainer import process_device, train
from deeplab.errors import ConfigError
from deeplab.losses import build_loss
from deeplab.model import build_model


@pytest.fixture
def one_process_group():
    """A gloo process group of one process, as torchrun with --nproc_per_node=1 makes."""
    port = _free_port()
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def _tiny_model():
    return build_model(num_classes=3, backbone={"name": "mobilenet_v2", "width_mult": 0.25}, backbone_weights=None,
                       separable=True, aspp_channels=16, low_level_channels=8, decoder_channels=16)


@pytest.mark.parametrize("order", ["compile(DDP(model))", "DDP(compile(model))"])
def test_checkpoints_hold_the_plain_model_whichever_order_compile_and_ddp_wrap_it(one_process_group, order):
    model = _tiny_model()
    wrapped = torch.compile(DistributedDataParallel(model), backend="eager") if order.startswith("compile") \
        else DistributedDataParallel(torch.compile(model, backend="eager"))
    assert unwrap(wrapped) is model and isinstance(ddp_of(wrapped), DistributedDataParallel)
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in unwrap(wrapped).state_dict())
    assert unwrap(wrapped).backbone is model.backbone  # what trainer.freeze_backbone_iters freezes
    assert ddp_of(model) is None and unwrap(model) is model


def test_accumulated_steps_under_compiled_ddp_reduce_gradients_once(one_process_group, monkeypatch):
    model = _tiny_model()
    wrapped = torch.compile(DistributedDataParallel(model), backend="eager")
    entered = []
    real = DistributedDataParallel.no_sync
    monkeypatch.setattr(DistributedDataParallel, "no_sync", lambda self: entered.append(1) or real(self))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    batches = [(torch.randn(2, 3, 32, 32), torch.randint(0, 3, (2, 32, 32))) for _ in range(3)]
    optimizer_step(wrapped, optimizer, torch.amp.GradScaler("cpu", enabled=False), build_loss(ignore_index=255),
                   batches, device=torch.device("cpu"))
    assert len(entered) == 2  # every micro-batch but the last skips the all-reduce


def test_a_single_process_trains_on_the_gpu_it_names_and_torchrun_ranks_on_their_own():
    assert process_device(torch.device("cuda", 1), DistInfo()) == torch.device("cuda", 1)
    assert process_device(torch.device("cuda"), DistInfo()) == torch.device("cuda")
    assert process_device(torch.device("cuda"), DistInfo(rank=3, local_rank=1, world_size=4)) == \
        torch.device("cuda", 1)
    assert process_device(torch.device("cpu"), DistInfo(rank=1, local_rank=1, world_size=2)) == torch.device("cpu")


@pytest.mark.parametrize("options", [{}, {"class_weights": [0.5, 2.0, 1.0]}, {"dice_weight": 0.5},
                                     {"ohem_fraction": 0.5}])
def test_an_all_ignored_batch_gives_zero_loss_and_zero_gradients(options):
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    loss = build_loss(ignore_index=255, **options)(logits, torch.full((2, 4, 4), 255))
    loss.backward()
    assert loss.item() == 0 and torch.equal(logits.grad, torch.zeros_like(logits))


def test_a_micro_batch_of_ignored_pixels_does_not_stop_the_run_as_diverged():
    torch.manual_seed(0)
    model = _tiny_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    good = (torch.randn(2, 3, 32, 32), torch.randint(0, 3, (2, 32, 32)))
    ignored = (torch.randn(2, 3, 32, 32), torch.full((2, 32, 32), 255))  # e.g. a crop of VOC's padding
    for weights in (None, [1.0, 3.0, 0.2]):
        loss = optimizer_step(model, optimizer, torch.amp.GradScaler("cpu", enabled=False),
                              build_loss(ignore_index=255, class_weights=weights), [good, ignored],
                              device=torch.device("cpu"))
        assert torch.isfinite(loss) and loss > 0
        assert all(torch.isfinite(p).all() for p in model.parameters())


def test_gpu_rng_state_is_this_devices_and_an_old_all_gpus_checkpoint_resumes_on_fewer(monkeypatch):
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda: torch.tensor([7], dtype=torch.uint8))
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state: restored.append(int(state[0])))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: pytest.fail("restores every GPU"))
    state = ckpt.rng_state()
    assert int(state["cuda_device"][0]) == 7 and "cuda" not in state
    ckpt.set_rng_state(state)
    # a checkpoint of the earlier format, saved on 4 GPUs, resumed where one is visible
    ckpt.set_rng_state({"torch": torch.get_rng_state(), "cuda": [torch.tensor([i], dtype=torch.uint8)
                                                                 for i in (3, 4, 5, 6)]})
    assert restored == [7, 3]


def _resumable_run(rank: int, world_size: int):
    model = _tiny_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    return types.SimpleNamespace(
        model=model, optimizer=optimizer, scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: 1.0),
        scaler=torch.amp.GradScaler("cpu", enabled=False), best_miou=0.5, last_metrics={}, validated_at=4, ema=None,
        saved_config={}, command=None,
        dist=DistInfo(rank=rank, world_size=world_size), settings=types.SimpleNamespace(iterations=10))


@pytest.mark.parametrize("world_size", [2, 3])
def test_each_process_resumes_its_own_rng_state_when_as_many_processes_resume(monkeypatch, world_size):
    from deeplab.engine.run_state import checkpoint_state
    from deeplab.engine.trainer import restore

    states = []
    for seed in (10, 11):  # what two processes' generators hold when the checkpoint is written
        torch.manual_seed(seed)
        states.append(ckpt.rng_state())
    state = checkpoint_state(_resumable_run(0, 2), 4, states)
    assert torch.equal(state["rng"]["torch"], states[0]["torch"]) and len(state["rng_ranks"]) == 2
    state["config"] = {"trainer": {"iterations": 10}}
    torch.manual_seed(99)
    assert restore(_resumable_run(1, world_size), state) == 4
    # rank 1 of the same 2 processes takes its own; of 3 (another job size), every process takes rank 0's
    expected = states[1] if world_size == 2 else states[0]
    assert torch.equal(torch.get_rng_state(), expected["torch"])


@pytest.fixture
def tree(tmp_path):
    return make_voc_tree(tmp_path / "VOC", n_train=8, n_val=3, size=(48, 64))


def _overrides(tree, tmp_path, iterations=3, *extra):
    return ["dataset=voc", *tiny_train_overrides(tree, tmp_path / "outputs", iterations), *extra]


def test_a_requeued_command_with_resume_auto_continues_the_run_dir_it_names(tree, tmp_path, caplog):
    run = tmp_path / "scratch" / "run7"
    other = tmp_path / "outputs" / "newer"  # a newer run under output_root must not be taken instead
    train(compose("train", _overrides(tree, tmp_path, 2)), other)
    command = _overrides(tree, tmp_path, 2, "resume=auto")
    with caplog.at_level(logging.INFO, logger="deeplab.train"):  # first launch: nothing there yet, a new run
        train(compose("train", command), run, command, named_run_dir=True)
    assert f"no last.pt in {run} to continue, so this starts a new run in {run}" in caplog.text
    assert load_checkpoint(run / "last.pt")["iteration"] == 2
    command = _overrides(tree, tmp_path, 3, "resume=auto")  # requeued, one iteration more
    train(compose("train", command), run, command, named_run_dir=True)
    assert load_checkpoint(run / "last.pt")["iteration"] == 3 and load_checkpoint(other / "last.pt")["iteration"] == 2


def test_resume_auto_with_no_run_anywhere_starts_a_new_one(tree, tmp_path):
    command = _overrides(tree, tmp_path, 2, "resume=auto")
    train(compose("train", command), tmp_path / "outputs" / "first", command)
    assert load_checkpoint(tmp_path / "outputs" / "first" / "last.pt")["iteration"] == 2


def test_sigterm_saves_last_pt_at_the_next_step_and_the_same_command_continues(tree, tmp_path, monkeypatch):
    real_step, calls = trainer_module.train_step, []

    def step_then_sigterm(*args, **kwargs):
        calls.append(1)
        loss = real_step(*args, **kwargs)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # as a scheduler sends before SIGKILL
        return loss

    monkeypatch.setattr(trainer_module, "train_step", step_then_sigterm)
    handler = signal.getsignal(signal.SIGTERM)
    command = _overrides(tree, tmp_path, 5, "resume=auto", "trainer.checkpoint_every=100")
    run = tmp_path / "run"
    with pytest.raises(TrainingInterrupted, match=r"terminated \(SIGTERM\) at iteration 3: last.pt saved at "
                                                  r"iteration 3; continue with resume="):
        train(compose("train", command), run, command, named_run_dir=True)
    assert signal.getsignal(signal.SIGTERM) == handler  # the handler is put back
    assert load_checkpoint(run / "last.pt")["iteration"] == 3
    monkeypatch.setattr(trainer_module, "train_step", real_step)
    train(compose("train", command), run, command, named_run_dir=True)
    assert load_checkpoint(run / "last.pt")["iteration"] == 5


def _fake_gpu(monkeypatch, capability):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Tesla T4" if capability < (8, 0) else "A100")
    monkeypatch.setattr(torch.version, "hip", None)


def test_auto_on_a_gpu_is_bf16_where_native_else_fp16_and_bf16_is_refused_where_it_is_not(monkeypatch):
    from deeplab.engine.precision import auto_precisions, resolve_precision, training_plan
    from deeplab.errors import ConfigError

    _fake_gpu(monkeypatch, (8, 0))
    assert auto_precisions("cuda") == ("bf16",) and resolve_precision("auto", "cuda") == "bf16"
    _fake_gpu(monkeypatch, (7, 5))
    assert auto_precisions("cuda") == ("fp16",) and resolve_precision("auto", "cuda") == "fp16"
    with pytest.raises(ConfigError, match=r"^trainer.precision=bf16: this GPU \(Tesla T4\) has no native bf16.*"
                                          r"trainer.precision=fp16"):
        resolve_precision("bf16", "cuda", key="trainer.precision")
    on_gpu = types.SimpleNamespace(device=torch.device("cuda"))  # images on the GPU, for what the plan reads
    plan = training_plan(torch.nn.Identity(), on_gpu, on_gpu, precision="fp32", channels_last=True, fast_convs=True)
    assert "fast convs" not in str(plan) and not plan.fast_convs  # a CPU path: never claimed on a GPU


def test_a_deterministic_run_sets_the_cublas_workspace_before_cuda_starts(tree, tmp_path, monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    train(compose("train", _overrides(tree, tmp_path, 1, "trainer.deterministic=true")), tmp_path / "run")
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"


def test_the_predictor_and_the_commands_default_to_the_same_device():
    import inspect

    from deeplab.inference import Predictor, model_from_checkpoint, prepare_for_inference
    from conftest import compose as compose_config

    defaults = {inspect.signature(f).parameters["device"].default
                for f in (Predictor, Predictor.from_checkpoint, model_from_checkpoint, prepare_for_inference)}
    assert defaults == {compose_config("predict", []).device} == {compose_config("evaluate", []).device} == {"auto"}


def test_out_of_memory_in_training_saves_the_steps_done_and_names_what_to_lower(tree, tmp_path, monkeypatch):
    from deeplab.engine.run_state import OutOfMemory

    real_step, calls = trainer_module.train_step, []

    def step_out_of_memory(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_step(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "train_step", step_out_of_memory)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    run = tmp_path / "run"
    with pytest.raises(OutOfMemory) as exc:
        train(compose("train", _overrides(tree, tmp_path, 5, "trainer.checkpoint_every=100")), run)
    message = str(exc.value)
    assert "\n" not in message and "at iteration 3" in message and "last.pt saved at iteration 2" in message
    assert "trainer.grad_accum=2" in message and "trainer.batch_size" in message
    assert load_checkpoint(run / "last.pt")["iteration"] == 2


@pytest.mark.parametrize("name,lower", [("predict", "batch_size=1"), ("evaluate", "window=[1024,1024]")])
def test_out_of_memory_in_a_command_is_one_sentence(name, lower, monkeypatch, caplog):
    import hydra

    from deeplab.cli import command

    def body(cfg):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB\nmore")

    monkeypatch.setattr(hydra, "main", lambda **kw: lambda f: lambda: f(None))
    monkeypatch.setattr("sys.argv", [name])
    with pytest.raises(SystemExit) as exit_info, caplog.at_level(logging.ERROR):
        command(name, logger=f"deeplab.{name}")(body)()
    assert exit_info.value.code == 1
    assert "the GPU ran out of memory (CUDA out of memory. Tried to allocate 9.00 GiB)" in caplog.text
    assert lower in caplog.text and "Traceback" not in caplog.text


def test_validation_runs_the_plain_model_without_cudnn_autotuning(tree, tmp_path, monkeypatch):
    real_evaluate, seen = trainer_module.evaluate, []

    def recording(model, *args, **kwargs):
        seen.append((type(model).__name__, torch.backends.cudnn.benchmark))
        return real_evaluate(model, *args, **kwargs)

    monkeypatch.setattr(trainer_module, "evaluate", recording)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    train(compose("train", _overrides(tree, tmp_path, 2)), tmp_path / "run")
    assert seen == [("DeepLabV3Plus", False)]
    assert torch.backends.cudnn.benchmark is True  # the training setting, back after validating


def _sigterm_at(monkeypatch, step):
    """SIGTERM (a scheduler's) sent to this process after the trainer's `step`-th optimizer step."""
    real_step, calls = trainer_module.train_step, []

    def step_then_sigterm(*args, **kwargs):
        calls.append(1)
        loss = real_step(*args, **kwargs)
        if len(calls) == step:
            os.kill(os.getpid(), signal.SIGTERM)
        return loss
    monkeypatch.setattr(trainer_module, "train_step", step_then_sigterm)
    return real_step


def test_resume_auto_continues_the_run_its_command_started_not_a_newer_one(tree, tmp_path, monkeypatch, caplog):
    """Run A stopped by SIGTERM; run B (another command) finished later under the same output_root: A's command with
    resume=auto continues A, as A's own message said, and B is left as it was."""
    a_command = _overrides(tree, tmp_path, 5, "trainer.checkpoint_every=100")
    real_step = _sigterm_at(monkeypatch, 3)
    with pytest.raises(TrainingInterrupted, match="same command with resume=auto"):
        train(compose("train", a_command), tmp_path / "outputs" / "A", a_command)
    monkeypatch.setattr(trainer_module, "train_step", real_step)
    b_command = _overrides(tree, tmp_path, 2, "optim.lr=0.001")
    train(compose("train", b_command), tmp_path / "outputs" / "B", b_command)
    b_before = (tmp_path / "outputs" / "B" / "last.pt").read_bytes()
    again = [*a_command, "resume=auto"]
    with caplog.at_level(logging.INFO, logger="deeplab.train"):
        train(compose("train", again), tmp_path / "outputs" / "stub", again)
    assert load_checkpoint(tmp_path / "outputs" / "A" / "last.pt")["iteration"] == 5
    assert (tmp_path / "outputs" / "B" / "last.pt").read_bytes() == b_before
    assert f"continuing {tmp_path / 'outputs' / 'A'}, the unfinished run" in caplog.text
    assert not (tmp_path / "outputs" / "stub").exists()


def test_a_sweep_with_resume_auto_starts_its_own_runs_beside_a_finished_one(tree, tmp_path, caplog):
    """`train.py -m trainer.iterations=3,4 resume=auto` with a finished run under output_root: each job's command
    (its own value) started no run, so each starts its own; the finished run is not extended."""
    finished = _overrides(tree, tmp_path, 2)
    train(compose("train", finished), tmp_path / "outputs" / "done", finished)
    before = (tmp_path / "outputs" / "done" / "last.pt").read_bytes()
    for n, iterations in enumerate((3, 4)):
        job = [*_overrides(tree, tmp_path, 2), f"trainer.iterations={iterations}", "resume=auto"]
        with caplog.at_level(logging.INFO, logger="deeplab.train"):
            train(compose("train", job), tmp_path / "multirun" / str(n), job)
        assert load_checkpoint(tmp_path / "multirun" / str(n) / "last.pt")["iteration"] == iterations
    assert (tmp_path / "outputs" / "done" / "last.pt").read_bytes() == before
    assert "no run under output_root" in caplog.text and "nor a run of this command under output_root" in caplog.text


def test_two_unfinished_runs_of_one_command_are_ambiguous_and_refused(tree, tmp_path, monkeypatch):
    command = _overrides(tree, tmp_path, 5, "trainer.checkpoint_every=2")
    for name in ("first", "second"):
        real_step = kill_at_step(monkeypatch, 3)
        with pytest.raises(TrainingInterrupted):
            train(compose("train", command), tmp_path / "outputs" / name, command)
        monkeypatch.setattr(trainer_module, "train_step", real_step)
    again = [*command, "resume=auto"]
    with pytest.raises(ConfigError, match="2 unfinished runs.*resume=<run>/last.pt") as exc_info:
        train(compose("train", again), tmp_path / "outputs" / "stub", again)
    assert str(tmp_path / "outputs" / "first") in str(exc_info.value)
    assert load_checkpoint(tmp_path / "outputs" / "first" / "last.pt")["iteration"] == 2


def test_a_run_of_an_older_version_is_matched_by_its_saved_overrides(tree, tmp_path):
    """A checkpoint without `command` (written before it was recorded): its run folder's .hydra/overrides.yaml, which
    Hydra and the commands have always written, names the command that started it."""
    command = _overrides(tree, tmp_path, 2)
    run = tmp_path / "outputs" / "old"
    train(compose("train", command), run, command)
    state = load_checkpoint(run / "last.pt")
    assert state.pop("command") == sorted(command)
    ckpt.save_checkpoint(run / "last.pt", state)
    (run / ".hydra").mkdir()
    (run / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in command))
    longer = [*_overrides(tree, tmp_path, 2), "resume=auto"]
    train(compose("train", longer), tmp_path / "outputs" / "stub", longer)
    assert load_checkpoint(run / "last.pt")["iteration"] == 2 and not (tmp_path / "outputs" / "stub").exists()
