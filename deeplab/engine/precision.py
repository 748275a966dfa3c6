"""Device and precision: what the CPU does natively, what precision=auto runs (measured where flags cannot tell),
and one code path for mixed and full precision (autocast and GradScaler, enabled or not)."""

import contextlib
import copy
import logging
from collections.abc import Callable, Hashable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from deeplab.errors import ConfigError
from deeplab.model.decoder import use_fast_convs
from deeplab.timing import interleaved

log = logging.getLogger("deeplab.precision")

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def resolve_device(device: str | torch.device, *, key: str = "device") -> torch.device:
    """'auto' -> the GPU when there is one, else the CPU; anything else as given, if this machine has it."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"{key}={device!r}: not a device; use auto, cpu, cuda or cuda:N") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{key}={device}: torch sees no CUDA GPU on this machine (a CPU-only torch build, or no "
                          f"driver); use {key}=cpu or {key}=auto")
    if resolved.type == "cuda" and resolved.index is not None and resolved.index >= torch.cuda.device_count():
        raise ConfigError(f"{key}={device}: this machine has {torch.cuda.device_count()} CUDA GPU(s); "
                          f"use cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    if resolved.type not in ("cpu", "cuda"):
        raise ConfigError(f"{key}={device}: only cpu and cuda devices are supported; use auto, cpu or cuda")
    return resolved


def cpu_capabilities() -> dict[str, bool]:
    """What this CPU does natively, from torch's own query (torch.cpu.get_capabilities: CPUID read by cpuinfo).

    Not oneDNN's `_is_mkldnn_bf16_supported`, which is true on any AVX-512 CPU because oneDNN *emulates* bf16 there
    (several times slower than fp32).
    """
    caps = torch.cpu.get_capabilities()
    return {"avx2": caps.get("avx2", False), "avx512": caps.get("avx512_f", False),
            "vnni": caps.get("avx512_vnni", False) or caps.get("avx_vnni", False),
            "avx512_bf16": caps.get("avx512_bf16", False), "amx": caps.get("amx_bf16", False)}


def describe_cpu(capabilities: dict[str, bool] | None = None) -> str:
    """The capability flags in one line, e.g. 'avx2 avx512 vnni avx512_bf16 (no amx)'."""
    caps = cpu_capabilities() if capabilities is None else capabilities
    have, lack = [k for k, v in caps.items() if v], [k for k, v in caps.items() if not v]
    return " ".join(have) + (f" (no {', '.join(lack)})" if lack else "")


def auto_precisions(device_type: str, capabilities: dict[str, bool] | None = None) -> tuple[str, ...]:
    """What precision=auto may run: on CUDA bf16 where the GPU runs it natively (Ampere and newer), else fp16 with a
    GradScaler; on a CPU fp32, and bf16 too where the CPU runs it natively (AVX-512 BF16 or AMX), else fp32 alone.
    With two, the faster for the model at hand is measured (`choose_fastest`)."""
    if device_type == "cuda":  # bf16 where native: fp32's range, so no GradScaler and no overflow
        return ("bf16",) if cuda_bf16_native() else ("fp16",)
    return ("fp32", "bf16") if device_type == "cpu" and cpu_bf16_native(capabilities) else ("fp32",)


def cpu_bf16_native(capabilities: dict[str, bool] | None = None) -> bool:
    """Whether this CPU computes in bf16 natively (AVX-512 BF16 or AMX), not by oneDNN's emulation."""
    caps = cpu_capabilities() if capabilities is None else capabilities
    return caps["avx512_bf16"] or caps["amx"]


_WARNED: set = set()  # the keys warned about emulated bf16 in this process: once each


def cuda_bf16_native() -> bool:
    """Whether the current CUDA GPU computes in bf16 natively (compute capability 8.0, Ampere, or newer; ROCm too),
    not by emulation."""
    return bool(torch.version.hip) or (torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 8)


