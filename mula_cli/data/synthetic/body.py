"""Articulated people: a 3D kinematic skeleton of the 16 MPII joints, posed at random and projected.

The body frame has +X towards the person's LEFT, +Y up and +Z the way the person faces; the camera
looks along -Z, so at yaw 0 the person faces the camera and their left side appears on the image
right (as in LIP, left/right always mean the person's own side). Lengths are in units of stature
(about 1 from ankle to head top). :func:`sample_figure` poses a random person and projects it
orthographically into image-plane units (x right, y down) with a depth (towards the camera) per point,
which the renderer uses for its painting order and occlusion flags.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mula_cli.data.synthetic.canvas import choose

UP = np.array([0.0, 1.0, 0.0])
DOWN = -UP
FORWARD = np.array([0.0, 0.0, 1.0])
SIDE_SIGN = {"R": -1.0, "L": 1.0}  # the person's left is +X


def rot_x(deg: float) -> np.ndarray:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def rot_y(deg: float) -> np.ndarray:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def rot_z(deg: float) -> np.ndarray:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _unit(v: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    n = math.sqrt(float(v @ v))
    return v / n if n > 1e-6 else fallback


def limb_direction(flex: float, abduct: float, side: float) -> np.ndarray:
    """Unit vector of a limb hanging down, swung forward by ``flex`` and outward by ``abduct`` degrees."""
    f, a = math.radians(flex), math.radians(abduct)
    return np.array([side * math.sin(a), -math.cos(a) * math.cos(f), math.cos(a) * math.sin(f)])


def bend(direction: np.ndarray, degrees: float, toward: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    """Rotate ``direction`` by ``degrees`` in the plane it spans with ``toward`` (a hinge joint)."""
    perp = _unit(toward - direction * float(direction @ toward), fallback)
    a = math.radians(degrees)
    return math.cos(a) * direction + math.sin(a) * perp


def two_bone(root: np.ndarray, target: np.ndarray, upper: float, lower: float,
             pole: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Place a middle joint so that a two-segment limb from ``root`` reaches ``target`` (clamped).

    The middle joint (elbow) bends towards ``pole``.
    """
    delta = target - root
    dist = min(max(math.sqrt(float(delta @ delta)), abs(upper - lower) + 1e-3), (upper + lower) * 0.995)
    axis = _unit(delta, DOWN)
    along = (upper**2 - lower**2 + dist**2) / (2 * dist)
    out = math.sqrt(max(upper**2 - along**2, 0.0))
    across = np.array([axis[1], -axis[0], 0.0])  # axis x FORWARD: used when the pole is along the limb
    side_dir = _unit(pole - axis * float(axis @ pole), _unit(across, UP))
    middle = root + axis * along + side_dir * out
    return middle, root + axis * dist


@dataclass(frozen=True)
class Proportions:
    """Segment lengths and radii of one person, in units of stature."""

    head_rv: float  # head half-height
    head_rw: float  # head half-width
    neck_len: float  # thorax to upper-neck
    neck_r: float
    torso_len: float  # pelvis to thorax
    shoulder_half: float  # thorax to each shoulder joint
    hip_half: float  # pelvis to each hip joint
    chest_w: float  # silhouette half-width at the shoulders
    waist_w: float
    hip_w: float
    chest_d: float  # half-depth of the torso (front to back)
    hip_d: float
    upper_arm: float
    forearm: float
    hand: float
    thigh: float
    shin: float
    foot: float
    ankle_h: float  # ankle above the sole
    upper_arm_r: float
    elbow_r: float
    wrist_r: float
    hand_r: float
    thigh_r: float
    knee_r: float
    ankle_r: float


