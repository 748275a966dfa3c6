"""Colouring label maps with the dataset palette, and the input | truth | prediction grid for TensorBoard (the
confusion matrix and per-class IoU pictures are `deeplab.figures`)."""

from collections.abc import Sequence

import numpy as np
import torch


def default_palette(num_colours: int = 256) -> list[list[int]]:
    """The VOC bit-pattern colour map, for datasets that give no palette of their own."""
    index, palette = np.arange(num_colours), np.zeros((num_colours, 3), np.int64)
    for k in range(8):  # bits 3k, 3k + 1 and 3k + 2 of the index set bit 7 - k of red, green and blue
        for channel in range(3):
            palette[:, channel] |= ((index >> (3 * k + channel)) & 1) << (7 - k)
    return palette.tolist()


def palette_array(palette: Sequence[Sequence[int]] | None, *, ignore_index: int = 255,
                  ignore_colour: Sequence[int] = (224, 224, 192)) -> np.ndarray:
    """A (256, 3) uint8 lookup table (longer for a longer palette): the classes' colours, then the default map, the
    ignore index in cream."""
    table = np.array(default_palette(max(256, len(palette or ()))), np.uint8)
    if palette:
        table[: len(palette)] = np.array(palette, np.uint8)
    if 0 <= ignore_index < 256:
        table[ignore_index] = ignore_colour
    return table


def colourize(labels: np.ndarray, table: np.ndarray) -> np.ndarray:
    """(H, W) class indices -> (H, W, 3) uint8 colours; indices past the table's end (a model of more than 256
    classes) get the default map's colours, never those of index % 256."""
    end = int(labels.max(initial=0)) + 1
    if end > len(table):
        table = np.concatenate([table, np.array(default_palette(end), np.uint8)[len(table):]])
    return table[labels.astype(np.intp, copy=False)]  # as indices, whatever their dtype (a bool mask too)


def denormalize(image: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """A normalised (3, H, W) tensor back to an (H, W, 3) uint8 image."""
    mean_t = torch.tensor(mean, device=image.device).view(3, 1, 1)
    std_t = torch.tensor(std, device=image.device).view(3, 1, 1)
    pixels = ((image.float() * std_t + mean_t) * 255).clamp(0, 255).round().byte()
    return pixels.permute(1, 2, 0).cpu().numpy()


def comparison_grid(rows: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], table: np.ndarray) -> np.ndarray:
    """Stack (image, truth, prediction) rows into one (H, W, 3) image: input | ground truth | prediction."""
    width = max(image.shape[1] for image, _, _ in rows)
    lines = []
    for image, truth, pred in rows:
        line = np.concatenate([image, colourize(truth, table), colourize(pred, table)], axis=1)
        pad = 3 * width - line.shape[1]
        lines.append(np.pad(line, ((0, 2), (0, pad), (0, 0))))
    return np.concatenate(lines, axis=0)

