"""The checks only a CUDA machine can run: mixed-precision training, resume, evaluation, a large photo, export and
DDP with SyncBatchNorm over every visible GPU. Skipped without CUDA; never part of CI's two tiers.

Run on any CUDA machine from the repository root (under 8 minutes on one modern GPU):
    python -m pytest -m gpu tests/gpu -n 0 -s
It prints each figure it measures (images/s per GPU, peak memory) with the GPU's name.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO, compose
from deeplab.engine.checkpoint import load_checkpoint
from deeplab.engine.precision import cuda_bf16_native
from deeplab.engine.trainer import train

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

DEMO = ["dataset=demo", "trainer.val_every=100", "trainer.checkpoint_every=100", "trainer.log_every=20",
        "trainer.grid_images=0", "trainer.log_figures=false", "trainer.device=cuda"]


def _say(what: str) -> None:
    print(f"\n[gpu] {torch.cuda.get_device_name()}: {what}", flush=True)


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    return tmp_path_factory.mktemp("demo") / "demo"


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_mixed_precision_training_learns_the_demo(precision, demo_root, tmp_path):
    if precision == "bf16" and not cuda_bf16_native():
        pytest.skip("this GPU has no native bf16 (precision=bf16 is refused on it)")
    torch.cuda.reset_peak_memory_stats()
    run = tmp_path / precision
    best = train(compose("train", [*DEMO, f"dataset.root={demo_root}", f"output_root={tmp_path}",
                                   "trainer.iterations=300", f"trainer.precision={precision}"]), run)
    rows = _metrics(run)
    losses = [r["loss"] for r in rows if r["kind"] == "train"]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert best > 0.3, f"{precision}: val mIoU {best:.3f} after 300 iterations"
    speed = np.median([r["images_per_s"] for r in rows if r["kind"] == "train"][1:])
    _say(f"{precision} training: {speed:.0f} images/s, peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB, "
         f"val mIoU {best:.3f} at 300 iterations")


def test_resume_then_evaluate_reproduces_the_runs_own_score(demo_root, tmp_path):
    from deeplab.cli import evaluate as evaluate_cli

    run = tmp_path / "run"
    overrides = [*DEMO, f"dataset.root={demo_root}", f"output_root={tmp_path}", "trainer.iterations=100"]
    train(compose("train", overrides), run)
    again = [*overrides[:-1], "trainer.iterations=200", f"resume={run / 'last.pt'}"]
    train(compose("train", again), tmp_path / "stub", again)
    state = load_checkpoint(run / "last.pt")
    assert state["iteration"] == 200
    result = evaluate_cli.run(compose("evaluate", [f"checkpoint={run / 'last.pt'}", "device=cuda"]), tmp_path / "ev")
    assert result["mIoU"] == pytest.approx(state["metrics"]["mIoU"], abs=0.01)


def _short_run(tmp_path: Path) -> Path:
    """A 20-iteration demo run on the GPU; its last.pt."""
    train(compose("train", [*DEMO, f"dataset.root={tmp_path / 'demo'}", f"output_root={tmp_path}",
                            "trainer.iterations=20", "trainer.val_every=20", "trainer.checkpoint_every=20"]),
          tmp_path / "run")
    return tmp_path / "run" / "last.pt"


def test_a_4000x3000_photo_is_predicted_without_running_out_of_memory(tmp_path):
    from deeplab.cli import predict as predict_cli

    checkpoint = _short_run(tmp_path)
    photo = tmp_path / "in" / "big.jpg"
    photo.parent.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (3000, 4000, 3), dtype=np.uint8)).save(photo)
    torch.cuda.reset_peak_memory_stats()
    predict_cli.run(compose("predict", [f"checkpoint={checkpoint}", f"input={photo.parent}",
                                        f"output={tmp_path / 'out'}", "device=cuda"]), tmp_path / "pr")
    with Image.open(tmp_path / "out" / "big.png") as labels:
        assert labels.size == (4000, 3000)
    _say(f"predict 4000x3000: peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")


def test_export_of_a_gpu_trained_checkpoint(tmp_path):
    from deeplab.cli import export as export_cli

    checkpoint = _short_run(tmp_path)
    export_cli.run(compose("export", [f"checkpoint={checkpoint}"]))
    assert checkpoint.with_suffix(".onnx").is_file()


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(nproc: int, run: Path, demo_root: Path) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={_port()}",
           "train.py", *DEMO, f"dataset.root={demo_root}", f"hydra.run.dir={run}", f"output_root={run.parent}",
           "trainer.iterations=1", "trainer.val_every=1", "trainer.checkpoint_every=1", "trainer.precision=fp32",
           "trainer.batch_size=8", "model.aspp_dropout=0"]
    done = subprocess.run(cmd, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    return load_checkpoint(run / "last.pt")


def test_ddp_over_every_gpu_keeps_one_gpus_batchnorm_statistics(demo_root, tmp_path):
    gpus = torch.cuda.device_count()
    if gpus < 2:
        pytest.skip("one GPU: DDP over several needs two or more")
    train(compose("train", [*DEMO, f"dataset.root={demo_root}", f"output_root={tmp_path}",
                            "trainer.iterations=1"]), tmp_path / "make-data")  # the demo data, made once
    one, many = _torchrun(1, tmp_path / "one", demo_root), _torchrun(gpus, tmp_path / "many", demo_root)
    stats = [k for k in one["model"] if k.endswith("running_mean")]
    for key in stats[:5]:  # SyncBatchNorm: the global batch's statistics, whatever the number of GPUs
        torch.testing.assert_close(many["model"][key], one["model"][key], rtol=1e-2, atol=1e-4)
    _say(f"DDP over {gpus} GPUs: BatchNorm statistics match one GPU's")