def sample_proportions(rng: np.random.Generator) -> Proportions:
    """Random but plausible body proportions: adults of varied build, now and then a child."""
    child = rng.random() < 0.08
    build = rng.uniform(0.85, 1.25)  # slim .. heavy: scales every width
    broad = rng.uniform(0.85, 1.12)  # narrow .. broad shoulders
    draws = iter(rng.random(26).tolist())

    def u(lo: float, hi: float) -> float:
        return lo + (hi - lo) * next(draws)

    head_rv = u(0.083, 0.095) if child else u(0.062, 0.072)
    limb = 0.88 if child else 1.0
    thigh_r = u(0.046, 0.06) * build
    hip_half = u(0.05, 0.068) * (0.95 + 0.1 * build)
    return Proportions(
        head_rv=head_rv, head_rw=head_rv * u(0.76, 0.86), neck_len=u(0.065, 0.085) * limb,
        neck_r=u(0.026, 0.034) * build, torso_len=u(0.27, 0.31) * limb,
        shoulder_half=u(0.1, 0.118) * broad, hip_half=hip_half,
        chest_w=u(0.112, 0.13) * broad * (0.9 + 0.15 * build), waist_w=u(0.075, 0.09) * build,
        hip_w=hip_half + thigh_r * u(0.85, 1.0), chest_d=u(0.055, 0.07) * build, hip_d=u(0.06, 0.075) * build,
        upper_arm=u(0.165, 0.19) * limb, forearm=u(0.14, 0.16) * limb, hand=u(0.08, 0.095) * limb,
        thigh=u(0.23, 0.26) * limb, shin=u(0.23, 0.26) * limb, foot=u(0.13, 0.15) * limb, ankle_h=u(0.03, 0.04),
        upper_arm_r=u(0.028, 0.036) * build, elbow_r=u(0.022, 0.027) * build, wrist_r=u(0.017, 0.021) * build,
        hand_r=u(0.021, 0.026), thigh_r=thigh_r, knee_r=u(0.032, 0.04) * build, ankle_r=u(0.02, 0.025) * build,
    )


# Whole-body pose families and how often they occur; arms add their own variety on top.
POSES = ("stand", "walk", "sit", "crouch", "random")
POSE_P = (0.32, 0.26, 0.12, 0.1, 0.2)
ARMS = ("hang", "swing", "raise", "out", "forward", "cross", "hips", "head", "back", "random")
ARM_P = (0.2, 0.08, 0.1, 0.1, 0.09, 0.1, 0.09, 0.07, 0.04, 0.13)
BOTH_ARMS = ("hang", "cross", "hips", "raise", "back", "head", "forward")


def _leg_angles(rng: np.random.Generator, pose: str, front: bool) -> tuple[float, float, float]:
    """(flex, abduct, knee bend) in degrees for one leg of the given pose family."""
    u = rng.uniform
    if pose == "stand":
        if rng.random() < 0.2:  # weight on the other leg, this knee relaxed
            return u(3, 15), u(0, 8), u(10, 30)
        return rng.normal(0, 4), u(0, 10), u(0, 8)
    if pose == "walk":
        stride = u(10, 35)
        return (stride, u(0, 6), u(0, 15)) if front else (-u(5, stride), u(0, 6), u(10, 45))
    if pose == "sit":
        return u(65, 100), u(0, 22), u(60, 110)
    if pose == "crouch":
        return u(30, 85), u(5, 25), u(50, 120)
    return u(-30, 95), u(0, 40), u(0, 110)


def _arm_angles(rng: np.random.Generator, kind: str) -> tuple[float, float, float, float]:
    """(flex, abduct, elbow bend, twist) in degrees for the angle-driven arm kinds."""
    u = rng.uniform
    table = {
        "hang": ((-8, 10), (3, 18), (0, 25), (0, 30)),
        "raise": ((-15, 45), (100, 175), (0, 70), (-30, 60)),
        "out": ((-20, 70), (50, 100), (0, 90), (-30, 80)),
        "forward": ((45, 110), (0, 35), (0, 60), (-20, 60)),
        "random": ((-45, 130), (0, 170), (0, 140), (-60, 90)),
    }
    return tuple(float(u(*r)) for r in table[kind])  # type: ignore[return-value]


@dataclass
class Figure:
    """One posed person projected to the image plane (units of stature, x right, y down)."""

    points: dict[str, np.ndarray]  # joint and landmark name -> (x, y)
    depth: dict[str, float]  # towards the camera; bigger is nearer
    props: Proportions
    head_up: np.ndarray  # unit 2D vector from the chin to the head top
    face_dir: np.ndarray  # (x, y, towards camera) of the face normal; z < 0 means seen from behind
    torso_half: dict[str, float]  # silhouette half-widths at "chest", "waist", "hip" levels
    yaw: float  # degrees; 0 = facing the camera, +-180 = seen from the back
    pose: str

    def transformed(self, scale: float, offset: np.ndarray) -> Figure:
        """The same figure in pixels: ``p * scale + offset`` (depths and widths scaled too)."""
        props = Proportions(**{k: v * scale for k, v in self.props.__dict__.items()})
        return Figure({k: p * scale + offset for k, p in self.points.items()},
                      {k: d * scale for k, d in self.depth.items()}, props, self.head_up, self.face_dir,
                      {k: w * scale for k, w in self.torso_half.items()}, self.yaw, self.pose)


