"""Predict label maps for images: python predict.py checkpoint=PATH input=PATH [output=DIR] [key=value ...]."""

import logging
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="configs", config_name="predict")
def main(cfg: DictConfig) -> None:
    from deeplab.data import DataError
    from deeplab.engine.checkpoint import CheckpointError
    from deeplab.engine.prediction import run

    try:
        failed = run(cfg, HydraConfig.get().runtime.output_dir)
    except (DataError, CheckpointError) as exc:  # the user's to fix: one clear message
        logging.getLogger("deeplab.predict").error("%s", exc)
        sys.exit(1)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
