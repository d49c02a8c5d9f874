"""Where the time goes when `mula predict` runs on a video: decoding, the network, or writing.

Writes a phone-like test video (a generated person panning across the frame, 1280x720 by default),
predicts it with the default prediction path through the same pipeline `mula predict clip.mp4`
uses (decode, predict and write threads; overlay video and JSON Lines), and records each stage's
busy time. For reference it also times decoding alone and drawing plus encoding alone. Prints a
summary and saves ``benchmarks/results/video_pipeline.json``.

    python benchmarks/video_pipeline.py [--model hg-5s] [--frames 24] [--size 1280x720] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mula_cli.bench.predict import machine, write_random_weights
from mula_cli.inference.predictor import Predictor
from mula_cli.inference.video_predict import VideoOptions, VideoOutputs, predict_video
from mula_cli.io.video import VideoWriter, open_source

RESULTS = Path(__file__).resolve().parent / "results" / "video_pipeline.json"


def write_clip(path: Path, frames: int, size: tuple[int, int], fps: int = 30) -> Path:
    """A generated person on a background wider than the frame, panning two pixels a frame."""
    from mula_cli.data.synthetic.writer import lip_scene

    width, height = size
    _, scene = lip_scene(7, "test", 0)
    scale = height / scene.image.height
    wide = scene.image.resize((max(width + 2 * frames, round(scene.image.width * scale)), height))
    canvas = Image.new("RGB", (wide.width + width, height), (110, 120, 130))
    canvas.paste(wide, (width // 2, 0))
    writer = VideoWriter(path, Fraction(fps), width, height)
    try:
        for i in range(frames):
            writer.write(np.asarray(canvas.crop((2 * i, 0, 2 * i + width, height))), i / fps)
    finally:
        writer.close()
    return path


def decode_only(path: Path) -> float:
    start = time.perf_counter()
    reader = open_source(str(path))
    count = sum(1 for _ in reader)
    reader.close()
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="hg-5s")
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--size", default="1280x720")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    width, height = (int(v) for v in args.size.lower().split("x"))
    with tempfile.TemporaryDirectory(prefix="mula-video-bench-") as tmp:
        folder = Path(tmp)
        clip = write_clip(folder / "clip.mp4", args.frames, (width, height))
        weights = write_random_weights(folder / f"{args.model}.pt", args.model)
        predictor = Predictor(weights, "cpu")
        predictor.predict_decoded([(Image.new("RGB", (width, height)), (height, width))])  # warm-up
        decode_rate = decode_only(clip)
        reader = open_source(str(clip))
        outputs = VideoOutputs(vis=folder / "overlay.mp4", pose=folder / "poses.jsonl")
        report = predict_video(predictor, reader, outputs, VideoOptions(batch_size=args.batch_size))
        reader.close()
        if report.error:
            raise SystemExit(f"the pipeline failed: {report.error}")
    result = {
        "what": "mula predict on a video: busy time of each pipeline stage (decode, network with pose flip, "
                "overlay drawing + encoding + JSON Lines), and decoding alone for reference",
        "model": args.model, "frame_size": [width, height], "frames": args.frames, "batch_size": args.batch_size,
        "prediction_path": predictor.path, "machine": machine(),
        "decode_only_frames_per_s": round(decode_rate, 1),
        "pipeline": report.to_dict(),
        "model_ms_per_frame": round(1000 * report.model_busy_s / max(1, report.frames_predicted), 1),
        "decode_ms_per_frame": round(1000 * report.decode_busy_s / max(1, report.frames_decoded), 1),
        "write_ms_per_frame": round(1000 * report.encode_busy_s / max(1, report.frames_written), 1),
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"{args.model} on {args.frames} frames of {width}x{height}: {report.summary()}")
    print(f"per frame: network {result['model_ms_per_frame']} ms, decode {result['decode_ms_per_frame']} ms, "
          f"draw + encode + JSON {result['write_ms_per_frame']} ms; decoding alone runs at {decode_rate:.0f} "
          "frames/s")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
