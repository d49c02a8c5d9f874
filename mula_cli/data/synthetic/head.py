"""The head: face or hair depending on the view, hair styles, hats, sunglasses, eyes and mouth.

Whether the face is seen is what tells a front view from a back view (the body itself is symmetric),
so the face ellipse moves with the face direction: centred in a front view, on the facing side in a
profile, absent from behind where hair (or a bald scalp) covers the whole head.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from mula_cli.data.synthetic.body import Figure
from mula_cli.data.synthetic.canvas import Canvas

if TYPE_CHECKING:
    from mula_cli.data.synthetic.outfit import Outfit

CodeFn = Callable[[str, str, str], int]


def _eye_positions(c: np.ndarray, up: np.ndarray, right: np.ndarray, rw: float, rv: float,
                   fx: float, fz: float) -> list[np.ndarray]:
    """Where the eyes are: two in a front or three-quarter view, the near one in a profile."""
    level = c + up * rv * 0.02
    if abs(fx) > 0.8 or fz < 0.35:
        return [level + right * np.sign(fx) * rw * 0.62]
    return [level + right * (fx * rw * 0.35 + k * rw * 0.36 * fz) for k in (-1.0, 1.0)]


def paint_head(canvas: Canvas, fig: Figure, outfit: Outfit, code: CodeFn) -> None:
    """Paint the head of ``fig`` (in pixels) with the outfit's hair style and head wear."""
    pr = fig.props
    c, up = fig.points["head-centre"], fig.head_up
    right = np.array([-up[1], up[0]])
    rv, rw = pr.head_rv, pr.head_rw
    # The face's heading in the horizontal plane decides front / profile / back; a nod does not.
    fx, fz = float(fig.face_dir[0]), float(fig.face_dir[2])
    norm = float(np.hypot(fx, fz))
    fx, fz = (fx / norm, fz / norm) if norm > 0.2 else (0.0, 1.0)
    back = fx * 0.9  # hair reaches further round the back of the head (t grows towards the image left)
    hair = code("Hair", "hair", "head")
    style = outfit.hair

    if style == "bald":
        canvas.ellipse(c, rw, rv, up, code("Face", "skin", "head"))
    else:
        wide = 1.14 if style in ("medium", "long") else 1.04
        canvas.ellipse(c - right * fx * rw * 0.08 + up * rv * 0.04, rw * wide, rv * 1.05, up, hair)
    if fz > -0.3:
        face_w = rw * (0.6 + 0.3 * max(fz, 0.0)) * (0.92 if style in ("medium", "long") else 1.0)
        canvas.ellipse(c + right * fx * rw * 0.32 - up * rv * 0.1, face_w, rv * 0.88, up, code("Face", "skin", "head"))
        if style != "bald":
            reach = {"short": 1.15, "medium": 1.3, "long": 1.3}[style]
            canvas.ellipse(c + up * rv * 0.04, rw * 1.04, rv * 1.05, up, hair, -reach + back, reach + back)
        if rw >= 2.5:
            eyes = _eye_positions(c, up, right, rw, rv, fx, fz)
            features = code("Face", "features", "head")
            for eye in eyes:
                canvas.ellipse(eye, max(0.6, rw * 0.1), max(0.6, rw * 0.08), up, features)
            if fz > 0.2:
                canvas.ellipse(c + right * fx * rw * 0.38 - up * rv * 0.52, rw * 0.22 * fz, max(0.5, rw * 0.06), up,
                               features)
            if outfit.sunglasses:
                lens = code("Sunglasses", "glasses", "head")
                for eye in eyes:
                    canvas.ellipse(eye, rw * 0.24, rw * 0.17, up, lens)
                if len(eyes) == 2:
                    canvas.capsule(eyes[0], rw * 0.05, eyes[1], rw * 0.05, lens)
                else:
                    canvas.capsule(eyes[0], rw * 0.05, c - right * fx * rw * 0.4, rw * 0.05, lens)
    elif style != "bald":  # from behind the hair reaches down to the neck
        canvas.ellipse(c - up * rv * 0.15, rw * (1.1 if style != "short" else 0.95), rv * 0.95, up, hair)

    if outfit.hat is not None:
        hat = code("Hat", "hat", "head")
        if outfit.hat == "beanie":
            canvas.ellipse(c + up * rv * 0.08, rw * 1.1, rv * 1.08, up, hat, -1.35, 1.35)
        elif outfit.hat == "cap":
            canvas.ellipse(c + up * rv * 0.05, rw * 1.08, rv * 1.06, up, hat, -1.3, 1.3)
            if fz > -0.3:
                brim = c + up * rv * 0.3
                canvas.capsule(brim - right * rw * 0.95 * max(fz, 0.0), rv * 0.1,
                               brim + right * rw * 0.95 * max(fz, 0.0), rv * 0.1, hat)
                canvas.capsule(brim, rv * 0.1, brim + right * fx * rw * 1.6, rv * 0.09, hat)
        else:  # wide-brimmed hat
            canvas.ellipse(c + up * rv * 0.4, rw * 0.98, rv * 0.8, up, hat, -np.pi / 2, np.pi / 2)
            canvas.capsule(c + up * rv * 0.42 - right * rw * 1.75, rv * 0.13, c + up * rv * 0.42 + right * rw * 1.75,
                           rv * 0.13, hat)


def paint_long_hair(canvas: Canvas, fig: Figure, code: CodeFn) -> None:
    """Long hair falling behind the head to the shoulders or below (in front of the back in a back view)."""
    pr = fig.props
    c, up, end = fig.points["head-centre"], fig.head_up, fig.points["hair-end"]
    right = np.array([-up[1], up[0]])
    rw, rv = pr.head_rw, pr.head_rv
    outline = [c + up * rv * 0.6 + right * rw * 0.85, c + right * rw * 1.12, end + right * rw * 1.3,
               end - right * rw * 1.3, c - right * rw * 1.12, c + up * rv * 0.6 - right * rw * 0.85]
    canvas.polygon(np.array(outline), code("Hair", "hair", "hair-back"))
