"""`python -m deeplab.data.check dataset=<name> [overrides]`: read every sample of each split, report problems
and the per-class pixel histogram, and exit 1 on any problem."""

import sys

from omegaconf import DictConfig, OmegaConf

from deeplab.cli import command
from deeplab.data.check import check_dataset, format_report


def run(cfg) -> int:
    """Check the configured dataset, print the report, and return the exit code (1 on any problem)."""
    dataset_cfg = OmegaConf.to_container(cfg.dataset, resolve=True)
    reports = check_dataset(splits=cfg.splits, workers=cfg.workers, **dataset_cfg)
    names = dataset_cfg.get("class_names") or [str(i) for i in range(dataset_cfg["num_classes"])]
    print(format_report(reports, names, dataset_cfg.get("ignore_index", 255)))
    problems = sum(len(r.problems) for r in reports)
    print(f"{problems} problem(s) found" if problems else "no problems found")
    return 1 if problems else 0


@command("check", logger="deeplab.data.check")
def main(cfg: DictConfig) -> None:
    sys.exit(run(cfg))
