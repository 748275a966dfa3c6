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

import copy

import torch
from torch import nn

from deeplab.engine.checkpoint import load_model_weights


def ema_decay_at(decay: float, updates: int) -> float:
    """The decay of update number `updates` (0 for the first): min(decay, (1 + n) / (10 + n))."""
    return min(decay, (1 + updates) / (10 + updates))


class ModelEma:
    """A frozen copy of a model (`module`, kept in eval mode) holding the moving average of its weights.

    Built from the plain model (not a DDP or torch.compile wrapper) once its starting weights are loaded and it is
    on its device and in its memory format; the copy starts equal to it.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.updates = 0
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the model's current weights into the average: ema = d_n * ema + (1 - d_n) * weights."""
        weight = 1.0 - ema_decay_at(self.decay, self.updates)
        averaged, current = [], []
        for mine, theirs in zip(self.module.state_dict().values(), model.state_dict().values(), strict=True):
            if mine.is_floating_point():
                averaged.append(mine)
                current.append(theirs.detach())
            else:
                mine.copy_(theirs)
        if averaged:
            torch._foreach_lerp_(averaged, current, weight)  # as torch's own get_ema_multi_avg_fn does
        self.updates += 1

    def state_dict(self) -> dict:
        """What a checkpoint keeps (`ema`): the averaged weights, the number of updates and the decay."""
        return {"model": self.module.state_dict(), "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict, *, source: str) -> None:
        """Continue from a checkpoint's `ema` entry exactly (weights and update count)."""
        load_model_weights(self.module, state["model"], source=f"{source} (its EMA weights)")
        self.updates = int(state["updates"])
