"""The released checkpoints of the peer DeepLabV3+ repositories as deeplab checkpoints, exactly
(`python -m deeplab.convert source=FILE from=vainf|bubbliiiing dataset=voc|cityscapes output=FILE`, the command is
`deeplab.cli.convert`).

A converted checkpoint holds our model config (the architecture the peer's weights need), the dataset config
(classes, palette, and the peer's own input normalisation) and the weights, so evaluate, predict, export,
`Predictor.from_checkpoint` and init_from take it as they take one of train.py's. In fp32 and eval mode the model
gives the peer model's logits (to float rounding) for every input size the peer takes.

The formats (from the peers' code; the mapping tables in `deeplab.convert.layouts` are their key names):

- VainF/DeepLabV3Plus-Pytorch (`network/_deeplab.py`, `network/backbone/mobilenetv2.py`, `network/modeling.py`;
  torch.save({"model_state": ..., "optimizer_state", "scheduler_state", "cur_itrs", "best_score"}), best_score a
  numpy float): MobileNetV2 split into `backbone.low_level_features.0-3` (features[0:4]) and
  `backbone.high_level_features.4-17` (features[4:18], a slice keeps the indices), or a torchvision ResNet-50/101
  (`backbone.conv1`, `backbone.layer1-4`); head `classifier.project` (low-level 1x1 -> 48),
  `classifier.aspp.convs.0-4` (pooling as `convs.4.1/2`), `classifier.aspp.project`, ONE 3x3 decoder conv
  `classifier.classifier.0/1` and the classifier `classifier.classifier.3`. Its decoder concatenates [low-level,
  ASPP] where ours concatenates [ASPP, low-level]: the 3x3 conv's input channels are reordered. Its MobileNetV2 pads
  differently from torchvision's (no padding in the stem conv; each block zero-pads its input before the 1x1
  expansion): `model.backbone.padding=input`. ImageNet mean/std.
- bubbliiiing/deeplabv3-plus-pytorch (`nets/deeplabv3_plus.py`, `nets/mobilenetv2.py`; torch.save(state_dict)):
  its own MobileNetV2 `backbone.features.0-17` (the same network as torchvision's, its blocks' layers numbered in
  one Sequential), `aspp.branch1-4`, pooling `aspp.branch5_conv/branch5_bn`, `aspp.conv_cat`, `shortcut_conv`
  (low-level 1x1 -> 48), TWO 3x3 convs `cat_conv.0/1` and `cat_conv.4/5`, `cls_conv`. Every head conv but
  `cls_conv` has a bias before its BatchNorm: folded into the BN's running mean (exact). Its resizes use
  align_corners=True: `model.align_corners=true`. It feeds images scaled to 0-1 without mean/std: mean 0, std 1.

Eval-mode differences that change nothing: VainF's and bubbliiiing's dropout positions, bubbliiiing's pooling by
torch.mean; the output stride is not in the weights (the released models are OS16; `output_stride=8` evaluates at 8).
"""

import contextlib
import hashlib
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from deeplab.convert.layouts import CLASSIFIER_KEYS, EXAMPLE_KEYS, LAYOUTS, ConvertError, PeerLayout
from deeplab.data import check_dataset_config
from deeplab.engine.checkpoint import load_model_weights, save_checkpoint
from deeplab.engine.run_config import DATASET_KEYS
from deeplab.errors import exception_chain
from deeplab.model import OUTPUT_STRIDES, rebuild_model
from deeplab.torch_files import CheckpointError, is_torch_file, output_file_problem, read_torch_file

try:  # numpy >= 2
    from numpy._core.multiarray import scalar as _numpy_scalar
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import scalar as _numpy_scalar

SOURCES = ("vainf", "bubbliiiing")
REPOSITORIES = {"vainf": "VainF/DeepLabV3Plus-Pytorch", "bubbliiiing": "bubbliiiing/deeplabv3-plus-pytorch"}
# the input normalisation each peer trains and evaluates with (RGB, 0-1 scale): VainF ImageNet's mean/std;
# bubbliiiing `preprocess_input`, image / 255 only
NORMALISATION = {"vainf": ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
                 "bubbliiiing": ([0.0, 0.0, 0.0], [1.0, 1.0, 1.0])}
# what torch.load(weights_only=True) may rebuild besides tensors and plain containers: numpy scalars and their
# dtypes (VainF saves its best mIoU as a numpy float64), data only. numpy 1.x pickles the scalar as
# numpy.core.multiarray.scalar, numpy 2 as numpy._core.multiarray.scalar.
NUMPY_SCALARS = [(_numpy_scalar, "numpy.core.multiarray.scalar"), (_numpy_scalar, "numpy._core.multiarray.scalar"),
                 np.dtype, *[getattr(np.dtypes, name) for name in (
                     "Float64DType", "Float32DType", "Float16DType", "Int64DType", "Int32DType", "BoolDType")
                     if hasattr(getattr(np, "dtypes", None), name)]]


@dataclass(frozen=True)
class Converted:
    """What `convert_checkpoint` wrote."""

    path: Path
    architecture: str
    config: dict
    tensors: int


