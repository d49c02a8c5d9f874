"""Pictures of predictions: palette label maps, parsing overlays, skeletons, validation panels.

Colours and skeleton edges come from the dataset manifest. Label maps are written as palette
PNGs whose pixel values are the class ids, so image viewers show the colours while every tool
that reads the PNG as an array gets the ids.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from mula_cli.utils.files import atomic_write
from mula_cli.utils.manifests import DatasetManifest

LOW_SCORE = 0.2  # heatmap maxima below this are drawn as hollow, grey joints


def label_image(labels: np.ndarray, manifest: DatasetManifest) -> Image.Image:
    """A 'P'-mode image of class ids carrying the manifest palette."""
    img = Image.fromarray(np.ascontiguousarray(labels, dtype=np.uint8), mode="P")
    img.putpalette(manifest.palette_bytes())
    return img


def save_label_png(path: Path, labels: np.ndarray, manifest: DatasetManifest) -> None:
    """Write a palette PNG of class ids atomically (temp file, then rename)."""
    atomic_write(path, lambda temp: label_image(labels, manifest).save(temp, format="PNG"))


def colorize(labels: np.ndarray, manifest: DatasetManifest) -> np.ndarray:
    """(H, W) class ids to an (H, W, 3) uint8 RGB picture (ids outside the palette are white)."""
    lut = np.full((256, 3), 255, np.uint8)
    lut[: manifest.num_classes] = np.asarray(manifest.palette, np.uint8)
    return lut[labels]


def overlay(image: Image.Image, labels: np.ndarray, manifest: DatasetManifest, alpha: float = 0.55) -> Image.Image:
    """Blend the colourised parsing over the photo; background pixels keep the photo."""
    photo = np.asarray(image.convert("RGB"), np.float32)
    colours = colorize(labels, manifest).astype(np.float32)
    mask = (labels > 0)[..., None] & (labels < manifest.num_classes)[..., None]
    blended = np.where(mask, (1 - alpha) * photo + alpha * colours, photo)
    return Image.fromarray(blended.round().astype(np.uint8))


# One colour per person (multi-person overlays), distinct on photos and on the part palette.
PERSON_COLOURS = ((230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
                  (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212))


def draw_people(image: Image.Image, people: list[np.ndarray], manifest: DatasetManifest,
                low_score: float = LOW_SCORE) -> Image.Image:
    """Draw every person's skeleton in its own colour on a copy of ``image``.

    Args:
        image: the picture to draw on.
        people: per person a (J, 3) array of x, y, score in the picture's pixels (NaN = not found).
        manifest: skeleton edges.
        low_score: joints under this confidence are drawn hollow, their limbs dashed.
    """
    out = image.convert("RGB").copy()
    draw = ImageDraw.Draw(out)
    size = max(out.size)
    width, radius = max(1, size // 150), max(2, size // 100)
    for k, person in enumerate(people):
        colour = PERSON_COLOURS[k % len(PERSON_COLOURS)]
        xy, scores = person[:, :2], np.nan_to_num(person[:, 2], nan=0.0)
        ok = np.isfinite(xy).all(axis=1)
        for a, b in manifest.skeleton:
            if ok[a] and ok[b]:
                _line(draw, xy[a], xy[b], colour, width, dashed=min(scores[a], scores[b]) < low_score)
        for j in np.flatnonzero(ok):
            x, y = xy[j]
            box = (x - radius, y - radius, x + radius, y + radius)
            draw.ellipse(box, fill=colour if scores[j] >= low_score else None, outline=(0, 0, 0))
    return out


def draw_skeleton(image: Image.Image, joints: np.ndarray, manifest: DatasetManifest,
                  scores: np.ndarray | None = None, low_score: float = LOW_SCORE) -> Image.Image:
    """Draw limbs and joints on a copy of ``image``.

    Args:
        image: the picture to draw on.
        joints: (J, 2) x, y in the picture's pixels (NaN = not drawn).
        manifest: skeleton edges and mirror pairs (left limbs drawn in one colour, right in another).
        scores: (J,) confidences; joints under ``low_score`` are drawn hollow and grey with dashed limbs.
        low_score: the confidence threshold.
    """
    out = image.convert("RGB").copy()
    draw = ImageDraw.Draw(out)
    size = max(out.size)
    width = max(1, size // 150)
    radius = max(2, size // 100)
    scores = np.ones(len(joints)) if scores is None else np.asarray(scores)
    sides = _sides(manifest)
    colours = {"left": (255, 140, 0), "right": (0, 170, 255), "centre": (80, 220, 80)}
    ok = np.isfinite(joints).all(axis=1)
    for a, b in manifest.skeleton:
        if not (ok[a] and ok[b]):
            continue
        side = sides[a] if sides[a] != "centre" else sides[b]
        confident = scores[a] >= low_score and scores[b] >= low_score
        colour = colours[side] if confident else (150, 150, 150)
        _line(draw, joints[a], joints[b], colour, width, dashed=not confident)
    for j in np.flatnonzero(ok):
        x, y = joints[j]
        box = (x - radius, y - radius, x + radius, y + radius)
        if scores[j] >= low_score:
            draw.ellipse(box, fill=colours[sides[j]], outline=(0, 0, 0))
        else:
            draw.ellipse(box, outline=(150, 150, 150), width=max(1, width // 2))
    return out


def draw_pose(image: Image.Image, manifest: DatasetManifest, joints: np.ndarray, scores: np.ndarray | None = None,
              people: list[np.ndarray] | None = None) -> Image.Image:
    """A multi-person model's people, one colour each (``people`` given), else the one skeleton of ``joints``."""
    if people is not None:
        return draw_people(image, people, manifest)
    return draw_skeleton(image, joints, manifest, scores)


