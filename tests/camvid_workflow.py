"""The annotation-tool-to-video workflow measured on real photographs (CamVid, prepared by
datasets/prepare_camvid.py), the figures of README's "From annotation tool to video":

    python tests/camvid_workflow.py roundtrip --root datasets/camvid [--split test] [--images 233] [--keep DIR]
    python tests/camvid_workflow.py video --root datasets/camvid --checkpoint outputs/train/<run>/best.pt \
        [--sequence Seq05VD] [--fps 10] [--scales 0.5] [--precision fp32]

`roundtrip` turns the split's masks into each annotation tool's export (tests/annotation_exports.py: OpenCV
contours for the polygon formats, colour masks for CVAT, brush RLE for Label Studio, RLE for COCO), imports each
back with `python -m deeplab.data.annotations`' library call, and prints the share of pixels equal to the original
masks per format and variant (all of them, void/ignore pixels included). `--keep DIR` keeps each import as
DIR/<format>_<variant>, a folder dataset to train on (`python train.py experiment=camvid_cpu dataset.root=...`).

`video` makes an mp4 of the sequence's consecutive frames, runs `python predict.py` on it with save_frames=true,
then runs `python predict.py` on every frame of that video as a PNG image (the frames as OpenCV decodes them, so the
codec's loss is the same on both sides) and prints the share of frames, and of pixels, whose labels are equal, and
predict's frames-per-second line. The sequence's original frames are lossless PNGs; their labels are compared too,
which shows what the video codec's loss changes.

Not a test (pytest collects test_*.py only): CamVid is not in the repository; tests/test_annotations.py and
tests/test_predict_video.py run the same paths on generated data.
"""

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from annotation_exports import FORMATS, agreement, write_export  # noqa: E402

from deeplab.data.annotations import import_annotations  # noqa: E402

CLASS_NAMES = ["sky", "building", "pole", "road", "sidewalk", "tree", "sign", "fence", "car", "pedestrian",
               "bicyclist"]
ROOT = Path(__file__).resolve().parents[1]


def split_stems(root: Path, split: str, limit: int | None) -> list[str]:
    stems = (root / "splits" / f"{split}.txt").read_text().split()
    return stems[:limit] if limit else stems


def roundtrip(args) -> None:
    root = Path(args.root)
    stems = split_stems(root, args.split, args.images)
    masks = {stem: np.asarray(Image.open(root / "masks" / f"{stem}.png")) for stem in stems}
    samples = [(next((root / "images").glob(f"{stem}.*")), masks[stem]) for stem in stems]
    height, width = next(iter(masks.values())).shape
    print(f"{root}: {len(stems)} {args.split} masks at {height}x{width}, "
          f"{sum(int((m == 255).sum()) for m in masks.values()) / sum(m.size for m in masks.values()):.2%} void")
    print(f"{'format':<12} {'variant':<14} {'pixels equal':>13} {'worst image':>12} {'export s':>9} {'import s':>9}")
    for fmt, variants in FORMATS.items():
        for variant in variants:
            if variant.endswith("noimages") or variant == "imagedata":  # the same masks, the images found elsewhere
                continue
            if args.only and f"{fmt}_{variant}" not in args.only:
                continue
            with tempfile.TemporaryDirectory() as scratch:
                scratch = Path(scratch)
                imported = Path(args.keep) / f"{fmt}_{variant}" if args.keep else scratch / "out"
                start = time.perf_counter()
                # background=None: every class is drawn (CamVid has no background class; sky is class 0)
                source = write_export(fmt, samples, CLASS_NAMES, scratch / "export", variant=variant,
                                      background=None)
                exported = time.perf_counter()
                import_annotations(fmt, output=imported, class_names=CLASS_NAMES, progress=False, **source)
                done = time.perf_counter()
                shares = agreement(masks, imported)
            total = sum(shares[s] * masks[s].size for s in stems) / sum(masks[s].size for s in stems)
            print(f"{fmt:<12} {variant:<14} {total:>13.4%} {min(shares.values()):>12.4%} "
                  f"{exported - start:>9.1f} {done - exported:>9.1f}")