# --- converting -----------------------------------------------------------------------------------------------------

def _rename(key: str, renames) -> str | None:
    """`key` with the first (from, to) prefix pair's from-prefix replaced by its to-prefix, or None."""
    return next((to + key[len(start):] for start, to in renames if key.startswith(start)), None)


def convert_state_dict(state: Mapping, source: str, *, output_stride: int = 16) -> tuple[PeerLayout, dict]:
    """The layout of a peer state dict and our model's state dict from it, every tensor mapped: a ConvertError (its
    message to follow the file name) for the first peer key that has no place in our model or another shape, then for
    the first of ours that nothing filled (BatchNorm's num_batches_tracked, a counter, starts at 0 if absent)."""
    if source not in LAYOUTS:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    layout = LAYOUTS[source](state, output_stride=output_stride)
    with torch.device("meta"):  # names and shapes only
        target = rebuild_model(layout.model).state_dict()
    out, biases = {}, {}
    for key, tensor in state.items():
        if not isinstance(tensor, torch.Tensor):
            raise ConvertError(f"{key} holds a {type(tensor).__name__}, not a tensor; a {source} state dict holds "
                               "tensors only")
        if key in layout.folds:
            ours, expected = layout.folds[key], target[f"{layout.folds[key]}.running_mean"].shape
        else:
            ours = _rename(key, layout.renames)
            if ours is None or ours not in target:
                raise ConvertError(f"{key}: no tensor of the {layout.name} model has this name, so the file is not "
                                   f"such a checkpoint or was saved from a changed model; nothing was written")
            expected = target[ours].shape
        if tensor.shape != expected:
            raise ConvertError(f"{key} has shape {tuple(tensor.shape)} where the {layout.name} model has "
                               f"{tuple(expected)} (another width or class count than its released models?); "
                               "nothing was written")
        if key in layout.folds:
            biases[ours] = tensor
        elif ours in layout.reorders:
            low = layout.reorders[ours]
            out[ours] = torch.cat([tensor[:, low:], tensor[:, :low]], dim=1)
        else:
            out[ours] = tensor
    missing = [k for k in target if k not in out and not k.endswith(".num_batches_tracked")]
    missing += [bias for bias, bn in layout.folds.items() if bn not in biases]
    if missing:
        name = missing[0] if missing[0] in layout.folds else \
            _rename(missing[0], [(mine, theirs) for theirs, mine in layout.renames]) or missing[0]  # the peer's name
        raise ConvertError(f"has no {name}, which every {layout.name} checkpoint has ({len(missing)} such tensors "
                           f"missing); is the file complete?")
    out = {key: (out[key] if key in out else torch.zeros(tensor.shape)  # absent num_batches_tracked: 0
                 ).detach().to(dtype=tensor.dtype, device="cpu").contiguous() for key, tensor in target.items()}
    for bn, bias in biases.items():  # BN(conv(x) + b) is BN'(conv(x)) with running mean - b, in train mode as well
        mean = f"{bn}.running_mean"
        out[mean] = (out[mean].double() - bias.double()).to(target[mean].dtype)
    return layout, out


def read_peer_checkpoint(path: str | Path, source: str) -> tuple[dict, dict]:
    """The state dict of a peer checkpoint file, read with weights_only=True (numpy scalars allowed, as data), and
    its other entries that are plain numbers (VainF's cur_itrs and best_score); one sentence for anything else."""
    path = Path(path).expanduser()
    allow = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5
    try:
        with allow(NUMPY_SCALARS) if allow else contextlib.nullcontext():
            loaded = read_torch_file(path)
    except CheckpointError as exc:
        refused = next((e for e in exception_chain(exc) if isinstance(e, pickle.UnpicklingError)
                        and "Weights only" in str(e)), None)
        if refused is None:
            raise ConvertError(f"{exc}".replace("pass a last.pt or best.pt written by train.py",
                                                f"pass a checkpoint of {REPOSITORIES[source]}")) from exc
        wanted = re.search(r"GLOBAL ([\w.]+)", " ".join(str(e) for e in exception_chain(refused)))
        what = f" (it asks for {wanted.group(1)})" if wanted else ""
        raise ConvertError(f"{path}: refused: it holds code or objects other than tensors, numbers and numpy "
                           f"scalars{what}, and deeplab reads peer checkpoints with weights_only=True, which never "
                           f"runs code from a file; where you trust it, load it with weights_only=False and "
                           f"torch.save its state dict alone, then convert that file") from exc
    if not isinstance(loaded, Mapping):
        raise ConvertError(f"{path}: holds a {type(loaded).__name__}, not a {source} checkpoint (a dict)")
    kind = _what_it_is(loaded)
    if kind == "deeplab":
        raise ConvertError(f"{path}: is a deeplab checkpoint already (it holds 'model' and 'config'); use it as it is")
    if kind not in (source, None):
        raise ConvertError(f"{path}: is a {REPOSITORIES[kind]} checkpoint, not a {source} one: convert it with "
                           f"from={kind}")
    info = {k: float(v) if isinstance(v, np.generic) else v for k, v in loaded.items()
            if isinstance(v, (int, float, np.generic)) and not isinstance(v, bool)}
    state = loaded.get("model_state", loaded)
    if not isinstance(state, Mapping) or not state:
        raise ConvertError(f"{path}: its model_state holds no state dict" if "model_state" in loaded else
                           f"{path}: holds an empty dict, not a {source} checkpoint")
    prefix = "module."  # saved from nn.DataParallel
    if all(str(k).startswith(prefix) for k in state):
        state = {k[len(prefix):]: v for k, v in state.items()}
    return dict(state), info


