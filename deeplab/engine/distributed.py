"""torchrun-launched DistributedDataParallel: process-group set-up and the few collectives the loop needs."""

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job (a single process is rank 0 of world size 1)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group torchrun describes in the environment (gloo on CPU, nccl on GPU), if any."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0")), world_size)
    if not dist.is_initialized():
        if device_type == "cuda":
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return info


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """The mean of a tensor over all processes (itself when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        value = value.clone()
        dist.all_reduce(value)
        value /= dist.get_world_size()
    return value


def broadcast_object(obj):
    """Rank 0's value of a picklable object on every rank."""
    if dist.is_available() and dist.is_initialized():
        holder = [obj]
        dist.broadcast_object_list(holder, src=0)
        return holder[0]
    return obj


@contextlib.contextmanager
def rank_zero_first(world: DistInfo, *, timeout: timedelta = timedelta(hours=2)) -> Iterator[None]:
    """Rank 0 runs the block first (it builds what the others then read, such as COCO's mask cache), the other ranks
    after it, past a barrier on a gloo group of its own with a long timeout: building may take longer than NCCL's
    10-minute collective timeout. Rank 0 reaches the barrier even when its block fails, so no rank waits for it in
    vain (the others then meet the same problem themselves)."""
    if world.world_size == 1 or not (dist.is_available() and dist.is_initialized()):
        yield
        return
    group = dist.new_group(backend="gloo", timeout=timeout)
    if not world.is_main:
        dist.barrier(group=group)
    try:
        yield
    finally:
        if world.is_main:
            dist.barrier(group=group)


def all_gather_object(obj) -> list:
    """Every rank's value of a picklable object, in rank order ([obj] when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        gathered = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, obj)
        return gathered
    return [obj]


def any_process(device: torch.device, *flags: bool) -> list[bool]:
    """Whether any process raised each flag: one small all-reduce on the run's device (NCCL reduces CUDA tensors
    only), or the flags themselves in a single process. Processes stop together or not at all: one stopping alone
    leaves the others waiting in the next collective until it times out."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [bool(f) for f in flags]
    raised = torch.tensor([float(f) for f in flags], device=device)
    dist.all_reduce(raised, op=dist.ReduceOp.MAX)
    return [v > 0 for v in raised.tolist()]


def first_problem(problem: str | None) -> tuple[int, str] | None:
    """(rank, message) of the lowest-numbered process that met a problem, on every process; call it on all of them
    once `any_process` has said that one did."""
    problems = [(rank, p) for rank, p in enumerate(all_gather_object(problem)) if p is not None]
    return problems[0] if problems else None


def cleanup() -> None:
    global _BN_GROUP
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _BN_GROUP = None


_BN_GROUP = None


def _bn_group():
    """A process group of its own for BatchNorm statistics.

    DDP all-reduces gradient buckets asynchronously during backward; sharing its group, the BatchNorm backward
    reductions could pair up with DDP's on the other rank and sum the wrong tensors.
    """
    global _BN_GROUP
    if _BN_GROUP is None:
        _BN_GROUP = dist.new_group()
    return _BN_GROUP


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes whose gradient is the sum of every process's gradient (each one's loss uses it)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.clone()
        dist.all_reduce(tensor, group=_bn_group())
        return tensor

    backward = forward  # the incoming gradients summed over processes, as the values were


class GlobalBatchNorm2d(torch.nn.BatchNorm2d):
    """BatchNorm whose training statistics cover the global batch of every process, on any backend.

    torch's SyncBatchNorm runs on GPUs only; this one all-reduces per-channel sums with autograd-aware
    collectives, so CPU (gloo) runs get the BatchNorm one process with the whole batch would. The variance is
    taken around the global mean (two reductions), not as E[x^2] - E[x]^2, which cancels badly in fp32.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        xf = x if x.dtype == torch.float64 else x.float()  # statistics in fp32 (or fp64) even under autocast
        count = torch.full((1,), xf.numel() / xf.shape[1], device=x.device, dtype=xf.dtype)
        sums = _AllReduceSum.apply(torch.cat([xf.sum((0, 2, 3)), count]))
        total = sums[-1]
        mean = sums[:-1] / total
        centred = xf - mean.view(1, -1, 1, 1)
        var = _AllReduceSum.apply((centred * centred).sum((0, 2, 3))) / total
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean, momentum)
                self.running_var.lerp_(var * total / (total - 1).clamp(min=1), momentum)
        scale = torch.rsqrt(var + self.eps) * self.weight
        return (centred * scale.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)).to(x.dtype)


def convert_to_global_bn(module: torch.nn.Module) -> torch.nn.Module:
    """Replace every BatchNorm2d in `module` by GlobalBatchNorm2d, keeping its parameters and statistics."""
    for name, child in module.named_children():
        if type(child) is torch.nn.BatchNorm2d:
            bn = GlobalBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                   child.track_running_stats, device=child.running_mean.device,
                                   dtype=child.running_mean.dtype)
            bn.load_state_dict(child.state_dict())
            setattr(module, name, bn)
        else:
            convert_to_global_bn(child)
    return module


class TerminationRequest:
    """SIGTERM (what a scheduler or `kill` sends before SIGKILL, and torchrun forwards to every process) and a first
    Ctrl-C noted while training, so that the loop stops at the next step boundary with the weights consistent and
    last.pt saved, even before the first checkpoint. A second Ctrl-C stops at once (KeyboardInterrupt: the last
    checkpoint is kept, or the weights saved when no step was under way)."""

    SIGNALS = {signal.SIGTERM: "terminated (SIGTERM)", signal.SIGINT: "interrupted (Ctrl-C)"}

    def __init__(self, notice: bytes = b"\nCtrl-C: stopping at the next step boundary with last.pt saved (Ctrl-C "
                                       b"again stops at once)\n") -> None:
        self.how: str | None = None  # how the run was asked to stop, once it was
        self.notice = notice  # what the first Ctrl-C prints (predict's video loop words its own)
        self._previous: dict = {}

    @property
    def received(self) -> bool:
        return self.how is not None

    def __enter__(self) -> "TerminationRequest":
        if threading.current_thread() is threading.main_thread():  # only the main thread may set handlers
            self._previous = {sig: signal.signal(sig, self._note) for sig in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)

    def _note(self, signum, frame) -> None:
        if signum == signal.SIGINT and self.how == self.SIGNALS[signal.SIGINT]:
            raise KeyboardInterrupt  # the second Ctrl-C: at once
        self.how = self.how or self.SIGNALS[signum]
        if signum == signal.SIGINT:  # written straight to the terminal: a signal may arrive inside a log call
            os.write(2, self.notice)
