"""`python -m deeplab.export checkpoint=PATH format=onnx|int8|pt2 [output=FILE]`: a checkpoint in a deployment
format, verified against PyTorch (onnx) or scored against the float model (int8)."""

import tempfile
from pathlib import Path

import torch
from omegaconf import DictConfig

from deeplab.cli import command, typed_settings
from deeplab.engine.checkpoint import CheckpointError
from deeplab.export import (FORMATS, check_output, default_output, export_onnx, export_pt2, quantize_onnx,
                            verify_onnx)
from deeplab.inference import model_from_checkpoint
from deeplab.onnx_model import OnnxModel
from deeplab.progress import progress_bar
from deeplab.schema import ranged
from deeplab.bench.modes import inference_runner, label_quality, split_samples


# the export keys' types and ranges (export.yaml gives their defaults)
SETTINGS = {"overwrite": bool, "verify": bool,
            "format": ranged(str, lambda v: v in FORMATS, f"an export format, one of {', '.join(FORMATS)}"),
            "opset": ranged(int, lambda v: v >= 17, "ONNX opset 17 or newer (the exporter needs it), e.g. opset=17"),
            **dict.fromkeys(("calibration_images", "val_images"),
                            ranged(int, lambda v: v >= 1, "a whole number of images, 1 or more (e.g. 32)"))}


def run(cfg) -> Path:
    """Export `checkpoint` in `format`, verify it, and (int8) compare its mIoU with the float model's."""
    if not cfg.checkpoint:
        raise CheckpointError("usage: python -m deeplab.export checkpoint=PATH [format=onnx|int8|pt2] [output=FILE]")
    typed_settings(cfg, SETTINGS)  # before the checkpoint is loaded: one ConfigError naming the key
    # the checkpoint first: a file that is not a training checkpoint (an .onnx, a .pt2, a state dict) is named as
    # what it is, rather than as an output that would replace it
    model, config = model_from_checkpoint(cfg.checkpoint, device="cpu")
    output = check_output(cfg.output or default_output(cfg.checkpoint, cfg.format), overwrite=cfg.overwrite,
                          checkpoint=cfg.checkpoint)
    data = config["dataset"]
    print(f"{cfg.checkpoint}: {model.num_classes} classes; input: float32 N x 3 x H x W normalised with mean "
          f"{data['mean']} and std {data['std']} (RGB, 0-1 scale); output: N x {model.num_classes} x H x W logits")
    EXPORTERS[cfg.format](model, output, cfg, data)
    print(f"written: {output}")
    return output


def _pt2(model, output: Path, cfg, data: dict) -> None:
    export_pt2(model, output, overwrite=cfg.overwrite)


def _onnx(model, output: Path, cfg, data: dict) -> None:
    export_onnx(model, output, opset=cfg.opset, overwrite=cfg.overwrite)
    if cfg.verify:
        print(f"ONNX Runtime vs PyTorch: max |logit difference| {verify_onnx(output, model):.2e}")


def _int8(model, output: Path, cfg, data: dict) -> None:
    calibration = [x.numpy() for x, _ in split_samples(data, "train_split", cfg.calibration_images)]
    with tempfile.TemporaryDirectory() as work:
        float_path = export_onnx(model, Path(work) / "float.onnx", opset=cfg.opset)
        quantize_onnx(float_path, output, calibration, overwrite=cfg.overwrite)
    print(f"int8 model calibrated on {len(calibration)} images of split '{data['train_split']}'")
    if cfg.verify:
        samples = split_samples(data, "val_split", cfg.val_images)
        eager, _ = inference_runner("eager_fp32", model, device=torch.device("cpu"), workdir=output.parent)
        int8 = OnnxModel(output)
        float_q, int8_q = (label_quality(f, eager, progress_bar(samples, desc=f"{name} mIoU", unit=" images"),
                                         model.num_classes) for name, f in (("float", eager), ("int8", int8)))
        print(f"on {len(samples)} images of split '{data['val_split']}': mIoU float {float_q['mIoU']:.4f}, "
              f"int8 {int8_q['mIoU']:.4f} ({(int8_q['mIoU'] - float_q['mIoU']) * 100:+.2f} points); "
              f"{int8_q['agreement'] * 100:.2f}% of pixels labelled as the float model labels them")


# format= -> how a checkpoint's model is written (and verified) in it: one entry per deeplab.export.FORMATS
EXPORTERS = {"pt2": _pt2, "onnx": _onnx, "int8": _int8}


@command("export", logger="deeplab.export")
def main(cfg: DictConfig) -> None:
    run(cfg)
