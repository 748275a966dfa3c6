"""The inference and training modes the benchmark (and the int8 export check) compare, each as a plain callable,
and what they cost.

Inference modes map a normalised float (N, 3, H, W) batch to float32 logits, so their speed and their labels can be
compared on the same inputs. Training modes run one optimizer step and return the loss.
"""

import copy
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from deeplab.data import build_dataset
from deeplab.data.transforms import eval_transform
from deeplab.engine.precision import TrainingPlan, autocast, grad_scaler, inference_precision, training_plan
from deeplab.engine.run_config import TrainerSettings
from deeplab.engine.step import optimizer_step
from deeplab.errors import ConfigError
from deeplab.export import export_onnx, quantize_onnx
from deeplab.inference import prepare_for_inference
from deeplab.losses import build_loss
from deeplab.metrics import ConfusionMatrix
from deeplab.model.decoder import use_fast_convs
from deeplab.onnx_model import OnnxModel

INFERENCE_MODES = ("eager_fp32", "folded_fp32", "fast_convs_fp32", "fast", "bf16", "compile", "onnxruntime",
                   "onnxruntime_int8")
TRAINING_MODES = ("eager_fp32", "fast_convs_fp32", "bf16", "fast")

Forward = Callable[[torch.Tensor], torch.Tensor]


def check_modes(key: str, modes: object, known: Sequence[str]) -> list[str]:
    """The benchmark modes a config key names, as a list (a bare name is one mode); an unknown one is a
    ConfigError naming `key` and the known modes."""
    if isinstance(modes, str):
        modes = [modes]
    if modes is None or not isinstance(modes, Sequence):
        raise ConfigError(f"{key}={modes!r}: give a list of modes, e.g. {key}=[{','.join(known[:2])}]; known: "
                          f"{', '.join(known)}")
    unknown = [m for m in modes if m not in known]
    if unknown:
        raise ConfigError(f"{key}: unknown mode(s) {', '.join(map(str, unknown))}; known: {', '.join(known)}")
    return list(modes)


def _torch_forward(model: nn.Module, *, device: torch.device, precision: str, channels_last: bool) -> Forward:
    def forward(images: torch.Tensor) -> torch.Tensor:
        images = images.to(device)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), autocast(device.type, precision):
            return model(images).float()
    return forward


def inference_runner(name: str, model: nn.Module, *, device: torch.device, workdir: Path,
                   calibration: Iterable[np.ndarray] = (), example: torch.Tensor | None = None,
                   key: str = "inference.modes") -> tuple[Forward, str]:
    """The forward function of one inference mode, and what precision it runs in.

    eager_fp32: the plain model as the peer repositories run it (NCHW, BN unfolded, fp32) - the baseline.
    folded_fp32: BN folded + channels_last, fp32. fast_convs_fp32: that with the decoder's dense 3x3 convs done
    with fewer multiplications (CPU; `prepare_for_inference`). fast: what evaluate.py and predict.py run (folded +
    channels_last + fast convs on the CPU, in precision=auto: fp16 on CUDA; on a CPU fp32, or native bf16 where
    `inference_precision` measures it faster on `example` with the same labels). bf16: folded + channels_last +
    bf16 autocast. compile: folded + channels_last + torch.compile in precision=auto. onnxruntime /
    onnxruntime_int8: the exported ONNX model, float or statically quantized (calibrated on `calibration`), in ONNX
    Runtime's CPU provider. An unknown name is a ConfigError naming the config `key` it came from.
    """
    check_modes(key, [name], INFERENCE_MODES)
    model = model.eval()
    if name == "eager_fp32":
        return _torch_forward(model.to(device), device=device, precision="fp32", channels_last=False), "fp32"
    if name in ("folded_fp32", "fast_convs_fp32", "fast", "bf16", "compile"):
        fast = prepare_for_inference(model, device=device, compile=name == "compile",
                                     fast_convs=name in ("fast_convs_fp32", "fast"))
        precision = {"folded_fp32": "fp32", "fast_convs_fp32": "fp32", "bf16": "bf16"}.get(name) or \
            inference_precision(fast, example.to(device).contiguous(memory_format=torch.channels_last))
        return _torch_forward(fast, device=device, precision=precision, channels_last=True), precision
    if name in ("onnxruntime", "onnxruntime_int8"):
        path = export_onnx(model.cpu(), workdir / "model.onnx", overwrite=True)
        model.to(device)
        if name == "onnxruntime_int8":
            path = quantize_onnx(path, workdir / "model.int8.onnx", calibration, overwrite=True)
        return OnnxModel(path), "int8" if name.endswith("int8") else "fp32"
    raise AssertionError(f"inference mode {name!r} is listed in INFERENCE_MODES but not implemented")


