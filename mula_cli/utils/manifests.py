"""Dataset manifests: the one home of every dataset fact (classes, joints, mirror pairs, palette...).

The JSON files live in the top-level ``data_manifests/`` folder and ship inside the package as
``mula_cli.data_manifests``. A file ``$MULA_HOME/manifests/<name>.json`` overrides the built-in one
(for instance to correct PASCAL-Person-Part's joint order). A manifest may name a ``base`` manifest
whose fields it inherits; its own fields replace the base's.

``pose_formats`` says which of the joints each keypoint of another program's layout is, by name:
``{"body_25": {"Neck": "thorax", "MidHip": "pelvis", ...}, "coco_17": {...}}`` (a list of joints
means their mean); keypoints it leaves out have no joint. The layouts themselves (names, order)
are ``mula_cli.io.pose_records``'.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from mula_cli.utils.errors import MulaError
from mula_cli.utils.paths import user_manifest_dir

SINGLE_PERSON = "single_person"
MULTI_PERSON = "multi_person"


@dataclass(frozen=True)
class PckhSpec:
    """Which joints the PCKh metric uses: head size, reported groups, averages."""

    head_top: int
    neck: int
    groups: dict[str, tuple[int, ...]]
    upper_body: tuple[int, ...]
    average: tuple[int, ...]


@dataclass(frozen=True)
class DatasetManifest:
    """The facts about one dataset that code may need, read from its manifest file."""

    name: str
    display_name: str
    title: str
    kind: str
    classes: tuple[str, ...]
    class_mirror_pairs: tuple[tuple[int, int], ...]
    ignore_label: int
    palette: tuple[tuple[int, int, int], ...]
    joints: tuple[str, ...]
    joint_mirror_pairs: tuple[tuple[int, int], ...]
    skeleton: tuple[tuple[int, int], ...]
    pckh: PckhSpec
    splits: dict[str, int]
    layouts: tuple[dict[str, Any], ...]
    raw: dict[str, Any] = field(repr=False, compare=False)
    # format ("body_25", "coco_17") -> its keypoint name -> the joints it is (one, or several to average)
    pose_formats: dict[str, dict[str, tuple[str, ...]]] = field(default_factory=dict, repr=False)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def num_joints(self) -> int:
        return len(self.joints)

    @property
    def multi_person(self) -> bool:
        return self.kind == MULTI_PERSON

    def class_flip_lut(self) -> np.ndarray:
        """A 256-entry uint8 lookup table that swaps left/right class ids (identity elsewhere)."""
        lut = np.arange(256, dtype=np.uint8)
        for a, b in self.class_mirror_pairs:
            lut[a], lut[b] = b, a
        return lut

    def joint_flip_index(self) -> list[int]:
        """``flipped[j] = joints[index[j]]`` swaps left/right joints after a horizontal flip."""
        index = list(range(self.num_joints))
        for a, b in self.joint_mirror_pairs:
            index[a], index[b] = b, a
        return index

    def palette_bytes(self) -> bytes:
        """The palette as the 768 bytes a PIL ``P``-mode image takes (unused entries black)."""
        flat = [c for rgb in self.palette for c in rgb]
        return bytes(flat + [0] * (768 - len(flat)))

    def to_json(self) -> str:
        """The resolved manifest as JSON, stored in caches and weights files."""
        return json.dumps(self.raw)  # key order kept: PCKh groups print in the manifest's order


def _builtin_dir() -> Path:
    try:
        return Path(str(resources.files("mula_cli.data_manifests")))
    except ModuleNotFoundError:  # running from a source tree that was never installed
        return Path(__file__).resolve().parents[2] / "data_manifests"


def _read_raw(name: str) -> dict[str, Any]:
    for folder in (user_manifest_dir(), _builtin_dir()):
        path = folder / f"{name}.json"
        if path.is_file():
            try:
                return json.loads(path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as exc:
                raise MulaError(f"manifest {path} is not valid JSON ({exc}); fix or delete it") from None
    known = ", ".join(available_manifests())
    raise MulaError(f"no dataset manifest named '{name}' (known: {known})")


def available_manifests() -> list[str]:
    """Names of every manifest, built in or in the user's override folder."""
    names = {p.stem for p in _builtin_dir().glob("*.json")}
    if user_manifest_dir().is_dir():
        names |= {p.stem for p in user_manifest_dir().glob("*.json")}
    return sorted(names)


def _resolve(name: str, depth: int = 0) -> dict[str, Any]:
    raw = _read_raw(name)
    base = raw.get("base")
    if base is None:
        return raw
    if depth > 4:
        raise MulaError(f"manifest '{name}' has a 'base' chain that loops; fix its 'base' field")
    merged = dict(_resolve(base, depth + 1))
    merged.update({k: v for k, v in raw.items() if k != "base"})
    merged["base"] = base
    return merged


def load_manifest(name: str) -> DatasetManifest:
    """Load a manifest by dataset name (``lip``, ``pascal_person_part``, ``synthetic``, ...)."""
    return manifest_from_dict(_resolve(name.replace("-", "_")))


