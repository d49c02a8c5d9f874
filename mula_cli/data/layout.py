"""Finding a dataset's files on disk, in any of the layout variants its manifest lists.

Discovery only reads id lists and annotation text (the LIP pose CSV); images, label maps and
``.mat`` files are opened later, in worker processes (see :mod:`mula_cli.data.samples`).
Every problem found here is recorded as an :class:`Issue` and the sample is skipped or kept
with its bad part marked unusable, never silently dropped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mula_cli.utils.errors import MulaError
from mula_cli.utils.manifests import DatasetManifest

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".JPG", ".JPEG", ".PNG")


@dataclass(frozen=True)
class Issue:
    """One skipped or repaired item, as written to the prepare report."""

    id: str
    reason: str
    skipped: bool

    def as_dict(self) -> dict[str, str]:
        return {"id": self.id, "reason": self.reason}


@dataclass
class SampleSource:
    """Where one sample's parts are; joints are already parsed for layouts that keep them in text."""

    id: str
    image_path: Path
    label_path: Path | None = None
    joints: np.ndarray | None = None  # (P, J, 2) float32, NaN = unlabelled
    joint_flags: np.ndarray | None = None  # (P, J) int8: LIP occlusion flag / PASCAL visibility, -1 unlabelled
    joints_mat: Path | None = None  # PASCAL-Person-Part: joints still to be read from this file
    issues: list[Issue] = field(default_factory=list)


@dataclass
class SplitSources:
    """All samples of one split plus the problems found while discovering them."""

    split: str
    samples: list[SampleSource]
    issues: list[Issue]
    has_labels: bool
    has_joints: bool
    files: list[Path]  # annotation files read here (id lists, CSV), for the fingerprint


@dataclass(frozen=True)
class ResolvedLayout:
    """A manifest layout with every role resolved to an existing path (or None) per split."""

    name: str
    root: Path
    paths: dict[str, dict[str, Path | None]]  # role -> split -> path

    def get(self, role: str, split: str) -> Path | None:
        return self.paths.get(role, {}).get(split)

    def splits(self) -> list[str]:
        """Splits whose images are present."""
        return [s for s, p in self.paths.get("images", {}).items() if p is not None]


def resolve_layout(manifest: DatasetManifest, root: Path) -> ResolvedLayout:
    """Pick the manifest layout variant that matches ``root`` best.

    Raises:
        MulaError: ``root`` is missing or matches no layout variant.
    """
    root = Path(root)
    if not root.is_dir():
        raise MulaError(f"{root} is not a folder; give the root folder of your {manifest.display_name} copy")
    best: ResolvedLayout | None = None
    best_score = 0
    for layout in manifest.layouts:
        paths: dict[str, dict[str, Path | None]] = {}
        for role, per_split in layout.items():
            if role == "name":
                continue
            paths[role] = {split: _first_existing(root, candidates) for split, candidates in per_split.items()}
        score = sum(p is not None for p in paths.get("images", {}).values())
        score += sum(p is not None for role in paths.values() for p in role.values()) / 100.0
        if score >= 1 and score > best_score:
            best, best_score = ResolvedLayout(layout.get("name", "?"), root, paths), score
    if best is None:
        expected = "; or ".join(
            ", ".join(sorted({c[0] for c in layout.get("images", {}).values()})) for layout in manifest.layouts
        )
        raise MulaError(f"{root} does not look like {manifest.display_name}: expected image folders {expected}")
    return best


def _first_existing(root: Path, candidates: list[str]) -> Path | None:
    for rel in candidates:
        path = root / rel
        if path.exists():
            return path
    return None


