"""Train DeepLabV3+/MobileNetV2: python train.py [dataset=voc] [experiment=voc_os16] [key=value ...]."""

import logging
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float:
    from deeplab.data import DataError
    from deeplab.engine.checkpoint import CheckpointError
    from deeplab.engine.trainer import TrainingDiverged, train

    try:
        return train(cfg, HydraConfig.get().runtime.output_dir)
    except (DataError, CheckpointError, TrainingDiverged) as exc:  # the user's to fix: one clear message
        logging.getLogger("deeplab.train").error("%s", exc)
        sys.exit(1)


if __name__ == "__main__":
    main()
