"""Evaluate a checkpoint on a validation split: python evaluate.py checkpoint=PATH [key=value ...]."""

import logging
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="configs", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    from deeplab.data import DataError
    from deeplab.engine.checkpoint import CheckpointError
    from deeplab.engine.evaluation import run

    try:
        run(cfg, HydraConfig.get().runtime.output_dir)
    except (DataError, CheckpointError) as exc:  # the user's to fix: one clear message
        logging.getLogger("deeplab.evaluate").error("%s", exc)
        sys.exit(1)


if __name__ == "__main__":
    main()
