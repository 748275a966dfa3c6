"""Inference: a model rebuilt from its checkpoint, its fast inference form, and `Predictor` (test-time
augmentation and sliding windows come from `engine.tta`)."""

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from deeplab.engine.checkpoint import CheckpointError, load_checkpoint, load_model_weights, preferred_weights
from deeplab.engine.precision import resolve_device, resolve_precision
from deeplab.engine.tta import check_tta, predict_probs
from deeplab.model import rebuild_model, upgrade_model_config
from deeplab.model.decoder import use_fast_convs
from deeplab.model.fuse import fold_batchnorm
from deeplab.onnx_model import OnnxModel

log = logging.getLogger("deeplab.inference")


def prepare_for_inference(model: nn.Module, *, device: str | torch.device = "auto", fast_convs: bool = True,
                          compile: bool = False) -> nn.Module:
    """The fast inference form of a model: BatchNorm folded into the convs, channels_last weights, eval mode, and
    (fast_convs) the dense 3x3 decoder convs done with fewer multiplications where they run in fp32 on the CPU:
    the first at the ASPP output's resolution, the second by Winograd F(6x6, 3x3) (`deeplab.model.fast_convs`).

    fp32 results match the unfolded model to float rounding (1e-4); precision (bf16/fp16 autocast) is chosen
    separately, per call (under autocast those convs run as plain convs). The input model is left as it was.
    """
    device = resolve_device(device)
    model = fold_batchnorm(model).to(device).to(memory_format=torch.channels_last)  # a copy, in eval mode
    use_fast_convs(model, fast_convs and not compile)  # a compiled graph runs the plain convs anyway
    return torch.compile(model, dynamic=True) if compile else model


def model_from_checkpoint(path: str | Path, *, device: str | torch.device = "auto", output_stride: int | None = None,
                          fast: bool = False, compile: bool = False, onnx: str | Path | None = None
                          ) -> tuple[nn.Module, dict]:
    """The model a checkpoint describes (its own saved config), with its weights, in eval mode; and that config.

    fast=True returns it prepared for inference (`prepare_for_inference`: folded BN, channels_last,
    fewer-multiplication decoder convs on the CPU). onnx=FILE runs that exported model (ONNX Runtime, CPU) instead
    of the checkpoint's weights; the checkpoint still gives the classes, mean/std and palette. The config comes
    back with its model section in today's layout (`upgrade_model_config`), however old the checkpoint. A
    checkpoint of a run with trainer.ema_decay gives its EMA weights (the ones its validation scored), and says so in
    the log; one without, its weights.
    """
    device = resolve_device(device)  # a device this machine lacks is refused before the checkpoint is read
    state = load_checkpoint(path)
    config = {**state["config"], "model": upgrade_model_config(state["config"]["model"])}  # older layouts too
    if onnx:
        if output_stride:
            raise CheckpointError(f"{onnx}: an exported model has a fixed output stride; export it again after "
                                  "model.set_output_stride() instead of passing output_stride")
        model = OnnxModel(onnx)
        if model.num_classes != config["dataset"]["num_classes"]:
            raise CheckpointError(f"{onnx}: ONNX model gives {model.num_classes} classes but the checkpoint {path} "
                                  f"is for {config['dataset']['num_classes']}; export it from that checkpoint")
        return model, config
    model = rebuild_model(config["model"])
    weights, which = preferred_weights(state)
    if which:
        log.info("%s: using %s, not the last raw ones", path, which)
    load_model_weights(model, weights, source=str(path))
    if output_stride:
        model.set_output_stride(output_stride)
    if fast:
        return prepare_for_inference(model, device=device, compile=compile), config
    return model.eval().to(device), config


class Predictor:
    """Label maps for RGB uint8 images of any size, for embedding a trained model in other code.

    >>> predictor = Predictor.from_checkpoint("outputs/train/<run>/best.pt", device="cpu")
    >>> labels = predictor.predict(rgb_uint8_array)          # (H, W) class indices
    >>> labels, probs = predictor.predict(rgb, return_probs=True)  # probs: (C, H, W) float32
    """

    def __init__(self, model: nn.Module, *, mean: Sequence[float], std: Sequence[float], class_names: Sequence[str],
                 palette: Sequence[Sequence[int]] | None = None, device: str | torch.device = "auto",
                 scales: Sequence[float] = (1.0,), flip: bool = False, window: Sequence[int] | None = None,
                 stride: Sequence[int] | None = None, precision: str = "auto") -> None:
        self.device = resolve_device(device)
        check_tta(scales=scales, window=window, stride=stride, flip=flip)
        precision = resolve_precision(precision, self.device.type)
        self.model = model.eval().to(self.device)
        self.mean = torch.tensor(mean, device=self.device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(std, device=self.device).view(1, 3, 1, 1) * 255
        self.class_names, self.palette = list(class_names), palette
        self.tta = dict(scales=tuple(scales), flip=flip, window=window, stride=stride, precision=precision)

    @classmethod
    def from_checkpoint(cls, path: str | Path, *, device: str | torch.device = "auto", output_stride: int | None = None,
                        fast: bool = True, compile: bool = False, onnx: str | Path | None = None,
                        **tta) -> "Predictor":
        """Rebuild the model from the checkpoint's own config; nothing else is needed.

        fast (default): `prepare_for_inference` (folded BN, channels_last, fast decoder convs on the CPU), and
        precision="auto" (fp16 on CUDA; on a CPU fp32, or native bf16 where it is measured faster on the first input
        and labels as fp32 does; see `inference_precision`); fast=False, precision="fp32" is
        the plain model. onnx=FILE: an exported model (float or int8, `python -m deeplab.export`) run by ONNX Runtime
        instead.
        """
        device = resolve_device(device)  # the settings first: no model is loaded for a wrong one
        resolve_precision(tta.get("precision", "auto"), device.type)
        check_tta(scales=tta.get("scales", (1.0,)), window=tta.get("window"), stride=tta.get("stride"),
                  flip=tta.get("flip", False))
        model, config = model_from_checkpoint(path, device=device, output_stride=output_stride, fast=fast,
                                              compile=compile, onnx=onnx)
        data = config["dataset"]
        return cls(model, mean=data["mean"], std=data["std"], class_names=data["class_names"],
                   palette=data.get("palette"), device=device, **tta)

    def normalise(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """Same-size RGB uint8 (H, W, 3) arrays -> a normalised float (N, 3, H, W) batch on the device."""
        batch = torch.from_numpy(np.stack(images)).to(self.device).permute(0, 3, 1, 2).float()
        return (batch - self.mean) / self.std

    def predict_batch(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """Probabilities (N, C, H, W) for same-size RGB uint8 images."""
        return predict_probs(self.model, self.normalise(images), **self.tta)

    def predict(self, image: np.ndarray, *, return_probs: bool = False):
        """The (H, W) label map of one RGB uint8 image; with return_probs, also its (C, H, W) probabilities."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an RGB uint8 (H, W, 3) array, got {image.dtype} {image.shape}")
        probs = self.predict_batch([image])[0]
        labels = probs.argmax(0).to(torch.uint8).cpu().numpy()
        return (labels, probs.cpu().numpy()) if return_probs else labels
