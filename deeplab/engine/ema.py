"""An exponential moving average (EMA) of a model's weights, updated after every optimizer step (`trainer.ema_decay`).

The average covers the whole state dict, as timm's `ModelEmaV3` does: parameters and floating-point buffers (the
BatchNorm running statistics) are averaged, integer buffers (`num_batches_tracked`) copied. Update n (0 for the
first) uses the decay

    d_n = min(decay, (1 + n) / (10 + n))

of TensorFlow's `tf.train.ExponentialMovingAverage(decay, num_updates=n)`, so that the average follows the weights
closely at first and a short run is not dominated by its random initialisation: `decay` itself takes over only from
update (10 decay - 1) / (1 - decay) on (890 for 0.99, 8990 for 0.999, 89990 for 0.9999); before that the average
weights update k of n roughly in proportion to (k / n)^8, which puts about 86% of its weight on the last fifth of the
training, whatever `decay` is.
"""

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from deeplab.engine.checkpoint import load_model_weights


def ema_decay_at(decay: float, updates: int) -> float:
    """The decay of update number `updates` (0 for the first): min(decay, (1 + n) / (10 + n))."""
    return min(decay, (1 + updates) / (10 + updates))


class ModelEma:
    """A frozen copy of a model (`module`, kept in eval mode) holding the moving average of its weights: torch's
    `AveragedModel` over parameters and buffers (`use_buffers=True`), with the warmed-up decay above as its
    `multi_avg_fn` (torch's `get_ema_multi_avg_fn` has a fixed decay, and averages integer buffers, which are copied
    here).

    Built from the plain model (not a DDP or torch.compile wrapper) once its starting weights are loaded and it is
    on its device and in its memory format; the copy starts equal to it (AveragedModel's first update copies).
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.updates = 0  # kept here, not read from AveragedModel's n_averaged: no GPU sync to choose the decay
        self.averaged = AveragedModel(model, multi_avg_fn=self._average, use_buffers=True)
        self.averaged.update_parameters(model)  # the starting copy: n_averaged 0 -> 1
        self.module = self.averaged.module.eval().requires_grad_(False)

    @torch.no_grad()
    def _average(self, averaged: list[torch.Tensor], current: list[torch.Tensor], _) -> None:
        """One group of tensors (one device and dtype): ema = d_n * ema + (1 - d_n) * weights, or a copy for
        integer buffers (`num_batches_tracked`)."""
        if averaged[0].is_floating_point():
            torch._foreach_lerp_(averaged, current, 1.0 - ema_decay_at(self.decay, self.updates))
        else:
            torch._foreach_copy_(averaged, current)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the model's current weights into the average."""
        self.averaged.update_parameters(model)
        self.updates += 1

    def state_dict(self) -> dict:
        """What a checkpoint keeps (`ema`): the averaged weights, the number of updates and the decay (the format
        of checkpoints written before AveragedModel was used, which load unchanged)."""
        return {"model": self.module.state_dict(), "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict, *, source: str) -> None:
        """Continue from a checkpoint's `ema` entry exactly (weights and update count)."""
        load_model_weights(self.module, state["model"], source=f"{source} (its EMA weights)")
        self.updates = int(state["updates"])
        self.averaged.n_averaged.fill_(self.updates + 1)
