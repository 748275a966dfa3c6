"""The evaluation's pictures, drawn with matplotlib: the confusion matrix (row-normalised percentages, class names
on both axes), the per-class IoU bar chart and the worst images' grid (image | truth | prediction | errors), each
as an RGB uint8 image for a PNG file or TensorBoard.

Both read at 21 classes (VOC) and at 150 (ADE20K): the figure grows with the class count, the font shrinks to a
floor, the numbers in the cells are left out past `NUMBERS_UP_TO` classes, and class names are thinned to every
k-th only when even the smallest font would overlap. A class absent from the ground truth is a hatched grey row
named "(absent)" in the matrix, not a row of 0 %; one absent from truth and prediction (IoU None) is a hatched slot
named "(absent)" in the bar chart, not a 0-length bar.

matplotlib is optional (`pip install -e '.[plot]'`): it is imported when a figure is drawn (Agg, no display), and
its absence raises `MissingDependency`, one sentence the callers turn into skipped figures, not a failed run.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass
from types import SimpleNamespace

import cv2
import numpy as np

from deeplab.errors import UserError
from deeplab.visualization import colourize

INSTALL = "pip install matplotlib (or pip install -e '.[plot]')"
DPI = 100
NUMBERS_UP_TO = 30  # percentages written in the cells up to this many classes; past it the colour alone
MIN_FONT = 6.0  # points: the smallest class-name font; below it names are thinned instead
ABSENT_GREY = "#d9d9d9"
HATCH_GREY = "#8c8c8c"


class MissingDependency(UserError):
    """An optional package a feature needs is not installed: the message says what to pip install."""


def _matplotlib() -> SimpleNamespace:
    """matplotlib's pieces for drawing off-screen (the Agg canvas, no pyplot state), or MissingDependency."""
    try:
        import matplotlib
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.colors import PowerNorm
        from matplotlib.figure import Figure
        from matplotlib.font_manager import FontProperties
        from matplotlib.patches import Rectangle
        from matplotlib.transforms import offset_copy
    except ImportError as exc:
        raise MissingDependency(f"matplotlib is not installed; {INSTALL} to draw the figures") from exc
    return SimpleNamespace(colormaps=matplotlib.colormaps, Canvas=FigureCanvasAgg, PowerNorm=PowerNorm, Figure=Figure,
                           FontProperties=FontProperties, Rectangle=Rectangle, offset_copy=offset_copy)


# ---- the data behind the pictures (pure numpy) ----

def _counts(matrix) -> np.ndarray:
    counts = np.asarray(matrix, dtype=np.float64)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1] or counts.shape[0] == 0:
        raise ValueError(f"a confusion matrix is (C, C) counts, got shape {counts.shape}")
    return counts


def absent_classes(matrix) -> list[int]:
    """The classes with no pixel in the ground truth (an all-zero row: rows are truth, columns prediction)."""
    return [int(i) for i in np.flatnonzero(_counts(matrix).sum(1) == 0)]


def row_percentages(matrix) -> np.ndarray:
    """Each row as % of that true class's pixels (rows sum to 100); a class absent from the truth is a NaN row."""
    counts = _counts(matrix)
    totals = counts.sum(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, 100 * counts / totals, np.nan)


@dataclass(frozen=True)
class FigureLayout:
    """How a figure of `classes` rows is set: the pitch of one class (inches), the class-name font (points),
    every `label_step`-th name written, and whether the cells carry their numbers."""
    classes: int
    pitch: float
    font: float
    label_step: int
    numbers: bool


def _layout(classes: int, *, spread: float, widest: float, narrowest: float, longest: float) -> FigureLayout:
    # `spread` inches shared by the classes, each class between `narrowest` and `widest`, the whole at most `longest`
    pitch = min(widest, max(spread / classes, narrowest))
    pitch = min(pitch, longest / classes)
    font = min(10.0, max(MIN_FONT, 0.75 * pitch * 72))
    step = max(1, math.ceil(1.2 * font / 72 / pitch))  # a name needs ~1.2 font heights of room
    return FigureLayout(classes, pitch, font, step, classes <= NUMBERS_UP_TO)


def confusion_layout(classes: int) -> FigureLayout:
    """The matrix is ~7.5 in for few classes and grows past ~70 so that every name fits at 6 pt (150: 16.5 in),
    up to 24 in; only past ~220 classes are the names thinned to every k-th."""
    return _layout(classes, spread=7.5, widest=0.45, narrowest=0.11, longest=24.0)


