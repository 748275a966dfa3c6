"""`python evaluate.py`: mIoU of a checkpoint (or of a folder of saved predictions) on a validation split."""

from pathlib import Path

import cv2
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from deeplab.cli import command, typed_settings
from deeplab.cli.record import Record
from deeplab.data import DataError, build_dataset, checkpoint_dataset
from deeplab.data.transforms import eval_transform
from deeplab.engine.evaluator import evaluate, score_predictions
from deeplab.engine.loaders import val_loader
from deeplab.engine.precision import resolve_device, resolve_precision
from deeplab.engine.protocols import check_protocol, protocol_confusion, protocol_metrics
from deeplab.engine.tta import check_tta, is_channels_last
from deeplab.errors import ConfigError
from deeplab.figures import MissingDependency, confusion_figure, iou_chart, reliability_diagram, worst_grid
from deeplab.inference import model_from_checkpoint
from deeplab.metrics import (BoundaryIoU, Calibration, ImageScores, format_metrics, format_worst, image_ids,
                             json_text, per_image_csv)
from deeplab.schema import ranged
from deeplab.torch_files import folder_lock
from deeplab.visualization import palette_array

FIGURES = ("confusion_matrix.png", "per_class_iou.png")
WORST_FIGURE, CALIBRATION_FIGURE = "worst_images.png", "calibration.png"


def write_figures(output_dir: Path, confusion, metrics: dict, names: list[str], worst: list | None = None,
                  table=None, ignore_index: int = 255) -> list[str]:
    """confusion_matrix.png and per_class_iou.png in `output_dir`, and worst_images.png where `worst` holds the
    worst images' pictures (`ImageScores.pictures`, coloured with `table`); the files written. Without matplotlib
    none, and one printed line saying so and how to get them: the metrics stand without their pictures."""
    figures = (*FIGURES, *[WORST_FIGURE] * bool(worst), *[CALIBRATION_FIGURE] * ("ece" in metrics))
    try:
        images = [confusion_figure(confusion, names), iou_chart(metrics["per_class_iou"], names, metrics["mIoU"])]
        if worst:
            images.append(worst_grid(worst, table, ignore_index=ignore_index))
        if "ece" in metrics:
            images.append(reliability_diagram(metrics["calibration_bins"], metrics["ece"]))
    except MissingDependency as exc:
        print(f"{' and '.join(figures)} skipped: {exc}")
        return []
    for name, image in zip(figures, images):  # encoded, then written: a full disk is an OSError user_errors words
        (output_dir / name).write_bytes(cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))[1].tobytes())
    return list(figures)


# the evaluate-only keys' types and ranges (evaluate.yaml gives their defaults)
SETTINGS = {**dict.fromkeys(("fast", "compile", "overwrite"), bool),
            "num_workers": ranged(int, lambda v: v >= 0, "a whole number >= 0 (0 reads images in this process)"),
            "worst": ranged(int, lambda v: v >= 0, "a whole number >= 0 (0 draws no worst images)"),
            "boundary": bool, "calibration": bool,
            "boundary_dilation": ranged(float, lambda v: 0 < v <= 1, "a share of the image diagonal, 0 < d <= 1")}
PER_IMAGE, WORST_PRINTED = "per_image.csv", 10


