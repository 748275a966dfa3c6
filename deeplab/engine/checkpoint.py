"""Self-describing checkpoints, written atomically and loaded without unpickling code."""

from pathlib import Path

import torch
from torch import nn

from deeplab.torch_files import CheckpointError, atomic_write, read_torch_file, tensor_bytes

FORMAT_VERSION = 1


def save_checkpoint(path: str | Path, state: dict, *, replace: bool = True) -> None:
    """Write `state` to `path` atomically: the last good checkpoint is never lost to a crash mid-write. A full disk
    says how to go on: continue the run from its last.pt (the same command again would be refused, as a new run in a
    folder that holds one), or start it again when none was written yet. replace=False: a file another process put
    at `path` meanwhile is kept, and this write refused (atomic_write)."""
    last = Path(path).parent / "last.pt"
    then = f"continue the run with resume={last}" if last.is_file() else "start the run again"
    atomic_write(path, lambda tmp: torch.save({"format_version": FORMAT_VERSION, **state}, tmp),
                 size_hint=tensor_bytes(state), then=then, replace=replace)


def load_checkpoint(path: str | Path, *, map_location: str | torch.device = "cpu", mmap: bool = False) -> dict:
    """Load a training checkpoint (`read_torch_file`: weights_only, one sentence for an unusable file) and check that
    it is one: a dict with the model's weights and the run's config. `mmap`: its tensors mapped, not read."""
    path = Path(path).expanduser()
    state = read_torch_file(path, map_location=map_location, mmap=mmap)
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise CheckpointError(f"{path}: {_not_a_training_checkpoint(state)}")
    if state.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
        raise CheckpointError(f"{path}: written by a newer deeplab (checkpoint format {state['format_version']}, "
                              f"this one reads {FORMAT_VERSION}); update deeplab to use it")
    return state


def _not_a_training_checkpoint(state: object) -> str:
    """What a loadable file that is not a deeplab training checkpoint holds, and what it could be used for."""
    fix = "pass a last.pt or best.pt written by train.py (it holds 'model' and 'config')"
    if not isinstance(state, dict):
        return f"holds a {type(state).__name__}, not a deeplab training checkpoint; {fix}"
    keys = [str(k) for k in state]
    if state and all(isinstance(v, torch.Tensor) for v in state.values()):
        plain = (f"a plain state dict of {len(keys)} tensor(s) (weights only, e.g. {keys[0]!r}), not a deeplab "
                 "training checkpoint")
        if all(k.startswith(("features.", "classifier.")) for k in keys):
            return (f"{plain}: these look like torchvision MobileNetV2 weights, which can start a training run as "
                    f"model.backbone_weights=FILE; {fix}")
        if all(k.startswith(("conv1.", "bn1.", "layer", "fc.")) for k in keys):
            return (f"{plain}: these look like torchvision ResNet weights, which can start a training run as "
                    f"model.backbone_weights=FILE with model/backbone=resnet50 or resnet101 (their depth); {fix}")
        if all(k.startswith(("backbone.", "aspp.", "decoder.")) for k in keys):
            return (f"{plain}: these are a deeplab model's weights saved without the run's config, which is needed "
                    f"to rebuild the model; {fix}")
        return f"{plain}; {fix}"
    shown = ", ".join(repr(k) for k in keys[:5]) + (", ..." if len(keys) > 5 else "")
    return f"not a deeplab training checkpoint (it holds {shown or 'an empty dict'}, saved by another program?); {fix}"


def load_model_weights(model: nn.Module, weights: dict, *, source: str, reinit_classifier: bool = False) -> list[str]:
    """Load a model state dict with one clear error on mismatch; optionally re-initialise a mismatched classifier.

    Returns the keys that were left at their fresh initialisation (the classifier, when its class count differs).
    """
    own = model.state_dict()
    skipped = [k for k, tensor in own.items() if reinit_classifier and k.startswith("decoder.classifier.")
               and k in weights and weights[k].shape != tensor.shape]
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    wrong = [k for k in own if k in weights and k not in skipped and weights[k].shape != own[k].shape]
    classifier = "decoder.classifier.weight"
    if classifier in wrong:
        raise CheckpointError(f"{source}: checkpoint is for {weights[classifier].shape[0]} classes but the model has "
                              f"{own[classifier].shape[0]} (set the dataset/num_classes to match, or use "
                              f"init_from=... to fine-tune with a new classifier)")
    if missing or unexpected or wrong:
        raise CheckpointError(f"{source}: checkpoint does not fit this model ({len(missing)} missing, "
                              f"{len(unexpected)} unexpected, {len(wrong)} of another shape, e.g. "
                              f"{(wrong or missing or unexpected)[0]!r}); it was saved with other model settings "
                              f"(backbone, separable, aspp_channels...): rebuild the model from the checkpoint's own "
                              f"config")
    model.load_state_dict({k: v for k, v in weights.items() if k not in skipped}, strict=not skipped)
    return skipped


def preferred_weights(state: dict) -> tuple[dict, str | None]:
    """The weights to use a training checkpoint with (inference, export, init_from): its moving average of the
    weights when the run kept one (trainer.ema_decay: what its validation scored), else its weights; with a phrase
    saying which when it is the average (for the log), else None."""
    if "ema" not in state:
        return state["model"], None
    ema = state["ema"]
    return ema["model"], f"its EMA weights (trainer.ema_decay={ema['decay']:g}, {ema['updates']} updates)"


def rng_state() -> dict:
    """The torch RNG states that dropout draws from: the CPU's, and the current CUDA device's when there is one (this
    process's GPU only: a run resumed on a machine with fewer GPUs can restore it)."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda_device"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    """Restore `rng_state()`'s states; a checkpoint of an older version saved every GPU's (`cuda`): the current
    device's is taken from that list when it is there."""
    torch.set_rng_state(state["torch"])
    if not torch.cuda.is_available():
        return
    if "cuda_device" in state:
        torch.cuda.set_rng_state(state["cuda_device"])
    elif state.get("cuda"):
        states = state["cuda"]
        torch.cuda.set_rng_state(states[min(torch.cuda.current_device(), len(states) - 1)])