def bar_layout(classes: int) -> FigureLayout:
    """A bar is 0.3 in tall for few classes, down to 0.11 in (150 classes: 16.5 in), the chart at most 30 in."""
    return _layout(classes, spread=6.0, widest=0.3, narrowest=0.11, longest=30.0)


def _names(class_names: Sequence[str], classes: int) -> list[str]:
    names = [str(n) for n in class_names]
    if len(names) != classes:
        raise ValueError(f"{len(names)} class names for {classes} classes")
    return names


# ---- drawing ----

GAP = 3 / 72  # inches between a label and what it names


_CHAR_WIDTHS: dict[tuple[str, float], float] = {}  # (character, points) -> inches at DPI


def _widths(mpl: SimpleNamespace, fig, texts: Sequence[str], size: float) -> np.ndarray:
    """Each text's width in inches at `size` points: its characters' widths as the canvas draws them, measured
    once per character (150 names are ~40 distinct characters), plus 5 % for what the sum leaves out."""
    renderer, font = fig.canvas.get_renderer(), mpl.FontProperties(size=size)
    for char in set("".join(texts)):
        if (char, size) not in _CHAR_WIDTHS:
            width = renderer.get_text_width_height_descent(char, font, ismath=False)[0] if char.strip() else \
                renderer.get_text_width_height_descent("a a", font, ismath=False)[0] - \
                renderer.get_text_width_height_descent("aa", font, ismath=False)[0]
            _CHAR_WIDTHS[char, size] = width / DPI
    return np.array([1.05 * sum(_CHAR_WIDTHS[c, size] for c in text) for text in texts] or [0.0])


def _to_array(fig) -> np.ndarray:
    """Draw the figure once and crop it to what was drawn (plus a margin), as (H, W, 3) uint8."""
    fig.canvas.draw()
    pixels = np.asarray(fig.canvas.buffer_rgba())[..., :3]
    inked = (pixels < 250).any(2)
    rows, cols = np.flatnonzero(inked.any(1)), np.flatnonzero(inked.any(0))
    pad = 12
    top, bottom = max(rows[0] - pad, 0), min(rows[-1] + pad + 1, pixels.shape[0])
    left, right = max(cols[0] - pad, 0), min(cols[-1] + pad + 1, pixels.shape[1])
    return np.ascontiguousarray(pixels[top:bottom, left:right])


def _class_labels(mpl: SimpleNamespace, ax, labels: dict[int, str], *, axis: str, font: float, rotation: int = 0,
                  greyed: set[int] = frozenset()) -> None:
    """Class names beside the rows (axis "y") or under the columns (axis "x") of `ax`, as plain texts: 150 texts
    cost a fraction of what 150 matplotlib ticks do."""
    fig = ax.figure
    if axis == "y":
        place = mpl.offset_copy(ax.get_yaxis_transform(), fig=fig, x=-GAP * 72, units="points")
        style = dict(ha="right", va="center")
    else:
        place = mpl.offset_copy(ax.get_xaxis_transform(), fig=fig, y=-GAP * 72, units="points")
        style = dict(ha="right", va="top", rotation=45, rotation_mode="anchor") if rotation == 45 else \
            dict(ha="center", va="top", rotation=90)
    for index, label in labels.items():
        at = (0, index) if axis == "y" else (index, 0)
        ax.text(*at, label, transform=place, fontsize=font, color="#707070" if index in greyed else "black",
                clip_on=False, **style)


