"""`python -m deeplab.convert source=FILE from=vainf|bubbliiiing dataset=voc|cityscapes [output=FILE]`: a peer
repository's checkpoint as a deeplab checkpoint that evaluate, predict, export and init_from take."""

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from deeplab.cli import command, typed_settings
from deeplab.convert import convert_checkpoint
from deeplab.errors import ConfigError
from deeplab.model import OUTPUT_STRIDES
from deeplab.schema import ranged

USAGE = "usage: python -m deeplab.convert source=FILE from=vainf|bubbliiiing dataset=voc|cityscapes [output=FILE]"


# the command's own keys' types and ranges (convert.yaml gives their defaults)
SETTINGS = {"overwrite": bool,
            "output_stride": ranged(int, lambda v: v in OUTPUT_STRIDES, "8, 16 or 32 (the released models are 16)")}


def check_settings(cfg) -> None:
    """The command's own settings, checked before any file is read: one ConfigError naming the key."""
    typed_settings(cfg, SETTINGS)
    if not cfg.source:
        raise ConfigError(f"source: not set; {USAGE}")  # from= is convert_checkpoint's to check, before any file


def run(cfg) -> Path:
    """Convert `source` (a checkpoint of the `from` repository) for `dataset`; print what it is and how to use it."""
    check_settings(cfg)
    dataset = OmegaConf.to_container(cfg.dataset, resolve=True)
    done = convert_checkpoint(cfg.source, source=cfg["from"], dataset=dataset, output=cfg.output,
                              overwrite=cfg.overwrite, output_stride=cfg.output_stride)
    model, data = done.config["model"], done.config["dataset"]
    backbone = model["backbone"]
    print(f"{cfg.source}: {done.architecture}, {model['num_classes']} classes ({data['format']}), {done.tensors} "
          f"tensors mapped; input normalisation mean {data['mean']} std {data['std']}")
    print(f"written: {done.path}")
    options = [f"model/backbone={backbone['name']}"]
    options += [f"model.backbone.padding={backbone['padding']}"] if backbone.get("padding", "conv") != "conv" else []
    options += [f"model.decoder_convs={model['decoder_convs']}"] if model["decoder_convs"] != 2 else []
    options += ["model.align_corners=true"] if model["align_corners"] else []
    for key in ("mean", "std"):  # bubbliiiing's weights expect images scaled to 0-1 and nothing else
        if list(data[key]) != list(dataset[key]):
            options.append(f"dataset.{key}=[{','.join(str(v) for v in data[key])}]")
    print(f"evaluate: python evaluate.py checkpoint={done.path} [data_root=...] [output_stride=8]")
    print(f"fine-tune: python train.py dataset=... init_from={done.path} {' '.join(options)}")
    return done.path


@command("convert", logger="deeplab.convert")
def main(cfg: DictConfig) -> None:
    run(cfg)
