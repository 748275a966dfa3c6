"""Train DeepLabV3+/MobileNetV2: python train.py [dataset=voc] [experiment=voc_os16] [key=value ...]."""

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float:
    from deeplab.engine.trainer import train
    from deeplab.errors import user_errors

    with user_errors("deeplab.train"):  # the user's to fix: one clear sentence, exit 1
        job = HydraConfig.get()
        return train(cfg, job.runtime.output_dir, overrides=job.overrides.task)


if __name__ == "__main__":
    main()