def _pose_3d(rng: np.random.Generator, pr: Proportions, pose: str) -> tuple[dict[str, np.ndarray], np.ndarray,
                                                                             np.ndarray]:
    """3D landmarks in the body frame, and the torso and head rotations."""
    pts: dict[str, np.ndarray] = {"pelvis": np.zeros(3)}
    lead = "R" if rng.random() < 0.5 else "L"  # leg in front when walking
    for side, s in SIDE_SIGN.items():
        flex, abduct, knee = _leg_angles(rng, pose, side == lead)
        hip = np.array([s * pr.hip_half, 0.0, 0.0])
        thigh = limb_direction(flex, abduct, s)
        shin = bend(thigh, knee, -FORWARD, DOWN)
        ankle = hip + thigh * pr.thigh + shin * pr.shin
        foot = rot_y(s * rng.uniform(0, 20)) @ bend(shin, 90 - rng.uniform(-15, 20), FORWARD, FORWARD)
        pts[f"{side}-hip"], pts[f"{side}-knee"], pts[f"{side}-ankle"] = hip, hip + thigh * pr.thigh, ankle
        pts[f"{side}-heel"] = ankle + DOWN * pr.ankle_h * 0.55 - foot * pr.foot * 0.22
        pts[f"{side}-toe"] = ankle + DOWN * pr.ankle_h * 0.75 + foot * pr.foot * 0.78

    bend_deg = {"crouch": rng.uniform(10, 40), "sit": rng.uniform(-5, 15),
                "random": rng.uniform(-10, 45)}.get(pose, rng.normal(3, 5))
    twist = rng.uniform(-25, 25) if pose == "random" else rng.normal(0, 9)
    torso = rot_z(rng.normal(0, 5)) @ rot_x(bend_deg) @ rot_y(twist)
    # Upper body in the torso frame, rotated about the pelvis at the end.
    up: dict[str, np.ndarray] = {"thorax": np.array([0.0, pr.torso_len, 0.0])}
    up["neck"] = up["thorax"] + UP * pr.neck_len * 0.45
    nod, turn, tilt = rng.normal(4, 8), rng.normal(0, 15) + (rng.uniform(-45, 45) if rng.random() < 0.2 else 0), \
        rng.normal(0, 6)
    head_local = rot_z(tilt) @ rot_x(nod) @ rot_y(turn)
    up["upper-neck"] = up["thorax"] + rot_x(nod * 0.5) @ UP * pr.neck_len
    up["head-centre"] = up["upper-neck"] + head_local @ UP * pr.head_rv * 0.95
    up["head-top"] = up["head-centre"] + head_local @ UP * pr.head_rv * 0.97
    up["hair-end"] = up["head-centre"] + DOWN * pr.head_rv * rng.uniform(2.0, 4.0) - FORWARD * pr.head_rv * 0.5

    both = rng.random() < 0.35
    shared = choose(rng, BOTH_ARMS)
    for side, s in SIDE_SIGN.items():
        kind = shared if both else choose(rng, ARMS, ARM_P)
        if pose == "walk" and not both and rng.random() < 0.6:
            kind = "swing"
        shoulder = np.array([s * pr.shoulder_half, pr.torso_len - pr.upper_arm_r * 0.4, 0.0])
        target, pole = _arm_target(rng, kind, s, pr, up["head-centre"])
        if target is None:
            if kind == "swing":
                leg_forward = pts[f"{side}-knee"][2] > 0
                flex, abduct, elbow, twist_a = (-1 if leg_forward else 1) * rng.uniform(10, 40), \
                    rng.uniform(3, 12), rng.uniform(10, 50), rng.uniform(-10, 20)
            else:
                flex, abduct, elbow, twist_a = _arm_angles(rng, kind)
            upper = limb_direction(flex, abduct, s)
            toward = np.array([-s * math.sin(math.radians(twist_a)), 0.0, math.cos(math.radians(twist_a))])
            lower = bend(upper, elbow, toward, UP)
            up[f"{side}-elbow"] = shoulder + upper * pr.upper_arm
            up[f"{side}-wrist"] = up[f"{side}-elbow"] + lower * pr.forearm
        else:
            up[f"{side}-elbow"], up[f"{side}-wrist"] = two_bone(shoulder, target, pr.upper_arm, pr.forearm, pole)
        up[f"{side}-shoulder"] = shoulder
        lower = _unit(up[f"{side}-wrist"] - up[f"{side}-elbow"], DOWN)
        hand = bend(lower, rng.uniform(-25, 30), FORWARD + UP * 0.3, UP)
        up[f"{side}-hand"] = up[f"{side}-wrist"] + hand * pr.hand * 0.8
    names = list(up)
    pts.update(zip(names, np.stack([up[k] for k in names]) @ torso.T))
    return pts, torso, torso @ head_local