def confusion_figure(matrix: np.ndarray, class_names: Sequence[str]) -> np.ndarray:
    """The confusion matrix (C x C counts, rows truth, columns prediction) as an RGB uint8 image.

    Cells are % of the true class's pixels on a square-root colour scale (so confusions of a few % still show),
    with their numbers up to `NUMBERS_UP_TO` classes; an absent class's row is hatched grey and named "(absent)".
    """
    mpl = _matplotlib()
    percent = row_percentages(matrix)
    classes = len(percent)
    names = _names(class_names, classes)
    absent = set(absent_classes(matrix))
    layout = confusion_layout(classes)
    small = layout.numbers
    shown = range(0, classes, layout.label_step)
    row_labels = {i: names[i] + (" (absent)" if i in absent else "") for i in shown}
    col_labels = {i: names[i] for i in shown}
    side, em = layout.pitch * classes, layout.font / 72

    fig = mpl.Figure(dpi=DPI, facecolor="white")  # measured first, then sized: the names all outside the matrix
    mpl.Canvas(fig)  # its own Agg canvas: no pyplot, no display
    row_w = _widths(mpl, fig, list(row_labels.values()), layout.font).max()
    col_w = _widths(mpl, fig, list(col_labels.values()), layout.font).max()
    col_h = (col_w + em) * 0.71 if small else col_w  # 45 degrees, or upright
    left = max(row_w + GAP + 0.4, col_h if small else 0) + 0.1
    bottom, top, right = col_h + GAP + 0.45, 0.7, 1.4
    note = f"{classes} classes" + (f", {len(absent)} absent from the ground truth (hatched)" if absent else "")
    bar_label, bar_height = "% of the true class's pixels", min(side, 4.0)
    # room for a title wider than a small matrix and a colour bar label longer than its bar (cropped off after)
    spare_x = 0.3 + max(0.0, (_widths(mpl, fig, [note], 11)[0] - side) / 2)
    overhang = max(0.0, (_widths(mpl, fig, [bar_label], 9)[0] - bar_height) / 2)  # the label past its bar's ends
    spare_y = 0.3 + overhang
    left, right, bottom, top = left + spare_x, right + spare_x, bottom + spare_y, top + spare_y
    width, height = left + side + right, bottom + side + top
    fig.set_size_inches(width, height)
    ax = fig.add_axes((left / width, bottom / height, side / width, side / height))

    cmap = mpl.colormaps["Blues"].with_extremes(bad=ABSENT_GREY)
    norm = mpl.PowerNorm(gamma=0.5, vmin=0, vmax=100)
    image = ax.imshow(np.ma.masked_invalid(percent), cmap=cmap, norm=norm, interpolation="nearest", aspect="equal")
    for row in sorted(absent):
        ax.add_patch(mpl.Rectangle((-0.5, row - 0.5), classes, 1, facecolor="none", edgecolor=HATCH_GREY,
                                   hatch="///", linewidth=0))
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    _class_labels(mpl, ax, row_labels, axis="y", font=layout.font, greyed=absent)
    _class_labels(mpl, ax, col_labels, axis="x", font=layout.font, rotation=45 if small else 90)
    inches = fig.dpi_scale_trans
    fig.text(left + side / 2, bottom - col_h - GAP - 0.1, "predicted", transform=inches, ha="center", va="top",
             fontsize=11)
    fig.text(left - row_w - GAP - 0.12, bottom + side / 2, "true", transform=inches, ha="right", va="center",
             rotation=90, fontsize=11)
    fig.text(left + side / 2, bottom + side + overhang + 0.1, f"confusion matrix, row-normalised\n{note}",
             transform=inches, ha="center", va="bottom", fontsize=11)

    if small:  # a white grid between the cells, and the numbers
        edges = np.arange(classes + 1) - 0.5
        ax.vlines(edges, -0.5, classes - 0.5, color="white", linewidth=1)
        ax.hlines(edges, -0.5, classes - 0.5, color="white", linewidth=1)
        size = min(8.0, layout.pitch * 72 / 3.2)
        for i, j in zip(*np.nonzero(np.nan_to_num(percent, nan=0.0) >= 0.5)):
            value = percent[i, j]
            ax.text(j, i, f"{value:.0f}", ha="center", va="center", fontsize=size,
                    color="white" if norm(value) > 0.6 else "#08306b")
        for i in range(classes):  # a diagonal under 0.5 % is still a number: the class is (almost) never found
            if i not in absent and percent[i, i] < 0.5:
                ax.text(i, i, "0", ha="center", va="center", fontsize=size, color="#b2182b", fontweight="bold")

    cax = fig.add_axes(((left + side + 0.25) / width, (bottom + side - bar_height) / height, 0.18 / width,
                        bar_height / height))
    bar = fig.colorbar(image, cax=cax, ticks=[0, 1, 5, 10, 25, 50, 75, 100])
    bar.set_label(bar_label, fontsize=9)
    bar.ax.tick_params(labelsize=8)
    return _to_array(fig)


