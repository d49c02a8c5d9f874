"""Whole images: cluttered backgrounds, limb-like distractors, people, occluders, framing, blur and noise.

:func:`single_person_scene` frames one person the way LIP's person crops are framed (mostly portrait,
sometimes cut by the image border); :func:`multi_person_scene` places 1-4 people of varied sizes in a
landscape scene like PASCAL-Person-Part. Distractors and occluders are labelled background: they teach
a model that a skin-coloured capsule is not an arm unless a body is attached to it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

from mula_cli.data.synthetic.body import Figure, sample_figure
from mula_cli.data.synthetic.canvas import (
    Canvas,
    choose,
    composite,
    garment_colour,
    hsv,
    random_material,
    skin_colour,
)
from mula_cli.data.synthetic.outfit import sample_outfit
from mula_cli.data.synthetic.render import (
    DISTRACTOR_SEGMENT,
    OCCLUDER_SEGMENT,
    RenderedPerson,
    render_person,
)


@dataclass
class SceneImage:
    """One generated image with its fine labels (indices into ``FINE_CLASSES``) and segment map."""

    image: Image.Image  # RGB
    grayscale: bool  # save as a single-channel JPEG
    label: np.ndarray  # (H, W) uint8
    segment: np.ndarray  # (H, W) uint8
    people: list[RenderedPerson]

    @property
    def rgb(self) -> np.ndarray:
        """The image as an (H, W, 3) uint8 array."""
        return np.asarray(self.image)


def background(rng: np.random.Generator, width: int, height: int,
               cast: tuple[float, ...] = (1.0, 1.0, 1.0)) -> Image.Image:
    """A cluttered backdrop: a blotchy gradient, an optional floor, stripes and random shapes.

    ``cast`` multiplies every colour (the same exposure and white balance as the people get).
    """

    def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
        h, sat, v = rng.random(3)
        return tuple(min(255, int(c * f)) for c, f in zip(hsv(h, sat * 0.8, 0.1 + 0.9 * v), cast))  # type: ignore

    cells = 2 + int(rng.integers(2, 12))  # blotch size: a few to a dozen across the image
    gh, gw = (cells, max(2, cells * width // height)) if height >= width else (max(2, cells * height // width), cells)
    c0, c1 = np.array(_colour(rng), np.float32), np.array(_colour(rng), np.float32)
    ramp = np.linspace(0.0, 1.0, gh, dtype=np.float32)[:, None, None]
    if rng.random() < 0.5:
        ramp = np.linspace(0.0, 1.0, gw, dtype=np.float32)[None, :, None].repeat(gh, 0)
    # Blotches: mostly brightness variation with a little colour, of random strength.
    blotch = (rng.random((gh, gw, 1), dtype=np.float32) - 0.5) + (rng.random((gh, gw, 3), dtype=np.float32) - 0.5) * 0.3
    grid = c0 * (1 - ramp) + c1 * ramp + blotch * np.float32(90 * rng.random())
    image = Image.fromarray(np.clip(grid, 0, 255).astype(np.uint8)).resize((width, height), Image.BICUBIC)
    draw = ImageDraw.Draw(image)
    size = max(width, height)
    if rng.random() < 0.4:  # floor or ground below a horizon
        draw.rectangle([0, int(height * (0.45 + 0.45 * rng.random())), width, height], fill=_colour(rng))
    if rng.random() < 0.35:  # stripes or tiles over part of the scene
        period = (0.02 + 0.08 * rng.random()) * size
        colour = _colour(rng)
        vertical = rng.random() < 0.5
        offset = (rng.random() * 0.8 - 0.2) * size
        for k in range(int(size / period) + 1):
            a = offset + k * period
            draw.rectangle([a, 0, a + period * 0.45, height] if vertical else [0, a, width, a + period * 0.45],
                           fill=colour)
    for _ in range(int(rng.integers(2, 14))):
        x, y, w, h = rng.random(4) * (1.2, 1.2, 0.47, 0.47) + (-0.1, -0.1, 0.03, 0.03)
        x, y, w, h = x * width, y * height, w * size, h * size
        shape = int(rng.integers(4))
        if shape == 0:
            draw.rectangle([x, y, x + w, y + h], fill=_colour(rng))
        elif shape == 1:
            draw.ellipse([x, y, x + w, y + h], fill=_colour(rng))
        elif shape == 2:
            offsets = rng.random((int(rng.integers(3, 7)), 2)) * 2 - 1
            draw.polygon([(x + dx * w, y + dy * h) for dx, dy in offsets], fill=_colour(rng))
        else:
            draw.line([x, y, x + (rng.random() * 2 - 1) * w, y + (rng.random() * 2 - 1) * h], fill=_colour(rng),
                      width=int(rng.integers(1, max(2, size // 40))))
    return image


def _limb_like(rng: np.random.Generator, canvas: Canvas, segment: int, centre: np.ndarray, length: float) -> None:
    """One or two joined capsules coloured like skin or clothing (an arm or leg that belongs to no one)."""
    colour = skin_colour(rng) if rng.random() < 0.5 else garment_colour(rng)
    material = canvas.add_material(random_material(rng, colour, length * 3, "plain" if rng.random() < 0.6 else None))
    code = Canvas.code(0, material, segment)
    radius = length * rng.uniform(0.1, 0.22)
    a = rng.uniform(0, 2 * np.pi)
    p0 = centre
    p1 = p0 + length * np.array([np.cos(a), np.sin(a)])
    canvas.capsule(p0, radius, p1, radius * rng.uniform(0.7, 1.0), code)
    if rng.random() < 0.5:
        a += rng.uniform(-1.5, 1.5)
        canvas.capsule(p1, radius * 0.8, p1 + length * 0.9 * np.array([np.cos(a), np.sin(a)]), radius * 0.6, code)


def add_distractors(rng: np.random.Generator, canvas: Canvas, scale: float, count: int) -> None:
    """Limb-like shapes behind the people (labelled background)."""
    for _ in range(count):
        centre = np.array([rng.uniform(0, canvas.width), rng.uniform(0, canvas.height)])
        _limb_like(rng, canvas, DISTRACTOR_SEGMENT, centre, scale * rng.uniform(0.1, 0.3))


def add_occluder(rng: np.random.Generator, canvas: Canvas, box: np.ndarray, scale: float) -> None:
    """An object in front of a person (pixels labelled background; joints behind it become occluded)."""
    x0, y0, x1, y1 = box
    centre = np.array([rng.uniform(x0, x1), rng.uniform(y0, y1)])
    kind = rng.integers(4)
    if kind == 3:
        _limb_like(rng, canvas, OCCLUDER_SEGMENT, centre, scale * rng.uniform(0.12, 0.3))
        return
    material = canvas.add_material(random_material(rng, garment_colour(rng), scale))
    code = Canvas.code(0, material, OCCLUDER_SEGMENT)
    w, h = scale * rng.uniform(0.1, 0.45), scale * rng.uniform(0.1, 0.45)
    if kind == 0:  # box, table or sign rising from the bottom edge or floating
        top = centre[1] - h / 2
        bottom = canvas.height + 1 if rng.random() < 0.5 else centre[1] + h / 2
        canvas.polygon(np.array([[centre[0] - w, top], [centre[0] + w, top], [centre[0] + w, bottom],
                                 [centre[0] - w, bottom]]), code)
    elif kind == 1:  # ball or bag
        canvas.ellipse(centre, w / 2, h / 2, np.array([0.0, -1.0]), code)
    else:  # pole
        canvas.capsule(np.array([centre[0], -5.0]), w * 0.15, np.array([centre[0] + rng.uniform(-0.2, 0.2) * h,
                                                                         canvas.height + 5.0]), w * 0.15, code)


def figure_box(fig: Figure) -> np.ndarray:
    """(x0, y0, x1, y1) around a figure's body, head and hat included."""
    pts = np.array(list(fig.points.values()))
    pad = fig.props.thigh_r * 1.1
    head = fig.points["head-centre"]
    x0, y0 = np.minimum(pts.min(0) - pad, head - [fig.props.head_rw * 1.8, fig.props.head_rv * 1.4])
    x1, y1 = np.maximum(pts.max(0) + pad, head + [fig.props.head_rw * 1.8, fig.props.head_rv * 1.4])
    return np.array([x0, y0, x1, y1])