def _arm_target(rng: np.random.Generator, kind: str, s: float, pr: Proportions,
                head: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
    """Wrist target and elbow pole (torso frame) for the arm kinds that put the hand somewhere."""
    u = rng.uniform
    if kind == "cross":  # hand across the chest, towards the other side
        return np.array([-s * u(0.0, 0.13), pr.torso_len - u(0.08, 0.22), pr.chest_d + u(0.03, 0.09)]), \
            np.array([s * 0.8, -0.6, -0.1])
    if kind == "hips":
        return np.array([s * (pr.hip_w + u(0.0, 0.02)), u(0.02, 0.09), u(-0.02, 0.03)]), np.array([s, 0.0, -0.4])
    if kind == "head":
        return head + np.array([s * u(-0.02, 0.1), u(-0.05, 0.08), u(0.02, 0.1)]), np.array([s, -0.6, -0.2])
    if kind == "back":  # hands behind the back
        return np.array([s * u(0.0, 0.08), u(0.0, 0.12), -pr.hip_d - u(0.03, 0.06)]), np.array([s, -0.3, -0.6])
    return None, UP


def sample_view(rng: np.random.Generator) -> float:
    """Body yaw in degrees: about half front views, a third side views, the rest from the back."""
    r = rng.random()
    sign = 1.0 if rng.random() < 0.5 else -1.0
    if r < 0.5:
        return float(rng.uniform(-40, 40))
    if r < 0.82:
        return sign * float(rng.uniform(40, 140))
    return sign * float(rng.uniform(140, 180))


def sample_figure(rng: np.random.Generator, pose: str | None = None, yaw: float | None = None) -> Figure:
    """A random person: proportions, pose, view; projected to the image plane."""
    props = sample_proportions(rng)
    pose = pose if pose is not None else choose(rng, POSES, POSE_P)
    pts3, torso, head = _pose_3d(rng, props, pose)
    yaw = yaw if yaw is not None else sample_view(rng)
    cam = rot_z(rng.normal(0, 4)) @ rot_x(rng.uniform(-6, 12)) @ rot_y(yaw)
    flip = np.array([1.0, -1.0])  # image y grows downwards

    def to_2d(v: np.ndarray) -> np.ndarray:
        return (cam @ v)[:2] * flip

    names = list(pts3)
    seen = np.stack([pts3[k] for k in names]) @ cam.T
    points = dict(zip(names, seen[:, :2] * flip))
    depth = dict(zip(names, seen[:, 2].tolist()))
    spine = _unit(points["thorax"] - points["pelvis"], np.array([0.0, -1.0]))
    normal = np.array([-spine[1], spine[0]])

    def half_width(rotation: np.ndarray, w: float, d: float) -> float:
        lateral, frontal = to_2d(rotation @ np.array([1.0, 0, 0])), to_2d(rotation @ FORWARD)
        return float(np.hypot(w * (lateral @ normal), d * (frontal @ normal)))

    torso_half = {"chest": half_width(torso, props.chest_w, props.chest_d),
                  "waist": half_width(torso, props.waist_w, (props.chest_d + props.hip_d) / 2),
                  "hip": half_width(np.eye(3), props.hip_w, props.hip_d)}
    head_up = _unit(points["head-top"] - points["head-centre"], np.array([0.0, -1.0]))
    face = cam @ head @ FORWARD
    return Figure(points, depth, props, head_up, np.array([face[0], -face[1], face[2]]), torso_half,
                  float(yaw), pose)