def read_id_list(path: Path) -> list[str]:
    """Ids, one per line; blank lines, surrounding spaces and file extensions are dropped."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise MulaError(f"cannot read id list {path} ({exc.strerror}); check its permissions") from None
    ids = []
    for line in text.splitlines():
        line = line.strip()
        if line:
            ids.append(Path(line).stem if Path(line).suffix.lower() in (".jpg", ".jpeg", ".png") else line)
    return ids


def index_images(folder: Path) -> dict[str, Path]:
    """Map image id (file stem) to path for every image file directly inside ``folder``."""
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix in IMAGE_SUFFIXES and p.is_file()}


def parse_lip_pose_csv(path: Path, num_joints: int) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], list[Issue]]:
    """Parse a LIP pose CSV (``name.jpg,x0,y0,v0,...``; ``nan,nan,nan`` = unlabelled).

    Returns:
        id -> (joints (J, 2) float32 with NaN, occlusion flags (J,) int8 with -1 = unlabelled), and the
        problems found (rows of the wrong length or with non-numeric values: kept, bad joints unlabelled;
        duplicate rows: the first one wins).
    """
    rows: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    issues: list[Issue] = []
    expected = 1 + 3 * num_joints
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as exc:
        raise MulaError(f"cannot read pose annotations {path} ({exc.strerror}); check its permissions") from None
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        fields = [f.strip() for f in line.split(",")]
        sample_id = Path(fields[0]).stem
        joints = np.full((num_joints, 2), np.nan, np.float32)
        flags = np.full(num_joints, -1, np.int8)
        if len(fields) != expected:
            issues.append(Issue(sample_id, f"{path.name} line {lineno}: {len(fields)} fields instead of "
                                           f"{expected}; its joints are treated as unlabelled", skipped=False))
        else:
            bad = []
            for j in range(num_joints):
                x, y, v = fields[1 + 3 * j: 4 + 3 * j]
                parsed = [_number(x), _number(y), _number(v)]
                if any(p is None for p in parsed):
                    bad.append(j)
                elif math.isfinite(parsed[0]) and math.isfinite(parsed[1]):
                    joints[j] = (parsed[0], parsed[1])
                    flags[j] = 1 if parsed[2] == 1 else 0
            if bad:
                issues.append(Issue(sample_id, f"{path.name} line {lineno}: non-numeric values for joint(s) "
                                               f"{bad}; those joints are treated as unlabelled", skipped=False))
        if sample_id in rows:
            issues.append(Issue(sample_id, f"{path.name} line {lineno}: duplicate row; the first one is kept",
                                skipped=False))
            continue
        rows[sample_id] = (joints, flags)
    return rows, issues


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def discover_split(manifest: DatasetManifest, layout: ResolvedLayout, split: str) -> SplitSources:
    """List one split's samples and the problems with them, from id list, folders and annotation text."""
    image_dir = layout.get("images", split)
    if image_dir is None:
        raise MulaError(f"{layout.root} has no images for split '{split}' in the {layout.name} layout")
    label_dir = layout.get("labels", split)
    id_file = layout.get("ids", split)
    csv_file = layout.get("pose_csv", split)
    mat_dir = layout.get("joints_mat", split)
    issues: list[Issue] = []
    files: list[Path] = []

    images = index_images(image_dir)
    if id_file is not None:
        files.append(id_file)
        ids = list(dict.fromkeys(read_id_list(id_file)))
    else:  # no id list: the split is whatever the image folder holds
        ids = list(images)
    pose_rows: dict[str, tuple[np.ndarray, np.ndarray]] | None = None
    if csv_file is not None:
        files.append(csv_file)
        pose_rows, csv_issues = parse_lip_pose_csv(csv_file, manifest.num_joints)
        issues += csv_issues
        listed = set(ids)
        for row_id in pose_rows:
            if row_id not in images and row_id not in listed:  # listed ids are reported below
                issues.append(Issue(row_id, f"{csv_file.name} has a row for an image that does not exist "
                                            f"in {image_dir.name}/", skipped=True))
            elif row_id not in listed:
                issues.append(Issue(row_id, f"{csv_file.name} has a row for an image that "
                                            f"{id_file.name if id_file else 'the split'} does not list; ignored",
                                    skipped=True))

    samples: list[SampleSource] = []
    for sample_id in ids:
        image_path = images.get(sample_id)
        if image_path is None:
            where = id_file.name if id_file else image_dir.name
            issues.append(Issue(sample_id, f"listed in {where} but {image_dir.name}/{sample_id}.jpg is missing",
                                skipped=True))
            continue
        src = SampleSource(sample_id, image_path)
        if label_dir is not None:
            label_path = label_dir / f"{sample_id}.png"
            src.label_path = label_path if label_path.is_file() else None
            if src.label_path is None:
                src.issues.append(Issue(sample_id, f"no label map {label_dir.name}/{sample_id}.png; "
                                                   "its parsing is ignored", skipped=False))
        if pose_rows is not None:
            row = pose_rows.get(sample_id)
            if row is None:
                src.issues.append(Issue(sample_id, f"no row in {csv_file.name}; its joints are treated as "
                                                   "unlabelled", skipped=False))
                row = (np.full((manifest.num_joints, 2), np.nan, np.float32), np.full(manifest.num_joints, -1, np.int8))
            src.joints, src.joint_flags = row[0][None], row[1][None]
        if mat_dir is not None:
            src.joints_mat = mat_dir / f"{sample_id}.mat"
        samples.append(src)
    return SplitSources(split, samples, issues, has_labels=label_dir is not None,
                        has_joints=csv_file is not None or mat_dir is not None, files=files)
