"""Deployment formats, written by `python -m deeplab.export checkpoint=PATH format=onnx|int8|pt2 output=FILE`
(the command is `deeplab.cli.export`).

onnx: float32 ONNX (opset >= 17) with dynamic batch, height and width and BatchNorm folded, checked against PyTorch
with ONNX Runtime. int8: the same graph statically quantized with ONNX Runtime (QDQ, per-channel weights), calibrated
on training images. pt2: a `torch.export` ExportedProgram with the same dynamic dimensions.
Every format keeps the model's contract: float (N, 3, H, W) images normalised with the dataset's mean/std in,
(N, C, H, W) logits out.
"""

import logging
import tempfile
import warnings
from collections.abc import Callable, Iterable, Sequence, Sized
from pathlib import Path

import numpy as np
import torch
from torch import nn

from deeplab.engine.precision import cpu_capabilities
from deeplab.errors import UserError
from deeplab.model.decoder import use_fast_convs
from deeplab.model.fuse import fold_batchnorm
from deeplab.onnx_model import INPUT_NAME, OUTPUT_NAME, OnnxModel
from deeplab.progress import progress_bar
from deeplab.torch_files import atomic_write, is_torch_file, output_file_problem, tensor_bytes

FORMATS = ("onnx", "int8", "pt2")


class ExportError(UserError):
    """An export that cannot be done or did not verify: the message names the file and the problem."""


CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")


def check_output(path: str | Path, *, overwrite: bool, checkpoint: str | Path | None = None) -> Path:
    """Where an export may go: never over a checkpoint (the one exported or any other, whatever `overwrite` says),
    never over a folder, and over another existing file only with overwrite=true."""
    path = Path(path).expanduser()
    if checkpoint is not None and path.resolve() == Path(checkpoint).expanduser().resolve():
        other = path.with_suffix(".onnx")
        if other.name == path.name:
            other = path.with_name(f"{path.stem}.export{path.suffix}")
        raise ExportError(f"output={path} is the checkpoint being exported; an export never replaces it: choose "
                          f"another output=FILE (e.g. {other.name})"
                          + (", or leave output unset to write beside it" if path.suffix.lower() in
                             CHECKPOINT_SUFFIXES else ""))
    if path.suffix.lower() in CHECKPOINT_SUFFIXES:
        raise ExportError(f"output={path}: {path.suffix} names a PyTorch checkpoint, and an export never writes one "
                          "(nor replaces one); choose output=FILE.onnx (onnx, int8) or FILE.pt2 (pt2)")
    if path.is_file() and is_torch_file(path):
        raise ExportError(f"output={path} is a PyTorch checkpoint, and an export never replaces one whatever "
                          "overwrite says; choose another output=FILE")
    problem = output_file_problem(path, source=None, overwrite=overwrite, example="model.onnx")  # the source: above
    if problem:
        raise ExportError(problem)
    return path


def _atomic_write(path: Path, write: Callable[[Path], None], *, overwrite: bool, size_hint: int = 0) -> Path:
    """Write through a temp file and os.replace (see atomic_write) where `check_output` allows it; without overwrite
    a file another process wrote there meanwhile is kept and this write refused."""
    return atomic_write(check_output(path, overwrite=overwrite), write, size_hint=size_hint, replace=overwrite)


def _plain_folded(model: nn.Module) -> nn.Module:
    """A BN-folded fp32 CPU copy for export, with the decoder's plain convs (the fewer-multiplication ones are
    blocked Python loops over tiles, which a traced graph would freeze at one size)."""
    folded = fold_batchnorm(model).float().cpu()
    use_fast_convs(folded, enabled=False)
    return folded


