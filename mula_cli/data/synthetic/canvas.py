"""The drawing surface: shapes rasterised once into a packed code image, then textured and shaded.

Every shape is drawn with PIL ImageDraw into one 32-bit ``I`` image whose value packs three bytes:
the fine class (label), the material (which colour/texture fills the pixel) and the segment (which
body part of which person, for outline shading and occlusion tests). One draw call per shape, in
painter's order, gives pixel-exact labels; colours are filled in afterwards with numpy, once per
material, so texturing costs the same whatever the number of shapes.
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from PIL import Image, ImageDraw

PATTERNS = ("plain", "stripes", "checks", "dots", "noise", "grain")

T = TypeVar("T")
_HALF_TURN = [(math.cos(a), math.sin(a)) for a in np.linspace(-math.pi / 2, math.pi / 2, 6)]  # capsule ends


@dataclass(frozen=True)
class Material:
    """How to colour the pixels of one material: a two-colour pattern in image coordinates."""

    pattern: str
    colour: tuple[float, float, float]
    colour2: tuple[float, float, float]
    period: float = 8.0  # pixels
    angle: float = 0.0  # radians
    duty: float = 0.5  # fraction of a period painted with ``colour`` (stripes, dots)


def choose(rng: np.random.Generator, options: Sequence[T], probs: Sequence[float] | None = None) -> T:
    """One of ``options`` (uniformly, or with the given probabilities); cheaper than ``rng.choice``."""
    if probs is None:
        return options[min(int(rng.random() * len(options)), len(options) - 1)]
    r = rng.random()
    for option, p in zip(options, probs):
        if r < p:
            return option
        r -= p
    return options[-1]


def hsv(h: float, s: float, v: float) -> tuple[float, float, float]:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, s, v)
    return (r * 255.0, g * 255.0, b * 255.0)


def jitter(rng: np.random.Generator, colour: Sequence[float], amount: float) -> tuple[float, ...]:
    return tuple(min(255.0, max(0.0, c + amount * float(n))) for c, n in zip(colour, rng.standard_normal(3)))


def garment_colour(rng: np.random.Generator) -> tuple[float, float, float]:
    """A clothing-like colour: many neutrals (black, white, grey, navy, denim), some vivid."""
    r = rng.random()
    h, s, v = rng.random(3)
    if r < 0.3:
        return hsv(h, s * 0.12, 0.08 + v * 0.87)
    if r < 0.42:  # denim and navy
        return hsv(0.58 + h * 0.06, 0.35 + s * 0.35, 0.2 + v * 0.45)
    return hsv(h, 0.3 + s * 0.65, 0.2 + v * 0.75)


_SKIN = ((255, 224, 196), (241, 194, 167), (224, 172, 138), (198, 134, 101), (161, 102, 72), (120, 75, 50),
         (88, 55, 38))
_HAIR = ((22, 18, 16), (45, 30, 22), (80, 52, 33), (120, 80, 50), (190, 155, 100), (135, 62, 34),
         (165, 160, 155), (230, 215, 180))
_HAIR_P = (0.3, 0.22, 0.16, 0.1, 0.09, 0.05, 0.05, 0.03)


def skin_colour(rng: np.random.Generator) -> tuple[float, ...]:
    """A skin tone anywhere from very light to very dark."""
    t = rng.random() * (len(_SKIN) - 1)
    i = min(int(t), len(_SKIN) - 2)
    f = t - i
    return jitter(rng, [a * (1 - f) + b * f for a, b in zip(_SKIN[i], _SKIN[i + 1])], 6)


def hair_colour(rng: np.random.Generator) -> tuple[float, ...]:
    if rng.random() < 0.05:  # dyed
        return hsv(rng.random(), 0.4 + 0.5 * rng.random(), 0.3 + 0.6 * rng.random())
    return jitter(rng, choose(rng, _HAIR, _HAIR_P), 8)


def _shade(colour: Sequence[float], factor: float) -> tuple[float, ...]:
    return tuple(min(255.0, c * factor) for c in colour)


def random_material(rng: np.random.Generator, colour: Sequence[float], scale: float,
                    pattern: str | None = None) -> Material:
    """A textured material around ``colour``; ``scale`` (pixels, e.g. the person's height) sizes the pattern."""
    if pattern is None:
        pattern = choose(rng, PATTERNS, (0.42, 0.16, 0.1, 0.07, 0.1, 0.15))
    second = _shade(colour, 0.45 + 0.4 * rng.random()) if rng.random() < 0.5 else garment_colour(rng)
    angle = choose(rng, (0.0, math.pi / 2, math.pi / 4, -math.pi / 4, math.pi * rng.random()))
    period = max(2.5, scale * (0.015 + 0.045 * rng.random()))
    return Material(pattern, tuple(colour), tuple(second), period, angle, 0.3 + 0.4 * rng.random())


def _texture(m: Material, ys: np.ndarray, xs: np.ndarray, coarse: np.ndarray | None,
             grain: np.ndarray) -> np.ndarray:
    """Colours (n, 3) of material ``m`` at pixels (ys, xs); ``grain`` is (n, 1) noise in [-0.5, 0.5]."""
    c1 = np.asarray(m.colour, np.float32)
    c2 = np.asarray(m.colour2, np.float32)
    if m.pattern in ("plain", "grain"):
        return c1 + grain * (10.0 if m.pattern == "plain" else 45.0)
    if m.pattern == "noise" and coarse is not None:  # mottled
        t = np.clip((coarse[ys, xs] - 0.5) * 3.0 + 0.5, 0.0, 1.0)[:, None]
        return c1 * t + c2 * (1 - t) + grain * 10
    ca, sa = math.cos(m.angle) / m.period, math.sin(m.angle) / m.period
    u = xs * ca + ys * sa
    if m.pattern == "stripes":
        mask = (u - np.floor(u)) < m.duty
    else:
        v = ys * ca - xs * sa
        if m.pattern == "checks":
            mask = (np.floor(u) + np.floor(v)) % 2 == 0
        else:  # dots of colour2 on colour
            mask = ((u - np.floor(u) - 0.5) ** 2 + (v - np.floor(v) - 0.5) ** 2) >= (0.45 * m.duty) ** 2
    return np.where(mask[:, None], c1, c2) + grain * 10


def noise_field(rng: np.random.Generator, width: int, height: int, cell: float, channels: int = 0) -> Image.Image:
    """Smooth noise of roughly ``cell`` pixels per feature (random grid, bicubic upsampling), 'L' or 'RGB'."""
    gw, gh = max(2, int(width / cell) + 2), max(2, int(height / cell) + 2)
    shape = (gh, gw, channels) if channels else (gh, gw)
    grid = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8))
    return grid.resize((width, height), Image.BILINEAR)


