"""A training run's folder: what resume=... continues, the stub folder Hydra made for a resumed run, and a lock so
that two processes never write one run."""

import contextlib
import logging
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from deeplab.engine import checkpoint as ckpt
from deeplab.engine.distributed import DistInfo, broadcast_object, first_problem
from deeplab.engine.run_config import resume_config
from deeplab.errors import ConfigError, UserError, one_line
from deeplab.torch_files import folder_lock

log = logging.getLogger("deeplab.train")
LOCK = ".train.lock"


def resume_or_new(cfg: DictConfig, output_dir: Path, overrides: Sequence[str], *,
                  named_run_dir: bool = False) -> tuple[dict, Path, dict | None, Path | None]:
    """resume=auto|PATH continues a checkpoint in its own run dir, with its saved config and the safe overrides.

    resume=auto is what a scheduler's requeue repeats, so the first launch is the same command: it continues the
    run dir this command writes to (`output_dir`) when that holds a last.pt, else, unless the command named its run
    dir (hydra.run.dir=..., `named_run_dir`), the run under output_root that the same command started
    (`run_of_this_command`); with nothing to continue it starts a new run and says so. Only resume=PATH with nothing
    at PATH is an error. Returns the config, the run dir, and the checkpoint's state and path (None for a new run)."""
    if not cfg.get("resume"):
        _refuse_replacing(output_dir, named_run_dir=named_run_dir)
        return OmegaConf.to_container(cfg, resolve=True), output_dir, None, None
    if cfg.resume == "auto":
        path = output_dir / "last.pt" if (output_dir / "last.pt").is_file() else \
            None if named_run_dir else run_of_this_command(cfg.output_root, overrides)
        if path is None:
            where = output_dir if named_run_dir else f"{output_dir}, nor a run of this command under output_root=" \
                                                     f"{cfg.output_root},"
            log.info("resume=auto: no last.pt in %s to continue, so this starts a new run in %s", where, output_dir)
            return OmegaConf.to_container(cfg, resolve=True), output_dir, None, None
    else:
        path = Path(cfg.resume).expanduser()
        path = path / "last.pt" if path.is_dir() else path
    state = ckpt.load_checkpoint(path)
    if "iteration" not in state:  # weights and configs only: a converted peer checkpoint (python -m deeplab.convert)
        origin = state.get("converted_from", {}).get("repository")
        raise ConfigError(f"resume={path}: this checkpoint holds a model but no training state to continue (it was "
                          f"{'converted from ' + origin if origin else 'not written by train.py'}); start a new run "
                          f"from its weights with init_from={path}")
    _refuse_going_back(path, state)
    config, changes = resume_config(state["config"], cfg, overrides)
    log.info("resuming %s at iteration %d with its saved config%s", path, state["iteration"],
             "; changed: " + ", ".join(changes) if changes else "")
    return config, path.parent, state, path


def started_by(overrides: Sequence[str]) -> list[str]:
    """The command line a run records as the one that started it: its key=value overrides without resume=...,
    sorted (the order of two keys does not change the run)."""
    return sorted(str(o) for o in overrides if str(o).lstrip("+~").partition("=")[0] != "resume")


def run_of_this_command(root: str | Path, overrides: Sequence[str]) -> Path | None:
    """resume=auto's run under `root`: the last.pt of the run that this same command started (the command a
    scheduler requeues, a sweep job's own values included). Another command's run is never taken, however new:
    extending or changing a run is done by naming it (resume=<run>/last.pt). Of several runs of this command, the
    one not finished; two unfinished ones are ambiguous and refused. None when this command started none."""
    mine, matching, others = started_by(overrides), [], []
    found = [p for p in Path(root).expanduser().glob("**/last.pt") if p.is_file()]
    for last in sorted(found, key=lambda p: p.stat().st_mtime, reverse=True):
        try:
            state = ckpt.load_checkpoint(last, mmap=True)  # the tensors mapped, not read: only the keys are needed
        except UserError as exc:
            log.warning("resume=auto: %s is left out (%s)", last, one_line(exc))
            continue
        finished = state["iteration"] >= state["config"]["trainer"]["iterations"]
        (matching if _command_of(last, state) == mine else others).append((last, finished))
    this = f"`{' '.join(mine)}`" if mine else "with no overrides"
    if not matching:
        if others:
            log.info("resume=auto: no run under output_root=%s was started by this command (%s); the newest, %s, "
                     "was started by another, so it is left alone: to continue or extend it, name it with resume=%s",
                     root, this, others[0][0].parent, others[0][0])
        return None
    unfinished = [last for last, finished in matching if not finished]
    if len(unfinished) > 1:
        raise ConfigError(f"resume=auto: {len(unfinished)} unfinished runs under output_root={root} were started by "
                          f"this command ({', '.join(str(p.parent) for p in unfinished)}); name the one to continue "
                          f"with resume=<run>/last.pt")
    chosen = (unfinished or [last for last, _ in matching])[0]
    log.info("resume=auto: continuing %s, the %srun under output_root=%s that this command (%s) started", chosen.parent,
             "unfinished " if unfinished else "", root, this)
    return chosen