def export_onnx(model: nn.Module, path: str | Path, *, opset: int = 17, overwrite: bool = False) -> Path:
    """Fold BN and write a float32 ONNX model with dynamic batch, height and width (one self-contained file)."""
    if opset < 17:
        raise ExportError(f"opset {opset} is too old; use 17 or newer")
    folded = _plain_folded(model)
    sample = torch.randn(1, 3, 65, 97)

    def write(tmp: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript-based exporter's deprecation notice
            # The TorchScript-based exporter handles the data-dependent interpolate sizes of the decoder with
            # dynamic H and W directly; it writes one file with the weights inside.
            torch.onnx.export(folded, (sample,), str(tmp), dynamo=False, opset_version=opset,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_axes={INPUT_NAME: {0: "batch", 2: "height", 3: "width"},
                                            OUTPUT_NAME: {0: "batch", 2: "height", 3: "width"}})

    return _atomic_write(Path(path), write, overwrite=overwrite, size_hint=tensor_bytes(folded.state_dict()))


def verify_onnx(path: str | Path, model: nn.Module, *, sizes: Sequence[Sequence[int]] = ((1, 65, 97), (2, 128, 96)),
                atol: float = 1e-3, seed: int = 0) -> float:
    """Largest |ONNX Runtime - PyTorch| logit difference over the given (batch, H, W); raises above `atol`."""
    exported = OnnxModel(path)
    generator = torch.Generator().manual_seed(seed)
    worst = 0.0
    model = model.eval().float().cpu()
    for batch, height, width in sizes:
        images = torch.randn(batch, 3, height, width, generator=generator)
        with torch.inference_mode():
            expected = model(images)
        got = exported(images)
        if got.shape != expected.shape:
            raise ExportError(f"{path}: ONNX Runtime gives {tuple(got.shape)} for input {tuple(images.shape)}, "
                              f"PyTorch {tuple(expected.shape)}")
        worst = max(worst, float((got - expected).abs().max()))
    if worst > atol:
        raise ExportError(f"{path}: ONNX Runtime logits differ from PyTorch by {worst:.2e} (> {atol})")
    return worst


def quantize_onnx(float_path: str | Path, path: str | Path, calibration: Iterable[np.ndarray], *,
                  overwrite: bool = False, reduce_range: bool | None = None, progress: bool | None = None) -> Path:
    """Post-training static INT8 quantization with ONNX Runtime, calibrated on normalised (1, 3, H, W) images.

    QDQ format, per-channel int8 weights, uint8 activations, MinMax calibration. reduce_range (7-bit weights)
    avoids the int16 saturation of AVX2's u8*s8 multiply on CPUs without VNNI; None picks it from the CPU.
    `progress`: an `int8 calibration i/N` bar with rate and ETA, one tick per image run (True/False; None follows
    DEEPLAB_PROGRESS, see deeplab.progress).
    """
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self, bar) -> None:
            self.items, self.bar, self.given = iter(calibration), bar, False

        def get_next(self) -> dict | None:
            if self.given:  # ONNX Runtime asks for the next image once it has run the one given last
                self.bar.update(1)
            item = next(self.items, None)
            self.given = item is not None
            return None if item is None else {INPUT_NAME: np.ascontiguousarray(item, dtype=np.float32)}

    if reduce_range is None:  # VNNI (AVX-512 or AVX): int8 dot products without saturation
        reduce_range = not cpu_capabilities()["vnni"]

    def write(tmp: Path) -> None:
        root = logging.getLogger()
        level = root.level
        root.setLevel(max(level, logging.WARNING))  # the quantizer logs one INFO line per shared bias on the root
        try:
            with tempfile.TemporaryDirectory() as work:
                prepared = Path(work) / "prepared.onnx"
                quant_pre_process(str(float_path), str(prepared), skip_symbolic_shape=True)
                with progress_bar(desc="int8 calibration", unit=" images", progress=progress,
                                  total=len(calibration) if isinstance(calibration, Sized) else None) as bar:
                    quantize_static(str(prepared), str(tmp), Reader(bar), quant_format=QuantFormat.QDQ,
                                    per_channel=True, reduce_range=reduce_range, activation_type=QuantType.QUInt8,
                                    weight_type=QuantType.QInt8)
        finally:
            root.setLevel(level)

    return _atomic_write(Path(path), write, overwrite=overwrite, size_hint=Path(float_path).stat().st_size // 4)


def export_pt2(model: nn.Module, path: str | Path, *, overwrite: bool = False) -> Path:
    """A torch.export ExportedProgram (BN folded) with dynamic batch, height and width; load with torch.export.load."""
    folded = _plain_folded(model)
    batch, height, width = (torch.export.Dim(n, min=lo, max=hi) for n, lo, hi in
                            (("batch", 1, 1024), ("height", 32, 8192), ("width", 32, 8192)))
    with torch.inference_mode(False), torch.no_grad():
        program = torch.export.export(folded, (torch.randn(2, 3, 97, 129),),
                                      dynamic_shapes={"x": {0: batch, 2: height, 3: width}})

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: torch warns about a path that does not end in .pt2
            torch.export.save(program, f)

    return _atomic_write(Path(path), write, overwrite=overwrite, size_hint=tensor_bytes(folded.state_dict()))


def default_output(checkpoint: str | Path, fmt: str) -> Path:
    """Beside the checkpoint: best.pt -> best.onnx, best.int8.onnx or best.pt2."""
    return Path(checkpoint).with_suffix({"onnx": ".onnx", "int8": ".int8.onnx", "pt2": ".pt2"}[fmt])
