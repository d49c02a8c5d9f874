"""Loading and validating one sample from disk (runs in ``prepare``'s worker processes).

Each sample's image is fully decoded once to prove it is readable (a truncated JPEG fails here,
not in the middle of training), its label map is checked against the image size and the class
range, and its person centre and scale are derived. The original image bytes are kept as they
are; label maps are kept as PNG bytes (re-encoded only when they had to be repaired or were
not single-channel).

Person centre and scale (LIP ships none): the person box is the union of the labelled joints'
bounding box and the label map's foreground box (pixels that are neither background nor
ignore); with neither, the whole image. The centre is the box centre and the scale is the box's
longer side / 200 px, the MPII convention the authors' augmentation expects (``scale * 200`` is
the person's size in pixels).
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from mula_cli.data.layout import Issue, SampleSource
from mula_cli.data.matfile import MatFileError, read_person_joints_mat

PERSON_SCALE_UNIT = 200.0  # pixels per unit of scale (MPII convention)


@dataclass(frozen=True)
class SampleRules:
    """What a valid sample looks like, from the dataset manifest (picklable for worker processes)."""

    num_classes: int
    num_joints: int
    ignore_label: int
    palette: tuple[tuple[int, int, int], ...]
    mat_one_based: bool = False


@dataclass
class SampleRecord:
    """One validated sample, ready to be appended to the cache."""

    id: str
    image: bytes
    height: int
    width: int
    label: bytes  # PNG bytes of a single-channel class-id map; b"" = no usable label
    joints: np.ndarray  # (P, J, 2) float32, NaN = unlabelled
    occluded: np.ndarray  # (P, J) int8: 1 occluded, 0 visible, -1 unlabelled
    boxes: np.ndarray  # (P, 4) float32 x1, y1, x2, y2
    center: np.ndarray  # (2,) float32 x, y
    scale: float
    digest: bytes
    issues: list[Issue] = field(default_factory=list)
    skipped: bool = False


def load_sample(src: SampleSource, rules: SampleRules) -> SampleRecord:
    """Read, validate and repair one sample; never raises for bad data (it records an issue instead)."""
    issues = list(src.issues)
    empty_j = np.zeros((0, rules.num_joints, 2), np.float32)
    try:
        image_bytes = src.image_path.read_bytes()
        with Image.open(io.BytesIO(image_bytes)) as img:
            img.load()  # full decode: raises on truncated or corrupt data
            width, height = img.size
            if img.mode not in ("1", "L", "P", "RGB", "RGBA", "CMYK", "YCbCr", "LA", "I", "I;16", "F"):
                raise OSError(f"unsupported image mode {img.mode}")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        reason = f"unreadable image {src.image_path.name}: {exc}"
        return SampleRecord(src.id, b"", 0, 0, b"", empty_j, np.zeros((0, rules.num_joints), np.int8),
                            np.zeros((0, 4), np.float32), np.zeros(2, np.float32), 0.0, b"",
                            issues + [Issue(src.id, reason, skipped=True)], skipped=True)

    label_bytes, label = b"", None
    if src.label_path is not None:
        label_bytes, label = _load_label(src, rules, (height, width), issues)

    joints, occluded, boxes, extra = _load_joints(src, rules, issues)
    center, scale = person_center_scale(joints, label, rules.ignore_label, (height, width))
    if boxes.shape[0] and np.isnan(boxes).any():
        boxes = np.stack([_joint_box(j) if np.isnan(b).any() else b for j, b in zip(joints, boxes)])
    digest = hashlib.sha256(image_bytes + label_bytes + joints.tobytes() + occluded.tobytes() + extra).digest()
    return SampleRecord(src.id, image_bytes, height, width, label_bytes, joints, occluded,
                        boxes.astype(np.float32), center, scale, digest, issues)


def _load_label(src: SampleSource, rules: SampleRules, size: tuple[int, int], issues: list[Issue]):
    name = src.label_path.name
    try:
        raw = src.label_path.read_bytes()
        with Image.open(io.BytesIO(raw)) as img:
            img.load()
            arr, converted = _label_array(img, rules)
    except (OSError, ValueError) as exc:
        issues.append(Issue(src.id, f"unreadable label map {name} ({exc}); its parsing is ignored", skipped=False))
        return b"", None
    if arr is None:
        issues.append(Issue(src.id, f"label map {name} is not a single-channel class-id map (mode "
                                    f"{converted}); its parsing is ignored", skipped=False))
        return b"", None
    if arr.shape != size:
        issues.append(Issue(src.id, f"label map {name} is {arr.shape[1]}x{arr.shape[0]} but the image is "
                                    f"{size[1]}x{size[0]}; its parsing is ignored", skipped=False))
        return b"", None
    bad = (arr >= rules.num_classes) & (arr != rules.ignore_label)
    if bad.any():
        values = sorted(int(v) for v in np.unique(arr[bad]))[:5]
        issues.append(Issue(src.id, f"label map {name} has {int(bad.sum())} pixels with values {values} outside "
                                    f"0..{rules.num_classes - 1}; set to ignore ({rules.ignore_label})",
                            skipped=False))
        arr = np.where(bad, rules.ignore_label, arr).astype(np.uint8)
        converted = True
    if converted:
        raw = encode_label_png(arr)
    return raw, arr


def _label_array(img: Image.Image, rules: SampleRules) -> tuple[np.ndarray | None, bool | str]:
    """Class ids of a label image and whether it had to be converted; None if it is not a class map."""
    if img.mode == "L" and img.format == "PNG":
        return np.asarray(img), False
    if img.mode in ("L", "P"):  # palette PNGs store class ids as indices
        return np.asarray(img).astype(np.uint8), True
    if img.mode in ("I", "I;16"):
        arr = np.asarray(img)
        return (arr.astype(np.uint8), True) if arr.max(initial=0) < 256 and arr.min(initial=0) >= 0 else (None, img.mode)
    if img.mode in ("RGB", "RGBA"):  # colour-coded labels: map the manifest palette back to ids
        rgb = np.asarray(img.convert("RGB")).astype(np.int32)
        code = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
        lut = {(r << 16) | (g << 8) | b: i for i, (r, g, b) in enumerate(rules.palette)}
        values, inverse = np.unique(code, return_inverse=True)
        if not all(int(v) in lut for v in values):
            return None, img.mode
        ids = np.array([lut[int(v)] for v in values], np.uint8)
        return ids[inverse].reshape(code.shape), True
    return None, img.mode


def encode_label_png(arr: np.ndarray) -> bytes:
    """Lossless single-channel PNG bytes of a uint8 class-id map."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr, dtype=np.uint8), mode="L").save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def _load_joints(src: SampleSource, rules: SampleRules, issues: list[Issue]):
    j = rules.num_joints
    if src.joints_mat is not None:
        try:
            people, boxes = read_person_joints_mat(src.joints_mat, j, one_based=rules.mat_one_based)
            extra = src.joints_mat.read_bytes()
        except (MatFileError, OSError) as exc:
            issues.append(Issue(src.id, f"unreadable joint file {src.joints_mat.name} ({exc}); its joints are "
                                        "treated as unlabelled", skipped=False))
            return np.zeros((0, j, 2), np.float32), np.zeros((0, j), np.int8), np.zeros((0, 4), np.float32), b""
        labelled = np.isfinite(people[..., :2]).all(axis=-1)
        occluded = np.where(labelled, (people[..., 2] == 0).astype(np.int8), -1).astype(np.int8)
        return people[..., :2].astype(np.float32), occluded, boxes, extra
    if src.joints is not None:
        boxes = np.stack([_joint_box(p) for p in src.joints]) if len(src.joints) else np.zeros((0, 4), np.float32)
        return src.joints.astype(np.float32), src.joint_flags.astype(np.int8), boxes, b""
    return np.zeros((0, j, 2), np.float32), np.zeros((0, j), np.int8), np.zeros((0, 4), np.float32), b""


