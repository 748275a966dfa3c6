"""Training as plain functions read top to bottom; `train(cfg, output_dir)` is the one place that reads the config."""

import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from deeplab.data import build_dataset, fine_tuning_notes
from deeplab.data.check import preflight
from deeplab.data.transforms import eval_transform, train_transform
from deeplab.engine import checkpoint as ckpt
from deeplab.engine.class_weights import loss_options
from deeplab.engine.distributed import (DistInfo, TerminationRequest, any_process, broadcast_object, cleanup,
                                        convert_to_global_bn, first_problem, init_distributed, rank_zero_first)
from deeplab.engine.ema import ModelEma
from deeplab.engine.evaluator import ScoringProblem, evaluate
from deeplab.engine.loaders import TrainBatches, check_batch_split, global_batches, train_loader, val_loader
from deeplab.engine.optim import build_optimizer, build_scheduler
from deeplab.engine.precision import TrainingPlan, grad_scaler, resolve_device, training_plan
from deeplab.engine.run_config import TrainerSettings, validate_config
from deeplab.engine.run_state import (Classes, Run, bad_sample_error, interruption_error, out_of_memory_error,
                                      owes_validation, save_run)
from deeplab.engine.run_dir import decide_run, remove_stub, run_dir_lock, started_by
from deeplab.engine.step import TrainingDiverged, optimizer_step, unwrap
from deeplab.engine.tracking import WORST_IMAGES, RunLogger, lrs_by_group, run_hparams
from deeplab.errors import ConfigError, one_line
from deeplab.losses import build_loss
from deeplab.metrics import ImageScores, image_ids
from deeplab.model import build_model, rebuild_model, upgrade_model_config
from deeplab.model.backbone import backbone_architecture
from deeplab.model.decoder import use_fast_convs
from deeplab.progress import progress_disable
from deeplab.visualization import palette_array

log = logging.getLogger("deeplab.train")


def train_step(run: Run, micro_batches: list, *, freeze_backbone: bool) -> torch.Tensor:
    """One optimizer step of the run over the micro-batches of a global batch (`step.optimizer_step`), then the
    weights' moving average when trainer.ema_decay is set."""
    loss = optimizer_step(run.model, run.optimizer, run.scaler, run.criterion, micro_batches, device=run.device,
                          precision=run.precision, channels_last=run.settings.channels_last,
                          grad_clip=run.settings.grad_clip,
                          frozen=unwrap(run.model).backbone if freeze_backbone else None)
    if run.ema is not None:
        run.ema.update(unwrap(run.model))
    return loss


def validate(run: Run, iteration: int) -> dict:
    """Full-resolution validation on the whole split; logs, and saves best.pt on a new best mIoU. With
    trainer.ema_decay set it scores the moving average of the weights (so best.pt is the best EMA), not the raw
    ones."""
    # the plain model, not the DDP wrapper: DDP's forward broadcasts buffers, which hangs when the val split leaves a
    # process without images; and no cuDNN autotuning for each new full-resolution size (a tuning per image)
    model = run.ema.module if run.ema is not None else unwrap(run.model)
    benchmark, torch.backends.cudnn.benchmark = torch.backends.cudnn.benchmark, False
    # trainer.log_figures: the worst images too (this process's share of the split), for TensorBoard's grid
    scores = ImageScores(image_ids([image for image, _ in run.val_batches.dataset.samples]), worst=WORST_IMAGES,
                         mean=run.logger.mean, std=run.logger.std) \
        if run.logger and run.settings.log_figures else None
    try:
        matrix, kept = evaluate(model, run.val_batches, num_classes=run.classes.count, device=run.device,
                                ignore_index=run.classes.ignore_index, precision=run.precision,
                                channels_last=run.settings.channels_last, keep=run.settings.grid_images,
                                progress=None if run.dist.is_main else False, desc="validate",  # under the train bar
                                scores=scores)
    finally:
        torch.backends.cudnn.benchmark = benchmark
    metrics = matrix.compute()
    run.last_metrics, run.validated_at = metrics, iteration
    improved = metrics["mIoU"] > run.best_miou
    if improved:
        run.best_miou = metrics["mIoU"]
    if run.logger:
        run.logger.validation(iteration, metrics, kept, best=run.best_miou,  # trainer.log_figures: the figures
                              confusion=matrix.mat.cpu().numpy() if run.settings.log_figures else None,
                              worst=scores.pictures() if scores is not None else None)
    if improved:  # every process validates, so every one's RNG is saved
        save_run(run, iteration, "best.pt")
    return metrics


