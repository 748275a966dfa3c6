"""Evaluate a checkpoint on a validation split: python evaluate.py checkpoint=PATH [key=value ...]."""

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="configs", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    from deeplab.engine.evaluation import run
    from deeplab.errors import user_errors

    with user_errors("deeplab.evaluate"):  # the user's to fix: one clear sentence, exit 1
        run(cfg, HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    main()
