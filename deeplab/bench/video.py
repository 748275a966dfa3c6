"""The bench's video section (`sections=[video]`): predict.py's own video loop (`prediction_video.predict_video`) on a
synthetic mp4 at several frames per forward (`batch_size`), interleaved round by round, each stage timed as
predict.py reports it (decode, model, overlay+encode per frame, and frames per second end to end); and the overlay
blend predict uses (uint8: cv2.LUT + cv2.addWeighted) against a float blend of the same frame."""

import statistics
import tempfile
from pathlib import Path

import cv2
import numpy as np
import torch

from deeplab.engine.precision import inference_precision
from deeplab.inference import Predictor, prepare_for_inference
from deeplab.prediction_video import blend, open_video, overlay_lut, predict_video
from deeplab.timing import interleaved
from deeplab.visualization import palette_array


def make_video(path: Path, *, frames: int, size: tuple[int, int], fps: float = 30) -> Path:
    """A photo-like mp4 (smooth gradients, a moving block, noise: what a camera's frames cost to decode)."""
    height, width = size
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    for i in range(frames):
        base = np.stack([(xx + 4 * i) % 256, (yy * 2) % 256, (xx + yy + 8 * i) % 256], -1).astype(np.float32)
        frame = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        x = (width // 8 + 6 * i) % max(width - width // 4, 1)
        frame[height // 3: 2 * height // 3, x: x + width // 4] = (40, 160, 220)
        writer.write(frame)
    writer.release()
    return path


def bench_video(model: torch.nn.Module, *, device: torch.device, size: tuple[int, int], frames: int,
                batch_sizes: list[int], rounds: int, mean, std, precision: str = "auto") -> dict:
    """predict.py's video loop at each batch size (frames per forward), interleaved over `rounds` passes of one
    synthetic video after a warm-up pass; per batch size the median per-frame ms of each stage, frames per second end
    to end, and the model's speed against one frame per forward. `precision`: predict.py's key (auto measures)."""
    forward = prepare_for_inference(model, device=device)
    predictor = Predictor(forward, mean=mean, std=std, device=device, precision=precision)
    table = palette_array(None)
    with tempfile.TemporaryDirectory(prefix="deeplab-bench-video-") as work:
        video = make_video(Path(work) / "bench.mp4", frames=frames, size=size)
        runs: dict[int, list] = {b: [] for b in batch_sizes}

        def one_pass(batch_size: int) -> None:
            target = Path(work) / f"b{batch_size}_overlay.mp4"
            target.unlink(missing_ok=True)
            runs[batch_size].append(predict_video(
                predictor, open_video(video), {"overlay": target}, name="bench.mp4", table=table, alpha=0.5,
                batch_size=batch_size, frame_kinds=[], rows=None, report=lambda line: None, progress=False))

        one_pass(batch_sizes[0])  # warm-up: oneDNN builds its kernels, precision=auto measures on the first frames
        runs[batch_sizes[0]].clear()
        precision = inference_precision(forward, torch.zeros(1, 3, *size, device=device), precision)  # the choice
        interleaved({b: (lambda b=b: one_pass(b)) for b in batch_sizes}, rounds=rounds)
    results = {}
    for batch_size, done in runs.items():
        per_frame = {stage: statistics.median(r.stages[stage] / r.frames for r in done) * 1000
                     for stage in ("decode", "model", "overlay+encode")}
        results[str(batch_size)] = {**{f"{stage}_ms": ms for stage, ms in per_frame.items()},
                                    "fps_end_to_end": statistics.median(r.frames / r.seconds for r in done)}
    first = results[str(batch_sizes[0])]["model_ms"]
    for r in results.values():
        r["model_speedup_vs_first"] = first / r["model_ms"]
    return {"size": list(size), "frames": frames, "rounds": rounds, "precision": precision,
            "batch_sizes": results, "overlay_blend_ms": _blend_times(size, table)}


def _blend_times(size: tuple[int, int], table: np.ndarray, rounds: int = 20) -> dict:
    """ms per frame of predict's uint8 overlay blend and of a float blend (numpy fancy indexing, float32 arithmetic:
    how an overlay is often written), on the same frame and labels."""
    rng = np.random.default_rng(1)
    frame = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    labels = rng.integers(0, 21, size)
    lut = overlay_lut(table)
    bgr = np.ascontiguousarray(table[:, ::-1])

    def float_blend() -> np.ndarray:
        return (frame.astype(np.float32) * 0.5 + bgr[labels].astype(np.float32) * 0.5).astype(np.uint8)
    times = interleaved({"uint8": lambda: blend(frame, labels, table, 0.5, lut), "float": float_blend}, rounds=rounds)
    return {name: statistics.median(t) * 1000 for name, t in times.items()}


def format_video(result: dict) -> str:
    h, w = result["size"]
    lines = [f"video at {h}x{w}, {result['frames']} frames (mp4v), predict.py's loop at each batch_size "
             f"({result['rounds']} interleaved rounds, median; precision {result['precision']}):",
             f"  {'batch_size':<12}{'fps e2e':>9}{'decode ms':>11}{'model ms':>10}{'overlay+encode ms':>19}"
             f"{'model vs first':>16}"]
    for batch_size, r in result["batch_sizes"].items():
        lines.append(f"  {batch_size:<12}{r['fps_end_to_end']:>9.1f}{r['decode_ms']:>11.1f}{r['model_ms']:>10.1f}"
                     f"{r['overlay+encode_ms']:>19.1f}{r['model_speedup_vs_first']:>15.2f}x")
    blends = result["overlay_blend_ms"]
    lines.append(f"  overlay blend per frame: uint8 (cv2.LUT + addWeighted) {blends['uint8']:.2f} ms, float "
                 f"(numpy) {blends['float']:.2f} ms")
    return "\n".join(lines)