def fit(run: Run, *, start_iter: int) -> float:
    """The loop: step, log, validate every `val_every`, checkpoint every `checkpoint_every`; returns best mIoU."""
    s = run.settings
    iteration, stepping = start_iter, False
    progress = tqdm(total=s.iterations, initial=start_iter, mininterval=2, dynamic_ncols=True, desc="train",
                    disable=progress_disable() if run.dist.is_main else True)  # DEEPLAB_PROGRESS, as every bar
    window_start, window_iters = time.perf_counter(), 0
    # a log line to the console while the bar is drawn goes above it, not onto its line (tqdm.write)
    console_logs = logging_redirect_tqdm() if not progress.disable else contextlib.nullcontext()
    with console_logs, TerminationRequest() as termination:
        try:
            if owes_validation(run, start_iter):  # the run stopped during a validation it still owes
                validate(run, start_iter)
                if start_iter == s.iterations:  # and at its last iteration: nothing more to train
                    save_run(run, start_iter)
            for micro, problem in global_batches(run.train_batches, s.grad_accum):
                # one small all-reduce a step: every process stops at the same step, or none does
                terminate, failed = any_process(run.device, termination.received, problem is not None)
                if failed:
                    rank, message = first_problem(one_line(problem) if problem else None)
                    raise bad_sample_error(run, iteration, start_iter, message, rank)
                if terminate:
                    raise interruption_error(run, iteration, start_iter, saved=True, agreed=True,
                                      how=termination.how or "terminated (SIGTERM)")  # another rank's signal
                stepping = True  # a Ctrl-C from here until the schedule steps leaves the weights half updated
                try:
                    loss = train_step(run, micro, freeze_backbone=iteration < s.freeze_backbone_iters)
                except TrainingDiverged as exc:
                    last = run.output_dir / "last.pt"
                    kept = f"the last good checkpoint is untouched ({last})" if last.is_file() else \
                        "no checkpoint was written"
                    raise TrainingDiverged(
                        f"{exc} at iteration {iteration + 1}: training stopped, and {kept}. Lower optim.lr, set "
                        f"trainer.grad_clip, or check the data (python -m deeplab.data.check; dataset.mean/std)."
                    ) from None
                iteration, window_iters = iteration + 1, window_iters + 1
                run.scheduler.step()
                stepping = False
                progress.update(1)
                if iteration % s.log_every == 0 or iteration == s.iterations:
                    elapsed = time.perf_counter() - window_start
                    lr = run.optimizer.param_groups[-1]["lr"]
                    progress.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr:.2e}")
                    if run.logger:
                        run.logger.train(iteration, loss.item(), lr, window_iters * s.batch_size / elapsed,
                                         group_lrs=lrs_by_group(run.optimizer))
                    window_start, window_iters = time.perf_counter(), 0
                if iteration % s.val_every == 0 or iteration == s.iterations:
                    validate(run, iteration)
                if iteration % s.checkpoint_every == 0 or iteration == s.iterations:
                    save_run(run, iteration)
        except ScoringProblem as exc:  # every process met it at the same point, between steps
            raise bad_sample_error(run, iteration, start_iter, exc.message, exc.rank) from None
        except KeyboardInterrupt:
            raise interruption_error(run, iteration, start_iter, saved=not stepping) from None
        except torch.cuda.OutOfMemoryError as exc:
            raise out_of_memory_error(run, iteration, start_iter, exc) from None
        finally:
            progress.close()  # also when an error ends the run: the error line starts on a line of its own
    return run.best_miou


def build_datasets(data: dict, augment: dict, *, preflight_samples: int):
    """Train and val datasets from the dataset and augment sections, checked cheaply before training starts."""
    mean, std, ignore = data["mean"], data["std"], data["ignore_index"]
    train_set = build_dataset(split=data["train_split"], **data,
                              transform=train_transform(mean=mean, std=std, ignore_index=ignore, **augment))
    val_set = build_dataset(split=data["val_split"], **data, transform=eval_transform(mean=mean, std=std))
    for dataset in (train_set, val_set):
        preflight(dataset, samples=preflight_samples)
    return train_set, val_set


