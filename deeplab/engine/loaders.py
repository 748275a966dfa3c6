"""Iteration-based sampling that makes a run resumable to the exact sample, and the train/val DataLoaders."""

import logging
import signal
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from deeplab.data import DataError
from deeplab.errors import ConfigError

log = logging.getLogger("deeplab.train")


def check_batch_split(batch_size: int, *, accum: int, world_size: int = 1, min_share: int = 2) -> None:
    """trainer.batch_size is the global batch: it must split evenly over the processes and accumulation steps, into
    shares of `min_share` images or more (2 for training: BatchNorm, and the ASPP's image pooling with one value per
    channel and image)."""
    over = f"processes x trainer.grad_accum ({world_size} x {accum})" if world_size > 1 else \
        f"trainer.grad_accum={accum}"
    if batch_size % (world_size * accum):
        raise ConfigError(f"trainer.batch_size={batch_size} is not divisible by {over}; make it a multiple of "
                          f"{world_size * accum}, so that each takes an equal share of the batch")
    if batch_size // (world_size * accum) < min_share:
        raise ConfigError(f"trainer.batch_size={batch_size} over {over} gives {batch_size // (world_size * accum)} "
                          f"image per step; BatchNorm needs at least 2 (the ASPP's image pooling has one value per "
                          f"channel and image), so use a batch of {2 * world_size * accum} or more")


class TrainBatches(Sampler):
    """Micro-batches of (index, augmentation seed) for iterations start..total.

    Iteration `it` takes the next `batch_size` ids of a seeded per-epoch permutation (the global batch); each rank
    takes every world_size-th of them, split into `accum` micro-batches. Because it depends only on (seed, it),
    resuming at iteration k yields exactly what the interrupted run would have, and N processes see the same global
    batch as one. A split smaller than the batch (a dataset of two images) fills each batch from several epochs'
    permutations: its samples come back within the batch, each time with an augmentation seed of its own.
    """

    def __init__(self, size: int, *, batch_size: int, total_iters: int, start_iter: int = 0, seed: int = 0,
                 rank: int = 0, world_size: int = 1, accum: int = 1) -> None:
        if size < 1:
            raise ConfigError("the training split has no samples; add training samples")
        check_batch_split(batch_size, accum=accum, world_size=world_size, min_share=1)  # the sampler's own need
        if size < batch_size and rank == 0:
            log.warning("the training split has %d sample(s), fewer than trainer.batch_size=%d: each batch repeats "
                        "them, each time with its own random augmentation", size, batch_size)
        self.size, self.batch_size, self.total, self.start = size, batch_size, total_iters, start_iter
        self.seed, self.rank, self.world, self.accum = seed, rank, world_size, accum

    def __len__(self) -> int:
        return (self.total - self.start) * self.accum

    def draws(self, it: int) -> list[tuple[int, int]]:
        """(epoch, position in that epoch's permutation) of each sample of iteration `it`'s global batch."""
        per_epoch = self.size // self.batch_size
        if per_epoch:  # the last partial batch of each epoch is dropped
            epoch, step = divmod(it, per_epoch)
            return [(epoch, step * self.batch_size + k) for k in range(self.batch_size)]
        # fewer samples than the batch: each iteration takes whole epochs, as many as fill the batch (the last in
        # part), so each sample comes once or twice as often as any other in the batch, never more
        epochs = -(-self.batch_size // self.size)
        return [(it * epochs + k // self.size, k % self.size) for k in range(self.batch_size)]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        orders: dict[int, np.ndarray] = {}
        for it in range(self.start, self.total):
            draws = self.draws(it)
            orders = {epoch: orders[epoch] if epoch in orders else
                      np.random.default_rng([self.seed, epoch]).permutation(self.size) for epoch, _ in draws}
            # each draw's augmentation seed is a pure function of (seed, epoch, position), so a resumed run augments
            # exactly as before (int tuples hash the same in every process)
            mine = [(int(orders[epoch][position]), hash((self.seed, epoch, position)) & 0xFFFFFFFF)
                    for epoch, position in draws[self.rank::self.world]]
            micro = len(mine) // self.accum
            for a in range(self.accum):
                yield mine[a * micro:(a + 1) * micro]


def global_batches(loader: DataLoader, accum: int) -> Iterator[tuple[list, DataError | None]]:
    """The micro-batches of each optimizer step, with the first bad sample met loading them (or None). A bad sample
    is handed to the loop rather than raised, so that every process learns of it at the same step and all stop
    together (a process stopping alone leaves the others waiting in a collective)."""
    batches = iter(loader)
    while True:
        micro, problem = [], None
        for _ in range(accum):
            try:
                micro.append(next(batches))
            except StopIteration:
                return
            except DataError as exc:  # the loader goes on with the next batch after a worker's error
                problem = problem or exc
        yield micro, problem


def ignore_ctrl_c(worker_id: int) -> None:
    """A loader worker leaves Ctrl-C to the training process, which stops at the next step boundary (a worker that
    ended on it would fail the next batch instead)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def train_loader(dataset: Dataset, batches: TrainBatches, *, num_workers: int, pin_memory: bool) -> DataLoader:
    """The training loader; workers stay alive for the whole run and prefetch ahead of the step."""
    return DataLoader(dataset, batch_sampler=batches, num_workers=num_workers, pin_memory=pin_memory,
                      persistent_workers=num_workers > 0, generator=torch.Generator().manual_seed(0),
                      worker_init_fn=ignore_ctrl_c)


def val_loader(dataset: Dataset, *, rank: int, world_size: int, num_workers: int, pin_memory: bool) -> DataLoader:
    """Full-resolution validation, one image per batch (sizes differ), no shuffle, nothing dropped: each rank takes
    every rank-th image, in order and with no padding, so each image is counted exactly once."""
    return DataLoader(dataset, batch_size=1, sampler=range(rank, len(dataset), world_size),
                      num_workers=num_workers, pin_memory=pin_memory, persistent_workers=num_workers > 0,
                      worker_init_fn=ignore_ctrl_c)
