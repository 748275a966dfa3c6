"""The peer repositories' evaluation protocols (`evaluate.py protocol=...`): what each one's own evaluation does to
images and labels, and how it counts mIoU, so a converted peer checkpoint gives the figure its repository's code gives.

- `full` (ours): whole images at their own size, mIoU over the classes present in truth or prediction.
- `vainf_full`: VainF/DeepLabV3Plus-Pytorch `main.py --test_only` as it runs by default (`--crop_val` off): whole images,
  read by PIL as RGB, `ToTensor` (/255) and `Normalize` in float32, one forward, argmax; its `StreamSegMetrics`
  counts labels < num_classes and averages IoU with np.nanmean, over the classes present (as ours).
- `vainf`: the same with `--crop_val`, the command its README evaluates with and its published VOC table used:
  `ExtResize(513)` (the shorter side to 513 and the longer to int(513 * long / short): the image bilinear, the label
  nearest, both by PIL) and `ExtCenterCrop(513)` of both (torchvision's offsets, int(round((side - 513) / 2))).
- `bubbliiiing`: bubbliiiing/deeplabv3-plus-pytorch `get_miou.py` (`DeeplabV3.get_miou_png`): the PIL image
  letterboxed into 512x512 (`resize_image`: scaled by min(512 / w, 512 / h), sides int()-truncated, BICUBIC, pasted
  at ((512 - nw) // 2, (512 - nh) // 2) on grey (128, 128, 128)), /255, one forward, softmax, the letterbox's
  content cropped out of the probabilities, resized to the image's size by cv2 INTER_LINEAR, argmax; its
  `compute_mIoU` averages per-class IoU over ALL classes, a class in neither truth nor prediction counting 0
  (IoU = hit / max(union, 1)).

The image's normalisation is the checkpoint's (dataset.mean/std): a converted checkpoint carries its peer's.
"""

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from torch import nn

from deeplab.data import DataError, SegmentationDataset
from deeplab.engine.precision import autocast
from deeplab.errors import ConfigError
from deeplab.metrics import ConfusionMatrix
from deeplab.progress import progress_bar

PROTOCOLS = ("full", "vainf", "vainf_full", "bubbliiiing")
VAINF_CROP = 513  # main.py --crop_size default
BUBBLIIIING_INPUT = (512, 512)  # deeplab.py input_shape [h, w]
GREY = (128, 128, 128)


def check_protocol(protocol: str, *, scales: Sequence[float], flip: bool, window, predictions=None) -> None:
    """A ConfigError for an unknown protocol, or a peer protocol with test-time settings its peer never uses or with
    saved predictions (a protocol is how a model's predictions are made)."""
    if protocol not in PROTOCOLS:
        raise ConfigError(f"protocol={protocol}: must be one of {', '.join(PROTOCOLS)}")
    if protocol != "full" and predictions:
        raise ConfigError(f"protocol={protocol} with predictions={predictions}: a protocol is how a model's "
                          "predictions are made; give checkpoint= instead, or drop protocol=")
    if protocol != "full" and (list(scales) != [1.0] or flip or window is not None):
        raise ConfigError(f"protocol={protocol} evaluates as that repository does, one scale and no flip or window; "
                          "drop scales=, flip= and window= (or use protocol=full)")


def read_rgb(path: str | Path) -> Image.Image:
    """The image as both peers read it: PIL, converted to RGB (no EXIF rotation)."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (OSError, SyntaxError) as exc:
        raise DataError(f"{path}: not a readable image ({exc})") from exc


def shorter_side_resize(image: Image.Image, mask: Image.Image, size: int) -> tuple[Image.Image, Image.Image]:
    """VainF's ExtResize(size) (torchvision's resize to an int): the shorter side to `size`, the longer to
    int(size * long / short); the image bilinear, the label nearest."""
    width, height = image.size
    short, long = min(width, height), max(width, height)
    new_short, new_long = size, int(size * long / short)
    out = (new_short, new_long) if width <= height else (new_long, new_short)
    return image.resize(out, Image.BILINEAR), mask.resize(out, Image.NEAREST)


def center_crop(array: np.ndarray, size: int) -> np.ndarray:
    """torchvision's center_crop of an image at least `size` a side: top/left = int(round((side - size) / 2))."""
    height, width = array.shape[:2]
    if height < size or width < size:
        raise ValueError(f"center_crop: {width}x{height} is smaller than {size}")
    top, left = int(round((height - size) / 2.0)), int(round((width - size) / 2.0))
    return array[top:top + size, left:left + size]


