"""Paired image/mask transforms on albumentations: the train and eval presets."""

from collections.abc import Sequence
from numbers import Integral, Real

import albumentations as A
import cv2
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2

from deeplab.errors import ConfigError
from deeplab.schema import NonNegative, Ratio, checked, ranged, require

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _per_channel(test):
    """A rule for three numbers, one per RGB channel, each passing `test`."""
    return lambda v: not isinstance(v, (str, bytes)) and len(v) == 3 and all(
        isinstance(x, Real) and not isinstance(x, bool) and test(x) for x in v)


# the normalisation, on the 0-1 pixel scale as torchvision's: 0-255 values (mmseg's [123.675, 116.28, 103.53]) would
# make every normalised pixel about -2 and the model see a blank image, silently
Mean = ranged(Sequence[float], _per_channel(lambda x: 0 <= x <= 1), "three numbers in [0, 1], one per RGB channel on "
              "the 0-1 pixel scale (ImageNet's: [0.485, 0.456, 0.406]; divide 0-255 values by 255)")
Std = ranged(Sequence[float], _per_channel(lambda x: 0 < x <= 1), "three numbers in (0, 1], one per RGB channel on "
             "the 0-1 pixel scale (ImageNet's: [0.229, 0.224, 0.225]; divide 0-255 values by 255)")


def _normalisation_convention(mean, std) -> str | None:
    """Why dataset.mean/std look written in another framework's convention, with the values to write here; None if
    they do not (a value that is not three positive numbers is left to the range rule).

    Images are RGB on the 0-1 scale here (torchvision's). mmsegmentation writes 0-255 values ([123.675, 116.28,
    103.53]), which would squeeze every input into a sliver about -2; Caffe and OpenCV code lists them in BGR order,
    which swaps the red and blue statistics silently (ImageNet's mean reversed is still in range).
    """
    given = {"mean": mean, "std": std}
    if not all(isinstance(v, Sequence) and not isinstance(v, str) and len(v) == 3 and all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and x > 0 for x in v) for v in given.values()):
        return None
    unit = {key: [x / 255 for x in v] if max(v) > 1 else list(v) for key, v in given.items()}

    def imagenet(values, rgb) -> bool:
        return all(abs(a - b) < 2e-3 for a, b in zip(values, rgb))
    bgr = imagenet(unit["mean"], IMAGENET_MEAN[::-1])
    flip = {"mean": bgr, "std": bgr and not imagenet(unit["std"], IMAGENET_STD)}  # a std left at its RGB default
    scaled = [key for key, v in given.items() if max(v) > 1]
    if not scaled and not bgr:
        return None
    why = " and ".join([*(["on the 0-255 scale (mmsegmentation's convention)"] if scaled else []),
                        *(["in BGR order (ImageNet's, as Caffe and OpenCV list it)"] if bgr else [])])
    fix = " ".join(f"dataset.{key}=[{','.join(f'{x:.4g}' for x in (v[::-1] if flip[key] else v))}]"
                   for key, v in unit.items())
    return (f"dataset.mean={list(mean)} dataset.std={list(std)}: {why}, but images are normalised as RGB on the 0-1 "
            f"scale here; write {fix}")


def check_normalisation(mean, std) -> None:
    """A ConfigError naming dataset.mean or dataset.std unless each is three numbers on the 0-1 scale (std > 0) in
    RGB order; values in another framework's convention get the values to write here."""
    convention = _normalisation_convention(mean, std)
    if convention:
        raise ConfigError(convention)
    require(Mean, "dataset.mean", mean)
    require(Std, "dataset.std", std)


class PairedTransform:
    """Runs an albumentations pipeline on (image, mask) and returns (float CHW tensor, long HW tensor).

    `seed` makes one sample's augmentation a pure function of it, whatever process or worker runs it, which is
    what exact resume and reproducible multi-worker loading need (albumentations keeps its own RNG per Compose).
    """

    def __init__(self, pipeline: A.Compose) -> None:
        self.pipeline = pipeline

    def __call__(self, image: np.ndarray, mask: np.ndarray,
                 seed: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if seed is not None:
            self.pipeline.set_random_seed(seed)
        out = self.pipeline(image=image, mask=mask)
        return out["image"], out["mask"].long()


def _sides(v) -> list:
    """The sides a crop size gives: one (a square) or two (height, width); none for anything else."""
    if isinstance(v, Integral):
        return [v]
    return list(v) if isinstance(v, Sequence) and not isinstance(v, str) and 1 <= len(v) <= 2 else []


CropSize = ranged(int | Sequence[int], lambda v: bool(_sides(v)) and all(
    isinstance(c, Integral) and not isinstance(c, bool) and c >= 1 for c in _sides(v)),
    "a whole number of pixels >= 1, or [height, width] of them, e.g. 513 or [513, 513]")
ScaleRange = ranged(Sequence[float], lambda v: len(v) == 2 and 0 < v[0] <= v[1], "[low, high] with 0 < low <= high")


def train_transform(*, mean: Mean = IMAGENET_MEAN, std: Std = IMAGENET_STD, crop_size: CropSize = 513,
                    scale_range: ScaleRange = (0.5, 2.0), hflip: Ratio = 0.5, color_jitter: NonNegative = 0.0,
                    ignore_index: int = 255) -> PairedTransform:
    """Random scale, pad to the crop (mask with the ignore index), random crop, flip, optional jitter, normalise.

    The augment values are checked as the `augment` config section is (`deeplab.schema.checked`), mean and std as
    dataset.mean and dataset.std: a wrong one is a ConfigError naming the key."""
    check_normalisation(mean, std)
    augment = checked("augment", {"crop_size": crop_size, "scale_range": scale_range, "hflip": hflip,
                                  "color_jitter": color_jitter}, train_transform)
    sides = _sides(augment["crop_size"])
    height, width = int(sides[0]), int(sides[-1])
    low, high = augment["scale_range"]
    hflip, color_jitter = augment["hflip"], augment["color_jitter"]
    steps = [A.RandomScale(scale_limit=(low - 1.0, high - 1.0), interpolation=cv2.INTER_LINEAR,
                           mask_interpolation=cv2.INTER_NEAREST, p=1.0)] if (low, high) != (1.0, 1.0) else []
    # Padding the image with the mean pixel makes it 0 after normalisation; the mask gets the ignore index,
    # never background, so padded pixels teach nothing.
    steps += [A.PadIfNeeded(min_height=height, min_width=width, border_mode=cv2.BORDER_CONSTANT,
                            fill=tuple(255.0 * m for m in mean), fill_mask=ignore_index),
              A.RandomCrop(height=height, width=width),
              A.HorizontalFlip(p=hflip)]
    if color_jitter > 0:
        steps.append(A.ColorJitter(brightness=color_jitter, contrast=color_jitter, saturation=color_jitter,
                                   hue=min(0.5, color_jitter / 4), p=0.8))
    steps += [A.Normalize(mean=mean, std=std, max_pixel_value=255.0), ToTensorV2()]
    return PairedTransform(A.Compose(steps))


def eval_transform(*, mean: Mean = IMAGENET_MEAN, std: Std = IMAGENET_STD) -> PairedTransform:
    """Normalise only: validation runs on the full-resolution image, never a crop."""
    check_normalisation(mean, std)
    return PairedTransform(A.Compose([A.Normalize(mean=mean, std=std, max_pixel_value=255.0), ToTensorV2()]))
