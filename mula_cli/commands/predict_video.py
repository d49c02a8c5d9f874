"""``mula predict`` for one video file, stream or camera (the picture side is in predict.py)."""

from __future__ import annotations

import signal
from dataclasses import dataclass
from pathlib import Path

import typer

from mula_cli.utils.console import err, out
from mula_cli.utils.errors import MulaError


@dataclass
class VideoRequest:
    """The options of ``mula predict`` that concern a video source."""

    source: str
    camera: bool
    vis_path: Path | None
    pose_path: Path | None
    out_dir: Path | None
    overlays: bool
    stride: int
    batch_size: int
    smooth: bool
    show: bool
    quiet: bool
    pose_format: str = "mula"  # the JSON Lines' layout: mula, openpose, openpose-coco18, coco


def _stem(source: str, camera: bool) -> str:
    if camera:
        return f"camera{source}" if source.isdigit() else "camera"
    name = Path(source.split("?")[0].rstrip("/")).stem
    return name or "stream"


def resolve_outputs(request: VideoRequest):
    """Where the overlay video, the JSON Lines and the per-frame label PNGs go.

    --vis / --pose name exactly what is written; without either, the folder (--out-dir, else
    runs/predict/expN) gets ``<name>_overlay.mp4`` (unless --no-overlays) and ``<name>.jsonl``.
    Per-frame label PNGs (``<out-dir>/<name>/frame_000123.png``) are written only with --out-dir.
    """
    from mula_cli.inference.video_predict import VideoOutputs

    stem = _stem(request.source, request.camera)
    labels = request.out_dir / stem if request.out_dir is not None else None
    if request.vis_path is not None or request.pose_path is not None:
        return VideoOutputs(vis=request.vis_path, pose=request.pose_path, labels_dir=labels)
    if request.out_dir is None:
        from mula_cli.utils.files import next_dir

        folder = next_dir(Path("runs/predict"))
    else:
        folder = request.out_dir
    vis = folder / f"{stem}_overlay.mp4" if request.overlays else None
    return VideoOutputs(vis=vis, pose=folder / f"{stem}.jsonl", labels_dir=labels)


def predict_video_command(request: VideoRequest, predictor) -> None:
    """Run the pipeline, print what happened; MulaError for a damaged source, and after Ctrl-C or SIGTERM
    exit 128 + the signal's number (130, 143), as a shell reports a program the signal stopped."""
    from mula_cli.inference.smoothing import OneEuroSettings
    from mula_cli.inference.video_predict import VideoOptions, predict_video
    from mula_cli.io.video import open_source
    from mula_cli.utils.progress import make_progress

    if request.stride < 1:
        raise MulaError(f"--stride must be at least 1, not {request.stride}")
    if request.vis_path is not None and request.vis_path == request.pose_path:
        raise MulaError(f"--vis and --pose both name {request.vis_path}; give them different files")
    reader = open_source(request.source, camera=request.camera)  # first: a bad source creates no folder
    try:
        outputs = resolve_outputs(request)
    except BaseException:
        reader.close()
        raise
    if outputs.labels_dir is not None:  # label PNGs a killed earlier run was writing
        from mula_cli.utils.files import remove_stale_partials

        remove_stale_partials(outputs.labels_dir)
    options = VideoOptions(stride=request.stride, batch_size=request.batch_size,
                           smooth=OneEuroSettings() if request.smooth else None, show=request.show,
                           pose_format=request.pose_format)
    total = reader.frame_count
    if total is not None:
        total = -(-total // request.stride)
    what = f"{reader.name}: {reader.fps:.3g} frames/s" if reader.fps else reader.name
    out.print(f"{what}{f', {total} frame(s) to predict' if total else ' (live: Ctrl-C stops)'}", highlight=False)
    try:
        with make_progress(request.quiet) as bar:
            task = bar.add_task("predict", total=total, unit="frames")
            report = predict_video(predictor, reader, outputs, options,
                                   progress=lambda n: bar.update(task, completed=n))
    finally:
        reader.close()
    written = ", ".join(str(p) for p in (outputs.vis, outputs.pose, outputs.labels_dir) if p is not None)
    out.print(f"{report.summary()}; outputs: {written}", highlight=False)
    if report.frames_dropped:
        out.print(f"{report.frames_dropped} frame(s) dropped: the camera delivered them faster than the model "
                  "predicts", highlight=False)
    if report.interrupted:
        signum = report.stop_signal or signal.SIGINT
        how = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        err.print(f"stopped by {how} after {report.frames_written} frame(s); everything written so far is kept")
        raise typer.Exit(128 + signum)
    if report.error is not None:
        raise MulaError(f"{report.error} ({report.frames_written} frame(s) before it were predicted and written)")