def build_network(config: dict, state: dict | None, settings: TrainerSettings, device: torch.device,
                  world: DistInfo, probe: tuple[torch.Tensor, torch.Tensor]) -> tuple[nn.Module, TrainingPlan]:
    """The model with its starting weights (a resumed checkpoint, init_from, or the configured backbone weights),
    and how it trains: the plan that precision=auto measures on `probe` (a few training crops), the same on every
    process. init_from starts from the checkpoint's EMA weights when it has them (trainer.ema_decay), the better
    ones to fine-tune from, else from its raw weights."""
    # a checkpoint's weights replace the backbone's pretrained ones, so those are not fetched then
    model = rebuild_model(config["model"]) if state is not None or config.get("init_from") \
        else build_model(**config["model"])
    if state is not None:
        ckpt.load_model_weights(model, state["model"], source="resume checkpoint")
    elif config.get("init_from"):
        source = ckpt.load_checkpoint(config["init_from"])
        _same_architecture(config["init_from"], upgrade_model_config(source["config"]["model"]), config["model"])
        fine_tuning_notes(source["config"]["dataset"], config["dataset"], checkpoint=config["init_from"])
        weights, which = ckpt.preferred_weights(source)
        if which:
            log.info("init_from %s: starting from %s", config["init_from"], which)
        fresh = ckpt.load_model_weights(model, weights, source=config["init_from"], reinit_classifier=True)
        if fresh:
            log.warning("init_from %s: it has another number of classes; the classifier starts fresh (%s)",
                        config["init_from"], ", ".join(fresh))
    model.to(device)
    # a timed choice could differ between two runs: a deterministic run on the CPU takes fp32, unmeasured
    precision = "fp32" if settings.deterministic and settings.precision == "auto" and device.type == "cpu" \
        else settings.precision
    plan = broadcast_object(training_plan(model, *(t.to(device) for t in probe), precision=precision,
                                          channels_last=settings.channels_last, fast_convs=settings.fast_convs))
    if settings.sync_bn if settings.sync_bn is not None else world.world_size > 1:
        # torch's SyncBatchNorm (fast CUDA kernels) on GPUs; our all-reduce version elsewhere (gloo on CPU)
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model) if device.type == "cuda" else convert_to_global_bn(model)
    use_fast_convs(model, plan.fast_convs)
    if plan.channels_last:
        model.to(memory_format=torch.channels_last)
    return model, plan


# the model keys that shape its weights (output_stride and rates do not); the backbone's name and options too
ARCHITECTURE_KEYS = ("separable", "aspp_channels", "low_level_channels", "decoder_channels", "decoder_convs")


def _architecture(model: dict) -> dict:
    """{dotted model key: value} of what shapes the weights, backbone options with their defaults filled in."""
    backbone = backbone_architecture(model.get("backbone", "mobilenet_v2"))
    return {**{f"model.backbone.{k}": v for k, v in backbone.items()},
            **{f"model.{k}": model[k] for k in ARCHITECTURE_KEYS if k in model}}


def _same_architecture(path: str, theirs: dict, ours: dict) -> None:
    """init_from keeps its checkpoint's architecture (`theirs`, upgraded): name the first key this run sets
    otherwise."""
    mine = _architecture(ours)
    for key, value in _architecture(theirs).items():
        if value != mine.get(key):
            fix = f"model/backbone={value}" if key == "model.backbone.name" else f"{key}={value}"
            raise ckpt.CheckpointError(f"init_from={path}: the checkpoint has {key}={value} but this run has "
                                       f"{key}={mine.get(key)}; set {fix} (fine-tuning starts from the checkpoint's "
                                       f"architecture)")