def iou_chart(per_class_iou: Sequence[float | None], class_names: Sequence[str], miou: float) -> np.ndarray:
    """Per-class IoU as horizontal bars in class order (the matrix's row order, and each class in the same place
    at every validation), coloured red to green by IoU so the weak ones stand out, the value at each bar's end and
    a dashed line at the mIoU; a class absent from truth and prediction (None) has a hatched slot, no bar."""
    mpl = _matplotlib()
    classes = len(per_class_iou)
    if classes == 0:
        raise ValueError("no classes to chart")
    names = _names(class_names, classes)
    values = np.array([np.nan if v is None else float(v) for v in per_class_iou])
    present = ~np.isnan(values)
    layout = bar_layout(classes)
    shown = range(0, classes, layout.label_step)
    labels = {i: names[i] + ("" if present[i] else " (absent)") for i in shown}
    plot_h, plot_w = layout.pitch * classes, 6.0

    fig = mpl.Figure(dpi=DPI, facecolor="white")
    mpl.Canvas(fig)
    label_w = _widths(mpl, fig, list(labels.values()), layout.font).max()
    left, bottom, top, right = label_w + GAP + 0.2, 0.65, 0.8, 0.2
    width, height = left + plot_w + right, bottom + plot_h + top
    fig.set_size_inches(width, height)
    ax = fig.add_axes((left / width, bottom / height, plot_w / width, plot_h / height))

    rows = np.arange(classes)
    cmap = mpl.colormaps["RdYlGn"]
    ax.barh(rows[present], values[present], height=0.78, color=cmap(0.1 + 0.8 * values[present]),
            edgecolor="#404040", linewidth=0.3)
    value_font = max(MIN_FONT - 0.5, min(9.0, layout.pitch * 72 * 0.7))
    digits = 3 if classes <= NUMBERS_UP_TO else 2
    for row in rows:
        if present[row]:  # a label the mIoU line runs through gets a white ground
            crossed = values[row] < miou < values[row] + 0.01 + (digits + 2) * value_font * 0.6 / 72 / plot_w * 1.13
            ax.text(values[row] + 0.01, row, f"{values[row]:.{digits}f}", va="center", fontsize=value_font,
                    bbox=dict(facecolor="white", edgecolor="none", pad=1.0) if crossed else None)
        else:
            ax.add_patch(mpl.Rectangle((0, row - 0.39), 1.0, 0.78, facecolor="#f0f0f0", edgecolor="#b0b0b0",
                                       hatch="///", linewidth=0))
            ax.text(0.02, row, "absent from truth and prediction", va="center", fontsize=value_font,
                    color="#505050", style="italic")
    ax.set_yticks([])
    _class_labels(mpl, ax, labels, axis="y", font=layout.font, greyed={i for i in shown if not present[i]})
    ax.set_ylim(classes - 0.5, -0.5)  # class 0 at the top
    ax.set_xlim(0, 1.13)
    ax.set_xticks(np.linspace(0, 1, 6))
    ax.tick_params(axis="x", labelsize=8)
    ax.grid(axis="x", color="#e0e0e0", linewidth=0.6)
    ax.set_axisbelow(True)
    ax.set_xlabel("IoU", fontsize=10)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    inches = fig.dpi_scale_trans
    if math.isfinite(miou):
        ax.axvline(miou, color="#202020", linestyle="--", linewidth=1.2)
        ax.text(miou, -0.5, f"mIoU {miou:.3f}", ha="center", va="bottom", fontsize=9, fontweight="bold",
                transform=mpl.offset_copy(ax.transData, fig=fig, y=2, units="points"))
    counted = int(present.sum())
    fig.text(left + plot_w / 2, bottom + plot_h + 0.3, f"per-class IoU, in class order ({counted} of {classes} "
             f"classes in the mIoU)", transform=inches, ha="center", va="bottom", fontsize=11)
    return _to_array(fig)


# ---- the worst images ----

PANEL = (240, 320)  # (height, width) in pixels each panel is scaled to fit, its aspect kept
ERROR_RED = (230, 20, 20)
PANEL_TITLES = ("image", "truth", "prediction", "errors (red)")


def error_panel(image: np.ndarray, truth: np.ndarray, pred: np.ndarray, *, ignore_index: int = 255) -> np.ndarray:
    """The image faded to light grey with every labelled pixel predicted wrong in one colour (`ERROR_RED`); ignore
    pixels are never errors."""
    grey = image.astype(np.float32).mean(2, keepdims=True)
    faded = np.repeat(155 + 0.35 * grey, 3, axis=2).astype(np.uint8)
    wrong = (pred != truth) & (truth != ignore_index)
    faded[wrong] = ERROR_RED
    return faded