def training_step(name: str, model: nn.Module, *, device: torch.device, lr: float = 0.01,
                  example: tuple[torch.Tensor, torch.Tensor] | None = None, key: str = "train.modes"
                  ) -> Callable[[torch.Tensor, torch.Tensor], float]:
    """One SGD step (the VOC recipe's optimizer) of a training mode on its own copy of `model`; returns the loss.

    eager_fp32: NCHW, fp32 (the baseline). fast_convs_fp32: channels_last + the decoder's fast convs, fp32. bf16:
    channels_last + bf16 autocast. fast: what train.py does with its defaults (precision=auto: the plan
    `training_plan` measures on `example`, a training batch). An unknown name is a ConfigError naming `key`.
    """
    check_modes(key, [name], TRAINING_MODES)
    model = copy.deepcopy(model).to(device).train()
    if name == "fast":
        defaults = TrainerSettings()  # what train.py does unless told otherwise
        plan = training_plan(model, *(t.to(device) for t in example), precision=defaults.precision,
                             channels_last=defaults.channels_last, fast_convs=defaults.fast_convs)
    else:
        plan = {"eager_fp32": TrainingPlan("fp32", False, False), "fast_convs_fp32": TrainingPlan("fp32", True, True),
                "bf16": TrainingPlan("bf16", True, False)}[name]
    channels_last, precision = plan.channels_last, plan.precision
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    use_fast_convs(model, plan.fast_convs)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    scaler = grad_scaler(device.type, precision)
    criterion = build_loss(ignore_index=255).to(device)

    def step(images: torch.Tensor, masks: torch.Tensor) -> float:  # the trainer's step, on one batch
        return optimizer_step(model, optimizer, scaler, criterion, [(images, masks)], device=device,
                              precision=precision, channels_last=channels_last).item()
    step.precision = precision
    step.plan = str(plan)
    return step


def label_quality(forward: Forward, baseline: Forward, samples: list, num_classes: int) -> dict:
    """Fraction of pixels labelled as eager fp32 labels them, largest logit difference, and mIoU where masks exist."""
    same = total = 0
    worst = 0.0
    matrix = ConfusionMatrix(num_classes)
    for images, mask in samples:
        logits = forward(images)
        reference = logits if forward is baseline else baseline(images)  # the baseline scored against itself
        labels = logits.argmax(1)
        same += int((labels == reference.argmax(1)).sum())
        total += labels.numel()
        worst = max(worst, float((logits - reference).abs().max()))
        if mask is not None:
            matrix.update(labels.cpu(), mask)
    miou = matrix.compute()["mIoU"] if int(matrix.mat.sum()) else None
    return {"agreement": same / total, "max_abs_logit_diff": worst, "mIoU": miou}


def split_samples(data: dict, split: str, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first `count` normalised full-resolution (1, 3, H, W) images and (1, H, W) masks of a dataset config's
    `split` ("val_split" or "train_split")."""
    dataset = build_dataset(split=data[split], **data, transform=eval_transform(mean=data["mean"], std=data["std"]))
    return [(image[None], mask[None]) for image, mask in (dataset[i] for i in range(min(count, len(dataset))))]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_mib(fn: Callable[[], object], device: torch.device) -> float | None:
    """Peak memory while `fn` runs, in MiB above what was in use before: CUDA allocator peak on GPUs, the
    process's peak resident set (VmHWM, reset through /proc/self/clear_refs) on Linux CPUs, else None."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        before = _status_kib("VmRSS")
        fn()
        return (_status_kib("VmHWM") - before) / 1024
    except OSError:
        return None


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"{field} not in /proc/self/status")