def predict(checkpoint: str, source: Path, output: Path, *extra: str) -> str:
    command = [sys.executable, str(ROOT / "predict.py"), f"checkpoint={checkpoint}", f"input={source}",
               f"output={output}", *extra]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def video(args) -> None:
    root = Path(args.root)
    frames = sorted((root / "images").glob(f"{args.sequence}_*.png"))
    if not frames:
        sys.exit(f"{root / 'images'}: no {args.sequence}_*.png frames")
    # one precision for every run: precision=auto times bf16 against fp32 in each process and may choose either
    scales = (f"scales=[{args.scales}]", f"precision={args.precision}")
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        (scratch / "clip").mkdir()
        clip = scratch / "clip" / f"{args.sequence}.mp4"
        first = cv2.imread(str(frames[0]))
        writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), args.fps, first.shape[1::-1])
        for frame in frames:
            writer.write(cv2.imread(str(frame)))
        writer.release()
        print(f"{clip.name}: {len(frames)} frames of {root / 'images'} at {args.fps} fps, "
              f"{first.shape[1]}x{first.shape[0]}")
        out = predict(args.checkpoint, clip, scratch / "video", "save_frames=true", *scales)
        print("predict.py on the video:\n  " + "\n  ".join(line for line in out.splitlines() if line.strip()))
        # the frames as OpenCV decodes the video, written losslessly, then predicted as images
        decoded = scratch / "decoded"
        decoded.mkdir()
        capture = cv2.VideoCapture(str(clip))
        count = 0
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            cv2.imwrite(str(decoded / f"{count:06d}.png"), frame)
            count += 1
        capture.release()
        predict(args.checkpoint, decoded, scratch / "images", *scales, "save_color=false", "save_overlay=false")
        predict(args.checkpoint, root / "images" / f"{args.sequence}_*.png", scratch / "originals", *scales,
                "save_color=false", "save_overlay=false")
        video_labels = sorted((scratch / "video" / f"{args.sequence}_frames").glob("[0-9]*[0-9].png"))
        if len(video_labels) != count or count != len(frames):
            sys.exit(f"frames: {len(frames)} written, {count} decoded, {len(video_labels)} label maps from the video")
        same_frames = same_pixels = original_pixels = pixels = 0
        for index, (labels, frame) in enumerate(zip(video_labels, frames)):
            from_video = np.asarray(Image.open(labels))
            as_image = np.asarray(Image.open(scratch / "images" / f"{index:06d}.png"))
            original = np.asarray(Image.open(scratch / "originals" / f"{frame.stem}.png"))
            same_frames += bool((from_video == as_image).all())
            same_pixels += int((from_video == as_image).sum())
            original_pixels += int((from_video == original).sum())
            pixels += from_video.size
        print(f"frames whose labels equal predict.py on the decoded frame as an image: {same_frames}/{count} "
              f"({same_pixels / pixels:.4%} of pixels)")
        print(f"pixels equal to predict.py on the original lossless frames: {original_pixels / pixels:.4%} "
              "(the mp4 codec's loss)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    one = commands.add_parser("roundtrip", help="each annotation tool's export of the masks, imported back")
    one.add_argument("--root", required=True, help="a prepared CamVid folder (datasets/camvid)")
    one.add_argument("--split", default="test")
    one.add_argument("--images", type=int, default=None, help="the first N of the split (default: all)")
    one.add_argument("--keep", default=None, help="keep each import as a folder dataset under this folder")
    one.add_argument("--only", nargs="*", default=None, help="these <format>_<variant>s only, e.g. labelme_polygon")
    one.set_defaults(run=roundtrip)
    two = commands.add_parser("video", help="a video of consecutive frames predicted, against its frames as images")
    two.add_argument("--root", required=True)
    two.add_argument("--checkpoint", required=True)
    two.add_argument("--sequence", default="Seq05VD", help="the frames' name prefix (CamVid test: Seq05VD, 0001TP)")
    two.add_argument("--fps", type=float, default=10.0)
    two.add_argument("--scales", default="1.0", help="predict.py's scales, e.g. 0.5 for a 180x240 model on 360x480")
    two.add_argument("--precision", default="fp32", help="predict.py's precision for all three runs")
    two.set_defaults(run=video)
    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
