"""Predict label maps for images: python predict.py checkpoint=PATH input=PATH [output=DIR] [key=value ...]."""

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="configs", config_name="predict")
def main(cfg: DictConfig) -> None:
    from deeplab.engine.prediction import run
    from deeplab.errors import user_errors

    with user_errors("deeplab.predict"):  # the user's to fix: one clear sentence, exit 1
        failed = run(cfg, HydraConfig.get().runtime.output_dir)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
