"""What one synthetic person wears: the outfit, drawn at random, and its materials on the canvas.

Its own module so that the head painter and the body renderer both read it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mula_cli.data.synthetic.canvas import (
    Canvas,
    Material,
    choose,
    garment_colour,
    hair_colour,
    hsv,
    random_material,
    skin_colour,
)


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


@dataclass
class Outfit:
    """What one person wears; ``*_cover`` are lengths along a limb chain (1 = elbow/knee, 2 = wrist/ankle)."""

    top: str
    bottom: str
    sleeve_cover: float
    leg_cover: float  # pants legs; for skirts and dresses, how far down the thigh/shin the hem reaches
    hem: float  # top garment's lower edge, as a fraction of pelvis->thorax (negative = below the pelvis)
    coat_tail: float  # coat below the hips, along the thigh (0 = none)
    open_coat: bool
    hair: str
    hat: str | None
    sunglasses: bool
    gloves: bool
    scarf: bool
    socks: float  # sock height as a fraction of the shin (0 = none visible)
    loose: float  # garment radius over limb radius
    flare: float  # how far a skirt's hem stands out from the legs, in leg radii
    materials: dict[str, int] = field(default_factory=dict)


def sample_outfit(rng: np.random.Generator, canvas: Canvas, scale: float) -> Outfit:
    """Random clothes and accessories, with their materials added to ``canvas``."""
    top = choose(rng, ("Upper-clothes", "Coat", "Dress", "Jumpsuits"), (0.56, 0.2, 0.15, 0.09))
    bottom = top if top in ("Dress", "Jumpsuits") else choose(rng, ("Pants", "Skirt"), (0.72, 0.28))
    if top == "Coat":
        sleeve = _u(rng, 1.75, 2.0)
    elif top == "Dress":
        sleeve = choose(rng, (0.0, _u(rng, 0.25, 0.6), _u(rng, 1.7, 2.0)), (0.35, 0.45, 0.2))
    else:
        sleeve = choose(rng, (0.0, _u(rng, 0.3, 0.65), _u(rng, 0.8, 1.4), _u(rng, 1.75, 2.0)), (0.15, 0.4, 0.1, 0.35))
    if bottom in ("Pants", "Jumpsuits"):
        legs = choose(rng, (_u(rng, 0.3, 0.7), _u(rng, 1.3, 1.6), _u(rng, 1.9, 2.03)), (0.25, 0.1, 0.65))
    else:
        legs = _u(rng, 0.35, 1.5)
    bare_legs = bottom in ("Skirt", "Dress") or legs < 1.7
    outfit = Outfit(
        top=top, bottom=bottom, sleeve_cover=sleeve, leg_cover=legs,
        hem=_u(rng, -0.12, 0.1) if top != "Coat" else _u(rng, -0.15, -0.05),
        coat_tail=_u(rng, 0.2, 0.9) if top == "Coat" and rng.random() < 0.7 else 0.0,
        open_coat=top == "Coat" and rng.random() < 0.6,
        hair=choose(rng, ("bald", "short", "medium", "long"), (0.05, 0.4, 0.25, 0.3)),
        hat=choose(rng, (None, "beanie", "cap", "brim"), (0.82, 0.07, 0.07, 0.04)),
        sunglasses=rng.random() < 0.14, gloves=rng.random() < 0.1, scarf=rng.random() < 0.12,
        socks=_u(rng, 0.08, 0.5) if bare_legs and rng.random() < 0.6 else 0.0, loose=_u(rng, 1.08, 1.35),
        flare=_u(rng, 0.15, 1.1))
    skin = skin_colour(rng)
    m = outfit.materials
    m["skin"] = canvas.add_material(Material("plain", skin, skin))
    m["features"] = canvas.add_material(Material("plain", (45, 28, 25), (45, 28, 25)))
    hair = hair_colour(rng)
    m["hair"] = canvas.add_material(Material(choose(rng, ("noise", "grain"), (0.3, 0.7)), hair,
                                             tuple(c * 0.6 for c in hair), 3.0))
    worn = {"top": True, "bottom": bottom in ("Pants", "Skirt"), "inner": outfit.open_coat,
            "hat": outfit.hat is not None, "gloves": outfit.gloves, "scarf": outfit.scarf, "socks": outfit.socks > 0}
    for key in (k for k, on in worn.items() if on):  # materials only for what is worn
        jeans = key == "bottom" and bottom == "Pants" and rng.random() < 0.35
        m[key] = canvas.add_material(random_material(rng, garment_colour(rng), scale, "grain" if jeans else None))
    shoe = hsv(rng.random(), 0.4 * rng.random(), 0.05 + 0.85 * rng.random()) if rng.random() < 0.7 \
        else garment_colour(rng)
    m["shoes"] = canvas.add_material(random_material(rng, shoe, scale, "plain"))
    if outfit.sunglasses:
        m["glasses"] = canvas.add_material(Material("plain", hsv(rng.random(), 0.3, 0.03 + 0.17 * rng.random()),
                                                    (0, 0, 0)))
    return outfit
