"""A training run's state as the loop holds it (`Run`), what a checkpoint of it keeps, and how a run that stops early
says what was kept: the bad-sample, interruption and out-of-memory errors, each saving the steps done first."""

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from deeplab.data import DataError
from deeplab.engine import checkpoint as ckpt
from deeplab.engine.distributed import DistInfo, all_gather_object
from deeplab.engine.ema import ModelEma
from deeplab.engine.run_config import TrainerSettings
from deeplab.engine.step import unwrap
from deeplab.engine.tracking import RunLogger
from deeplab.errors import UserError


@dataclass(frozen=True)
class Classes:
    """What validation and the final report know of the dataset's classes (set once from the config)."""

    count: int
    ignore_index: int
    names: list[str]
    pixel_share: list[float | None]  # of the training pixels, when the class weights counted them


@dataclass
class Run:
    """Everything the loop touches, built once by `train`. The loop reads typed settings (`settings`, `classes`);
    `saved_config` is written into every checkpoint as it is, and nothing below `build_run` reads it."""

    settings: TrainerSettings
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    criterion: nn.Module
    train_batches: torch.utils.data.DataLoader
    val_batches: torch.utils.data.DataLoader
    device: torch.device
    precision: str
    dist: DistInfo
    output_dir: Path
    classes: Classes
    saved_config: dict
    logger: RunLogger | None = None
    ema: ModelEma | None = None  # trainer.ema_decay: the weights' moving average, validated and saved as well
    best_miou: float = -1.0
    last_metrics: dict = field(default_factory=dict)
    validated_at: int = 0  # the iteration of the last validation completed (one interrupted is owed on resume)
    command: list[str] | None = None  # the overrides of the command that started the run (what resume=auto matches)


def bad_sample_error(run: Run, iteration: int, start_iter: int, problem: str, rank: int = 0) -> DataError:
    """A bad sample met in training or validation by process `rank`, which every process has learnt of at the same
    step: rank 0 saves the training done so far, and each process's message says so."""
    last = run.output_dir / "last.pt"
    if iteration > start_iter:
        save_run(run, iteration)
        kept = f"the training up to iteration {iteration} is saved in {last}"
    else:
        kept = f"no training was lost (it stopped before iteration {start_iter + 1})"
    met = f" by rank {rank} of {run.dist.world_size}" if run.dist.world_size > 1 else ""
    return DataError(f"{problem} (met{met}; this stopped the run at iteration {iteration}; {kept}: fix the data, "
                     f"then continue with resume={last})")


class TrainingInterrupted(UserError):
    """Ctrl-C or SIGTERM: what was saved, and how to continue."""


def interruption_error(run: Run, iteration: int, start_iter: int, *, saved: bool, how: str = "interrupted",
                agreed: bool = False) -> TrainingInterrupted:
    """Ctrl-C (or SIGTERM) between steps saves last.pt of the iteration reached; during a step the last checkpoint
    is kept. `agreed`: every process stops here together (SIGTERM), so each one's RNG state is saved."""
    last = run.output_dir / "last.pt"
    if saved and iteration > start_iter and (agreed or run.dist.is_main):
        save_run(run, iteration, together=agreed)
        kept = f"last.pt saved at iteration {iteration}"
    elif last.is_file():
        kept = f"last.pt of iteration {ckpt.load_checkpoint(last)['iteration']} kept"
    else:
        return TrainingInterrupted(f"{how} at iteration {iteration}, before any checkpoint was written")
    return TrainingInterrupted(f"{how} at iteration {iteration}: {kept}; continue with resume={last} (or the same "
                               f"command with resume=auto)")


class OutOfMemory(UserError):
    """The GPU ran out of memory: what to lower, and what was saved."""


def out_of_memory_error(run: Run, iteration: int, start_iter: int, exc: Exception) -> OutOfMemory:
    """CUDA out of memory in a step or a validation: the steps done so far are saved (a step's optimizer state exists
    after its first step, so the memory ran out in a forward or backward, before the weights changed), and one
    sentence names what to lower: on resume only trainer.grad_accum may change, which keeps the global batch."""
    last = run.output_dir / "last.pt"
    if iteration > start_iter and run.dist.is_main:
        torch.cuda.empty_cache()
        save_run(run, iteration, together=False)
    kept = f"last.pt saved at iteration {iteration}" if iteration > start_iter else "nothing was lost"
    accum = run.settings.grad_accum * 2
    return OutOfMemory(f"the GPU ran out of memory at iteration {iteration + 1} ({str(exc).splitlines()[0]}); "
                       f"{kept}: continue with resume={last} trainer.grad_accum={accum} (the same batch in {accum} "
                       f"pieces), or start anew with a lower trainer.batch_size or augment.crop_size")


def checkpoint_state(run: Run, iteration: int, rngs: list[dict] | None = None) -> dict:
    """Everything needed to continue exactly, and to rebuild the model with no other file; with trainer.ema_decay
    set, `ema` holds the averaged weights and their update count too (what inference and init_from prefer).
    `rngs`: every process's RNG states in rank order (gathered by all of them), saved as `rng_ranks` so that each
    process of a resumed run of the same size restores its own; `rng` is rank 0's (this process's without them)."""
    state = {"model": unwrap(run.model).state_dict(), "optimizer": run.optimizer.state_dict(),
             "scheduler": run.scheduler.state_dict(), "scaler": run.scaler.state_dict(), "iteration": iteration,
             "best_miou": run.best_miou, "metrics": run.last_metrics, "validated_at": run.validated_at,
             "rng": rngs[0] if rngs else ckpt.rng_state(), "config": run.saved_config}
    if run.command is not None:
        state["command"] = run.command
    if rngs and len(rngs) > 1:
        state["rng_ranks"] = rngs
    if run.ema is not None:
        state["ema"] = run.ema.state_dict()
    return state


def save_run(run: Run, iteration: int, name: str = "last.pt", *, together: bool = True) -> None:
    """`name` (last.pt, best.pt) of `iteration`, written by rank 0. together: every process calls this at the same
    point, so each one's RNG is gathered and saved (each resumes its own); otherwise (Ctrl-C, out of memory: a
    process alone) rank 0 saves its own."""
    rngs = all_gather_object(ckpt.rng_state()) if together else None
    if run.dist.is_main:
        ckpt.save_checkpoint(run.output_dir / name, checkpoint_state(run, iteration, rngs))


def owes_validation(run: Run, iteration: int) -> bool:
    """Whether the run resumed at `iteration` stopped before finishing the validation due there."""
    s = run.settings
    return 0 < iteration and run.validated_at < iteration and (iteration % s.val_every == 0 or
                                                               iteration == s.iterations)
