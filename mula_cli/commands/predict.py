"""``mula predict``: parsing PNGs, pose JSON and overlays for your own pictures, videos and cameras."""

from __future__ import annotations

import glob
import hashlib
import os
from enum import Enum
from pathlib import Path
from typing import Optional

import numpy as np
import typer
from rich.markup import escape

from mula_cli.utils.console import err, out
from mula_cli.utils.devices import check_device_option
from mula_cli.utils.errors import MulaError
from mula_cli.utils.files import atomic_write, next_dir, remove_stale_partials, write_json

# Phones' HEIC/HEIF photos are listed too: Pillow reads them only with a plugin, and a folder must
# name a photo it cannot read (with what to do) rather than leave it out without a word.
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm", ".pgm", ".avif", ".heic",
                  ".heif"}


class PoseFormat(str, Enum):
    mula = "mula"
    openpose = "openpose"
    openpose_coco18 = "openpose-coco18"
    coco = "coco"


class Source(str, Enum):
    auto = "auto"
    images = "images"
    video = "video"
    webcam = "webcam"


def video_source(sources: list[str], kind: Source) -> tuple[str, bool] | None:
    """(source, is a camera) when ``mula predict`` should run on a video, stream or camera, else None."""
    from mula_cli.io.video import is_video

    if kind == Source.images:
        return None
    if kind == Source.webcam:
        if len(sources) > 1:
            raise MulaError(f"--source webcam takes one camera (an index like 0 or a device path), not {len(sources)}")
        return (sources[0] if sources else "0"), True
    if not sources:
        raise MulaError("nothing to predict: name pictures, folders, a video, a stream URL, or a camera (0)")
    videos = [s for s in sources if kind == Source.video or is_video(s)]
    if not videos:
        return None
    if len(sources) > 1:
        raise MulaError(f"predict one video, stream or camera at a time ({videos[0]} is one of {len(sources)} "
                        "sources); run mula predict once per video")
    return videos[0], False


def expand_sources(sources: list[str]) -> list[tuple[Path, Path]]:
    """(file, relative output stem) for every image named by files, folders (recursive) or globs."""
    items: list[tuple[Path, Path]] = []
    for source in sources:
        path = Path(source).expanduser()
        if path.is_dir():
            # a link whose target is gone is listed too, so that it is reported rather than passed over
            found = sorted(p for p in path.rglob("*")
                           if (p.is_file() or (p.is_symlink() and not p.exists())) and p.suffix.lower() in IMAGE_SUFFIXES)
            items += [(p, p.relative_to(path).with_suffix("")) for p in found]
        elif path.exists() or not any(c in source for c in "*?["):
            items.append((path, Path(path.stem)))
        else:
            matches = sorted(Path(m) for m in glob.glob(os.path.expanduser(source), recursive=True))
            items += [(m, Path(m.stem)) for m in matches if m.is_file()]
    unique: dict[Path, Path] = {}
    taken: set[Path] = set()
    for file, stem in items:
        if file in unique:
            continue
        candidate, n = stem, 2
        while candidate in taken:  # a.jpg and a.png in one folder: a, a_2
            candidate = stem.with_name(f"{stem.name}_{n}")
            n += 1
        taken.add(candidate)
        unique[file] = candidate
    return list(unique.items())


