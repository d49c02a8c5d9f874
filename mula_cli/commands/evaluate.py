"""``mula evaluate``: paper-comparable numbers on a cache split or a LIP-layout folder."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from mula_cli.utils.console import err, out
from mula_cli.utils.errors import MulaError
from mula_cli.utils.files import atomic_write, finite_json, next_dir, write_json


def evaluate(
    weights: Path = typer.Argument(..., help="Weights file (a run's best.pt, or from `mula import-official`), or an exported model (.torchscript, .onnx, OpenVINO .xml)."),
    data: Optional[str] = typer.Option(None, "--data", help="Dataset name under MULA_HOME, a cache path, or a LIP-layout folder. Default: the dataset the weights were trained on."),
    split: str = typer.Option("val", "--split", help="Split to score."),
    flip: bool = typer.Option(False, "--flip", help="Flip testing for parsing too (pose is flip-averaged by the official protocol anyway)."),
    pose_flip: bool = typer.Option(True, "--pose-flip/--no-pose-flip", help="Average pose heatmaps with the mirrored image (official protocol)."),
    scales: str = typer.Option("1", "--scales", help="Multi-scale testing for both tasks: the picture resized by each factor, e.g. 0.75,1,1.25, or 'paper' (0.7,0.85,1,1.15,1.3)."),
    protocol: str = typer.Option("default", "--protocol", help="Test-time processing: default, or authors (their code's placement, heatmap cropping, integer coordinates and parsing map-back; see docs/fidelity.md)."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Score only the first N images."),
    save_dir: Optional[Path] = typer.Option(None, "--save-dir", help="Also write the LIP pose CSV and one label PNG per image here."),
    batch_size: int = typer.Option(16, "--batch-size", "-b", min=1, help="Images per forward pass."),
    min_score: Optional[float] = typer.Option(None, "--min-score", help="Multi-person models: smallest heatmap peak that counts as a joint candidate. Default: 0.1 (Pose Partition Networks).", rich_help_panel="Multi-person"),
    group_distance: Optional[float] = typer.Option(None, "--group-distance", help="Multi-person models: votes for person centres closer than this fraction of the input side form one person. Default: 0.3125 (PPN's radius is 120 px of the original picture, 0.24 of a 500-px one; see docs/multi_person.md).", rich_help_panel="Multi-person"),
    min_joints: Optional[int] = typer.Option(None, "--min-joints", help="Multi-person models: people with fewer joints are dropped. Default: 4 (PPN).", rich_help_panel="Multi-person"),
    pose_reference: str = typer.Option("mpii", "--pose-reference", help="Multi-person mAP: the distance a joint must fall within half of: mpii (MPII's head size: 0.75 x head-top to neck of the annotated person, 0.75 x 0.13 x its box diagonal where either is missing), head-neck (1.0 x head-top to neck, 0.13 x the box diagonal where either is missing; 4/3 of mpii's radius; formerly 'head') or box (always 0.13 x the box diagonal).", rich_help_panel="Multi-person"),
    map_protocol: str = typer.Option("strict", "--map-protocol", help="Multi-person mAP's edge rules: strict (every picture counts; ties go to the higher person score; a NaN joint score falls back to the person score; joint types without ground truth left out of the mean) or mpii (exactly MPII's evaluateAP: pictures without predictions or without ground truth ignored, first listed wins ties, NaN scores ranked first, plain mean; see docs/multi_person.md).", rich_help_panel="Multi-person"),
    workers: Optional[int] = typer.Option(None, "--workers", "-j", min=0, help="Data-loading processes. Default: 4, at most one per CPU core."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    amp: str = typer.Option("off", "--amp", help="Mixed precision of the network's forward pass: off|auto|bf16|fp16 (GPU or CPU autocast; decoding stays fp32). Default off: fp32, so the numbers do not depend on the hardware."),
    as_json: bool = typer.Option(False, "--json", help="Print metrics.json to stdout instead of tables."),
    plots: bool = typer.Option(True, "--plots/--no-plots", envvar="MULA_PLOTS", help="Write per_class_iou.png, confusion_matrix.png, pckh_curve.png (ap_per_joint.png) and report.html beside metrics.json (plots need the `plots` extra)."),
) -> None:
    """Score a model with the official test protocol (flip-averaged pose, single-pass parsing)."""
    from mula_cli.codecs.partition import grouping_from_options
    from mula_cli.data.cache import CacheFile
    from mula_cli.evaluation.multi_person_metrics import PROTOCOLS as MAP_PROTOCOLS
    from mula_cli.evaluation.multi_person_metrics import REFERENCE_ALIASES, REFERENCES
    from mula_cli.evaluation.runner import eval_loader, evaluate_model
    from mula_cli.inference.batch import PROTOCOLS, InferenceOptions, parse_scales
    from mula_cli.inference.runtime import EXPORTED_SUFFIXES, load_exported
    from mula_cli.model.weights import load_weights
    from mula_cli.plots.figures import Plotter
    from mula_cli.plots.gallery import Gallery
    from mula_cli.plots.report import write_evaluation_outputs
    from mula_cli.utils.devices import amp_dtype as resolve_amp
    from mula_cli.utils.devices import pick_device, precision_name
    from mula_cli.utils.manifests import manifest_from_json
    from mula_cli.utils.progress import make_progress

    if protocol not in PROTOCOLS:
        raise MulaError(f"--protocol {protocol!r} is unknown; use {' or '.join(PROTOCOLS)}")
    if pose_reference not in REFERENCES and pose_reference not in REFERENCE_ALIASES:
        raise MulaError(f"--pose-reference {pose_reference!r} is unknown; use {', '.join(REFERENCES)}")
    if map_protocol not in MAP_PROTOCOLS:
        raise MulaError(f"--map-protocol {map_protocol!r} is unknown; use {' or '.join(MAP_PROTOCOLS)}")
    options = InferenceOptions(pose_flip=pose_flip, parsing_flip=flip, scales=parse_scales(scales),
                               protocol=protocol, grouping=grouping_from_options(min_score, group_distance, min_joints))
    if protocol == "authors":
        from mula_cli.evaluation.authors_protocol import EMULATION_NOTE, check_options
        from mula_cli.transforms.authors_views import opencv

        check_options(pose_flip, flip, options.scales)
        if opencv() is None:
            err.print(f"note: {EMULATION_NOTE}", highlight=False, markup=False)
    dev = pick_device(device)
    amp_dtype = resolve_amp(amp, dev)
    if weights.suffix.lower() in EXPORTED_SUFFIXES:  # runs in its own precision; OpenVINO's as --amp asks (bf16 or f32)
        model = load_exported(weights, dev, precision="bf16" if precision_name(amp_dtype) == "bfloat16" else "fp32")
        config, extra = model.config, model.extra
        amp_dtype = None  # the file's own arithmetic, not autocast's
    else:
        model, config, extra = load_weights(weights, map_location=dev)
    trained_on = manifest_from_json(extra["manifest"]) if "manifest" in extra else None
    with tempfile.TemporaryDirectory(prefix="mula-eval-") as tmp:
        cache_path = _cache_for(data, trained_on, split, Path(tmp))
        with CacheFile(cache_path) as cache:
            manifest = cache.manifest
            cache.split(split)  # a clear error when the split is missing
        if (manifest.num_classes, manifest.num_joints) != (config.num_classes, config.num_joints):
            raise MulaError(f"{weights} predicts {config.num_classes} classes / {config.num_joints} joints but "
                            f"{cache_path} has {manifest.num_classes} / {manifest.num_joints}; pick the matching --data")
        if trained_on is not None:
            _check_same_names(weights, trained_on, cache_path, manifest)
        workers = min(4, os.cpu_count() or 1) if workers is None else workers
        loader = eval_loader(cache_path, split, config.input_size, config.stride, batch_size=batch_size,
                             workers=workers, limit=limit, options=options)
        writer = _PredictionWriter(save_dir, manifest) if save_dir else None
        plotter = Plotter(plots)
        gallery = Gallery() if plots else None  # the report's best and worst pictures
        with make_progress(as_json) as bar:
            task = bar.add_task(f"evaluate {manifest.name}/{split}", total=len(loader.dataset), unit="images")
            result = evaluate_model(model, loader, manifest, options=options, amp_dtype=amp_dtype, pose_reference=pose_reference,
                                    map_protocol=map_protocol, progress=lambda n: bar.advance(task, n),
                                    on_prediction=writer.add if writer else None, gallery=gallery)
        pictures = plotter("the report's pictures", gallery.render, cache_path, split, manifest) if gallery else None
    folder = save_dir or next_dir(Path("runs/evaluate"))
    record = protocol_record(options, config.input_size)
    if result.pose is not None and "map" in result.pose:  # multi-person: the mAP's edge rules
        record["map_protocol"] = map_protocol
    # the network's forward pass; decoding (upsampling, blur, argmax, grouping) is always float32
    precision = {"network": getattr(model, "arithmetic", None) or precision_name(amp_dtype), "decoding": "float32",
                 "device": dev.type}
    doc = metrics_document(result, manifest, weights=weights, data=data or manifest.name, split=split,
                           protocol=record, precision=precision)
    write_json(folder / "metrics.json", doc)
    drawn = write_evaluation_outputs(folder, doc, plotter, confusion=result.confusion, group_curves=result.group_curves,
                                     gallery=pictures)
    if writer is not None:
        writer.close()
    if as_json:
        out.print_json(json.dumps(finite_json(doc)))
        return
    _print_tables(result, manifest)
    out.print(f"{result.images:,} images in {result.seconds:.1f} s; metrics: {folder / 'metrics.json'}"
              + (f"; predictions: {save_dir}" if save_dir else ""))
    if drawn:
        out.print(f"plots and report: {', '.join(str(p) for p in drawn)}", soft_wrap=True)


def _check_same_names(weights: Path, trained_on, cache_path: Path, manifest) -> None:
    """Weights and data with as many classes and joints can still mean different things by them (another
    dataset, or a manifest corrected after training): channel i must name the same class and joint."""
    for what, ours, theirs in (("class", trained_on.classes, manifest.classes),
                               ("joint", trained_on.joints, manifest.joints)):
        differ = [i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b]
        if differ:
            i = differ[0]
            raise MulaError(f"{weights} was trained on {trained_on.name} data whose {what} {i} is {ours[i]!r}, but "
                            f"{what} {i} of {cache_path} ({manifest.name}) is {theirs[i]!r} ({len(differ)} {what} "
                            "name(s) differ); evaluate on the data the weights were trained for (--data)")


def metrics_document(result, manifest, *, weights, data, split: str, protocol: dict,
                     precision: dict | None = None) -> dict:
    """What metrics.json holds for an evaluation ``result`` (also what report.html is drawn from)."""
    return {
        "weights": str(weights), "data": str(data), "split": split, "images": result.images, "protocol": protocol,
        **({"precision": precision} if precision is not None else {}),
        "parsing": {**result.parsing, "class_names": list(manifest.classes)},
        "pose": None if result.pose is None else {**result.pose, "joint_names": list(manifest.joints)},
        "seconds": round(result.seconds, 2),
    }


def protocol_record(options, input_size: int) -> dict:
    """What metrics.json says about the test-time processing, including the sizes the model saw."""
    return {"name": options.protocol, "pose_flip": options.pose_flip,
            "parsing_flip": options.parsing_flip if options.protocol != "authors" else False,
            "scales": list(options.scales), "window": input_size,
            # the picture's long edge in each window: multi-scale resizes the picture, not the window
            "long_edge_per_scale": [round(s * input_size) for s in options.scales],
            "parsing_scales": [1.0] if options.protocol == "authors" else list(options.scales),
            "iou_mean": "nan-mean over classes present in ground truth or prediction",
            **({"opencv": _opencv_version()} if options.protocol == "authors" else {})}


def _opencv_version() -> str | None:
    """The OpenCV that decoded and resized for --protocol authors (None: emulated, see EMULATION_NOTE)."""
    from mula_cli.transforms.authors_views import opencv

    cv2 = opencv()
    return None if cv2 is None else cv2.__version__


def _cache_for(data: Optional[str], trained_on, split: str, tmp: Path) -> Path:
    """A cache path for ``--data``: a prepared dataset, a cache file, or a dataset folder cached on the fly."""
    from mula_cli.data.cache import resolve_cache
    from mula_cli.data.prepare import prepare_dataset

    if data is not None and Path(data).expanduser().is_dir():
        if trained_on is None:
            raise MulaError(f"{data} is a folder but the weights do not say which dataset layout to read; "
                            "prepare it first with `mula prepare`")
        manifest = trained_on
        target = tmp / f"{manifest.name}.h5"
        out.print(f"reading {data} as {manifest.display_name} (split {split}) into a temporary cache")
        prepare_dataset(manifest, Path(data).expanduser(), target, [split])
        return target
    name = data or (trained_on.name if trained_on is not None else "lip")
    return resolve_cache(name)


class _PredictionWriter:
    """LIP submission files: one label PNG per image and the pose CSV (``name.jpg,x0,y0,...``)."""

    def __init__(self, folder: Path, manifest) -> None:
        from mula_cli.io.visualize import save_label_png

        self.folder, self.manifest, self._save = Path(folder), manifest, save_label_png
        (self.folder / "parsing").mkdir(parents=True, exist_ok=True)
        self.rows: list[str] = []
        self.people: list[dict] = []

    def add(self, pred) -> None:
        self._save(self.folder / "parsing" / f"{pred.id}.png", pred.labels, self.manifest)
        if pred.people is not None:  # multi-person: COCO keypoint results
            from mula_cli.io.pose_records import people_document

            self.people += people_document(Path(pred.id), pred.people, self.manifest)["people"]
            return
        coords = [str(int(round(v))) for xy in pred.joints for v in xy]
        self.rows.append(",".join([f"{pred.id}.jpg", *coords]))

    def close(self) -> None:
        if self.rows:
            path = self.folder / f"pred_keypoints_{self.manifest.name}.csv"
            atomic_write(path, lambda temp: temp.write_text("\n".join(self.rows) + "\n", encoding="utf-8"))
        if self.manifest.multi_person:
            write_json(self.folder / f"pred_people_{self.manifest.name}.json", self.people)


def _fmt(value: float) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2f}"


def _print_tables(result, manifest) -> None:
    p = result.parsing
    summary = Table(title="parsing (percent)", title_justify="left")
    for col in ("PixelAcc", "MeanAcc", "mIoU", "fwIoU"):
        summary.add_column(col, justify="right")
    summary.add_row(_fmt(p["pixel_acc"]), _fmt(p["mean_acc"]), _fmt(p["miou"]), _fmt(p["fwiou"]))
    out.print(summary)
    classes = Table(title="per-class IoU (percent; - = class absent)", title_justify="left")
    classes.add_column("class")
    classes.add_column("IoU", justify="right")
    classes.add_column("acc", justify="right")
    for name, iou, acc in zip(manifest.classes, p["class_iou"], p["class_acc"]):
        classes.add_row(name, _fmt(iou), _fmt(acc))
    out.print(classes)
    if result.pose is None:
        out.print("pose: multi-person pose metrics (mAP) need a multi-person pose model; only parsing is scored")
        return
    q = result.pose
    if "map" in q:  # multi-person
        _print_map(q, manifest)
        return
    _print_pose(f"PCKh over {q['images']} images ({q['excluded_images']} without both head joints excluded); "
                f"PCK@0.2 of torso size {_fmt(q['pck_torso@0.2'])}",
                "PCKh@0.5 (percent)", q["groups"], "PCKh@0.5 per joint", "PCKh", q["joint_pckh"], manifest)


def _print_map(q: dict, manifest) -> None:
    """Multi-person pose: mAP with the usual groups, then AP per joint."""
    _print_pose(f"{q['images']} images, {q['gt_people']} people annotated, {q['pred_people']} predicted; "
                f"reference distance: {q['reference']}",
                f"pose AP@{q['threshold']:g} (percent; MPII multi-person AP, {q.get('map_protocol', 'strict')} edge rules)",
                {**q["groups"], "mAP": q["map"]},
                "AP per joint", "AP", q["joint_ap"], manifest)


def _print_pose(line: str, groups_title: str, groups: dict, joints_title: str, metric: str, per_joint: list,
                manifest) -> None:
    """One row of group scores, a line about what was scored, one row per joint."""
    row = Table(title=groups_title, title_justify="left")
    for name in groups:
        row.add_column(name, justify="right")
    row.add_row(*(_fmt(v) for v in groups.values()))
    out.print(row)
    out.print(line)
    joints = Table(title=joints_title, title_justify="left")
    joints.add_column("joint")
    joints.add_column(metric, justify="right")
    for name, value in zip(manifest.joints, per_joint):
        joints.add_row(name, _fmt(value))
    out.print(joints)
