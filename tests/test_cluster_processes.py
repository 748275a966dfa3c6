"""The cluster paths checked with several processes on this machine: spawned gloo ranks that would disagree on the
run dir or meet a bad sample on one rank, rank 0 building first, and torchrun jobs on one "node" and on two (a c10d
rendezvous) stopped by SIGTERM and requeued with the identical command."""

import os
import signal
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from conftest import compose, free_port as _free_port, make_voc_tree, tiny_train_overrides
from deeplab.engine.checkpoint import load_checkpoint
from deeplab.engine.distributed import DistInfo
from deeplab.engine.trainer import train


def _join_as(rank: int, port: int) -> None:
    """The environment torchrun gives process `rank` of 2, one thread each."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK="0",
                      WORLD_SIZE="2", OMP_NUM_THREADS="1")
    torch.set_num_threads(1)


def _train_outcome(command: list[str], run_dir: Path) -> str:
    """One training in a spawned process: "trained", or the one sentence that stopped it; the group is left down."""
    from deeplab.errors import UserError

    try:
        train(compose("train", command), run_dir, command)
        return "trained"
    except UserError as exc:
        return str(exc)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _two_node_worker(rank, port, tree, root, results):
    """One of two "nodes": its own Hydra run dir (the clocks differ), the same command line."""
    from deeplab.engine import checkpoint as ckpt_
    from deeplab.errors import UserError

    _join_as(rank, port)
    outcome = []
    for phase in ("first", "requeued", "unreadable"):  # the same command each time, as a scheduler requeues it
        stub = root / "outputs" / f"{phase}-node{rank}"
        (stub / ".hydra").mkdir(parents=True)  # what Hydra leaves in the run dir it made on this node
        if phase == "unreadable" and rank == 1:
            def unreadable(path, **kwargs):
                raise UserError(f"{path}: no such checkpoint file")
            ckpt_.load_checkpoint = unreadable  # this node does not see rank 0's storage
        command = ["dataset=voc", *tiny_train_overrides(tree, root / "outputs", 2), "resume=auto",
                   "trainer.precision=fp32"]
        outcome.append((phase, _train_outcome(command, stub)))
    results.put((rank, outcome))


@pytest.mark.slow  # two spawned processes, three short trainings each
def test_two_nodes_agree_on_the_run_dir_and_the_checkpoint_rank_0_chose(tmp_path):
    import torch.multiprocessing as mp

    tree = make_voc_tree(tmp_path / "VOC", n_train=8, n_val=2, size=(48, 64))
    (tmp_path / "runs").mkdir()
    results = mp.get_context("spawn").SimpleQueue()
    port = _free_port()
    mp.spawn(_two_node_worker, args=(port, tree, tmp_path / "runs", results), nprocs=2)
    outcomes = dict(results.get() for _ in range(2))
    for rank in (0, 1):
        assert [o[1] for o in outcomes[rank][:2]] == ["trained", "trained"], outcomes[rank]
    runs = tmp_path / "runs" / "outputs"
    # both ranks trained in rank 0's dir, and resumed what rank 0 chose; rank 1's stubs (only .hydra) are gone
    names = {p.name for p in runs.iterdir()}
    assert "first-node0" in names and not names & {"first-node1", "requeued-node0", "requeued-node1"}, names
    assert load_checkpoint(runs / "first-node0" / "last.pt")["iteration"] == 2  # the requeue found it finished
    for rank in (0, 1):  # a node that cannot read the checkpoint stops both, in one sentence
        message = outcomes[rank][2][1]
        assert "rank 1 cannot read the checkpoint rank 0 resumes" in message and "shared storage" in message
        assert "\n" not in message
    assert load_checkpoint(runs / "first-node0" / "last.pt")["iteration"] == 2  # nothing trained after the refusal


def _bad_sample_worker(rank, port, tree, root, results):
    """Two processes; rank 1 meets a bad sample in training (its 7th sample read) or in the first validation."""
    from deeplab.data.dataset import DataError, SegmentationDataset

    _join_as(rank, port)
    getitem, outcome = SegmentationDataset.__getitem__, []
    for phase in ("train", "validation"):
        seen = []

        def flaky(self, index, phase=phase, seen=seen):
            training = isinstance(index, tuple)
            seen.append(training)
            if rank == 1 and (phase == "train" and seen.count(True) == 7 or phase == "validation" and not training):
                raise DataError(f"{phase}-bad.png: mask is 3x4 but its image is 4x3")
            return getitem(self, index)
        SegmentationDataset.__getitem__ = flaky
        command = ["dataset=voc", *tiny_train_overrides(tree, root, 6), f"hydra.run.dir={root / phase}"]
        outcome.append(_train_outcome(command, root / phase))
    results.put((rank, outcome))


@pytest.mark.slow  # two spawned processes, two short trainings each
def test_a_bad_sample_on_rank_1_stops_both_ranks_at_the_same_step_and_rank_0_saves(tmp_path):
    import time

    import torch.multiprocessing as mp

    tree = make_voc_tree(tmp_path / "VOC", n_train=8, n_val=2, size=(48, 64))
    results = mp.get_context("spawn").SimpleQueue()
    job = mp.spawn(_bad_sample_worker, args=(_free_port(), tree, tmp_path / "runs", results), nprocs=2, join=False)
    deadline = time.monotonic() + 240
    while not job.join(timeout=5):  # a rank left waiting in a collective would hang here until gloo's 30 minutes
        if time.monotonic() > deadline:
            for process in job.processes:
                process.kill()
            pytest.fail("a rank kept waiting after rank 1 met a bad sample")
    outcomes = dict(results.get() for _ in range(2))
    for phase, index in (("train", 0), ("validation", 1)):
        stopped = load_checkpoint(tmp_path / "runs" / phase / "last.pt")["iteration"]  # saved by rank 0
        assert 1 <= stopped < 6 and (phase == "train" or stopped == 2), (phase, stopped)
        for rank in (0, 1):
            message = outcomes[rank][index]
            assert f"{phase}-bad.png: mask is 3x4" in message and "met by rank 1 of 2" in message, message
            assert f"stopped the run at iteration {stopped}" in message and "is saved in" in message, message


def _torchrun_commands(tree: Path, run: Path, iterations: int, nodes: int) -> list[list[str]]:
    """The command each node runs: one node of 2 processes, or 2 "nodes" of one process each that meet through a
    c10d rendezvous, as on a cluster (here both on this machine)."""
    port = _free_port()
    launch = ["--nproc_per_node=2", f"--master_port={port}"] if nodes == 1 else \
        ["--nnodes=2", "--nproc_per_node=1", "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}",
         "--rdzv_id=job"]
    command = [sys.executable, "-m", "torch.distributed.run", *launch, "train.py", "dataset=voc",
               *tiny_train_overrides(tree, run.parent, iterations), f"hydra.run.dir={run}", "resume=auto",
               "trainer.checkpoint_every=1000", "trainer.val_every=10", "trainer.deterministic=true",
               "trainer.channels_last=false"]  # dropout on: each process resumes its own RNG
    return [command] * nodes


def _launch(commands: list[list[str]], env: dict) -> list:
    import subprocess

    from conftest import REPO

    return [subprocess.Popen(c, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for c in commands]


def _finish(jobs: list, timeout: float = 300) -> list[tuple[int, str]]:
    outputs = [job.communicate(timeout=timeout)[0] for job in jobs]
    return [(job.returncode, output) for job, output in zip(jobs, outputs)]


@pytest.mark.slow  # three torchrun jobs of two processes, on one "node" and on two
@pytest.mark.parametrize("nodes", [1, 2])
def test_sigterm_under_torchrun_saves_once_and_the_requeued_command_continues_exactly(tmp_path, nodes):
    import time

    tree = make_voc_tree(tmp_path / "VOC", n_train=8, n_val=2, size=(48, 64))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DEEPLAB_PROGRESS": "0"}
    straight = _finish(_launch(_torchrun_commands(tree, tmp_path / "straight", 40, nodes=1), env))
    assert straight[0][0] == 0, straight[0][1][-2000:]
    run = tmp_path / "job"
    jobs = _launch(_torchrun_commands(tree, run, 40, nodes), env)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not ((run / "train.log").is_file() and
                                               "iter 12 " in (run / "train.log").read_text()):
        time.sleep(0.2)  # past a validation (iteration 10): training and validating across the nodes
    for job in jobs:  # what a scheduler sends to the job on every node: torchrun forwards it to its processes
        job.send_signal(signal.SIGTERM)
    for code, output in _finish(jobs, timeout=120):
        assert code != 0, output[-2000:]
        assert "terminated (SIGTERM) at iteration" in output and "Traceback" not in output.split("SIGTERM")[0]
    stopped = load_checkpoint(run / "last.pt")["iteration"]
    assert 12 <= stopped < 40
    assert {p.name for p in tmp_path.iterdir()} == {"VOC", "job", "straight"}  # one run folder, no stray ones
    again = _finish(_launch(_torchrun_commands(tree, run, 40, nodes), env))  # the requeued, identical command
    for code, output in again:
        assert code == 0, output[-2000:]
    resumed, reference = load_checkpoint(run / "last.pt"), load_checkpoint(tmp_path / "straight" / "last.pt")
    assert resumed["iteration"] == 40
    for key, value in reference["model"].items():
        torch.testing.assert_close(resumed["model"][key], value, rtol=1e-5, atol=1e-6, msg=key)
    assert resumed["best_miou"] == pytest.approx(reference["best_miou"], abs=1e-6)


def _rank_zero_first_worker(rank, port, folder, results):
    import time

    from deeplab.engine.distributed import rank_zero_first

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    seen = None
    try:
        with rank_zero_first(DistInfo(rank=rank, world_size=2)):
            if rank == 0:
                time.sleep(1.0)  # a slow cache build
                (folder / "cache").write_text("built")
                raise RuntimeError("rank 0's build failed after writing")  # it still releases the others
            seen = (folder / "cache").read_text()
    except RuntimeError:
        seen = "failed"
    results.put((rank, seen))
    dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes
def test_rank_zero_builds_first_and_the_others_read_after_it_even_when_it_fails(tmp_path):
    import torch.multiprocessing as mp

    results = mp.get_context("spawn").SimpleQueue()
    mp.spawn(_rank_zero_first_worker, args=(_free_port(), tmp_path, results), nprocs=2)
    assert dict(results.get() for _ in range(2)) == {0: "failed", 1: "built"}
