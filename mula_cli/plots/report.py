"""``report.html``: one self-contained page of an evaluation: its tables, its plots and a gallery of
the best and worst pictures, every picture inline (base64), so the file can be mailed or archived.

The page marks itself once loaded: ``<body data-images="ok">`` when every picture decoded (else
``broken``), with ``data-image-count`` and ``data-errors``; a headless browser can check it.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mula_cli.plots.evaluation import evaluation_plots
from mula_cli.plots.figures import Plotter
from mula_cli.plots.gallery import GalleryItem
from mula_cli.utils.files import atomic_write

REPORT = "report.html"

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em auto; max-width: 1200px; padding: 0 1em;
       color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: .5em 0; font-size: 13px; }
td, th { padding: 2px 10px; border-bottom: 1px solid #eee; text-align: right; }
td:first-child, th:first-child { text-align: left; }
.plots { display: flex; flex-wrap: wrap; gap: 12px; align-items: flex-start; }
.plots img { max-width: 100%; border: 1px solid #eee; }
.gallery { display: flex; flex-wrap: wrap; gap: 12px; }
.gallery figure { margin: 0; } .gallery figcaption { font-size: 12px; color: #555; }
.muted { color: #777; }
"""

# Sets data-images on <body> once the page has loaded: "ok" when every picture decoded. Errors of any
# kind (a picture failing to load fires one too, caught here in the capture phase) are counted.
_CHECK = """
<script>
var mulaErrors = 0;
window.addEventListener("error", function () { mulaErrors += 1; }, true);
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var broken = images.filter(function (im) { return !(im.complete && im.naturalWidth > 0); });
  document.body.dataset.imageCount = String(images.length);
  document.body.dataset.errors = String(mulaErrors);
  document.body.dataset.images = broken.length || mulaErrors ? "broken" : "ok";
});
</script>
"""


def _fmt(value: Any) -> str:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return "-"
    return f"{number:.2f}" if math.isfinite(number) else "-"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    cells = ("".join(f"<td>{html.escape(c if isinstance(c, str) else _fmt(c))}</td>" for c in row)
             for row in rows)
    body = "".join(f"<tr>{row}</tr>" for row in cells)
    return f"<table><tr>{head}</tr>{body}</table>"


def _img(data: bytes, mime: str, alt: str) -> str:
    return f'<img src="data:{mime};base64,{base64.b64encode(data).decode("ascii")}" alt="{html.escape(alt)}">'


def _pose_sections(pose: Mapping[str, Any]) -> list[str]:
    names = list(pose.get("joint_names") or [])
    if "map" in pose:
        groups = {**pose.get("groups", {}), "mAP": pose["map"]}
        title = f"Pose AP@{pose.get('threshold', 0.5):g} (multi-person)"
        per_joint, metric = pose["joint_ap"], "AP"
    else:
        groups, per_joint, metric = pose.get("groups", {}), pose["joint_pckh"], "PCKh@0.5"
        title = f"Pose PCKh@0.5 ({pose.get('images', '?')} images, {pose.get('excluded_images', 0)} excluded)"
    return [f"<h2>{html.escape(title)}</h2>", _table(list(groups), [list(groups.values())]),
            "<details><summary>per joint</summary>",
            _table(["joint", metric], [[n, v] for n, v in zip(names, per_joint)]), "</details>"]


def _gallery(title: str, items: Sequence[GalleryItem], pose_name: str) -> str:
    figures = []
    for item in items:
        if not item.panel:
            continue
        caption = (f"{item.id}: score {item.score:.1f} (mIoU {_fmt(item.parsing)}, "
                   f"{pose_name} {_fmt(item.pose)})")
        figures.append(f"<figure>{_img(item.panel, 'image/jpeg', item.id)}"
                       f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    return f"<h3>{html.escape(title)}</h3><div class='gallery'>{''.join(figures)}</div>" if figures else ""


def render_report(doc: Mapping[str, Any], plots: Mapping[str, Path],
                  gallery: tuple[Sequence[GalleryItem], Sequence[GalleryItem]] | None = None) -> str:
    """The page's HTML for a metrics.json ``doc``, the PNG files ``plots`` (name: path) and the gallery's
    (best, worst) pictures."""
    parsing, pose = doc.get("parsing") or {}, doc.get("pose")
    where = f"{doc.get('weights', '?')} on {doc.get('data', '?')}/{doc.get('split', '?')}"
    protocol = doc.get("protocol") or {}  # the settings that decide the numbers, not every detail
    settings = "; ".join(f"{k.replace('_', ' ')} {json.dumps(protocol[k], default=str)}"
                         for k in ("name", "scales", "pose_flip", "parsing_flip", "opencv") if k in protocol)
    parts = [f"<h1>mula evaluation: {html.escape(where)}</h1>",
             f"<p class='muted'>{doc.get('images', '?')} images in {_fmt(doc.get('seconds'))} s"
             f"{'; protocol: ' + html.escape(settings) if settings else ''}</p>"]
    if parsing:
        parts += ["<h2>Parsing (percent)</h2>",
                  _table(["PixelAcc", "MeanAcc", "mIoU", "fwIoU"],
                         [[parsing.get(k) for k in ("pixel_acc", "mean_acc", "miou", "fwiou")]]),
                  "<details><summary>per class</summary>",
                  _table(["class", "IoU", "acc"],
                         list(zip(parsing.get("class_names", []), parsing.get("class_iou", []),
                                  parsing.get("class_acc", [])))), "</details>"]
    if pose:
        parts += _pose_sections(pose)
    if plots:
        parts.append("<h2>Plots</h2><div class='plots'>")
        parts += [_img(Path(path).read_bytes(), "image/png", name) for name, path in plots.items()]
        parts.append("</div>")
    if gallery is not None:
        best, worst = gallery
        pose_name = "matched" if pose and "map" in pose else "PCKh"
        parts += ["<h2>Best and worst pictures</h2>",
                  "<p class='muted'>Ranked by each picture's own score: the mean of its mIoU and its "
                  f"{pose_name} (percent). Each row: photo | prediction (parsing and skeleton) | "
                  "ground truth.</p>",
                  _gallery(f"best {len(best)}", best, pose_name),
                  _gallery(f"worst {len(worst)}", worst, pose_name)]
    return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<title>mula evaluation: {html.escape(where)}</title><style>{_STYLE}</style>{_CHECK}</head>"
            f"<body data-images='pending'>{''.join(parts)}</body></html>\n")


def write_report(path: Path, doc: Mapping[str, Any], plots: Mapping[str, Path],
                 gallery: tuple[Sequence[GalleryItem], Sequence[GalleryItem]] | None = None) -> Path:
    """Write :func:`render_report`'s page to ``path`` atomically."""
    text = render_report(doc, plots, gallery)
    return atomic_write(path, lambda temp: temp.write_text(text, encoding="utf-8"))


def write_evaluation_outputs(folder: Path, doc: Mapping[str, Any], plotter: Plotter, *,
                             confusion: np.ndarray | None = None,
                             group_curves: Mapping[str, Mapping[str, float]] | None = None,
                             gallery: tuple[Sequence[GalleryItem], Sequence[GalleryItem]] | None = None
                             ) -> list[Path]:
    """The plots of an evaluation and its report page, beside its metrics.json; returns the files written.

    Without matplotlib the page is still written, with its tables and gallery (drawn with Pillow).
    """
    plots = evaluation_plots(folder, doc, plotter, confusion=confusion, group_curves=group_curves)
    report = plotter(REPORT, write_report, Path(folder) / REPORT, doc, plots, gallery)
    return [*plots.values(), *([report] if report is not None else [])]