def _what_it_is(loaded: Mapping) -> str | None:
    """deeplab, vainf or bubbliiiing as a loaded checkpoint's keys say, or None."""
    if {"model", "config"} <= set(loaded):
        return "deeplab"
    if isinstance(loaded.get("model_state"), Mapping):
        return "vainf"
    keys = [str(k) for k in loaded]
    for source in SOURCES:
        if CLASSIFIER_KEYS[source] in keys or EXAMPLE_KEYS[source] in keys:
            return source
    return None


def check_output(output: str | Path, source: str | Path, *, overwrite: bool) -> Path:
    """Where a converted checkpoint may go: never over the source, never over a folder, over another existing file
    only with overwrite=true."""
    output, source = Path(output).expanduser(), Path(source).expanduser()
    problem = output_file_problem(output, source=source, overwrite=overwrite,
                                  example=source.with_name(source.stem + "_deeplab.pt").name)
    if problem:
        raise ConvertError(problem)
    return output


def default_output(source: str | Path) -> Path:
    """Beside the source: deeplabv3plus_x.pth -> deeplabv3plus_x_deeplab.pt."""
    source = Path(source).expanduser()
    return source.with_name(f"{source.stem}_deeplab.pt")


def dataset_config(dataset: Mapping, source: str, num_classes: int) -> dict:
    """The dataset section of the converted checkpoint: `dataset` (a configs/dataset/*.yaml) with the peer's input
    normalisation, checked as a training run's is, and with the peer model's number of classes."""
    mean, std = NORMALISATION[source]
    data = {**dataset, "mean": list(mean), "std": list(std)}
    check_dataset_config(**{k: data.get(k) for k in ("format", "num_classes", "ignore_index", "class_names",
                                                     "palette", "ignore_colour", "label_map",
                                                     "allow_ignore_only_masks", "mean", "std")},
                         options={k: v for k, v in data.items() if k not in DATASET_KEYS})
    if data["num_classes"] != num_classes:
        fits = {"voc": 21, "cityscapes": 19}
        hint = next((f"dataset={name}" for name, n in fits.items() if n == num_classes), None)
        raise ConvertError(f"its model gives {num_classes} classes but the dataset "
                           f"({data.get('format')}) has dataset.num_classes={data['num_classes']}; "
                           + (f"choose {hint}" if hint else f"choose a dataset config with {num_classes} classes "
                                                            "(e.g. dataset=folder with its class_names)"))
    return data


def convert_checkpoint(source_path: str | Path, *, source: str, dataset: Mapping, output: str | Path | None = None,
                       overwrite: bool = False, output_stride: int = 16) -> Converted:
    """Convert a peer checkpoint (`source`: vainf or bubbliiiing) into a deeplab checkpoint at `output` (default:
    beside it, `default_output`). Everything is read, mapped and checked before anything is written, and the file is
    written atomically: a refused conversion leaves no file."""
    if source not in SOURCES:
        raise ConvertError(f"from={source}: {'not set' if source is None else 'not a format deeplab converts'}; use "
                           f"from=vainf ({REPOSITORIES['vainf']}) or from=bubbliiiing ({REPOSITORIES['bubbliiiing']})")
    if output_stride not in OUTPUT_STRIDES:
        raise ConvertError(f"output_stride={output_stride!r}: must be one of {list(OUTPUT_STRIDES)} (the released "
                           "models are OS16; the stride is not in the weights)")
    source_path = Path(source_path).expanduser()
    # the source first: a file that is not such a checkpoint is named as what it is, before any output question
    state, info = read_peer_checkpoint(source_path, source)
    try:
        layout, weights = convert_state_dict(state, source, output_stride=output_stride)
        data = dataset_config(dataset, source, layout.model["num_classes"])
    except ConvertError as exc:
        raise ConvertError(f"{source_path}: {exc}") from exc
    model = rebuild_model(layout.model)
    load_model_weights(model, weights, source=str(source_path))  # the strict load every consumer will do
    output = check_output(output or default_output(source_path), source_path, overwrite=overwrite)
    if output.is_file() and not is_torch_file(output):
        raise ConvertError(f"output={output} exists and is not a PyTorch file; choose another output=FILE")
    digest = hashlib.sha256(source_path.read_bytes()).hexdigest()
    provenance = {"repository": REPOSITORIES[source], "format": source, "architecture": layout.name,
                  "file": str(source_path), "sha256": digest, **info}
    config = {"model": layout.model, "dataset": data}
    save_checkpoint(output, {"model": weights, "config": config, "converted_from": provenance}, replace=overwrite)
    return Converted(output, layout.name, config, len(state))