def _sides(manifest: DatasetManifest) -> list[str]:
    """Which joints are on the person's left or right, from the manifest's names and mirror pairs."""
    sides = ["centre"] * manifest.num_joints
    for a, b in manifest.joint_mirror_pairs:
        for j in (a, b):
            name = manifest.joints[j].lower()
            sides[j] = "left" if name.startswith(("l-", "l_", "left")) else "right"
    return sides


def _line(draw: ImageDraw.ImageDraw, p: np.ndarray, q: np.ndarray, colour, width: int, dashed: bool) -> None:
    if not dashed:
        draw.line([tuple(p), tuple(q)], fill=colour, width=width)
        return
    length = float(np.linalg.norm(q - p))
    steps = max(2, int(length // (4 * width + 2)))
    for i in range(0, steps, 2):
        a = p + (q - p) * i / steps
        b = p + (q - p) * min(i + 1, steps) / steps
        draw.line([tuple(a), tuple(b)], fill=colour, width=width)


def prediction_panel(image: Image.Image, labels: np.ndarray, joints: np.ndarray, manifest: DatasetManifest,
                     scores: np.ndarray | None = None, truth: np.ndarray | None = None,
                     people: list[np.ndarray] | None = None) -> Image.Image:
    """Photo | parsing overlay | skeleton, or every person's (| ground-truth parsing when given), side by side."""
    tiles = [image.convert("RGB"), overlay(image, labels, manifest), draw_pose(image, manifest, joints, scores, people)]
    if truth is not None:
        tiles.append(overlay(image, truth, manifest))
    w, h = tiles[0].size
    sheet = Image.new("RGB", (w * len(tiles), h), (255, 255, 255))
    for i, tile in enumerate(tiles):
        sheet.paste(tile, (i * w, 0))
    return sheet


def stack_panels(panels: list[Image.Image], width: int = 768) -> Image.Image:
    """Stack panels vertically, each scaled to ``width`` pixels."""
    scaled = [p.resize((width, max(1, round(p.height * width / p.width))), Image.Resampling.BILINEAR) for p in panels]
    sheet = Image.new("RGB", (width, sum(p.height for p in scaled)), (255, 255, 255))
    y = 0
    for p in scaled:
        sheet.paste(p, (0, y))
        y += p.height
    return sheet
