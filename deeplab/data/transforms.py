"""Paired image/mask transforms on albumentations: the train and eval presets."""

from collections.abc import Sequence

import albumentations as A
import cv2
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2

from deeplab.schema import NonNegative, Ratio, ranged

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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


CropSize = ranged(int | Sequence[int], lambda v: all(int(c) >= 1 for c in ([v] if isinstance(v, int) else v)),
                  "a size >= 1, e.g. [513, 513]")
ScaleRange = ranged(Sequence[float], lambda v: len(v) == 2 and 0 < v[0] <= v[1], "[low, high] with 0 < low <= high")


def train_transform(*, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                    crop_size: CropSize = 513, scale_range: ScaleRange = (0.5, 2.0), hflip: Ratio = 0.5,
                    color_jitter: NonNegative = 0.0, ignore_index: int = 255) -> PairedTransform:
    """Random scale, pad to the crop (mask with the ignore index), random crop, flip, optional jitter, normalise."""
    height, width = (crop_size, crop_size) if isinstance(crop_size, int) else (int(crop_size[0]), int(crop_size[-1]))
    low, high = scale_range
    if not 0 < low <= high:
        raise ValueError(f"scale_range must be (low, high) with 0 < low <= high, got {tuple(scale_range)}")
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


def eval_transform(*, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> PairedTransform:
    """Normalise only: validation runs on the full-resolution image, never a crop."""
    return PairedTransform(A.Compose([A.Normalize(mean=mean, std=std, max_pixel_value=255.0), ToTensorV2()]))
