"""Deployment formats: `python -m deeplab.export checkpoint=PATH format=onnx|int8|pt2 output=FILE`.

onnx: float32 ONNX (opset >= 17) with dynamic batch, height and width and BatchNorm folded, checked against PyTorch
with ONNX Runtime. int8: the same graph statically quantized with ONNX Runtime (QDQ, per-channel weights), calibrated
on training images. pt2: a `torch.export` ExportedProgram with the same dynamic dimensions.
Every format keeps the model's contract: float (N, 3, H, W) images normalised with the dataset's mean/std in,
(N, C, H, W) logits out.
"""

import logging
import tempfile
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from deeplab.engine.precision import cpu_capabilities
from deeplab.errors import ConfigError, UserError, check_flags
from deeplab.model.decoder import use_fast_convs
from deeplab.model.fuse import fold_batchnorm
from deeplab.onnx_model import INPUT_NAME, OUTPUT_NAME, OnnxModel, ort_session
from deeplab.torch_files import atomic_write, is_torch_file, tensor_bytes

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
    if path.is_dir():
        raise ExportError(f"output={path} is a folder; give a file name, e.g. output={path / 'model.onnx'}")
    if path.is_file() and is_torch_file(path):
        raise ExportError(f"output={path} is a PyTorch checkpoint, and an export never replaces one whatever "
                          "overwrite says; choose another output=FILE")
    if path.exists() and not overwrite:
        raise ExportError(f"{path} exists; choose another output=FILE or set overwrite=true")
    return path


def _atomic_write(path: Path, write: Callable[[Path], None], *, overwrite: bool, size_hint: int = 0) -> Path:
    """Write through a temp file and os.replace (see atomic_write) where `check_output` allows it."""
    return atomic_write(check_output(path, overwrite=overwrite), write, size_hint=size_hint)


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
                  overwrite: bool = False, reduce_range: bool | None = None) -> Path:
    """Post-training static INT8 quantization with ONNX Runtime, calibrated on normalised (1, 3, H, W) images.

    QDQ format, per-channel int8 weights, uint8 activations, MinMax calibration. reduce_range (7-bit weights)
    avoids the int16 saturation of AVX2's u8*s8 multiply on CPUs without VNNI; None picks it from the CPU.
    """
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(calibration)

        def get_next(self) -> dict | None:
            item = next(self.items, None)
            return None if item is None else {INPUT_NAME: np.ascontiguousarray(item, dtype=np.float32)}

    if reduce_range is None:
        reduce_range = not cpu_has_vnni()

    def write(tmp: Path) -> None:
        root = logging.getLogger()
        level = root.level
        root.setLevel(max(level, logging.WARNING))  # the quantizer logs one INFO line per shared bias on the root
        try:
            with tempfile.TemporaryDirectory() as work:
                prepared = Path(work) / "prepared.onnx"
                quant_pre_process(str(float_path), str(prepared), skip_symbolic_shape=True)
                quantize_static(str(prepared), str(tmp), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                                reduce_range=reduce_range, activation_type=QuantType.QUInt8,
                                weight_type=QuantType.QInt8)
        finally:
            root.setLevel(level)

    return _atomic_write(Path(path), write, overwrite=overwrite, size_hint=Path(float_path).stat().st_size // 4)


def cpu_has_vnni() -> bool:
    """True where the CPU has AVX-512 VNNI or AVX-VNNI (int8 dot products without saturation), as torch reads it."""
    return cpu_capabilities()["vnni"]


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


def check_settings(cfg) -> None:
    """The export settings, checked before the checkpoint is loaded: one ConfigError naming the key."""
    check_flags(cfg, ("overwrite", "verify"))
    if cfg.format not in FORMATS:
        raise ConfigError(f"format={cfg.format}: not an export format; choose one of {', '.join(FORMATS)}")
    if not _whole(cfg.opset) or cfg.opset < 17:
        raise ConfigError(f"opset={cfg.opset}: the exporter needs ONNX opset 17 or newer; set opset=17")
    counts = [("calibration_images", cfg.format == "int8"), ("val_images", cfg.format == "int8" and cfg.verify)]
    for key, used in counts:
        if used and (not _whole(cfg[key]) or cfg[key] < 1):
            raise ConfigError(f"{key}={cfg[key]}: must be a whole number of images, 1 or more (e.g. {key}=32)")


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def run(cfg) -> Path:
    """Export `checkpoint` in `format`, verify it, and (int8) compare its mIoU with the float model's."""
    from deeplab.engine.checkpoint import CheckpointError
    from deeplab.inference import model_from_checkpoint
    from deeplab.speed import inference_mode, label_quality, split_samples

    if not cfg.checkpoint:
        raise CheckpointError("usage: python -m deeplab.export checkpoint=PATH [format=onnx|int8|pt2] [output=FILE]")
    check_settings(cfg)
    # the checkpoint first: a file that is not a training checkpoint (an .onnx, a .pt2, a state dict) is named as
    # what it is, rather than as an output that would replace it
    model, config = model_from_checkpoint(cfg.checkpoint, device="cpu")
    output = check_output(cfg.output or default_output(cfg.checkpoint, cfg.format), overwrite=cfg.overwrite,
                          checkpoint=cfg.checkpoint)
    data = config["dataset"]
    print(f"{cfg.checkpoint}: {model.num_classes} classes; input: float32 N x 3 x H x W normalised with mean "
          f"{data['mean']} and std {data['std']} (RGB, 0-1 scale); output: N x {model.num_classes} x H x W logits")
    if cfg.format == "pt2":
        export_pt2(model, output, overwrite=cfg.overwrite)
    elif cfg.format == "onnx":
        export_onnx(model, output, opset=cfg.opset, overwrite=cfg.overwrite)
        if cfg.verify:
            print(f"ONNX Runtime vs PyTorch: max |logit difference| {verify_onnx(output, model):.2e}")
    else:
        calibration = [x.numpy() for x, _ in split_samples(data, "train_split", cfg.calibration_images)]
        with tempfile.TemporaryDirectory() as work:
            float_path = export_onnx(model, Path(work) / "float.onnx", opset=cfg.opset)
            quantize_onnx(float_path, output, calibration, overwrite=cfg.overwrite)
        print(f"int8 model calibrated on {len(calibration)} images of split '{data['train_split']}'")
        if cfg.verify:
            samples = split_samples(data, "val_split", cfg.val_images)
            eager, _ = inference_mode("eager_fp32", model, device=torch.device("cpu"), workdir=output.parent)
            int8 = OnnxModel(output)
            float_q, int8_q = (label_quality(f, eager, samples, model.num_classes) for f in (eager, int8))
            print(f"on {len(samples)} images of split '{data['val_split']}': mIoU float {float_q['mIoU']:.4f}, "
                  f"int8 {int8_q['mIoU']:.4f} ({(int8_q['mIoU'] - float_q['mIoU']) * 100:+.2f} points); "
                  f"{int8_q['agreement'] * 100:.2f}% of pixels labelled as the float model labels them")
    print(f"written: {output}")
    return output


if __name__ == "__main__":
    import hydra

    @hydra.main(version_base="1.3", config_path="../configs", config_name="export")
    def _main(cfg) -> None:
        from deeplab.errors import user_errors

        with user_errors("deeplab.export"):  # the user's to fix: one clear sentence, exit 1
            run(cfg)

    _main()
