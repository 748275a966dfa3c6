"""Training losses, chosen by name from `LOSSES`: cross-entropy (class weights, online hard example mining, dice)
and focal loss; both skip pixels labelled with the ignore index."""

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from deeplab.schema import NonNegative, NonNegativeInt, ranged, require


def median_frequency(pixels: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Median-frequency balancing (Eigen & Fergus 2015; SegNet): freq_c = pixels of c / pixels of the images that
    hold c, weight_c = median(freq) / freq_c. A class that never appears gets weight 0 (it has nothing to learn)."""
    freq = np.divide(pixels, present, out=np.zeros(len(pixels)), where=present > 0)
    seen = freq > 0
    return np.divide(np.median(freq[seen]) if seen.any() else 0.0, freq, out=np.zeros(len(pixels)), where=seen)


def enet_log(pixels: np.ndarray, present: np.ndarray, *, c: float = 1.02) -> np.ndarray:
    """ENet's weighting (Paszke et al. 2016): weight_c = 1 / ln(c + p_c), p_c the class's share of labelled pixels;
    bounded (at most 1 / ln 1.02, about 50) however rare the class."""
    share = pixels / max(int(pixels.sum()), 1)
    return np.where(pixels > 0, 1.0 / np.log(c + share), 0.0)


# loss.class_weights (and focal loss.alpha) by name: computed from the training split's masks
CLASS_WEIGHTINGS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "median_frequency": median_frequency, "enet": enet_log}


def _numbers(weights: Sequence[float] | str, key: str) -> Sequence[float]:
    """Per-class weights as numbers: a CLASS_WEIGHTINGS name is computed from the data by the trainer first."""
    if isinstance(weights, str):
        raise ValueError(f"{key}={weights!r} is computed from a training split (deeplab.data.statistics and "
                         f"CLASS_WEIGHTINGS, as the trainer does); pass the numbers here")
    return weights


# loss.ohem_fraction: null (every pixel) or the share of the hardest labelled pixels kept
OhemFraction = ranged(float, lambda v: 0 < v <= 1, "null or a number in (0, 1]")
Gamma = ranged(float, lambda v: v >= 0, "a number >= 0 (0 is plain cross-entropy)")


class CrossEntropyLoss(nn.Module):
    """Cross-entropy (ignoring `ignore_index`), optionally averaged over only the hardest pixels, plus dice."""

    def __init__(self, *, ignore_index: int = 255, class_weights: Sequence[float] | str | None = None,
                 ohem_fraction: OhemFraction | None = None, ohem_min_pixels: NonNegativeInt = 0,
                 dice_weight: NonNegative = 0.0) -> None:
        super().__init__()
        require(OhemFraction, "loss.ohem_fraction", ohem_fraction)
        self.ignore_index = ignore_index
        weights = torch.tensor(_numbers(class_weights, "class_weights"), dtype=torch.float32) if class_weights else None
        self.register_buffer("class_weights", weights, persistent=False)
        self.ohem_fraction = ohem_fraction
        self.ohem_min_pixels = ohem_min_pixels
        self.dice_weight = dice_weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()  # the loss in fp32 even under autocast: log-softmax over many pixels
        if self.class_weights is not None and len(self.class_weights) != logits.shape[1]:
            raise ValueError(f"{len(self.class_weights)} class_weights for {logits.shape[1]} classes")
        loss = self._mean(logits, target) if self.ohem_fraction is None else self._ohem(logits, target)
        if self.dice_weight:
            loss = loss + self.dice_weight * self._dice(logits, target)
        return loss

    def _mean(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Cross-entropy averaged over the valid pixels (weighted by their class weights), as F.cross_entropy's mean;
        a batch whose pixels are all ignored gives 0 with zero gradients, not F.cross_entropy's NaN (0 / 0), which
        would stop a run as diverged (small per-GPU batches, crops padded with the ignore index)."""
        pixel = F.cross_entropy(logits, target, weight=self.class_weights, ignore_index=self.ignore_index,
                                reduction="none")  # 0 at ignored pixels
        valid = target != self.ignore_index
        if self.class_weights is None:
            denominator = valid.sum().to(pixel.dtype)
        else:
            denominator = (self.class_weights[target.masked_fill(~valid, 0)] * valid).sum()
        return pixel.sum() / denominator.clamp(min=torch.finfo(pixel.dtype).tiny)

    def _ohem(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean loss of the top `ohem_fraction` of valid pixels (at least `ohem_min_pixels`): hard examples."""
        pixel = F.cross_entropy(logits, target, weight=self.class_weights, ignore_index=self.ignore_index,
                                reduction="none").flatten()
        valid = pixel[(target != self.ignore_index).flatten()]
        if valid.numel() == 0:
            return pixel.sum() * 0.0  # keeps the graph: every parameter still gets a (zero) gradient
        keep = min(valid.numel(), max(int(valid.numel() * self.ohem_fraction), self.ohem_min_pixels, 1))
        return valid.topk(keep, sorted=False).values.mean()

    def _dice(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Soft multi-class dice loss over valid pixels (1 - mean dice over classes present in the batch)."""
        valid = (target != self.ignore_index).unsqueeze(1)
        probs = logits.softmax(1) * valid
        onehot = F.one_hot(target.clamp(max=logits.shape[1] - 1), logits.shape[1]).permute(0, 3, 1, 2) * valid
        inter = (probs * onehot).sum((0, 2, 3))
        denom = probs.sum((0, 2, 3)) + onehot.sum((0, 2, 3))
        present = onehot.sum((0, 2, 3)) > 0
        dice = (2 * inter + 1.0) / (denom + 1.0)
        return 1 - dice[present].mean() if present.any() else logits.sum() * 0.0


class FocalLoss(nn.Module):
    """Focal loss (Lin et al. 2017): -alpha_t (1 - p_t)^gamma log p_t per pixel, averaged over the valid pixels.

    It down-weights pixels the model already gets right; at gamma 0 without alpha it is cross-entropy.
    """

    def __init__(self, *, ignore_index: int = 255, gamma: Gamma = 2.0,
                 alpha: Sequence[float] | str | None = None) -> None:
        super().__init__()
        require(Gamma, "loss.gamma", gamma)
        self.ignore_index = ignore_index
        self.gamma = gamma
        alpha = torch.tensor(_numbers(alpha, "alpha"), dtype=torch.float32) if alpha else None
        self.register_buffer("alpha", alpha, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()  # the loss in fp32 even under autocast, as cross-entropy
        if self.alpha is not None and len(self.alpha) != logits.shape[1]:
            raise ValueError(f"{len(self.alpha)} alpha values for {logits.shape[1]} classes")
        valid = target != self.ignore_index
        nll = F.cross_entropy(logits, target, ignore_index=self.ignore_index, reduction="none")  # -log p_t; 0: ignored
        # 1 - p_t from expm1 keeps its precision for confident pixels; the clamp keeps the gradient of
        # (1 - p_t)^gamma finite (not NaN) for gamma < 1 where p_t rounds to exactly 1
        miss = (-torch.expm1(-nll)).clamp(min=torch.finfo(nll.dtype).tiny)
        pixel = miss.pow(self.gamma) * nll
        if self.alpha is not None:
            pixel = pixel * self.alpha[target.masked_fill(~valid, 0)]
        return pixel.sum() / valid.sum().clamp(min=1)  # all ignored: 0, still part of the graph


LOSSES: dict[str, type[nn.Module]] = {"cross_entropy": CrossEntropyLoss, "focal": FocalLoss}


def build_loss(*, name: str = "cross_entropy", ignore_index: int, **options) -> nn.Module:
    """The loss `name` from LOSSES with its own `options`; a misspelt option fails with a TypeError naming it.

    `name` defaults to cross_entropy, so a config saved before losses had names still means what it meant.
    """
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; known: {sorted(LOSSES)}")
    return LOSSES[name](ignore_index=ignore_index, **options)