def run(cfg: DictConfig, output_dir: str | Path, record: Record | None = None) -> dict:
    """Evaluate `checkpoint` (or score `predictions`) on the validation split; write metrics.json and the figures.
    `record` keeps evaluate.log and the config in the run folder once every check has passed."""
    output_dir = Path(output_dir)
    if cfg.checkpoint and cfg.predictions:
        raise ConfigError(f"checkpoint={cfg.checkpoint} and predictions={cfg.predictions}: give checkpoint= (a model "
                          "to evaluate) or predictions= (a folder of index PNGs to score), not both")
    device = resolve_device(cfg.device)  # the settings first: nothing is loaded or written for a wrong one
    resolve_precision(cfg.precision, device.type)
    check_tta(scales=cfg.scales, window=cfg.window, stride=cfg.stride, flip=cfg.flip)
    protocol = cfg.get("protocol", "full")
    check_protocol(protocol, scales=cfg.scales, flip=cfg.flip, window=cfg.window, predictions=cfg.predictions)
    typed_settings(cfg, SETTINGS)
    existing = [output_dir / name for name in ("metrics.json", PER_IMAGE, *FIGURES, WORST_FIGURE, CALIBRATION_FIGURE)
                if (output_dir / name).exists()]
    if existing and not cfg.overwrite:
        raise ConfigError(f"{existing[0]}: exists already (an earlier evaluation in this run folder); give this one "
                          f"its own folder (another hydra.run.dir=..., or none for a dated one), or set overwrite=true")
    model = None
    if cfg.checkpoint:
        model, config = model_from_checkpoint(cfg.checkpoint, device=device, output_stride=cfg.output_stride,
                                              fast=cfg.fast, compile=cfg.compile, onnx=cfg.onnx)
        data = config["dataset"]
    elif cfg.predictions:
        data = None
    else:
        raise DataError("give checkpoint=PATH (a model to evaluate) or predictions=DIR (index PNGs to score)")
    if cfg.get("dataset"):  # the data's own config; a checkpoint keeps its model's input and classes (logged)
        given = OmegaConf.to_container(cfg.dataset, resolve=True)
        data = given if model is None else checkpoint_dataset(data, given, checkpoint=cfg.checkpoint)
    if data is None:
        raise DataError("predictions=DIR needs a dataset to score against: add dataset=<name> [dataset.root=...]")
    if cfg.data_root:
        data["root"] = cfg.data_root
    split = cfg.split or data["val_split"]
    dataset = build_dataset(split=split, **data, transform=eval_transform(mean=data["mean"], std=data["std"]))
    if record is not None:  # once the data is found: a refused evaluation leaves no run folder
        record.keep(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    scores = ImageScores(image_ids([image for image, _ in dataset.samples]), worst=cfg.worst, mean=data["mean"],
                         std=data["std"])  # per_image.csv and the worst images
    boundary = BoundaryIoU(data["num_classes"], ignore_index=data["ignore_index"], dilation=cfg.boundary_dilation) \
        if cfg.boundary else None
    calibration = Calibration(ignore_index=data["ignore_index"], device=device) if cfg.calibration else None
    if model is not None and protocol != "full":  # a peer's own evaluation (deeplab.engine.protocols): fp32 as the
        precision = "fp32" if cfg.precision == "auto" else resolve_precision(cfg.precision, device.type)  # peers
        matrix = protocol_confusion(protocol, model, dataset, mean=data["mean"], std=data["std"], device=device,
                                    precision=precision)
    elif model is not None:
        tta = dict(scales=tuple(cfg.scales), flip=cfg.flip, window=cfg.window, stride=cfg.stride)
        loader = val_loader(dataset, rank=0, world_size=1, num_workers=cfg.num_workers, pin_memory=False)
        matrix, _ = evaluate(model, loader, num_classes=data["num_classes"], device=device,
                             ignore_index=data["ignore_index"], precision=resolve_precision(cfg.precision, device.type),
                             channels_last=is_channels_last(model), tta=tta, scores=scores, boundary=boundary,
                             calibration=calibration)
    else:
        matrix = score_predictions(dataset, cfg.predictions, scores=scores, boundary=boundary)
    metrics = protocol_metrics(protocol, matrix)
    if boundary is not None and boundary.union.any():  # boundary=true (not under a peer's protocol)
        metrics.update(boundary.compute())
    if calibration is not None and calibration.count.sum() > 0:  # calibration=true with a model
        metrics.update(calibration.compute())
    names = data.get("class_names") or [str(i) for i in range(data["num_classes"])]
    print(f"{cfg.checkpoint or cfg.predictions} on {data['format']} split '{split}' ({len(dataset)} images"
          f"{'' if protocol == 'full' else f', protocol={protocol}'})")
    print(format_metrics(metrics, names))
    result = {"source": str(cfg.checkpoint or cfg.predictions), "split": split, "images": len(dataset),
              "protocol": protocol,
              "class_names": names, **metrics, "confusion_matrix": matrix.mat.cpu().tolist()}
    (output_dir / "metrics.json").write_text(json_text(result, indent=2))
    written = ["metrics.json", *write_figures(output_dir, result["confusion_matrix"], metrics, names,
                                              worst=scores.pictures(), ignore_index=data["ignore_index"],
                                              table=palette_array(data.get("palette"),
                                                                  ignore_index=data["ignore_index"]))]
    if scores.counts:  # every image scored on its own (not under a peer's protocol)
        (output_dir / PER_IMAGE).write_text(per_image_csv(scores.rows(), names))
        written.insert(1, PER_IMAGE)
        print(format_worst(scores.ranked(WORST_PRINTED)))
    print(f"{', '.join(written[:-1])} and {written[-1]}" if len(written) > 1 else written[0],
          f"written to {output_dir}")
    return result


@command("evaluate", logger="deeplab.evaluate", record=True)
def main(cfg: DictConfig, record: Record) -> None:
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    with folder_lock(output_dir, name=".evaluate.lock", busy="another evaluate.py is writing into this run folder; "
                                                           "wait for it to end, or give this one another hydra.run.dir"):
        run(cfg, output_dir, record)