def _joint_box(joints: np.ndarray) -> np.ndarray:
    ok = np.isfinite(joints).all(axis=-1)
    if not ok.any():
        return np.full(4, np.nan, np.float32)
    pts = joints[ok]
    return np.array([*pts.min(axis=0), *pts.max(axis=0)], np.float32)


def person_center_scale(joints: np.ndarray, label: np.ndarray | None, ignore_label: int,
                        size: tuple[int, int]) -> tuple[np.ndarray, float]:
    """Person centre (x, y) and scale (longer side of the person box / 200) as the module docstring says."""
    height, width = size
    boxes = []
    pts = joints.reshape(-1, 2)
    pts = pts[np.isfinite(pts).all(axis=1)]
    if len(pts):
        boxes.append([*pts.min(axis=0), *pts.max(axis=0)])
    if label is not None:
        fg = (label != 0) & (label != ignore_label)
        rows, cols = np.flatnonzero(fg.any(axis=1)), np.flatnonzero(fg.any(axis=0))
        if len(rows):
            boxes.append([cols[0], rows[0], cols[-1], rows[-1]])
    if not boxes:
        boxes.append([0, 0, width - 1, height - 1])
    b = np.asarray(boxes, np.float64)
    x1, y1 = b[:, 0].min(), b[:, 1].min()
    x2, y2 = b[:, 2].max(), b[:, 3].max()
    center = np.array([(x1 + x2) / 2, (y1 + y2) / 2], np.float32)
    scale = max(x2 - x1 + 1, y2 - y1 + 1) / PERSON_SCALE_UNIT
    return center, float(scale)
