"""`python -m deeplab.bench [sections=[model,inference,train,loader,video]] [key=value ...]`: the benchmark sections
side by side, as ratios measured in one run."""

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from deeplab.bench import (SECTIONS, bench_inference, bench_loader, bench_models, bench_train, cpu_name,
                           format_inference, format_loader, format_train, synthetic_inputs)
from deeplab.bench.modes import INFERENCE_MODES, TRAINING_MODES, check_modes, split_samples
from deeplab.bench.video import bench_video, format_video
from deeplab.cli import command, typed_settings
from deeplab.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from deeplab.engine.precision import auto_precisions, cpu_capabilities, describe_cpu, resolve_device
from deeplab.errors import ConfigError
from deeplab.metrics import json_text
from deeplab.model.summary import summarize
from deeplab.torch_files import atomic_write


def check_sections(sections: object) -> list[str]:
    """The `sections` to run, as a list (a bare name is one section); an unknown or missing one is a ConfigError."""
    if isinstance(sections, str):
        sections = [sections]
    if not isinstance(sections, Sequence) or not sections:
        raise ConfigError(f"sections={sections!r}: nothing to benchmark; give one or more of {', '.join(SECTIONS)}, "
                          f"e.g. sections=[{','.join(SECTIONS[:2])}]")
    unknown = [str(s) for s in sections if s not in SECTIONS]
    if unknown:
        raise ConfigError(f"sections: unknown section(s) {', '.join(unknown)}; known: {', '.join(SECTIONS)}")
    return list(dict.fromkeys(sections))


def prepare_json(value: object, *, overwrite: bool = False) -> Path | None:
    """Where the JSON goes, its folder made now: a path that cannot be written, or a file that exists (unless
    overwrite=true), is refused before anything runs, not after the whole benchmark."""
    if not value:
        return None
    path = Path(str(value)).expanduser()
    if path.is_dir():
        raise ConfigError(f"json={value}: is a folder; give a file name, e.g. json={path / 'bench.json'}")
    if path.exists() and not overwrite:
        raise ConfigError(f"json={value}: {path} exists already (an earlier benchmark?); choose another json= file, "
                          "or set overwrite=true to replace it")
    blocking = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise ConfigError(f"json={value}: {blocking} is a file, not a folder, so the JSON cannot go inside it; "
                          "choose a json= path in a folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"json={value}: its folder {path.parent} cannot be made ({exc.strerror or exc}); choose "
                          "a json= path in a folder you can write") from exc
    if not os.access(path.parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ConfigError(f"json={value}: {path if path.exists() else path.parent} is not writable; choose a json= "
                          "path in a folder you can write")
    return path


def run(cfg) -> dict:
    """Run the configured sections, print their tables, and write the JSON if asked.

    The sections, the modes and the JSON path are checked first: a mistake there stops the run before any work."""
    sections = check_sections(cfg.get("sections"))
    modes = {}
    if "inference" in sections:
        modes["inference"] = check_modes("inference.modes", cfg.inference.modes, INFERENCE_MODES)
        modes["separable"] = check_modes("inference.separable_modes", cfg.inference.separable_modes or [],
                                         INFERENCE_MODES)
    if "train" in sections:
        modes["train"] = check_modes("train.modes", cfg.train.modes, TRAINING_MODES)
    typed_settings(cfg, {"overwrite": bool})
    json_path = prepare_json(cfg.get("json"), overwrite=cfg.get("overwrite", False))
    device = resolve_device(cfg.get("device", "auto"))
    results = {"device": {"type": device.type, "name": torch.cuda.get_device_name(device) if device.type == "cuda"
                         else cpu_name(), "threads": torch.get_num_threads(),
                         "capabilities": cpu_capabilities() if device.type == "cpu" else None,
                         "auto_precisions": list(auto_precisions(device.type))}}
    print(f"device: {results['device']['name']}, {results['device']['threads']} threads"
          + (f"; CPU flags: {describe_cpu()}" if device.type == "cpu" else "")
          + f"; precision=auto chooses among {'/'.join(auto_precisions(device.type))}"
          + (" by measuring (see the 'fast' rows)" if len(auto_precisions(device.type)) > 1 else ""))
    if {"model", "inference", "train", "video"} & set(sections):
        model, separable, config = bench_models(cfg, device)
        size = tuple(cfg.inference.size)
    if "model" in sections:
        results["model"] = {**summarize(model.cpu(), *size), "size": list(size)}
        model.to(device)
        print(f"model: {results['model']['total']:,} parameters, {results['model']['gflops']:.1f} GFLOPs at "
              f"{size[0]}x{size[1]}")
    if "inference" in sections:
        c = cfg.inference
        if config:
            samples = split_samples(config["dataset"], "val_split", c.quality_images)
            calibration = [x.numpy() for x, _ in split_samples(config["dataset"], "train_split", c.calibration_images)]
        else:
            images = synthetic_inputs(size, 1 + c.calibration_images)  # calibration: images other than the timed one
            samples, calibration = [(images[0], None)], [x.numpy() for x in images[1:]]
        results["inference"] = bench_inference(
            model, device=device, size=size, modes=modes["inference"], separable_modes=modes["separable"],
            separable_model=separable, rounds=c.rounds, warmup=c.warmup, samples=samples, calibration=calibration)
        print(format_inference(results["inference"]))
    if "train" in sections:
        settings = {**OmegaConf.to_container(cfg.train, resolve=True), "modes": modes["train"]}
        results["train"] = bench_train(model, device=device, **settings)
        print(format_train(results["train"]))
    if "loader" in sections:
        results["loader"] = bench_loader(**cfg.loader)
        print(format_loader(results["loader"]))
    if "video" in sections:
        data = config["dataset"] if config else {"mean": IMAGENET_MEAN, "std": IMAGENET_STD}
        results["video"] = bench_video(model, device=device, size=tuple(cfg.video.size), frames=cfg.video.frames,
                                       batch_sizes=list(cfg.video.batch_sizes), rounds=cfg.video.rounds,
                                       mean=data["mean"], std=data["std"], precision=cfg.video.precision)
        print(format_video(results["video"]))
    if json_path:
        # a second bench with the same json= may have written it meanwhile: kept unless overwrite=true
        atomic_write(json_path, lambda tmp: tmp.write_text(json_text(results, indent=2)), durable=False,
                     replace=bool(cfg.get("overwrite", False)))
        print(f"JSON written to {json_path}")
    return results


@command("bench", logger="deeplab.bench")
def main(cfg: DictConfig) -> None:
    run(cfg)