def resolve_precision(precision: str, device_type: str, *, key: str = "precision") -> str:
    """A valid precision for the device; 'auto' stays 'auto' where a measurement decides, else its one choice."""
    if precision not in PRECISIONS:
        raise ConfigError(f"{key}={precision!r}: must be one of {list(PRECISIONS)}")
    if precision == "fp16" and device_type == "cpu":
        raise ConfigError(f"{key}=fp16: fp16 autocast is for CUDA GPUs; " + (
            f"use {key}=bf16 (native on this CPU) or {key}=fp32" if cpu_bf16_native() else
            f"use {key}=fp32 on this CPU (it has no native bf16: bf16 would be emulated, several times slower than "
            f"fp32)"))
    if precision == "bf16" and device_type == "cpu" and not cpu_bf16_native() and key not in _WARNED:
        _WARNED.add(key)
        log.warning("%s=bf16: this CPU has no native bf16 (%s), so bf16 is emulated and runs several times slower "
                    "than fp32; %s=fp32 or auto is faster here", key, describe_cpu(), key)
    if precision == "bf16" and device_type == "cuda" and not cuda_bf16_native():
        raise ConfigError(f"{key}=bf16: this GPU ({torch.cuda.get_device_name()}) has no native bf16 (that needs "
                          f"compute capability 8.0, Ampere, or newer); use {key}=fp16 or {key}=auto")
    if precision != "auto":
        return precision
    options = auto_precisions(device_type)
    return options[0] if len(options) == 1 else "auto"


_CHOSEN: dict = {}  # key -> name: each choice is measured once per process, and never stored on disk


def choose_fastest(candidates: dict[str, Callable[[], object]], *, key: Hashable, what: str,
                   admissible: Callable[[str, object, object], bool] | None = None, rounds: int = 3) -> str:
    """The fastest of `candidates` (name -> a call to time), measured once per process for `key`.

    Each runs once untimed (oneDNN builds its kernels on the first call), then `rounds` interleaved timed calls;
    the best time counts. `admissible(name, output, first_output)` can rule a candidate out by its output (e.g.
    labels that differ from fp32's); the first candidate is the reference and always admissible. One log line
    says what was chosen, the times, and the CPU's flags.
    """
    if key in _CHOSEN:
        return _CHOSEN[key]
    outputs = {name: call() for name, call in candidates.items()}
    first = next(iter(candidates))
    times = interleaved(candidates, rounds=rounds)
    allowed = [n for n in candidates if n == first or admissible is None or admissible(n, outputs[n], outputs[first])]
    best = min(allowed, key=lambda n: min(times[n]))
    shown = ", ".join(f"{n} {min(t) * 1000:.0f} ms{'' if n in allowed else ' (refused: labels differ)'}"
                      for n, t in times.items())
    log.info("auto for %s: %s (%s; CPU %s)", what, best, shown, describe_cpu())
    _CHOSEN[key] = best
    return best


def _say_once(key: Hashable, message: str) -> None:
    """Log why auto needed no measurement, once per process."""
    if key not in _CHOSEN:
        _CHOSEN[key] = None
        log.info("%s", message)


def _no_choice(device_type: str) -> str:
    return ("bf16 autocast: this GPU runs bf16 natively" if cuda_bf16_native() else "fp16 autocast with a "
            "GradScaler: this GPU has no native bf16") if device_type == "cuda" else \
        f"this CPU has no native bf16, so fp32; CPU {describe_cpu()}"


def architecture(model: nn.Module) -> tuple:
    """A hashable description of a model's layers (names and shapes), for caching a measured choice."""
    return type(model).__name__, tuple((n, tuple(p.shape)) for n, p in model.named_parameters())


def agreement(logits: torch.Tensor, reference: torch.Tensor) -> float:
    """The share of pixels whose label (argmax over channels) is the reference's."""
    return float((logits.argmax(1) == reference.argmax(1)).float().mean())


MIN_AGREEMENT = 0.995  # an automatic precision must label at least this share of pixels as fp32 does


# the largest input side precision=auto times on: a centre crop of the first image, so its cost is bounded
PROBE_SIDE = 512


