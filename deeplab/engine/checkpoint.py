"""Self-describing checkpoints, written atomically and loaded without unpickling code."""

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from deeplab.errors import UserError

FORMAT_VERSION = 1


class CheckpointError(UserError):
    """A checkpoint that cannot be used: the message is one sentence naming the file and the problem."""


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Have `write` fill a temp file in the same folder, fsync it, then os.replace it onto `path`.

    A crash or a kill mid-write leaves the previous file intact. The file gets the permissions a new file would
    (0666 less the umask), not mkstemp's owner-only 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Write `state` to `path` atomically: the last good checkpoint is never lost to a crash mid-write."""
    atomic_write(path, lambda tmp: torch.save({"format_version": FORMAT_VERSION, **state}, tmp))


def load_checkpoint(path: str | Path, *, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint with weights_only=True (a stranger's pickled code never runs) and check its shape."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated zip, not a torch file, or a pickle that weights_only refuses
        raise CheckpointError(f"{path}: not a readable deeplab checkpoint (truncated, corrupt, or not a "
                              f"PyTorch file): {str(exc).splitlines()[0][:200]}") from exc
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise CheckpointError(f"{path}: not a deeplab checkpoint (a training checkpoint holds 'model' and "
                              f"'config'; this holds {sorted(state)[:5] if isinstance(state, dict) else type(state)})")
    return state


def load_model_weights(model: nn.Module, weights: dict, *, source: str, reinit_classifier: bool = False) -> list[str]:
    """Load a model state dict with one clear error on mismatch; optionally re-initialise a mismatched classifier.

    Returns the keys that were left at their fresh initialisation (the classifier, when its class count differs).
    """
    own = model.state_dict()
    skipped = []
    for key, tensor in own.items():
        if key in weights and weights[key].shape != tensor.shape and reinit_classifier \
                and key.startswith("decoder.classifier."):
            skipped.append(key)
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    wrong = [k for k in own if k in weights and k not in skipped and weights[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        raise CheckpointError(_mismatch_message(source, model, weights, missing, unexpected, wrong))
    model.load_state_dict({k: v for k, v in weights.items() if k not in skipped}, strict=not skipped)
    return skipped


def _mismatch_message(source: str, model: nn.Module, weights: dict, missing: list, unexpected: list,
                      wrong: list) -> str:
    classifier = "decoder.classifier.weight"
    if wrong and classifier in wrong:
        return (f"{source}: checkpoint is for {weights[classifier].shape[0]} classes but the model has "
                f"{model.state_dict()[classifier].shape[0]} (set the dataset/num_classes to match, or use "
                f"init_from=... to fine-tune with a new classifier)")
    first = (wrong or missing or unexpected)[0]
    return (f"{source}: checkpoint does not fit this model ({len(missing)} missing, {len(unexpected)} unexpected, "
            f"{len(wrong)} of another shape, e.g. {first!r}); it was saved with other model settings (separable, "
            f"width_mult, expand_ratio...): rebuild the model from the checkpoint's own config")


def rng_state() -> dict:
    """The torch RNG states (CPU, and CUDA when present): dropout draws from them."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def find_latest(root: str | Path, name: str = "last.pt") -> Path | None:
    """The most recently written `name` under `root` (searched recursively), or None."""
    found = [p for p in Path(root).expanduser().glob(f"**/{name}") if p.is_file()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None
