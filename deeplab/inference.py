"""Inference: a model rebuilt from its checkpoint, its fast inference form, and `Predictor` (test-time
augmentation and sliding windows come from `engine.tta`)."""

import inspect
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from deeplab.data.transforms import check_normalisation
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
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"checkpoint: got a {type(path).__name__}, not a file path; pass the path (str or Path) of a "
                        "last.pt or best.pt, or wrap a model you hold in Predictor(model, mean=..., std=..., "
                        "class_names=...)")
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


def rgb_image(image) -> np.ndarray:
    """One image as the RGB uint8 (H, W, 3) array the model is fed, from what notebooks hold: a PIL image, a numpy
    array or a torch tensor, (H, W) grey, (H, W, 3) RGB or (H, W, 4) RGBA (alpha dropped, as `read_image` does),
    channels-first (3, H, W) where the last side is longer than 4 (torchvision's layout); uint8, uint16 (a 16-bit
    image, scaled to 8 bits as `read_image` does), other integers in 0-255, floats in [0, 1] (torchvision's and
    scikit-image's scale), bool never. Anything else is a ValueError (a TypeError for what is no image) saying what
    to pass."""
    if isinstance(image, Image.Image):
        # 16-bit greyscale keeps its values for the scaling below; PIL's own conversion would clip them at 255
        image = np.asarray(image if image.mode.startswith("I;16") else image.convert("RGB"))
    elif isinstance(image, torch.Tensor):
        image = image.detach().cpu()
        image = (image.float() if image.is_floating_point() else image).numpy()  # numpy has no bfloat16
    elif isinstance(image, (list, tuple)):
        image = np.asarray(image)
    if not isinstance(image, np.ndarray):
        raise TypeError(f"image: got a {type(image).__name__}; pass a PIL image, or an (H, W, 3) RGB numpy array or "
                        "torch tensor")
    if image.ndim == 3 and image.shape[-1] > 4 and image.shape[0] in (1, 3, 4):
        image = image.transpose(1, 2, 0)  # channels first, as torchvision's tensors are
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[-1] not in (3, 4)):
        raise ValueError(f"image: an array of shape {image.shape} is no image; pass one (H, W, 3) RGB image (or "
                         "(H, W) grey, (H, W, 4) RGBA, (3, H, W)), and a list of them to predict_batch")
    if image.size == 0:
        raise ValueError(f"image: shape {image.shape} has no pixels; pass an image at least 1 pixel high and wide")
    return np.ascontiguousarray(np.broadcast_to(_uint8(image)[..., None], (*image.shape[:2], 3)) if image.ndim == 2
                                else _uint8(image)[..., :3])


def _uint8(image: np.ndarray) -> np.ndarray:
    """The pixels as uint8 (see `rgb_image` for the scales each dtype is read on)."""
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:
        return (image >> 8).astype(np.uint8)  # OpenCV's 16-to-8-bit conversion, as read_image's
    if image.dtype.kind in "iu" and image.min() >= 0 and image.max() <= 255:
        return image.astype(np.uint8)
    if image.dtype.kind == "f" and np.isfinite(image).all() and image.min() >= 0 and image.max() <= 1:
        return np.rint(image * 255).astype(np.uint8)
    if image.dtype.kind not in "iuf":
        raise ValueError(f"image: {image.dtype} pixels; pass uint8 (0-255) or floats in [0, 1]")
    rule = "floats must be in [0, 1]" if image.dtype.kind == "f" else "integers other than uint16 must be in 0-255"
    raise ValueError(f"image: {image.dtype} pixels from {image.min()} to {image.max()}, but {rule}; pass uint8 "
                     "(for 0-255 floats: np.clip(image, 0, 255).astype(np.uint8))")


def label_dtype(num_classes: int) -> type:
    """The smallest unsigned dtype that holds the class indices of `num_classes` classes (uint8 up to 256)."""
    return np.uint8 if num_classes <= 256 else np.uint16 if num_classes <= 65536 else np.int64


