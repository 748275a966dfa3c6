"""`python -m deeplab.data.annotations from=labelme|cvat|labelstudio|coco source=PATH output=DIR [key=value ...]`: an
annotation tool's export as a `dataset=folder` dataset, checked by the dataset checker, with the train.py line that
trains on it."""

import re
import shlex
import sys

import numpy as np
from omegaconf import DictConfig, OmegaConf

from deeplab.cli import command, typed_settings
from deeplab.data.annotations import IGNORE_INDEX, READERS, ImportResult, import_annotations
from deeplab.data.check import check_dataset
from deeplab.errors import ConfigError

USAGE = (f"usage: python -m deeplab.data.annotations from={'|'.join(READERS)} source=PATH output=DIR "
         f"[class_names=[...]] [images=DIR]")

# the command's own keys' types (annotations.yaml gives their defaults; import_annotations checks their values)
SETTINGS = {"overwrite": bool, "seed": int, "val_ratio": float, "unlabelled": str, "outside": str,
            "source": str | None, "output": str | None, "images": str | None, "class_names": list[str] | None,
            "drop": list[str], "ignore": list[str]}

PLAIN = re.compile(r"[A-Za-z_/.][A-Za-z0-9_\-./]*")  # what Hydra reads as the same string unquoted
KEYWORDS = ("true", "false", "null", "nan", "inf")  # ... except these, which it reads as other values


def hydra_value(text: str) -> str:
    """`text` as a Hydra override reads it back as that string: bare when plain, else quoted."""
    if PLAIN.fullmatch(text) and text.lower() not in KEYWORDS:
        return text
    if "'" not in text:
        return f"'{text}'"
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def train_overrides(result: ImportResult) -> list[str]:
    """The train.py overrides that train on the imported dataset."""
    names = ",".join(hydra_value(name) for name in result.class_names)
    overrides = ["dataset=folder", f"dataset.root={hydra_value(str(result.output.resolve()))}",
                 f"dataset.num_classes={len(result.class_names)}", f"dataset.class_names=[{names}]"]
    if result.allow_ignore_only_masks:  # 255 marks only what the import drew as ignore: real ignore regions
        overrides.append("dataset.allow_ignore_only_masks=true")
    return overrides


def train_command(result: ImportResult) -> str:
    """The shell line that trains on the imported dataset."""
    return "python train.py " + " ".join(shlex.quote(o) for o in train_overrides(result))


def class_table(result: ImportResult) -> str:
    """Each class's index, name, pixels and share of every pixel, then the ignored ones."""
    total = max(int(result.pixels.sum()), 1)
    rows = [*enumerate(result.class_names), (IGNORE_INDEX, "(ignore)")]
    lines = [f"  {'class':<22}{'pixels':>14}{'share':>9}"]
    lines += [f"  {index:>3} {name:<18}{int(result.pixels[index]):>14,}{result.pixels[index] / total:>9.2%}"
              for index, name in rows]
    return "\n".join(lines)


def check_settings(cfg: DictConfig) -> None:
    """The command's own keys, typed and checked before any file is read: one ConfigError naming the key."""
    typed_settings(cfg, SETTINGS)
    if cfg.merge is not None and not isinstance(cfg.merge, DictConfig):
        raise ConfigError(f"merge={cfg.merge}: must map labels to class names, e.g. merge='{{car: vehicle, truck: "
                          f"vehicle}}'")
    for key in ("from", "source", "output"):
        if cfg[key] is None or cfg[key] == "":
            raise ConfigError(f"{key}: not set; {USAGE}")


def run(cfg: DictConfig) -> int:
    """Import, check the written dataset, print the summary, the class table and the train line; the exit status (1
    when the checker finds a problem)."""
    check_settings(cfg)
    options = OmegaConf.to_container(cfg, resolve=True)
    result = import_annotations(options["from"], options["source"], options["output"], images=options["images"],
                                class_names=options["class_names"], merge=options["merge"], drop=options["drop"],
                                ignore=options["ignore"], unlabelled=options["unlabelled"],
                                val_ratio=options["val_ratio"], seed=options["seed"], overwrite=options["overwrite"],
                                outside=options["outside"])
    count = len(set(result.train + result.val))
    print(f"{cfg.source}: {result.tool}, {count} image(s) -> {result.output} (images/, masks/, splits/: "
          f"{len(result.train)} train, {len(result.val)} val)")
    for note in result.notes:
        print(f"note: {note}")
    reports = check_dataset(format="folder", root=str(result.output), num_classes=len(result.class_names),
                            class_names=result.class_names, ignore_index=IGNORE_INDEX,
                            allow_ignore_only_masks=result.allow_ignore_only_masks)
    for report in reports:
        print(f"check: split {report.split}: {report.samples} images, {len(report.problems)} problem(s)")
        print("".join(f"  PROBLEM {p}\n" for p in report.problems) + "".join(f"  NOTE {n}\n" for n in report.notes),
              end="")
    print(f"classes ({len(result.class_names)}; each one's share of the pixels of the {count} image(s)):")
    print(class_table(result))
    empty = [name for index, name in enumerate(result.class_names) if index and not np.any(result.pixels[index])]
    if empty:
        print(f"note: no pixel of {', '.join(empty)}: those classes cannot be learned from this data")
    problems = sum(len(r.problems) for r in reports)
    print(f"train: {train_command(result)}")
    if problems:
        print(f"{problems} problem(s) found in the written dataset", file=sys.stderr)
    return 1 if problems else 0


@command("annotations", logger="deeplab.data.annotations")
def main(cfg: DictConfig) -> None:
    sys.exit(run(cfg))