def letterbox(image: Image.Image, size: tuple[int, int] = BUBBLIIIING_INPUT) -> tuple[np.ndarray, int, int]:
    """bubbliiiing's resize_image: the image scaled to fit (h, w) = `size` (BICUBIC, sides truncated), centred on
    grey; the (h, w, 3) uint8 letterbox and the content's width and height."""
    iw, ih = image.size
    h, w = size
    scale = min(w / iw, h / ih)
    nw, nh = int(iw * scale), int(ih * scale)
    canvas = Image.new("RGB", (w, h), GREY)
    canvas.paste(image.resize((nw, nh), Image.BICUBIC), ((w - nw) // 2, (h - nh) // 2))
    return np.array(canvas), nw, nh


def crop_back(probs: np.ndarray, nw: int, nh: int, original: tuple[int, int]) -> np.ndarray:
    """bubbliiiing's way back from the letterbox: the (H, W, C) probabilities' content cropped out, resized to the
    `original` (height, width) by cv2 INTER_LINEAR, argmax; the (height, width) labels."""
    h, w = probs.shape[:2]
    top, left = (h - nh) // 2, (w - nw) // 2
    probs = probs[top:top + nh, left:left + nw]
    resized = cv2.resize(probs, (original[1], original[0]), interpolation=cv2.INTER_LINEAR)
    if resized.ndim == 2:  # cv2 drops a single channel
        resized = resized[..., None]
    return resized.argmax(axis=-1)


def to_tensor(array: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """torchvision's to_tensor (/255 in float32) then normalize, as a (1, 3, H, W) batch."""
    tensor = torch.from_numpy(np.array(array)).permute(2, 0, 1).contiguous().float().div(255)
    mean_t = torch.as_tensor(mean, dtype=torch.float32).view(-1, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32).view(-1, 1, 1)
    return tensor.sub_(mean_t).div_(std_t)[None]


def protocol_sample(protocol: str, image: Image.Image, mask: np.ndarray, *, mean, std) -> tuple[torch.Tensor,
                                                                                                 np.ndarray]:
    """The network input and the label map a peer protocol scores (vainf, vainf_full; bubbliiiing's input is its
    letterbox, see `predict_labels`)."""
    if protocol == "vainf":
        image, label = shorter_side_resize(image, Image.fromarray(mask), VAINF_CROP)
        return (to_tensor(center_crop(np.asarray(image), VAINF_CROP), mean, std),
                center_crop(np.asarray(label), VAINF_CROP))
    return to_tensor(np.asarray(image), mean, std), mask


@torch.inference_mode()
def predict_labels(protocol: str, model: nn.Module, image: Image.Image, *, mean, std, device: torch.device,
                   precision: str = "fp32") -> np.ndarray:
    """bubbliiiing's get_miou_png: the labels of the image at its own size (letterbox, softmax, crop back)."""
    boxed, nw, nh = letterbox(image)
    with autocast(device.type, precision):
        logits = model(to_tensor(boxed, mean, std).to(device))[0].float()
    probs = torch.softmax(logits.permute(1, 2, 0), dim=-1).cpu().numpy()
    return crop_back(probs, nw, nh, (image.size[1], image.size[0]))


def protocol_confusion(protocol: str, model: nn.Module, dataset: SegmentationDataset, *, mean, std,
                       device: torch.device, precision: str = "fp32", progress: bool | None = None) -> ConfusionMatrix:
    """The confusion matrix of `dataset` (its masks read and checked as ever) scored under a peer protocol."""
    was_training = model.training
    model.eval()
    matrix = ConfusionMatrix(dataset.num_classes, ignore_index=dataset.ignore_index, device=device)
    with progress_bar(range(len(dataset)), desc=f"evaluate ({protocol})", unit=" images", progress=progress) as bar:
        for index in bar:
            _, mask = dataset.load(index)
            image = read_rgb(dataset.samples[index][0])
            if protocol == "bubbliiiing":
                pred, truth = predict_labels(protocol, model, image, mean=mean, std=std, device=device,
                                             precision=precision), mask
            else:
                batch, truth = protocol_sample(protocol, image, mask, mean=mean, std=std)
                with torch.inference_mode(), autocast(device.type, precision):
                    pred = model(batch.to(device)).argmax(1)[0].cpu().numpy()
            matrix.update(torch.from_numpy(np.asarray(pred, dtype=np.int64)).to(device),
                          torch.from_numpy(np.asarray(truth, dtype=np.int64)).to(device))
    model.train(was_training)
    return matrix


def protocol_metrics(protocol: str, matrix: ConfusionMatrix) -> dict:
    """The metrics as `matrix.compute()`; under bubbliiiing mIoU is its compute_mIoU's: the mean over all classes,
    one in neither truth nor prediction counting 0."""
    metrics = matrix.compute()
    if protocol == "bubbliiiing":
        metrics["mIoU"] = bubbliiiing_miou(matrix.mat.cpu().double().numpy())
    return metrics


def bubbliiiing_miou(hist: np.ndarray) -> float:
    """bubbliiiing's mIoU of a (truth, prediction) confusion matrix: nanmean of diag / max(union, 1)."""
    return float(np.nanmean(np.diag(hist) / np.maximum(hist.sum(1) + hist.sum(0) - np.diag(hist), 1)))