class Predictor:
    """Label maps for RGB images of any size, for embedding a trained model in other code.

    >>> predictor = Predictor.from_checkpoint("outputs/train/<run>/best.pt", device="cpu")
    >>> labels = predictor.predict(rgb_uint8_array)          # (H, W) class indices (uint8; uint16 past 256 classes)
    >>> labels, probs = predictor.predict(rgb, return_probs=True)  # probs: (C, H, W) float32

    An image may also be a PIL image, a tensor, grey, RGBA, channels-first, uint16 or floats in [0, 1] (`rgb_image`).
    The model runs in eval mode whatever mode it is in between calls, and is left in that mode.
    """

    def __init__(self, model: nn.Module, *, mean: Sequence[float], std: Sequence[float],
                 class_names: Sequence[str] | None = None, palette: Sequence[Sequence[int]] | None = None,
                 device: str | torch.device = "auto", scales: Sequence[float] = (1.0,), flip: bool = False,
                 window: Sequence[int] | None = None, stride: Sequence[int] | None = None,
                 precision: str = "auto") -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: got a {type(model).__name__}, not a torch nn.Module; for a checkpoint file use "
                            "Predictor.from_checkpoint(path)")
        classes = getattr(model, "num_classes", None)
        if class_names is None and classes is not None:  # a dataset config may leave them out: the indices name them
            class_names = [str(i) for i in range(classes)]
        if isinstance(class_names, str) or not isinstance(class_names, Sequence):
            raise TypeError(f"class_names: got {class_names!r}; pass a list of one name per class")
        if classes is not None and classes != len(class_names):
            raise ValueError(f"class_names: {len(class_names)} names for a model of {classes} classes; give one name "
                             "per class")
        self.device = resolve_device(device)
        check_normalisation(mean, std)
        check_tta(scales=scales, window=window, stride=stride, flip=flip)
        precision = resolve_precision(precision, self.device.type)
        self.model = model.to(self.device)
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
        inspect.signature(cls).bind_partial(**tta)  # the settings first: no model is loaded for a wrong one
        device = resolve_device(device)
        resolve_precision(tta.get("precision", "auto"), device.type)
        check_tta(scales=tta.get("scales", (1.0,)), window=tta.get("window"), stride=tta.get("stride"),
                  flip=tta.get("flip", False))
        model, config = model_from_checkpoint(path, device=device, output_stride=output_stride, fast=fast,
                                              compile=compile, onnx=onnx)
        data = config["dataset"]
        return cls(model, mean=data["mean"], std=data["std"], class_names=data.get("class_names"),
                   palette=data.get("palette"), device=device, **tta)

    def normalise(self, images: Sequence) -> torch.Tensor:
        """Same-size RGB uint8 (H, W, 3) arrays (`rgb_image`'s) -> a normalised float (N, 3, H, W) batch on the
        device."""
        batch = torch.from_numpy(np.stack(images)).to(self.device).permute(0, 3, 1, 2).float()
        return (batch - self.mean) / self.std

    def predict_batch(self, images: Sequence) -> torch.Tensor:
        """Probabilities (N, C, H, W) of images of one size (any form `rgb_image` takes); (0, C, 0, 0) for none."""
        if isinstance(images, Image.Image) or getattr(images, "ndim", 4) != 4:
            raise TypeError("images: one image, not a batch of them; call predict(image), or pass a list of images "
                            "(or an (N, H, W, 3) or (N, 3, H, W) array)")
        images = [rgb_image(image) for image in images]
        if not images:
            return torch.zeros(0, len(self.class_names), 0, 0, device=self.device)
        sizes = {image.shape[:2] for image in images}
        if len(sizes) > 1:
            raise ValueError(f"images: a batch holds images of one size, and these have {len(sizes)} "
                             f"({', '.join(f'{h}x{w}' for h, w in sorted(sizes))}); pass each to predict, or "
                             "group them by size")
        training = self.model.training  # the caller's model may be training between calls: BN and dropout need eval
        try:
            return predict_probs(self.model.eval(), self.normalise(images), **self.tta)
        finally:
            self.model.train(training)

    def predict(self, image, *, return_probs: bool = False):
        """The (H, W) label map of one image (uint8; uint16 for a model of more than 256 classes); with return_probs,
        also its (C, H, W) probabilities."""
        probs = self.predict_batch([image])[0]
        labels = probs.argmax(0).cpu().numpy().astype(label_dtype(probs.shape[0]))
        return (labels, probs.cpu().numpy()) if return_probs else labels
