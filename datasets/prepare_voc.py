"""Prepare PASCAL VOC 2012 + SBD: download, SBD .mat masks -> SegmentationClassAug PNGs, and the train_aug split.

    python datasets/prepare_voc.py [--root datasets] [--download] [--force]

Idempotent: a second run writes nothing. An existing file whose content differs is a conflict: it is named, left
untouched and the exit status is 1, unless --force. The mask steps show a progress bar (rate, ETA) on a terminal;
DEEPLAB_PROGRESS=1 shows it anywhere, DEEPLAB_PROGRESS=0 nowhere.
"""

import argparse
import shutil
import sys
import tarfile
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from deeplab.progress import progress_bar
from deeplab.torch_files import atomic_write

VOC_DIR = Path("VOCdevkit", "VOC2012")  # torchvision's VOCSegmentation extracts here under the root
SBD_DIR = Path("SBD")
SPLIT_DIR = Path("ImageSets", "Segmentation")
AUG_MASK_DIR = "SegmentationClassAug"
SHOW_AT_MOST = 20  # names listed per problem before "... and N more"


class PrepareError(Exception):
    """A problem the user must fix; main prints it without a traceback."""


@dataclass
class Tally:
    """What happened to the files of one step."""

    written: int = 0
    identical: int = 0
    conflicts: list[Path] = field(default_factory=list)


def voc_colour_map(n: int = 256) -> list[int]:
    """The VOCdevkit colour map (VOClabelcolormap.m) as a flat PIL palette; index 255 is the cream border colour."""
    flat = []
    for index in range(n):
        r = g = b = 0
        c = index
        for bit in range(7, -1, -1):  # the index's bits are spread over the colour channels, high bits first
            r, g, b = r | (c & 1) << bit, g | (c >> 1 & 1) << bit, b | (c >> 2 & 1) << bit
            c >>= 3
        flat += [r, g, b]
    return flat


def read_ids(path: Path) -> list[str]:
    """Ids of a split file, one per line; a missing file is an error naming it."""
    if not path.is_file():
        raise PrepareError(f"split file not found: {path}")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def load_sbd_mask(path: Path) -> np.ndarray:
    """The class-index map GTcls.Segmentation of an SBD cls/*.mat file, as uint8 H x W."""
    try:
        from scipy.io import loadmat
    except ImportError as err:
        raise PrepareError("reading SBD's .mat files needs scipy: pip install scipy") from err
    try:
        seg = loadmat(path, mat_dtype=True, squeeze_me=True, struct_as_record=False)["GTcls"].Segmentation
    except (KeyError, AttributeError, ValueError, OSError) as err:
        raise PrepareError(f"{path}: not an SBD class mask (no GTcls.Segmentation): {err}") from err
    seg = np.asarray(seg)
    # mat_dtype may hand back doubles; only whole numbers in 0..255 are class indices
    if seg.ndim != 2 or not np.array_equal(seg, np.clip(np.round(seg), 0, 255)):
        raise PrepareError(f"{path}: GTcls.Segmentation is not a 2-D map of class indices 0..255")
    return seg.astype(np.uint8)


def load_index_png(path: Path) -> np.ndarray:
    """Class indices of a palette or greyscale PNG mask (the palette itself is ignored)."""
    with Image.open(path) as img:
        if img.mode not in ("P", "L"):
            raise PrepareError(f"{path}: mask is a {img.mode} image, expected a palette (P) or greyscale (L) PNG")
        return np.array(img)


def save_index_png(mask: np.ndarray, path: Path, *, palette: list[int] | None = None) -> None:
    """Save class indices as a palette PNG (the VOC colours unless `palette`, a flat [r, g, b, ...] list), atomically
    so a crash leaves no half file."""
    img = Image.fromarray(mask, mode="P")
    img.putpalette(palette or voc_colour_map())
    atomic_write(path, lambda tmp: img.save(tmp, format="PNG"), durable=False)


def put_mask(mask: np.ndarray, path: Path, *, force: bool, tally: Tally, palette: list[int] | None = None) -> None:
    """Write a mask unless the file already holds the same indices; a differing file is a conflict unless force."""
    if path.exists():
        try:
            same = np.array_equal(load_index_png(path), mask)
        except (PrepareError, OSError):  # unreadable or RGB: its content differs from ours
            same = False
        if same:
            tally.identical += 1
            return
        if not force:
            tally.conflicts.append(path)
            return
    save_index_png(mask, path, palette=palette)
    tally.written += 1