def _panels(image: np.ndarray, truth: np.ndarray, pred: np.ndarray, table: np.ndarray, ignore_index: int) -> np.ndarray:
    """One row of the grid: image | truth | prediction | errors, each scaled to fit `PANEL`, 4 white pixels apart."""
    truth, pred = np.asarray(truth), np.asarray(pred)
    panels = [image, colourize(truth, table), colourize(pred, table), error_panel(image, truth, pred,
                                                                                   ignore_index=ignore_index)]
    height, width = truth.shape
    scale = min(PANEL[0] / height, PANEL[1] / width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    if size != (width, height):
        panels = [cv2.resize(p, size, interpolation=cv2.INTER_AREA if i == 0 and scale < 1 else cv2.INTER_NEAREST)
                  for i, p in enumerate(panels)]
    gap = np.full((panels[0].shape[0], 4, 3), 255, np.uint8)
    return np.concatenate([panels[0], gap, panels[1], gap, panels[2], gap, panels[3]], axis=1)


def worst_grid(pictures: Sequence[tuple[str, float, tuple]], table: np.ndarray, *,
               ignore_index: int = 255) -> np.ndarray:
    """The worst images as an RGB uint8 grid, one row each, worst first: image | truth | prediction | errors in one
    colour, each row titled with its id and mean IoU. `pictures` are (id, mean IoU, (image (H, W, 3) uint8, truth,
    prediction)), as `deeplab.metrics.ImageScores.pictures` gives them; `table` colours the labels."""
    if not pictures:
        raise ValueError("no images to draw")
    mpl = _matplotlib()
    rows = [(name, score, _panels(*picture, table, ignore_index)) for name, score, picture in pictures]
    width = max(row.shape[1] for _, _, row in rows) / DPI
    title, header, margin = 0.3, 0.3, 0.15
    height = header + sum(title + row.shape[0] / DPI for _, _, row in rows) + margin
    fig = mpl.Figure(dpi=DPI, facecolor="white", figsize=(width + 2 * margin, height))
    mpl.Canvas(fig)
    total_w = width + 2 * margin
    top = height - header
    panel_w = (rows[0][2].shape[1] - 12) / 4 / DPI
    for k, name in enumerate(PANEL_TITLES):
        fig.text((margin + (k + 0.5) * (panel_w + 4 / DPI)) / total_w, (top + 0.08) / height, name, ha="center",
                 va="bottom", fontsize=10, fontweight="bold")
    for name, score, row in rows:
        h, w = row.shape[0] / DPI, row.shape[1] / DPI
        fig.text(margin / total_w, (top - 0.06) / height, f"{name}   mean IoU {score:.3f}", ha="left", va="top",
                 fontsize=9)
        top -= title + h
        ax = fig.add_axes((margin / total_w, top / height, w / total_w, h / height))
        ax.imshow(row, interpolation="nearest")
        ax.set_axis_off()
    return _to_array(fig)


def reliability_diagram(bins: dict, ece: float) -> np.ndarray:
    """The reliability diagram of `Calibration.compute`'s bins as an RGB uint8 image: each confidence bin's accuracy
    as a bar against the diagonal a calibrated model follows, the gap to it shaded, and the share of pixels per bin
    below; titled with the expected calibration error."""
    mpl = _matplotlib()
    count = len(bins["pixels"])
    edges = np.linspace(0, 1, count + 1)
    accuracy = np.array([np.nan if v is None else v for v in bins["accuracy"]])
    confidence = np.array([np.nan if v is None else v for v in bins["confidence"]])
    pixels = np.asarray(bins["pixels"], np.float64)
    fig = mpl.Figure(dpi=DPI, facecolor="white", figsize=(5.5, 6.5))
    mpl.Canvas(fig)
    ax = fig.add_axes((0.14, 0.33, 0.8, 0.58))
    filled = ~np.isnan(accuracy)
    ax.bar(edges[:-1][filled], accuracy[filled], width=1 / count, align="edge", color="#4c72b0", edgecolor="#203040",
           linewidth=0.5, label="accuracy")
    ax.bar(edges[:-1][filled], (confidence - accuracy)[filled], bottom=accuracy[filled], width=1 / count,
           align="edge", color="#dd8452", alpha=0.45, edgecolor="#8c3d10", linewidth=0.5, hatch="//",
           label="gap to the mean confidence")
    ax.plot([0, 1], [0, 1], "--", color="#404040", linewidth=1, label="calibrated")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy", fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(f"reliability diagram, {count} bins\nexpected calibration error {ece:.4f}", fontsize=11)
    share = fig.add_axes((0.14, 0.08, 0.8, 0.17))
    share.bar(edges[:-1], pixels / max(pixels.sum(), 1), width=1 / count, align="edge", color="#808080")
    share.set_xlim(0, 1)
    share.set_xlabel("confidence (top-class probability)", fontsize=10)
    share.set_ylabel("share of pixels", fontsize=9)
    share.tick_params(labelsize=8)
    return _to_array(fig)