class Canvas:
    """A packed label/material/segment image and the materials its shapes use."""

    def __init__(self, width: int, height: int):
        self.width, self.height = width, height
        self.image = Image.new("I", (width, height), 0)
        self.draw = ImageDraw.Draw(self.image)
        self.materials: list[Material | None] = [None]  # material 0 shows the background

    def add_material(self, material: Material) -> int:
        if len(self.materials) >= 255:
            raise RuntimeError("too many materials on one canvas")
        self.materials.append(material)
        return len(self.materials) - 1

    @staticmethod
    def code(label: int, material: int, segment: int) -> int:
        return label | (material << 8) | (segment << 16)

    def polygon(self, points: np.ndarray, code: int) -> None:
        if len(points) >= 3:
            self.draw.polygon(np.asarray(points, dtype=float).ravel().tolist(), fill=code)

    def ellipse(self, centre: np.ndarray, rx: float, ry: float, up: np.ndarray, code: int,
                start: float = 0.0, stop: float = 2 * math.pi) -> None:
        """A filled ellipse (or the sector between two angles, measured from ``up``) with ``ry`` along ``up``.

        Angles grow from ``up`` towards the image left when ``up`` points up.
        """
        cx, cy, ux, uy = float(centre[0]), float(centre[1]), float(up[0]), float(up[1])
        # ``left`` = -(right) where right = (-uy, ux)
        lx, ly = uy, -ux
        steps = 20
        pts = []
        for k in range(steps):
            t = start + (stop - start) * k / (steps - 1)
            c, s = math.cos(t) * ry, math.sin(t) * rx
            pts += (cx + c * ux + s * lx, cy + c * uy + s * ly)
        self.draw.polygon(pts, fill=code)

    def capsule(self, p0: np.ndarray, r0: float, p1: np.ndarray, r1: float, code: int) -> None:
        """A tapered capsule from ``p0`` (radius ``r0``) to ``p1`` (radius ``r1``)."""
        x0, y0, x1, y1 = float(p0[0]), float(p0[1]), float(p1[0]), float(p1[1])
        dx, dy = x1 - x0, y1 - y0
        length = math.hypot(dx, dy)
        if length < 1e-6:
            r = max(r0, r1)
            self.draw.ellipse([x0 - r, y0 - r, x0 + r, y0 + r], fill=code)
            return
        ux, uy = dx / length, dy / length
        pts = []
        for c, s in _HALF_TURN:  # round end around p1, then round end around p0
            pts += (x1 + r1 * (c * ux - s * uy), y1 + r1 * (c * uy + s * ux))
        for c, s in _HALF_TURN:
            pts += (x0 - r0 * (c * ux - s * uy), y0 - r0 * (c * uy + s * ux))
        self.draw.polygon(pts, fill=code)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(label, material, segment) uint8 arrays of the canvas."""
        # As little-endian int32 bytes: byte 0 = label, 1 = material, 2 = segment.
        packed = np.asarray(self.image).astype("<i4", copy=False).view(np.uint8).reshape(self.height, self.width, 4)
        return packed[..., 0].copy(), packed[..., 1].copy(), packed[..., 2].copy()


def composite(material: np.ndarray, segment: np.ndarray, materials: Sequence[Material | None],
              background: Image.Image, rng: np.random.Generator,
              cast: Sequence[float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """Fill every material with its texture over ``background`` and shade the shapes; (H, W, 3) uint8.

    ``material`` and ``segment`` are the canvas's arrays. Shading darkens pixels near segment outlines
    (a cheap stand-in for rounded, lit body parts) and adds a light gradient across the foreground;
    ``cast`` multiplies the colours (exposure, white balance). Only foreground pixels are computed.
    """
    h, w = material.shape
    rgb = np.array(background, dtype=np.uint8).reshape(-1, 3)
    flat = material.ravel()
    foreground = np.flatnonzero(flat)
    if len(foreground) == 0:
        return rgb.reshape(h, w, 3)
    order = foreground[np.argsort(flat[foreground], kind="stable")]  # pixels grouped by material
    counts = np.bincount(flat[foreground], minlength=len(materials))
    ys, xs = np.divmod(order, w)
    grain = rng.random((len(order), 1), dtype=np.float32) - 0.5
    present = [i for i in np.flatnonzero(counts) if i > 0]
    coarse = None
    if any(materials[i].pattern == "noise" for i in present):  # type: ignore[union-attr]
        coarse = np.asarray(noise_field(rng, w, h, 6.0 + 10.0 * rng.random()), dtype=np.float32) / 255.0
    colours = np.empty((len(order), 3), dtype=np.float32)
    start = 0
    for index in present:
        stop = start + int(counts[index])
        colours[start:stop] = _texture(materials[index], ys[start:stop], xs[start:stop], coarse,  # type: ignore
                                       grain[start:stop])
        start = stop

    # Outline darkening: 1 on segment boundaries, fading to 0 a few pixels inside (repeated dilation of the
    # boundary map over the rows the foreground spans; much cheaper than blurring).
    steps = max(1, min(4, round(min(h, w) * (0.01 + 0.015 * rng.random()))))
    y0, y1 = max(int(ys.min()) - 1, 0), min(int(ys.max()) + 2, h)
    box = segment[y0:y1]
    edge = np.zeros(box.shape, dtype=bool)
    horizontal, vertical = box[:, 1:] != box[:, :-1], box[1:, :] != box[:-1, :]
    edge[:, 1:] |= horizontal
    edge[:, :-1] |= horizontal
    edge[1:, :] |= vertical
    edge[:-1, :] |= vertical
    rings = edge.astype(np.uint8)  # how many of the grown boundary maps cover each pixel
    for _ in range(steps - 1):
        grown = edge.copy()
        grown[1:] |= edge[:-1]
        grown[:-1] |= edge[1:]
        grown[:, 1:] |= edge[:, :-1]
        grown[:, :-1] |= edge[:, 1:]
        rings += grown
        edge = grown
    rim = rings.ravel().take(order - y0 * w).astype(np.float32) * np.float32(1.0 / steps)
    angle = 2 * math.pi * rng.random()
    cos, sin = np.float32(math.cos(angle) / max(h, w)), np.float32(math.sin(angle) / max(h, w))
    gradient = (xs.astype(np.float32) - np.float32(w / 2)) * cos + (ys.astype(np.float32) - np.float32(h / 2)) * sin
    shade = (1 - np.float32(0.2 + 0.25 * rng.random()) * rim) * (1 + np.float32(0.1 + 0.3 * rng.random()) * gradient)
    colours *= shade[:, None] * np.asarray(cast, dtype=np.float32)
    np.clip(colours, 0, 255, out=colours)
    # Assign whole 3-byte pixels at once (much faster than row-wise fancy indexing).
    rgb.view("V3").reshape(-1)[order] = colours.astype(np.uint8).view("V3").reshape(-1)
    return rgb.reshape(h, w, 3)