def newest_best(project: Path = Path("runs/train")) -> Path:
    found = sorted(project.glob("*/weights/best.pt"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise MulaError(f"no --weights given and no {project}/*/weights/best.pt found; train a model or pass --weights")
    return found[-1]


def pose_layout(predictor, pose_format: PoseFormat):
    """The keypoint layout of ``--pose-format`` for the model's joints (None for mula's own); a MulaError
    naming the manifest when it does not map its joints to that format."""
    from mula_cli.io.pose_records import keypoint_layout

    return None if pose_format == PoseFormat.mula else keypoint_layout(predictor.manifest, pose_format.value)


def pose_document(image: Path, size: tuple[int, int], prediction, predictor, weights_id: str, layout=None):
    """A picture's pose JSON: mula's own document, or ``layout``'s format (OpenPose's, COCO results)."""
    from mula_cli.io.pose_records import (
        coco_image_id,
        formatted_pose,
        joint_records,
        people_document,
        pose_people,
    )

    if layout is not None:
        return formatted_pose(layout, pose_people(prediction.joints, prediction.scores, prediction.people),
                              coco_image_id(image.stem), size[1], size[0])
    m = predictor.manifest
    return {
        "image": str(image),
        "width": size[1],
        "height": size[0],
        "model": {"preset": predictor.config.preset, "variant": predictor.config.variant,
                  "weights": str(predictor.weights), "sha256": weights_id},
        "joints": joint_records(m.joints, prediction.joints, prediction.scores),
        "skeleton": [[m.joints[a], m.joints[b]] for a, b in m.skeleton],
        "parsing_classes": list(m.classes),
        **({} if prediction.people is None else people_document(image, prediction.people, m)),
    }


def predict(
    sources: Optional[list[str]] = typer.Argument(None, help="Images, folders (searched recursively), globs like 'photos/*.jpg', or one video file, stream URL (rtsp://, http://...) or camera (0, /dev/video1)."),
    weights: Optional[Path] = typer.Option(None, "--weights", "-w", help="Weights (.pt), a known name (authors-lip, after `mula weights get`) or an exported model (.torchscript/.onnx/OpenVINO .xml). Default: the newest runs/train/*/weights/best.pt."),
    out_path: Optional[Path] = typer.Option(None, "--out", "-o", help="Parsing PNG for a single image (palette PNG, pixel = class id)."),
    pose_path: Optional[Path] = typer.Option(None, "--pose", help="Pose JSON for a single image; JSON Lines (one record per frame) for a video."),
    pose_format: PoseFormat = typer.Option(PoseFormat.mula, "--pose-format", help="Layout of the pose JSON: mula (every joint by name, with the model and skeleton); openpose (OpenPose's JSON in BODY_25 order, OpenPose's default, as try-on and ControlNet pipelines read it); openpose-coco18 (the same in OpenPose's 18-keypoint COCO order); coco (COCO keypoint results, COCO-17 order). Keypoints the dataset has no joint for are 0 0 0. Video: one document per frame and line."),
    vis_path: Optional[Path] = typer.Option(None, "--vis", help="Overlay picture for a single image; overlay video (.mp4, .mkv, .mov, .avi, .webm) for a video."),
    out_dir: Optional[Path] = typer.Option(None, "--out-dir", help="Folder for <name>.png, <name>.json and <name>_overlay.jpg of every image (folder structure mirrored); for a video, per-frame label PNGs in <name>/ (and the overlay and JSON Lines unless --vis/--pose name them). Default: runs/predict/expN."),
    overlays: bool = typer.Option(True, "--overlays/--no-overlays", help="With --out-dir: also write overlay pictures (the overlay video for a video)."),
    flip: bool = typer.Option(False, "--flip", help="Flip testing for parsing too (pose is flip-averaged anyway)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    batch_size: int = typer.Option(8, "--batch-size", "-b", min=1, help="Images (video frames) per forward pass."),
    source: Source = typer.Option(Source.auto, "--source", help="What the arguments are: auto (by name), images, video (a file or URL whatever its name), webcam (a camera; the argument is its index or device, default 0)."),
    stride: int = typer.Option(1, "--stride", min=1, help="Video: predict every n-th frame (the overlay video then has 1/n of the frame rate)."),
    smooth: bool = typer.Option(False, "--smooth", help="Video: smooth joints over time (One Euro filter) for steadier skeletons."),
    show: bool = typer.Option(False, "--show", help="Video and camera: show the overlay in a window as it is made (nothing is shown without a display)."),
    fast: bool = typer.Option(True, "--fast/--eager", help="The fast path (BatchNorm folded, channels_last, fused convolutions; same results up to float rounding) or the plain eager model."),
    precision: str = typer.Option("auto", "--precision", help="The network's arithmetic: auto (bfloat16 on GPUs and on CPUs with native bfloat16, AVX512-BF16 or AMX; float32 elsewhere), fp32 or bf16. Decoding is float32 either way; the README gives what bfloat16 changes on trained weights."),
    bf16: bool = typer.Option(False, "--bf16", hidden=True, help="Same as --precision bf16."),
    min_score: Optional[float] = typer.Option(None, "--min-score", help="Multi-person models: smallest heatmap peak that counts as a joint candidate. Default: 0.1 (Pose Partition Networks).", rich_help_panel="Multi-person"),
    group_distance: Optional[float] = typer.Option(None, "--group-distance", help="Multi-person models: votes for person centres closer than this fraction of the input side form one person. Default: 0.3125 (PPN's radius is 120 px of the original picture, 0.24 of a 500-px one; see docs/multi_person.md).", rich_help_panel="Multi-person"),
    min_joints: Optional[int] = typer.Option(None, "--min-joints", help="Multi-person models: people with fewer joints are dropped. Default: 4 (PPN).", rich_help_panel="Multi-person"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Predict parsing and pose on pictures (at their original resolution), a video, a stream or a camera."""
    from mula_cli.codecs.partition import grouping_from_options
    from mula_cli.inference.predictor import read_image
    from mula_cli.io.visualize import draw_pose, overlay, save_label_png
    from mula_cli.utils.progress import make_progress

    check_device_option(device)  # before looking for pictures: a typo is reported first
    grouping = grouping_from_options(min_score, group_distance, min_joints)
    sources = list(sources or [])
    video = video_source(sources, source)
    if video is not None:
        if out_path is not None:
            raise MulaError("--out names one label PNG; for a video, --out-dir writes one label PNG per frame")
        predictor = _predictor(weights, device, flip, fast, "bf16" if bf16 else precision, grouping)
        pose_layout(predictor, pose_format)  # a manifest without the mapping: said before the source opens
        from mula_cli.commands.predict_video import VideoRequest, predict_video_command

        predict_video_command(VideoRequest(source=video[0], camera=video[1], vis_path=vis_path, pose_path=pose_path,
                                           out_dir=out_dir, overlays=overlays, stride=stride, batch_size=batch_size,
                                           smooth=smooth, show=show, quiet=quiet, pose_format=pose_format.value),
                              predictor)
        return
    items = expand_sources(sources)
    if not items:
        raise MulaError(f"no images found in {', '.join(sources)}")
    single = out_path or pose_path or vis_path
    if single and len(items) > 1:
        raise MulaError(f"--out/--pose/--vis name files for one image but {len(items)} were given; use --out-dir")
    predictor = _predictor(weights, device, flip, fast, "bf16" if bf16 else precision, grouping)
    layout = pose_layout(predictor, pose_format)
    weights_id = hashlib.sha256(Path(predictor.weights).read_bytes()).hexdigest()[:16]
    folder = None if single else (out_dir or next_dir(Path("runs/predict")))
    targets = [Path(p) for p in (out_path, pose_path, vis_path) if p] if single else \
        [Path(folder) / stem for _, stem in items]
    for where in {t.parent for t in targets}:  # what a killed earlier run was writing
        remove_stale_partials(where)
    failed: list[tuple[Path, str]] = []
    written = 0
    with make_progress(quiet) as bar:
        task = bar.add_task("predict", total=len(items), unit="images")
        for start in range(0, len(items), batch_size):
            chunk, pictures = [], []
            for file, stem in items[start:start + batch_size]:
                try:
                    pictures.append(read_image(file, max_side=predictor.input_size))
                    chunk.append((file, stem))
                except MulaError as exc:
                    failed.append((file, str(exc)))
                    err.print(f"[yellow]skipped[/] {escape(str(exc))}", soft_wrap=True)  # names may hold [brackets]
            if chunk:
                results = predictor.predict_decoded(pictures)
                for (file, stem), (img, _), result in zip(chunk, pictures, results):
                    targets = _targets(folder, stem, out_path, pose_path, vis_path, overlays)
                    _write(targets, file, img, result, predictor, weights_id, save_label_png, overlay, draw_pose,
                           layout)
                    written += 1
            bar.advance(task, len(items[start:start + batch_size]))
    where = folder if folder is not None else ", ".join(str(p) for p in (out_path, pose_path, vis_path) if p)
    out.print(escape(f"{written} image(s) predicted with {predictor.weights}; outputs: {where}"))
    if failed:
        err.print(f"[red]{len(failed)} file(s) could not be read[/]: " + escape(", ".join(str(f) for f, _ in failed[:5])),
                  soft_wrap=True)
        raise typer.Exit(1)


def _predictor(weights: Optional[Path], device: str, flip: bool, fast: bool, precision: str, grouping=None):
    from mula_cli.inference.predictor import Predictor
    from mula_cli.utils.devices import check_precision_option

    check_precision_option(precision)
    if weights is None:
        weights = newest_best()
        out.print(escape(f"using weights {weights} (the newest best.pt under runs/train)"))
    predictor = Predictor(weights, device, flip=flip, fast=fast, precision=precision, grouping=grouping)
    err.print(f"prediction path: {predictor.path}", highlight=False)
    return predictor


def _targets(folder, stem, out_path, pose_path, vis_path, overlays) -> dict[str, Optional[Path]]:
    if folder is None:
        return {"labels": out_path, "pose": pose_path, "vis": vis_path}
    base = Path(folder) / stem
    return {"labels": base.with_name(base.name + ".png"), "pose": base.with_name(base.name + ".json"),
            "vis": base.with_name(base.name + "_overlay.jpg") if overlays else None}


def _write(targets, file, img, result, predictor, weights_id, save_label_png, overlay, draw_pose,
           layout=None) -> None:
    m = predictor.manifest
    if targets["labels"] is not None:
        save_label_png(targets["labels"], result.labels, m)
    if targets["pose"] is not None:
        doc = pose_document(file, result.size, result, predictor, weights_id, layout)
        write_json(targets["pose"], doc)
    if targets["vis"] is not None:
        # drawn at the decoded size: the original for ordinary photos, a reduced one for huge JPEGs
        labels, joints = result.labels, result.joints
        scale = np.array([img.width / result.size[1], img.height / result.size[0], 1.0])
        if img.size != (result.size[1], result.size[0]):
            from PIL import Image

            labels = np.asarray(Image.fromarray(labels).resize(img.size, Image.Resampling.NEAREST))
            joints = joints * scale[:2]
        people = None if result.people is None else [p.joints * scale for p in result.people]
        drawn = draw_pose(overlay(img, labels, m), m, joints, result.scores, people)
        fmt = "PNG" if targets["vis"].suffix.lower() == ".png" else "JPEG"
        atomic_write(targets["vis"], lambda p: drawn.save(p, format=fmt, **({"quality": 90} if fmt == "JPEG" else {})))