def _finish(rng: np.random.Generator, canvas: Canvas, people: list[RenderedPerson], width: int,
            height: int) -> SceneImage:
    """Texture, shade, colour-cast, blur and add noise; decide whether the image is saved grayscale."""
    label, material, segment = canvas.arrays()
    cast = tuple((0.8 + 0.35 * rng.random()) * (0.93 + 0.14 * rng.random(3)))  # exposure and white balance
    backdrop = background(rng, width, height, cast)
    image = Image.fromarray(composite(material, segment, canvas.materials, backdrop, rng, cast))
    blur = choose(rng, (0.0, 0.3 + 0.5 * rng.random(), 0.8 + 0.6 * rng.random()), (0.5, 0.42, 0.08))
    if blur > 0:
        image = image.filter(ImageFilter.BoxBlur(blur))
    amplitude = int(rng.integers(1, 12)) if rng.random() < 0.5 else 0  # uniform sensor noise, +-amplitude
    if amplitude:
        noise = Image.fromarray(rng.integers(0, 2 * amplitude + 1, (height, width), dtype=np.uint8)).convert("RGB")
        image = ImageChops.add(image, noise, 1.0, -amplitude)
    return SceneImage(image, bool(rng.random() < 0.04), label, segment, people)


def single_person_scene(rng: np.random.Generator) -> SceneImage:
    """One person in a LIP-like crop: long side 110-320 px, mostly portrait, a third cut by the frame."""
    fig = sample_figure(rng)
    x0, y0, x1, y1 = figure_box(fig)
    bh = y1 - y0
    u = rng.uniform
    x0, x1 = x0 - u(0.02, 0.2) * bh, x1 + u(0.02, 0.2) * bh
    y0, y1 = y0 - u(0.02, 0.12) * bh, y1 + u(0.02, 0.12) * bh
    cut = rng.random()
    if cut < 0.18:  # upper body only, cut between the hips and the knees
        knees = max(fig.points["R-knee"][1], fig.points["L-knee"][1])
        y1 = min(y1, fig.points["pelvis"][1] + u(-0.05, 1.0) * max(knees - fig.points["pelvis"][1], 0.05))
    elif cut < 0.27:  # cut on one side
        if rng.random() < 0.5:
            x0 += u(0.1, 0.35) * (x1 - x0)
        else:
            x1 -= u(0.1, 0.35) * (x1 - x0)
    elif cut < 0.32:  # top of the head or feet cut
        if rng.random() < 0.5:
            y0 += u(0.02, 0.1) * bh
        else:
            y1 -= u(0.05, 0.2) * bh
    w, h = x1 - x0, y1 - y0
    if w < 0.4 * h:  # no slivers: widen very narrow crops, heighten very flat ones
        centre = (x0 + x1) / 2 + u(-0.1, 0.1) * h
        x0, x1 = centre - 0.2 * h, centre + 0.2 * h
    elif h < 0.55 * w:
        y0, y1 = (y0 + y1) / 2 - 0.275 * w, (y0 + y1) / 2 + 0.275 * w
    w, h = x1 - x0, y1 - y0
    long_side = u(110, 320)
    scale = long_side / max(w, h)
    width, height = max(24, round(w * scale)), max(24, round(h * scale))
    pix = fig.transformed(scale, -np.array([x0, y0]) * scale)
    canvas = Canvas(width, height)
    stature = scale * 1.0
    add_distractors(rng, canvas, stature, int(rng.integers(0, 4)))
    outfit = sample_outfit(rng, canvas, stature)
    person = render_person(canvas, pix, outfit, 0)
    if rng.random() < 0.3:
        add_occluder(rng, canvas, figure_box(pix), stature)
    return _finish(rng, canvas, [person], width, height)


def multi_person_scene(rng: np.random.Generator) -> SceneImage:
    """1-4 people of varied sizes in a landscape scene, overlapping, some partly outside the frame."""
    width = int(rng.uniform(240, 400))
    height = int(width * rng.uniform(0.62, 0.85))
    count = choose(rng, (1, 2, 3, 4), (0.3, 0.35, 0.2, 0.15))
    statures = np.sort(height * rng.uniform(0.3, 1.1, count))  # small (far) people are painted first
    canvas = Canvas(width, height)
    add_distractors(rng, canvas, height * 0.6, int(rng.integers(0, 5)))
    people = []
    for index, stature in enumerate(statures):
        fig = sample_figure(rng)
        anchor = np.array([rng.uniform(0.0, 1.0) * width, rng.uniform(0.3, 0.9) * height])
        pix = fig.transformed(float(stature), anchor - fig.points["pelvis"] * stature)
        outfit = sample_outfit(rng, canvas, float(stature))
        people.append(render_person(canvas, pix, outfit, index))
        if rng.random() < 0.15:
            add_occluder(rng, canvas, figure_box(pix), float(stature))
    return _finish(rng, canvas, people, width, height)