def probe_batch(dataset: torch.utils.data.Dataset, share: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two training crops of up to 192x192 to time the training plans on: a second or two of measuring for the
    dense model on 2 CPU cores, however large the real batch and crops are."""
    samples = [dataset[(i % len(dataset), i)] for i in range(min(share, 2))]  # a one-image split: two crops of it
    images, masks = torch.stack([s[0] for s in samples]), torch.stack([s[1] for s in samples])
    return images[..., :192, :192], masks[..., :192, :192]


def process_device(device: torch.device, world: DistInfo) -> torch.device:
    """This process's device: under torchrun each process takes the GPU of its local rank; a single process keeps
    the one trainer.device names (cuda:1 trains on GPU 1)."""
    if device.type == "cuda" and world.world_size > 1:
        return torch.device("cuda", world.local_rank)
    return device


def build_run(config: dict, settings: TrainerSettings, output_dir: Path, state: dict | None) -> Run:
    """Device, process group, data, model, optimizer, schedule, loss and loaders for one run."""
    torch.manual_seed(config["seed"])
    if settings.deterministic:  # cuBLAS reads it when its first handle is made, so before any CUDA work
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    # warn_only: on CUDA bilinear upsampling's and adaptive average pooling's backward, and the 2-D NLL loss, have no
    # deterministic kernels; they run with a warning rather than stop the run
    torch.use_deterministic_algorithms(settings.deterministic, warn_only=True)
    torch.backends.cudnn.benchmark = not settings.deterministic
    device = resolve_device(settings.device, key="trainer.device")
    world = init_distributed(device.type)
    device = process_device(device, world)
    check_batch_split(settings.batch_size, accum=settings.grad_accum, world_size=world.world_size)
    with rank_zero_first(world):  # one process builds a dataset's cache (COCO's masks); the others then read it
        train_set, val_set = build_datasets(config["dataset"], config["augment"],
                                            preflight_samples=settings.preflight_samples)
    model, plan = build_network(config, state, settings, device, world,
                                probe_batch(train_set, settings.batch_size // (world.world_size * settings.grad_accum)))
    ema = ModelEma(model, settings.ema_decay) if settings.ema_decay is not None else None  # before any wrapper
    settings = dataclasses.replace(settings, precision=plan.precision, channels_last=plan.channels_last,
                                   fast_convs=plan.fast_convs)
    optimizer = build_optimizer(model, **config["optim"])
    scheduler = build_scheduler(optimizer, total_iters=settings.iterations, **config["schedule"])
    precision = plan.precision
    start = state["iteration"] if state else 0
    batches = TrainBatches(len(train_set), batch_size=settings.batch_size, total_iters=settings.iterations,
                           start_iter=start, seed=config["seed"], rank=world.rank, world_size=world.world_size,
                           accum=settings.grad_accum)
    pin = device.type == "cuda"
    wrapped = DistributedDataParallel(model, device_ids=[device.index] if pin else None) \
        if world.world_size > 1 else model
    wrapped = torch.compile(wrapped) if settings.compile else wrapped
    data = config["dataset"]
    criterion = build_loss(ignore_index=data["ignore_index"], **loss_options(config, train_set, world)).to(device)
    names = data.get("class_names") or [str(i) for i in range(data["num_classes"])]
    classes = Classes(data["num_classes"], data["ignore_index"], list(names),  # pixel_share: set by loss_options
                      config.get("class_weights", {}).get("pixel_share") or [None] * len(names))
    return Run(settings=settings, model=wrapped, optimizer=optimizer, scheduler=scheduler,
               scaler=grad_scaler(device.type, precision), criterion=criterion,
               train_batches=train_loader(train_set, batches, num_workers=settings.num_workers, pin_memory=pin),
               val_batches=val_loader(val_set, rank=world.rank, world_size=world.world_size,
                                      num_workers=min(settings.num_workers, 2), pin_memory=pin),
               device=device, precision=precision, dist=world, output_dir=output_dir, classes=classes,
               saved_config=config, ema=ema)


def restore(run: Run, state: dict) -> int:
    """Optimizer, schedule, scaler, weight EMA, best score and RNG of a checkpoint; returns the iteration to continue
    from."""
    run.optimizer.load_state_dict(state["optimizer"])
    if run.ema is not None and "ema" in state:  # trainer.ema_decay cannot change on resume: a run with one saved it
        run.ema.load_state_dict(state["ema"], source="resume checkpoint")
    elif run.ema is not None:
        log.warning("the resume checkpoint holds no EMA weights: the moving average starts from its weights")
    run.scheduler.load_state_dict(state["scheduler"])
    if state["scaler"] or not run.scaler.is_enabled():  # a CPU run's disabled scaler has no state to give a GPU's
        run.scaler.load_state_dict(state["scaler"])
    run.best_miou, run.last_metrics = state["best_miou"], state.get("metrics", {})
    run.validated_at = state.get("validated_at", state["iteration"])  # older checkpoints: as if validated
    ranks = state.get("rng_ranks") or []  # each process its own, when as many resume as saved; else rank 0's
    ckpt.set_rng_state(ranks[run.dist.rank] if len(ranks) == run.dist.world_size else state["rng"])
    start, saved_total = state["iteration"], state["config"]["trainer"]["iterations"]
    # The schedule follows trainer.iterations: a longer or shorter run re-plans the poly decay from here on.
    before = [group["lr"] for group in run.optimizer.param_groups]
    for group, base, factor in zip(run.optimizer.param_groups, run.scheduler.base_lrs, run.scheduler.lr_lambdas):
        group["lr"] = base * factor(start)
    if run.settings.iterations != saved_total and run.dist.is_main:
        log.info("trainer.iterations %d -> %d: the learning-rate schedule now ends at iteration %d; the LR at "
                 "iteration %d goes from %.3g to %.3g", saved_total, run.settings.iterations,
                 run.settings.iterations, start, before[-1], run.optimizer.param_groups[-1]["lr"])
    return start


def train(cfg: DictConfig, output_dir: str | Path, overrides: Sequence[str] = (), *,
          named_run_dir: bool = False, keep_record: Callable[[Path], None] | None = None) -> float:
    """Train from the composed Hydra config; returns the best validation mIoU (what a sweeper optimises).

    `overrides` are the command line's key=value overrides: on resume, the safe ones are applied to the saved
    config and the others refused (see run_config.resume_config). `named_run_dir`: the command set hydra.run.dir,
    so resume=auto looks there only (run_dir.resume_or_new). `keep_record(run_dir)` is called once this process
    owns the run dir (rank 0, holding its lock) and the run is built: the command's log and saved config go there
    from then on, and a command refused before writes nothing into someone's run folder.
    """
    # under torchrun the process group starts here, so that rank 0 decides the run dir and what it resumes
    world = init_distributed(resolve_device(cfg.trainer.device, key="trainer.device").type)
    config, run_dir, state = decide_run(cfg, Path(output_dir), overrides, named_run_dir=named_run_dir, world=world)
    config = validate_config(config)
    if run_dir != Path(output_dir):  # a resumed run, or rank 0's run dir: the folder Hydra made here goes
        remove_stub(Path(output_dir), run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with run_dir_lock(run_dir):
        return train_in(run_dir, config, state, overrides, keep_record=keep_record)


def train_in(run_dir: Path, config: dict, state: dict | None, overrides: Sequence[str] = (), *,
             keep_record: Callable[[Path], None] | None = None) -> float:
    """Train a checked config in its run dir, from scratch or from a checkpoint's state; `overrides` (the command
    line's) pick the hparams TensorBoard shows besides the core ones (tracking.run_hparams). `keep_record(run_dir)`
    once the data and model are built: a run refused before (its data missing or unwritable) leaves no record."""
    settings = TrainerSettings(**config["trainer"])
    owed = state is not None and state.get("validated_at", state["iteration"]) < state["iteration"]
    if state is not None and state["iteration"] >= settings.iterations and not (
            owed and state["iteration"] == settings.iterations):  # a final validation owed is still done
        if state["iteration"] > settings.iterations:
            raise ConfigError(f"trainer.iterations={settings.iterations} is below the iteration this run reached "
                              f"({state['iteration']}); set trainer.iterations above it to train on")
        log.info("nothing to train: %s already reached trainer.iterations=%d; to train it on, name it with a "
                 "higher count: resume=%s trainer.iterations=N", run_dir / "last.pt", settings.iterations,
                 run_dir / "last.pt")
        return state["best_miou"]
    run = build_run(config, settings, run_dir, state)
    if keep_record is not None and run.dist.is_main:
        keep_record(run_dir)
    run.command = state.get("command") if state else started_by(overrides)  # kept from the run's first command
    start = restore(run, state) if state else 0
    if run.dist.is_main:
        data = config["dataset"]
        run.logger = RunLogger(run_dir, class_names=data["class_names"], palette=palette_array(
            data.get("palette"), ignore_index=data["ignore_index"]), mean=data["mean"], std=data["std"],
            ignore_index=data["ignore_index"],
            start_iter=start, hparams=run_hparams(config, overrides), iterations=settings.iterations)
        log.info("training on %s (%s, %d process(es)) for %d iterations from %d; run dir %s", run.device,
                 TrainingPlan(run.precision, run.settings.channels_last, run.settings.fast_convs),
                 run.dist.world_size, settings.iterations, start, run_dir)
    try:
        best = fit(run, start_iter=start)
    finally:
        if run.logger:
            run.logger.close()
        cleanup()
    if run.dist.is_main:
        report(run, run_dir)
    return best


def report(run: Run, output_dir: Path) -> None:
    """Print the final metrics and where everything is."""
    m = run.last_metrics
    if m:
        print(f"\nfinal val: mIoU {m['mIoU']:.4f}  pixel acc {m['pixel_acc']:.4f}  mean class acc "
              f"{m['mean_class_acc']:.4f}  (best mIoU {run.best_miou:.4f})")
        names, share = run.classes.names, run.classes.pixel_share
        # the rare classes (under 1% of the training pixels, when the class weights counted them) marked with *
        print("per-class IoU: " + "  ".join(
            f"{n}{'*' if s is not None and s < 0.01 else ''} {'-' if v is None else f'{v:.3f}'}"
            for n, v, s in zip(names, m["per_class_iou"], share))
            + ("   (* under 1% of the training pixels)" if any(s is not None and s < 0.01 for s in share) else ""))
    print(f"run dir:      {output_dir}\ncheckpoints:  {output_dir / 'best.pt'}  {output_dir / 'last.pt'}\n"
          f"TensorBoard:  tensorboard --logdir {output_dir / 'tb'}")
