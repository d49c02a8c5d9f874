"""The plots ``mula evaluate`` writes beside ``metrics.json``.

``per_class_iou.png`` (bars, best first), ``confusion_matrix.png`` (each ground-truth class's pixels
spread over the predicted classes), ``pckh_curve.png`` (single-person: PCKh against the threshold,
one line per joint group) and ``ap_per_joint.png`` (multi-person). Class and joint names come from
``metrics.json``, which records the dataset's manifest names.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mula_cli.plots.figures import Plotter, finite, new_figure, save_png

PER_CLASS_IOU, CONFUSION = "per_class_iou.png", "confusion_matrix.png"
PCKH_CURVE, AP_PER_JOINT = "pckh_curve.png", "ap_per_joint.png"


def _bars(values: list[float], names: list[str], mean: float, what: str, title: str, path: Path) -> Path:
    """Horizontal bars sorted best first; names without a value are listed under the axis."""
    scored = sorted(((v, n) for v, n in zip(values, names) if math.isfinite(v)), key=lambda p: -p[0])
    missing = [n for v, n in zip(values, names) if not math.isfinite(v)]
    fig = new_figure(6.0, 1.0 + 0.22 * max(len(scored), 3))
    ax = fig.add_subplot()
    ys = np.arange(len(scored))
    ax.barh(ys, [v for v, _ in scored], color="C0", height=0.7)
    for y, (v, _) in zip(ys, scored):
        ax.text(v + 0.8, y, f"{v:.1f}", va="center", fontsize=6)
    ax.set_yticks(ys, [n for _, n in scored], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 105)
    if math.isfinite(mean):
        ax.axvline(mean, color="C3", ls="--", lw=1, label=f"{what} {mean:.1f}")
        ax.legend(fontsize=7, loc="lower right")
    ax.set_xlabel(f"{title} (%)", fontsize=7)
    if missing:  # classes (joints) absent from ground truth and prediction have no score
        note = textwrap.fill(f"no score (absent): {', '.join(missing)}", 110)
        fig.text(0.02, 0.01, note, fontsize=6, color="0.4", va="bottom")
    ax.tick_params(axis="x", labelsize=7)
    ax.grid(axis="x", alpha=0.3, lw=0.5)
    height = fig.get_figheight()
    fig.subplots_adjust(left=0.22, right=0.97, top=1 - 0.15 / height, bottom=0.7 / height)
    return save_png(fig, path)


def draw_per_class_iou(parsing: Mapping[str, Any], path: Path) -> Path:
    """Per-class IoU of ``metrics.json``'s parsing section, sorted, with the mIoU as a line."""
    miou = finite([parsing["miou"]])[0]
    return _bars(finite(parsing["class_iou"]), list(parsing["class_names"]), miou, "mIoU", "IoU", path)


def draw_ap_per_joint(pose: Mapping[str, Any], path: Path) -> Path:
    """Multi-person AP per joint, sorted, with the mAP as a line."""
    mean_ap = finite([pose["map"]])[0]
    return _bars(finite(pose["joint_ap"]), list(pose["joint_names"]), mean_ap, "mAP", "AP", path)


def draw_confusion(confusion: np.ndarray, class_names: list[str], path: Path) -> Path:
    """The confusion matrix with each row (a ground-truth class) normalised to its pixels."""
    matrix = np.asarray(confusion, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        rows = matrix / matrix.sum(axis=1, keepdims=True)
    rows = 100.0 * np.nan_to_num(rows)  # percent; a class without ground truth: an empty row
    k = len(class_names)
    side = 2.0 + 0.28 * k
    fig = new_figure(side + 0.8, side)
    ax = fig.add_subplot()
    image = ax.imshow(rows, cmap="Blues", vmin=0.0, vmax=100.0)
    ticks = np.arange(k)
    ax.set_xticks(ticks, class_names, rotation=90, fontsize=6)
    ax.set_yticks(ticks, class_names, fontsize=6)
    ax.set_xlabel("predicted", fontsize=8)
    ax.set_ylabel("ground truth", fontsize=8)
    if k <= 30:  # numbers stay legible up to about 30 classes
        for g, p in zip(*np.nonzero(rows >= 1.0)):
            ax.text(p, g, f"{rows[g, p]:.0f}", ha="center", va="center", fontsize=4.5,
                    color="white" if rows[g, p] > 50 else "black")
    bar = fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02)
    bar.ax.tick_params(labelsize=6)
    ax.set_title("confusion matrix (% of each ground-truth class's pixels)", fontsize=8)
    fig.subplots_adjust(left=0.2, bottom=0.2, right=0.95, top=0.94)
    return save_png(fig, path)


def draw_pckh_curve(pose: Mapping[str, Any], path: Path,
                    group_curves: Mapping[str, Mapping[str, float]] | None = None) -> Path:
    """PCKh against the threshold: ``metrics.json``'s curve (Avg) and, when given, every joint group's."""
    curves: dict[str, Mapping[str, float]] = dict(group_curves or {})
    curves["Avg"] = pose["curve"]
    fig = new_figure(5.5, 3.6)
    ax = fig.add_subplot()
    for i, (name, curve) in enumerate(curves.items()):
        xs = finite(list(curve))
        ys = finite(list(curve.values()))
        avg = name == "Avg"
        ax.plot(xs, ys, color="black" if avg else f"C{i % 10}", lw=2.2 if avg else 1.1, marker="o", ms=2,
                label=f"{name} ({ys[-1]:.1f})" if ys and math.isfinite(ys[-1]) else name)
    ax.set_xlabel("threshold (fraction of the head size)", fontsize=8)
    ax.set_ylabel("PCKh (%)", fontsize=8)
    ax.set_ylim(0, 100)
    ax.set_title("PCKh against the threshold (at 0.5 in brackets)", fontsize=9)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3, lw=0.5)
    ax.legend(fontsize=6, loc="upper left", ncol=2)
    fig.subplots_adjust(left=0.11, right=0.97, bottom=0.13, top=0.92)
    return save_png(fig, path)


def evaluation_plots(folder: Path, doc: Mapping[str, Any], plotter: Plotter, *,
                     confusion: np.ndarray | None = None,
                     group_curves: Mapping[str, Mapping[str, float]] | None = None) -> dict[str, Path]:
    """Draw every plot ``doc`` (a metrics.json) has numbers for into ``folder``; returns those written.

    ``confusion`` (the parsing confusion matrix) and ``group_curves`` (each joint group's PCKh curve) are
    not in metrics.json; without them there is no confusion plot and the PCKh curve shows Avg only.
    """
    folder = Path(folder)
    written: dict[str, Path | None] = {}
    parsing, pose = doc.get("parsing"), doc.get("pose")
    if parsing and parsing.get("class_iou"):
        written[PER_CLASS_IOU] = plotter(PER_CLASS_IOU, draw_per_class_iou, parsing, folder / PER_CLASS_IOU)
        if confusion is not None:
            written[CONFUSION] = plotter(CONFUSION, draw_confusion, confusion, list(parsing["class_names"]),
                                         folder / CONFUSION)
    if pose and "map" in pose:
        written[AP_PER_JOINT] = plotter(AP_PER_JOINT, draw_ap_per_joint, pose, folder / AP_PER_JOINT)
    elif pose and pose.get("curve"):
        written[PCKH_CURVE] = plotter(PCKH_CURVE, draw_pckh_curve, pose, folder / PCKH_CURVE, group_curves)
    return {name: path for name, path in written.items() if path is not None}