def convert_sbd(sbd_root: Path, voc_root: Path, ids: list[str], *, force: bool = False) -> Tally:
    """SBD cls/<id>.mat -> <voc_root>/SegmentationClassAug/<id>.png for each id."""
    out_dir = voc_root / AUG_MASK_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    missing = [sbd_root / "cls" / f"{i}.mat" for i in ids if not (sbd_root / "cls" / f"{i}.mat").is_file()]
    if missing:
        raise PrepareError(f"{len(missing)} SBD mask(s) listed but missing: {names(missing)}")
    tally = Tally()
    for sample_id in progress_bar(ids, desc="SBD masks", unit=" masks"):
        put_mask(load_sbd_mask(sbd_root / "cls" / f"{sample_id}.mat"), out_dir / f"{sample_id}.png",
                 force=force, tally=tally)
    return tally


def copy_voc_masks(voc_root: Path, ids: list[str], *, force: bool = False) -> Tally:
    """VOC SegmentationClass/<id>.png -> SegmentationClassAug/<id>.png, indices (255 borders too) kept."""
    out_dir = voc_root / AUG_MASK_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    missing = [voc_root / "SegmentationClass" / f"{i}.png" for i in ids
               if not (voc_root / "SegmentationClass" / f"{i}.png").is_file()]
    if missing:
        raise PrepareError(f"{len(missing)} VOC mask(s) listed but missing: {names(missing)}")
    tally = Tally()
    for sample_id in progress_bar(ids, desc="VOC masks", unit=" masks"):
        put_mask(load_index_png(voc_root / "SegmentationClass" / f"{sample_id}.png"), out_dir / f"{sample_id}.png",
                 force=force, tally=tally)
    return tally


def train_aug_ids(voc_train: list[str], voc_val: list[str], sbd_train: list[str], sbd_val: list[str]) -> list[str]:
    """(VOC train | SBD train | SBD val) - VOC val, sorted: the standard 10,582-image train_aug."""
    return sorted((set(voc_train) | set(sbd_train) | set(sbd_val)) - set(voc_val))


def write_train_aug(voc_root: Path, ids: list[str], *, force: bool = False) -> Tally:
    """Write ImageSets/Segmentation/train_aug.txt unless it already lists exactly these ids in this order."""
    path = voc_root / SPLIT_DIR / "train_aug.txt"
    text = "".join(f"{i}\n" for i in ids)
    tally = Tally()
    if path.exists() and path.read_text() == text:
        tally.identical += 1
    elif path.exists() and not force:
        tally.conflicts.append(path)
    else:
        atomic_write(path, lambda tmp: tmp.write_text(text))
        tally.written += 1
    return tally


def ensure_jpegs(voc_root: Path, sbd_root: Path, ids: list[str]) -> int:
    """Copy SBD img/<id>.jpg into VOC JPEGImages for any id VOC lacks (normally none); returns the number copied."""
    lacking = [i for i in ids if not (voc_root / "JPEGImages" / f"{i}.jpg").is_file()]
    nowhere = [sbd_root / "img" / f"{i}.jpg" for i in lacking if not (sbd_root / "img" / f"{i}.jpg").is_file()]
    if nowhere:
        raise PrepareError(f"{len(nowhere)} train_aug image(s) in neither {voc_root / 'JPEGImages'} nor SBD: "
                           f"{names(nowhere)}")
    for sample_id in lacking:
        shutil.copyfile(sbd_root / "img" / f"{sample_id}.jpg", voc_root / "JPEGImages" / f"{sample_id}.jpg")
    return len(lacking)


def names(paths: list[Path]) -> str:
    """A readable, bounded list of paths for messages."""
    shown = ", ".join(str(p) for p in paths[:SHOW_AT_MOST])
    return shown + (f" ... and {len(paths) - SHOW_AT_MOST} more" if len(paths) > SHOW_AT_MOST else "")


def download(root: Path) -> None:
    """Fetch and extract VOC 2012 and SBD with torchvision's downloaders, skipping what is already in place."""
    from torchvision.datasets import SBDataset, VOCSegmentation, voc

    voc_info = voc.DATASET_YEAR_DICT["2012"]
    voc_root, sbd_root = root / VOC_DIR, root / SBD_DIR
    failures = []
    if (voc_root / SPLIT_DIR / "val.txt").is_file():
        print(f"VOC 2012 already in {voc_root}")
    else:
        how = (f"download it by hand and extract it into {root} (giving {voc_root}), or put {voc_info['filename']} "
               f"in {root} and run again with --download")
        failures += fetch(lambda: VOCSegmentation(str(root), year="2012", image_set="train", download=True),
                          voc_info["url"], how)
    # SBDataset moves cls/ etc. into its root: where one already exists it would nest it, so never re-run it
    present = [name for name in ("cls", "img", "train.txt", "val.txt") if (sbd_root / name).exists()]
    if len(present) == 4:
        print(f"SBD already in {sbd_root}")
    elif present:
        failures.append(f"SBD is half there: {sbd_root} has {present} but not all of cls/, img/, train.txt, val.txt. "
                        "Remove them to download again, or complete the folder by hand.")
    else:
        how = (f"download it by hand, extract it, and move benchmark_RELEASE/dataset/{{cls,img,train.txt,val.txt}} "
               f"into {sbd_root}; or put {SBDataset.filename} in {sbd_root} and run again with --download")
        failures += fetch(lambda: SBDataset(str(sbd_root), image_set="train", mode="segmentation", download=True),
                          SBDataset.url, how)
    if failures:
        raise PrepareError("\n".join(failures))