def manifest_from_json(text: str) -> DatasetManifest:
    """Rebuild a manifest from the JSON stored in a cache or weights file."""
    return manifest_from_dict(json.loads(text))


def manifest_from_dict(raw: dict[str, Any]) -> DatasetManifest:
    """Validate a manifest dict and turn it into a :class:`DatasetManifest`."""
    name = raw.get("name", "?")
    try:
        classes = tuple(str(c) for c in raw["classes"])
        joints = tuple(str(j) for j in raw["joints"])
        pk = raw["pckh"]
        pckh = PckhSpec(
            head_top=int(pk["head_top"]),
            neck=int(pk["neck"]),
            groups={str(k): tuple(int(i) for i in v) for k, v in pk["groups"].items()},
            upper_body=tuple(int(i) for i in pk["upper_body"]),
            average=tuple(int(i) for i in pk["average"]),
        )
        manifest = DatasetManifest(
            name=str(raw["name"]),
            display_name=str(raw.get("display_name", raw["name"])),
            title=str(raw.get("title", raw["name"])),
            kind=str(raw.get("kind", SINGLE_PERSON)),
            classes=classes,
            class_mirror_pairs=tuple((int(a), int(b)) for a, b in raw.get("class_mirror_pairs", [])),
            ignore_label=int(raw.get("ignore_label", 255)),
            palette=tuple((int(r), int(g), int(b)) for r, g, b in raw["palette"]),
            joints=joints,
            joint_mirror_pairs=tuple((int(a), int(b)) for a, b in raw.get("joint_mirror_pairs", [])),
            skeleton=tuple((int(a), int(b)) for a, b in raw.get("skeleton", [])),
            pckh=pckh,
            splits={str(k): int(v) for k, v in raw.get("splits", {}).items()},
            layouts=tuple(raw.get("layouts", [])),
            raw=raw,
            pose_formats={str(fmt): {str(k): (v,) if isinstance(v, str) else tuple(str(j) for j in v)
                                     for k, v in mapping.items()}
                          for fmt, mapping in raw.get("pose_formats", {}).items()},
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise MulaError(f"dataset manifest '{name}' is malformed ({exc!r}); compare it with the built-in one") from None
    _check(manifest)
    return manifest


def _check(m: DatasetManifest) -> None:
    def bad(what: str) -> MulaError:
        return MulaError(f"dataset manifest '{m.name}': {what}")

    if m.kind not in (SINGLE_PERSON, MULTI_PERSON):
        raise bad(f"kind must be {SINGLE_PERSON} or {MULTI_PERSON}, not {m.kind!r}")
    if not 1 < m.num_classes <= 255 or not m.num_classes <= m.ignore_label <= 255:
        raise bad("needs 2..255 classes and an ignore label outside the class range, at most 255 (labels are uint8)")
    if len(m.palette) != m.num_classes:
        raise bad(f"palette has {len(m.palette)} colours for {m.num_classes} classes")
    for a, b in m.class_mirror_pairs:
        if not (0 <= a < m.num_classes and 0 <= b < m.num_classes):
            raise bad(f"class mirror pair ({a}, {b}) is out of range")
    joint_refs = [i for p in m.joint_mirror_pairs + m.skeleton for i in p]
    joint_refs += [m.pckh.head_top, m.pckh.neck, *m.pckh.upper_body, *m.pckh.average]
    joint_refs += [i for g in m.pckh.groups.values() for i in g]
    torso = m.raw.get("torso") or {}
    joint_refs += [int(i) for key in ("upper", "lower") for i in torso.get(key, [])]
    if any(not 0 <= i < m.num_joints for i in joint_refs):
        raise bad("a joint index in mirror pairs, skeleton or pckh is out of range")
    for fmt, mapping in m.pose_formats.items():
        for keypoint, joints in mapping.items():
            if not joints:
                raise bad(f"pose_formats.{fmt} maps {keypoint!r} to no joint; leave it out instead")
            for joint in joints:
                if joint not in m.joints:
                    raise bad(f"pose_formats.{fmt} maps {keypoint!r} to {joint!r}, which is not one of its joints "
                              f"({', '.join(m.joints)})")


def pose_format_mapping(manifest: DatasetManifest, fmt: str) -> dict[str, tuple[str, ...]]:
    """``manifest``'s mapping from the keypoints of ``fmt`` (``body_25``, ``coco_17``) to its joints.

    Weights carry the manifest as it was when they were saved: when that copy has no mapping, the
    current manifest of the same name (the user's override, else the built-in one) lends its own if
    its joints are the same. A MulaError saying where to add one when neither has it.
    """
    mapping = manifest.pose_formats.get(fmt)
    if mapping is None:
        try:
            current = load_manifest(manifest.name)
        except MulaError:
            current = None
        if current is not None and current.joints == manifest.joints:
            mapping = current.pose_formats.get(fmt)
    if mapping is None:
        where = user_manifest_dir() / f"{manifest.name}.json"
        raise MulaError(f"dataset manifest '{manifest.name}' does not say which of its joints the {fmt} keypoints are; "
                        f"add a \"pose_formats\": {{\"{fmt}\": {{...}}}} table to {where} (the built-in lip.json has "
                        "one) or use --pose-format mula")
    return mapping