def _command_of(last: Path, state: dict) -> list[str] | None:
    """The command that started the run of `last`: its checkpoint's `command`, or for a run of an older version its
    .hydra/overrides.yaml; None when neither says."""
    if "command" in state:
        return list(state["command"])
    saved = last.parent / ".hydra" / "overrides.yaml"
    return started_by(OmegaConf.load(saved)) if saved.is_file() else None


def decide_run(cfg: DictConfig, output_dir: Path, overrides: Sequence[str], *, named_run_dir: bool,
               world: DistInfo) -> tuple[dict, Path, dict | None]:
    """`resume_or_new`, decided once for a torchrun job: rank 0 resolves resume=auto, Hydra's dated run dir (each
    node's clock names its own) and the checkpoint, every rank takes its answer, and a rank that cannot read that
    checkpoint stops every rank with one sentence (several machines need storage they all see)."""
    if world.world_size == 1:
        return resume_or_new(cfg, output_dir, overrides, named_run_dir=named_run_dir)[:3]
    decided, error, state = None, None, None
    if world.is_main:
        try:
            config, run_dir, state, path = resume_or_new(cfg, output_dir, overrides, named_run_dir=named_run_dir)
            decided = (config, str(run_dir), path and str(path))
        except UserError as exc:
            error = one_line(exc)
    decided, error = broadcast_object((decided, error))
    if error:
        raise UserError(error if world.is_main else f"rank 0 stopped the run: {error}")
    config, run_dir, path = decided
    problem = None
    if path and not world.is_main:
        try:
            state = ckpt.load_checkpoint(path)
        except UserError as exc:
            problem = one_line(exc)
    unreadable = first_problem(problem)
    if unreadable:
        rank, problem = unreadable
        raise UserError(f"rank {rank} cannot read the checkpoint rank 0 resumes ({problem}); every machine of a "
                        f"multi-node run must see the same run folder: put it on shared storage")
    return config, Path(run_dir), state


def remove_stub(stub: Path, run_dir: Path) -> None:
    """The folder Hydra made for a command that continues another run dir (or, under torchrun, takes rank 0's) is
    removed while it holds nothing (a folder of an older version's command: only .hydra and train.log)."""
    if stub.resolve() == run_dir.resolve() or not stub.is_dir():
        return
    if {p.name for p in stub.iterdir()} <= {".hydra", "train.log"}:
        shutil.rmtree(stub, ignore_errors=True)  # every process of a torchrun job may get here


def _refuse_replacing(run_dir: Path, *, named_run_dir: bool) -> None:
    """A new run never starts in a folder that holds a run (its checkpoints, or the history and TensorBoard logs of
    one killed before its first checkpoint): it would replace them. That folder is only ever continued (resume=auto,
    which restarts a run that never saved from 0) or left alone."""
    held = [name for name in ("last.pt", "best.pt", "metrics.jsonl", "tb") if (run_dir / name).exists()]
    if not held:
        return
    where = f"hydra.run.dir={run_dir}" if named_run_dir else f"the run folder {run_dir}"
    raise ConfigError(f"{where} holds a training run ({', '.join(held)}), and a new run there would replace it; "
                      f"continue it with the same command plus resume=auto, or start a new run in another folder "
                      f"(another hydra.run.dir=..., or none for a dated folder under output_root)")


def _refuse_going_back(path: Path, state: dict) -> None:
    """Resuming from an older checkpoint of a run (best.pt) would overwrite its newer last.pt: refuse."""
    last = path.parent / "last.pt"
    if path.name == "last.pt" or not last.is_file():
        return
    reached = ckpt.load_checkpoint(last)["iteration"]
    if reached > state["iteration"]:
        raise ConfigError(f"resume={path}: this checkpoint is at iteration {state['iteration']} but its run's last.pt "
                          f"is at {reached}, and resuming from it would overwrite that last.pt; resume from "
                          f"{last}, or start a new run from these weights with init_from={path}")


@contextlib.contextmanager
def run_dir_lock(run_dir: Path) -> Iterator[None]:
    """Hold <run_dir>/.train.lock while training: a second process writing the same run (two resumes of one run) is
    refused instead of mixing the two."""
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun only rank 0 writes the run dir
        yield
        return
    with folder_lock(run_dir, name=LOCK, busy="another training process is writing this run; wait for it to end, "
                                             "or give this run its own folder (another hydra.run.dir=...)"):
        yield
