"""Rasterising one dressed person into the canvas, with LIP's classes, and the joints' occlusion flags.

The canvas label byte holds an index into :data:`FINE_CLASSES`, the renderer's own vocabulary of
class NAMES; writers turn it into a dataset's ids by looking each name up in the dataset manifest.
Left and right parts share one material (same sleeves, shoes, skin), so only the body's structure
tells them apart. Body parts are painted far to near: legs, torso, skirt, head and arms are groups
sorted by depth, so a near arm covers the torso and a far arm disappears behind it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from mula_cli.data.synthetic.body import Figure
from mula_cli.data.synthetic.canvas import Canvas
from mula_cli.data.synthetic.head import paint_head, paint_long_hair
from mula_cli.data.synthetic.outfit import Outfit

FINE_CLASSES = ("Background", "Hat", "Hair", "Glove", "Sunglasses", "Upper-clothes", "Dress", "Coat", "Socks",
                "Pants", "Jumpsuits", "Scarf", "Skirt", "Face", "Left-arm", "Right-arm", "Left-leg", "Right-leg",
                "Left-shoe", "Right-shoe")
CLS = {name: i for i, name in enumerate(FINE_CLASSES)}
PARTS = ("head", "neck", "hair-back", "torso", "pelvis", "skirt", "scarf", "R-upper-arm", "R-forearm", "R-hand",
         "L-upper-arm", "L-forearm", "L-hand", "R-thigh", "R-shin", "R-foot", "L-thigh", "L-shin", "L-foot")
PART_SLOTS = 24  # segment ids per person: segment = 1 + person * PART_SLOTS + part index
MAX_PEOPLE = 10
DISTRACTOR_SEGMENT = 250
OCCLUDER_SEGMENT = 251
# Coarse (PASCAL-Person-Part) class of each body part, whatever the clothing on it.
COARSE_OF_PART = {"head": "Head", "neck": "Head", "hair-back": "Head", "torso": "Torso", "pelvis": "Torso",
                  "scarf": "Torso", "skirt": "Upper-legs", "R-upper-arm": "Upper-arms", "L-upper-arm": "Upper-arms",
                  "R-forearm": "Lower-arms", "L-forearm": "Lower-arms", "R-hand": "Lower-arms", "L-hand": "Lower-arms",
                  "R-thigh": "Upper-legs", "L-thigh": "Upper-legs", "R-shin": "Lower-legs", "L-shin": "Lower-legs",
                  "R-foot": "Lower-legs", "L-foot": "Lower-legs"}
# Parts a joint belongs to (never hide it) and parts that may lie over it without hiding it unless nearer.
_OWN = {"ankle": ("{s}-shin", "{s}-foot"), "knee": ("{s}-thigh", "{s}-shin"), "hip": ("{s}-thigh", "pelvis"),
        "wrist": ("{s}-forearm", "{s}-hand"), "elbow": ("{s}-upper-arm", "{s}-forearm"),
        "shoulder": ("{s}-upper-arm",), "pelvis": ("pelvis",), "thorax": ("torso",), "neck": ("neck",),
        "upper-neck": ("neck", "head"), "head-top": ("head",)}
_SOFT = {"knee": ("skirt",), "hip": ("torso", "skirt"), "pelvis": ("torso", "skirt", "R-thigh", "L-thigh"),
         "thorax": ("neck", "scarf"), "neck": ("torso", "scarf", "head"), "upper-neck": ("scarf",),
         "shoulder": ("torso", "scarf", "neck")}


def _chain(points: tuple[np.ndarray, np.ndarray, np.ndarray], radii: tuple[float, float, float],
           t: float) -> tuple[np.ndarray, float]:
    """Point and radius at ``t`` along a two-segment limb (0 = root, 1 = middle joint, 2 = end)."""
    t = min(max(float(t), 0.0), 2.0)
    i = 0 if t <= 1.0 else 1
    f = t - i
    return points[i] * (1 - f) + points[i + 1] * f, radii[i] * (1 - f) + radii[i + 1] * f


def _hull(points: np.ndarray) -> np.ndarray:
    """Convex hull (Andrew's monotone chain) of a few 2D points."""
    pts = sorted(map(tuple, np.round(points, 3)))
    if len(pts) < 3:
        return np.array(pts)

    def half(seq):
        out: list[tuple[float, float]] = []
        for p in seq:
            while len(out) >= 2 and ((out[-1][0] - out[-2][0]) * (p[1] - out[-2][1])
                                     - (out[-1][1] - out[-2][1]) * (p[0] - out[-2][0])) <= 0:
                out.pop()
            out.append(p)
        return out

    return np.array(half(pts)[:-1] + half(pts[::-1])[:-1])


@dataclass
class RenderedPerson:
    """A person drawn on a canvas: its figure in pixels, segment ids and the depth of each painted part."""

    figure: Figure
    segment_base: int
    part_depth: dict[str, float]

    def joint(self, name: str, segment: np.ndarray) -> tuple[float, float, bool, bool]:
        """(x, y, inside the image, occluded) of a joint, given the final segment image."""
        x, y = (float(v) for v in self.figure.points[name])
        xi, yi = int(np.floor(x + 0.5)), int(np.floor(y + 0.5))
        h, w = segment.shape
        if not (0 <= xi < w and 0 <= yi < h):
            return x, y, False, False
        seg = int(segment[yi, xi])
        if seg == 0 or seg == DISTRACTOR_SEGMENT:
            return x, y, True, False
        part_index = seg - self.segment_base
        if not 0 <= part_index < PART_SLOTS:  # an occluder or another person in front
            return x, y, True, True
        part = PARTS[part_index]
        side, _, kind = name.partition("-") if name[:2] in ("R-", "L-") else ("", "", name)
        own = {p.format(s=side) for p in _OWN[kind]}
        soft = {p.format(s=side) for p in _SOFT.get(kind, ())}
        margin = self.figure.props.thigh_r * 0.8
        hidden = part not in own and not (part in soft and self.part_depth[part] <= self.figure.depth[name] + margin)
        return x, y, True, hidden


def render_person(canvas: Canvas, fig: Figure, outfit: Outfit, person: int) -> RenderedPerson:
    """Paint ``fig`` (already in pixels) wearing ``outfit``; returns what the joint flags need."""
    if person >= MAX_PEOPLE:
        raise ValueError(f"at most {MAX_PEOPLE} people per image")
    pt, pr, dep, mat = fig.points, fig.props, fig.depth, outfit.materials
    base = 1 + person * PART_SLOTS

    def code(cls: str, material: str, part: str) -> int:
        return Canvas.code(CLS[cls], mat[material], base + PARTS.index(part))

    groups: list[tuple[float, int, Callable[[], None]]] = []
    part_depth: dict[str, float] = {}

    def add(key: float, parts: tuple[str, ...], paint: Callable[[], None]) -> None:
        groups.append((key, len(groups), paint))
        part_depth.update(dict.fromkeys(parts, key))

    torso_key = (dep["pelvis"] + dep["thorax"]) / 2
    spine = pt["thorax"] - pt["pelvis"]
    up = spine / max(float(np.hypot(*spine)), 1e-6)
    normal = np.array([-up[1], up[0]])
    half = fig.torso_half

    def torso_point(level: float, side: float, scale: float = 1.0) -> np.ndarray:
        """Silhouette point at ``level`` (0 = pelvis, 1 = thorax) on one side of the spine."""
        if level <= 0.0:
            width = half["hip"]
        elif level <= 0.45:
            width = half["hip"] + (half["waist"] - half["hip"]) * level / 0.45
        elif level <= 0.8:
            width = half["waist"] + (half["chest"] - half["waist"]) * (level - 0.45) / 0.35
        else:
            width = half["chest"]
        return pt["pelvis"] + spine * level + normal * (side * width * scale)

    top_level = 1.0 + pr.upper_arm_r * 0.7 / max(float(np.hypot(*spine)), 1e-6)
    lower_cls = {"Pants": "Pants", "Skirt": "Skirt", "Dress": "Dress", "Jumpsuits": "Jumpsuits"}[outfit.bottom]
    lower_mat = "top" if outfit.bottom in ("Dress", "Jumpsuits") else "bottom"

    def paint_torso() -> None:
        band = [torso_point(0.35, 1), torso_point(0, 1, 1.02), torso_point(0, -1, 1.02), torso_point(0.35, -1)]
        crotch = pt["pelvis"] - up * pr.thigh_r * 0.9
        canvas.polygon(np.array(band[:2] + [crotch] + band[2:]), code(lower_cls, lower_mat, "pelvis"))
        levels = (top_level, 0.9, 0.7, 0.45, 0.2, outfit.hem)
        outline = [torso_point(v, 1, 0.9 if v == top_level else 1.0) for v in levels]
        outline += [torso_point(v, -1, 0.9 if v == top_level else 1.0) for v in reversed(levels)]
        canvas.polygon(np.array(outline), code(outfit.top, "top", "torso"))
        canvas.capsule(pt["R-shoulder"], pr.upper_arm_r * 1.1, pt["L-shoulder"], pr.upper_arm_r * 1.1,
                       code(outfit.top, "top", "torso"))
        if outfit.open_coat and abs(fig.yaw) < 60:
            strip = [pt["thorax"] + normal * half["chest"] * s * 0.22 for s in (1, -1)]
            strip += [torso_point(outfit.hem, s, 0.18) for s in (-1, 1)]
            canvas.polygon(np.array(strip), code("Upper-clothes", "inner", "torso"))
        canvas.capsule(pt["thorax"] - up * pr.neck_r * 0.2, pr.neck_r, pt["upper-neck"], pr.neck_r * 0.95,
                       code("Face", "skin", "neck"))
        if outfit.scarf:
            collar = [pt["neck"] - up * pr.neck_r * 0.6 + normal * s * pr.neck_r * 1.4 for s in (1, -1)]
            canvas.capsule(collar[0], pr.neck_r * 0.75, collar[1], pr.neck_r * 0.75, code("Scarf", "scarf", "scarf"))
            if fig.face_dir[2] > -0.2:
                end = collar[1] - up * pr.torso_len * 0.55 + normal * pr.neck_r * 0.5
                canvas.capsule(collar[1], pr.neck_r * 0.6, end, pr.neck_r * 0.55, code("Scarf", "scarf", "scarf"))

    add(torso_key, ("torso", "pelvis", "neck", "scarf"), paint_torso)

    def leg_point(side: str, t: float) -> tuple[np.ndarray, float]:
        return _chain((pt[f"{side}-hip"], pt[f"{side}-knee"], pt[f"{side}-ankle"]), (pr.thigh_r, pr.knee_r,
                                                                                      pr.ankle_r), t)

    for side in ("R", "L"):
        leg_key = (dep[f"{side}-hip"] + dep[f"{side}-knee"] + dep[f"{side}-ankle"]) / 3 - pr.thigh_r * 0.4

        def paint_leg(side: str = side) -> None:
            skin = code(f"{'Right' if side == 'R' else 'Left'}-leg", "skin", f"{side}-thigh")
            canvas.capsule(pt[f"{side}-hip"], pr.thigh_r, pt[f"{side}-knee"], pr.knee_r, skin)
            shin = code(f"{'Right' if side == 'R' else 'Left'}-leg", "skin", f"{side}-shin")
            canvas.capsule(pt[f"{side}-knee"], pr.knee_r, pt[f"{side}-ankle"], pr.ankle_r, shin)
            if outfit.socks > 0:
                top, r = leg_point(side, 2.0 - outfit.socks)
                canvas.capsule(top, r * 1.08, pt[f"{side}-ankle"], pr.ankle_r * 1.1, code("Socks", "socks",
                                                                                         f"{side}-shin"))
            if outfit.bottom in ("Pants", "Jumpsuits"):
                end, r_end = leg_point(side, outfit.leg_cover)
                knee, _ = leg_point(side, min(outfit.leg_cover, 1.0))
                canvas.capsule(pt[f"{side}-hip"], pr.thigh_r * outfit.loose, knee,
                               (pr.knee_r if outfit.leg_cover >= 1 else r_end) * outfit.loose,
                               code(lower_cls, lower_mat, f"{side}-thigh"))
                if outfit.leg_cover > 1.0:
                    canvas.capsule(pt[f"{side}-knee"], pr.knee_r * outfit.loose, end, r_end * outfit.loose * 1.1,
                                   code(lower_cls, lower_mat, f"{side}-shin"))
            shoe = code(f"{'Right' if side == 'R' else 'Left'}-shoe", "shoes", f"{side}-foot")
            ankle = pt[f"{side}-ankle"]
            heel, toe = pt[f"{side}-heel"], pt[f"{side}-toe"]
            canvas.capsule(ankle + (heel - ankle) * 0.45, pr.ankle_r * 1.15, heel, pr.ankle_h * 0.6, shoe)
            canvas.capsule(heel, pr.ankle_h * 0.6, toe, pr.ankle_h * 0.5, shoe)

        add(leg_key, (f"{side}-thigh", f"{side}-shin", f"{side}-foot"), paint_leg)

    if outfit.bottom in ("Skirt", "Dress") or outfit.coat_tail > 0:
        skirt_key = max(part_depth["R-thigh"], part_depth["L-thigh"], torso_key) + 1e-3

        def paint_skirt() -> None:
            if outfit.bottom in ("Skirt", "Dress"):
                canvas.polygon(_skirt(outfit.leg_cover, outfit.flare), code(lower_cls, lower_mat, "skirt"))
            if outfit.coat_tail > 0:
                canvas.polygon(_skirt(outfit.coat_tail, 0.25), code("Coat", "top", "skirt"))

        def _skirt(length: float, flare: float) -> np.ndarray:
            pts = [torso_point(0.35, s) for s in (1, -1)] + [torso_point(0.0, s, 1.05) for s in (1, -1)]
            for side in ("R", "L"):
                p, r = leg_point(side, length)
                hip = pt[f"{side}-hip"]
                d = (p - hip) / max(float(np.hypot(*(p - hip))), 1e-6)
                n = np.array([-d[1], d[0]])
                pts += [p + n * (r * (1 + flare) + 0.5), p - n * (r * (1 + flare) + 0.5)]
            return _hull(np.array(pts))

        add(skirt_key, ("skirt",), paint_skirt)

    for side in ("R", "L"):
        arm_key = (dep[f"{side}-shoulder"] + dep[f"{side}-elbow"] + dep[f"{side}-wrist"]) / 3 + pr.upper_arm_r * 0.6

        def paint_arm(side: str = side) -> None:
            cls = f"{'Right' if side == 'R' else 'Left'}-arm"
            sh, el, wr = pt[f"{side}-shoulder"], pt[f"{side}-elbow"], pt[f"{side}-wrist"]
            canvas.capsule(sh, pr.upper_arm_r, el, pr.elbow_r, code(cls, "skin", f"{side}-upper-arm"))
            canvas.capsule(el, pr.elbow_r, wr, pr.wrist_r, code(cls, "skin", f"{side}-forearm"))
            hand_cls, hand_mat = ("Glove", "gloves") if outfit.gloves else (cls, "skin")
            back = (wr - el) / max(float(np.hypot(*(wr - el))), 1e-6) * pr.wrist_r * (1.5 if outfit.gloves else 0)
            canvas.capsule(wr - back, pr.wrist_r * 1.05, pt[f"{side}-hand"], pr.hand_r,
                           code(hand_cls, hand_mat, f"{side}-hand"))
            cover = outfit.sleeve_cover
            if cover > 0:
                loose = 1.12 if outfit.top != "Coat" else 1.3
                p, r = _chain((sh, el, wr), (pr.upper_arm_r, pr.elbow_r, pr.wrist_r), min(cover, 1.0))
                canvas.capsule(sh, pr.upper_arm_r * loose * 1.05, p, r * loose, code(outfit.top, "top",
                                                                                     f"{side}-upper-arm"))
                if cover > 1.0:
                    p, r = _chain((sh, el, wr), (pr.upper_arm_r, pr.elbow_r, pr.wrist_r), cover)
                    canvas.capsule(el, pr.elbow_r * loose, p, r * loose * 1.1, code(outfit.top, "top",
                                                                                   f"{side}-forearm"))

        add(arm_key, (f"{side}-upper-arm", f"{side}-forearm", f"{side}-hand"), paint_arm)

    add(max(dep["head-centre"], torso_key + 1e-3), ("head",), lambda: paint_head(canvas, fig, outfit, code))
    if outfit.hair == "long":
        add((dep["hair-end"] + dep["head-centre"]) / 2, ("hair-back",),
            lambda: paint_long_hair(canvas, fig, code))
    for _, _, paint in sorted(groups, key=lambda g: (g[0], g[1])):
        paint()
    return RenderedPerson(fig, base, part_depth)