def timing_probe(images: torch.Tensor, side: int = PROBE_SIDE) -> torch.Tensor:
    """The input precision=auto measures inference on: the centre `side` x `side` (at most) of the first image.

    The network is convolutional, so its time grows with the pixels at a per-pixel cost that, from a few hundred
    pixels a side, no longer depends on the size: which precision is faster per pixel on a 512x512 crop is which is
    faster on the whole 6000x4000 photo, whose two timed runs would take minutes. The crop is of the real image at
    its own scale (not a downscaled copy), so the label agreement is judged on the content the model will see.
    """
    height, width = images.shape[-2:]
    top, left = max(0, (height - side) // 2), max(0, (width - side) // 2)
    return images[:1, :, top:top + side, left:left + side].clone()  # a dense copy, in the input's memory format


def inference_precision(model: nn.Module, images: torch.Tensor, precision: str = "auto") -> str:
    """precision=auto made concrete for inference of this model: the faster of fp32 and native bf16, timed on a
    crop of bounded size of `images` (`timing_probe`: the first real input) once per process, bf16 only where its
    labels agree with fp32's on it."""
    asked, precision = precision, resolve_precision(precision, images.device.type)
    if precision != "auto":
        if asked == "auto":
            _say_once(("inference", images.device.type), f"auto for inference precision: {precision} (nothing to "
                      f"measure on {images.device.type}: {_no_choice(images.device.type)})")
        return precision

    probe = timing_probe(images)

    def run(chosen: str) -> Callable[[], torch.Tensor]:
        def call() -> torch.Tensor:
            with torch.inference_mode(), autocast(images.device.type, chosen):
                return model(probe).float()
        return call

    options = auto_precisions(images.device.type)
    return choose_fastest({p: run(p) for p in options}, key=("inference", architecture(model), images.device.type),
                          what="inference precision",
                          admissible=lambda n, out, ref: agreement(out, ref) >= MIN_AGREEMENT)


@dataclass(frozen=True)
class TrainingPlan:
    """How the trainer runs its steps: precision, memory format, and the fast decoder convs (fp32 on CPU)."""

    precision: str
    channels_last: bool
    fast_convs: bool

    def __str__(self) -> str:
        fast = " + fast convs" if self.fast_convs and self.precision == "fp32" else ""
        return f"{self.precision} {'channels_last' if self.channels_last else 'NCHW'}{fast}"


def training_plan(model: nn.Module, images: torch.Tensor, masks: torch.Tensor, *, precision: str,
                  channels_last: bool, fast_convs: bool) -> TrainingPlan:
    """The trainer's plan: as set, or on a CPU with precision=auto the fastest of the plain model (fp32, NCHW),
    fp32 channels_last with the fast decoder convs, and native bf16 channels_last, each timed as one
    forward+backward of its own copy of `model` (with `use_fast_convs` applied as each plan says) on `images`
    (a few training crops), once per process."""
    device_type = images.device.type
    resolved = resolve_precision(precision, device_type, key="trainer.precision")
    if precision != "auto" or device_type != "cpu":
        if precision == "auto":
            _say_once(("training", device_type), f"auto for training precision: {resolved} "
                      f"({_no_choice(device_type)})")
        # the fast decoder convs are a CPU fp32 path: a GPU run neither uses nor claims them
        return TrainingPlan(resolved, channels_last, fast_convs and device_type == "cpu")
    plans = [TrainingPlan("fp32", False, False)]
    plans += [TrainingPlan(p, True, fast_convs) for p in auto_precisions(device_type) if channels_last]
    if len(plans) == 1:  # trainer.channels_last=false on a CPU without native bf16: nothing to choose
        return plans[0]

    def step(plan: TrainingPlan) -> Callable[[], None]:
        memory_format = torch.channels_last if plan.channels_last else torch.contiguous_format
        probe = copy.deepcopy(model).train().to(memory_format=memory_format)
        use_fast_convs(probe, plan.fast_convs)
        x = images.contiguous(memory_format=memory_format)

        def call() -> None:
            with autocast(device_type, plan.precision):
                logits = probe(x)
            F.cross_entropy(logits.float(), masks, ignore_index=255).backward()
            probe.zero_grad(set_to_none=True)
        return call

    named = {str(plan): plan for plan in plans}
    with torch.random.fork_rng(devices=[]):  # the probes' dropout draws leave the run's random stream as it was
        best = choose_fastest({name: step(plan) for name, plan in named.items()},
                              key=("training", architecture(model), tuple(images.shape), tuple(plans)),
                              what="training precision and memory format", rounds=2)
    return named[best]


def autocast(device_type: str, precision: str) -> contextlib.AbstractContextManager:
    """torch.autocast for bf16/fp16, a no-op context for fp32."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    return torch.autocast(device_type, dtype=dtype, enabled=dtype is not None) if dtype else contextlib.nullcontext()


def grad_scaler(device_type: str, precision: str) -> torch.amp.GradScaler:
    """A GradScaler that is active only for fp16 (bf16 has fp32's range and needs none)."""
    return torch.amp.GradScaler(device_type, enabled=precision == "fp16")