def fetch(get: Callable[[], object], url: str, how: str) -> list[str]:
    """Run one torchvision download; a network, checksum or archive failure comes back as a message, not a raise."""
    print(f"downloading {url} (if not already downloaded) ...", flush=True)
    try:
        get()
    except (OSError, RuntimeError, tarfile.TarError, EOFError, zlib.error) as err:  # URLError is an OSError
        return [f"download failed: {url}\n  reason: {type(err).__name__}: {err}\n  offline? {how}"]
    return []


def prepare(root: Path, *, force: bool = False) -> tuple[dict[str, int], dict[str, Tally], int]:
    """Build SegmentationClassAug and train_aug.txt under root; returns split sizes, per-step tallies, JPEGs copied."""
    voc_root, sbd_root = root / VOC_DIR, root / SBD_DIR
    if not (voc_root / SPLIT_DIR).is_dir():
        raise PrepareError(f"VOC 2012 not found: no {voc_root / SPLIT_DIR}. Run with --download, or see "
                           f"{Path(__file__).with_name('README.md')}.")
    if not (sbd_root / "cls").is_dir():
        raise PrepareError(f"SBD not found: no {sbd_root / 'cls'}. Run with --download, or see "
                           f"{Path(__file__).with_name('README.md')}.")
    splits = {"VOC train": read_ids(voc_root / SPLIT_DIR / "train.txt"),
              "VOC val": read_ids(voc_root / SPLIT_DIR / "val.txt"),
              "SBD train": read_ids(sbd_root / "train.txt"), "SBD val": read_ids(sbd_root / "val.txt")}
    aug = train_aug_ids(splits["VOC train"], splits["VOC val"], splits["SBD train"], splits["SBD val"])
    voc_ids = sorted(set(splits["VOC train"]) | set(splits["VOC val"]))
    # VOC's own masks win where both exist: they are finer and carry the 255 borders the benchmark scores with
    sbd_only = sorted((set(splits["SBD train"]) | set(splits["SBD val"])) - set(voc_ids))
    copied = ensure_jpegs(voc_root, sbd_root, aug)
    tallies = {"VOC masks copied": copy_voc_masks(voc_root, voc_ids, force=force),
               "SBD masks converted": convert_sbd(sbd_root, voc_root, sbd_only, force=force),
               "train_aug.txt": write_train_aug(voc_root, aug, force=force)}
    sizes = {name: len(ids) for name, ids in splits.items()} | {"train_aug": len(aug)}
    return sizes, tallies, copied


def report(root: Path, sizes: dict[str, int], tallies: dict[str, Tally], copied: int) -> None:
    """Print split sizes, what was written and where."""
    voc_root = root / VOC_DIR
    print("ids per split: " + ", ".join(f"{name} {n:,}" for name, n in sizes.items()))
    for step, t in tallies.items():
        print(f"{step}: {t.written} written, {t.identical} skipped (identical), {len(t.conflicts)} conflicts")
    print(f"JPEGs copied from SBD: {copied}")
    print(f"masks in {voc_root / AUG_MASK_DIR}, split in {voc_root / SPLIT_DIR / 'train_aug.txt'}")


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parent,
                        help="data root holding VOCdevkit/ and SBD/ (default: this script's folder)")
    parser.add_argument("--download", action="store_true", help="download and extract VOC 2012 and SBD first")
    parser.add_argument("--force", action="store_true", help="overwrite existing files whose content differs")
    args = parser.parse_args(argv)
    try:
        if args.download:
            download(args.root)
        sizes, tallies, copied = prepare(args.root, force=args.force)
    except PrepareError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    report(args.root, sizes, tallies, copied)
    return conflicts_status(tallies.values())


def conflicts_status(tallies: Iterable[Tally]) -> int:
    """The exit status after writing: 1, with the conflicts named on stderr, when any existing file was left alone."""
    conflicts = [p for t in tallies for p in t.conflicts]
    if conflicts:
        print(f"error: {len(conflicts)} existing file(s) differ from what this script would write and were left "
              f"untouched: {names(conflicts)}\n  inspect them, or run again with --force to overwrite them.",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
