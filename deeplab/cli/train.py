"""`python train.py [dataset=voc] [experiment=voc_os16] [key=value ...]`: train DeepLabV3+ from the composed config."""

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from deeplab.cli import command
from deeplab.cli.record import Record
from deeplab.engine.trainer import train


@command("train", logger="deeplab.train", record=True)
def main(cfg: DictConfig, record: Record) -> float:
    job = HydraConfig.get()
    named = any(o.split("=", 1)[0].lstrip("+") == "hydra.run.dir" for o in job.overrides.hydra)
    return train(cfg, job.runtime.output_dir, overrides=job.overrides.task, named_run_dir=named,
                 keep_record=record.keep)
