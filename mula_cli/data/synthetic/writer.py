"""Writing synthetic datasets to disk in the official LIP and PASCAL-Person-Part layouts.

PASCAL-Person-Part joint files are written as the real ones are stored (see
:mod:`mula_cli.data.matfile`): one MATLAB v5 file per image, ``PersonJoints/<id>.mat``, holding
two 1 x P cell arrays, ``joints`` (14 x 3 doubles: x, y, visible flag) and ``boxes`` (1 x 4 doubles:
x1, y1, x2, y2), with 0-based pixel coordinates.

Every image is generated from its own generator, ``np.random.default_rng([seed, split, index])``,
so the bytes of every file depend only on the seed and the image's place, never on the number of
worker processes or their scheduling. Workers write the image files; the main process writes the
id lists and the pose CSV in id order. JPEG quality and chroma subsampling are fixed and no file
carries a time stamp, so one seed always gives byte-identical trees.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from mula_cli.data.matfile import write_person_joints_mat
from mula_cli.data.synthetic.render import COARSE_OF_PART, FINE_CLASSES, MAX_PEOPLE, PART_SLOTS, PARTS
from mula_cli.data.synthetic.scene import SceneImage, multi_person_scene, single_person_scene
from mula_cli.utils.errors import MulaError
from mula_cli.utils.interrupts import ignore_stop_signals, starting_workers
from mula_cli.utils.manifests import DatasetManifest

SPLIT_INDEX = {"train": 0, "val": 1, "test": 2}
JPEG_QUALITY = 90
JPEG_SUBSAMPLING = 2  # 4:2:0
_BODY_POINTS = ("R-ankle", "R-knee", "R-hip", "L-hip", "L-knee", "L-ankle", "pelvis", "thorax", "upper-neck",
                "head-top", "R-wrist", "R-elbow", "R-shoulder", "L-shoulder", "L-elbow", "L-wrist", "neck")


@dataclass
class GenerationStats:
    """How many images were generated and how long it took."""

    images: int
    seconds: float

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class _Job:
    """Everything one worker needs to generate and write one image (small and picklable)."""

    root: str
    split: str
    index: int
    seed: int
    class_lut: bytes  # fine class index (LIP tree) or segment id (PASCAL tree) -> manifest class id
    joints: tuple[str, ...]  # body point names in the manifest's joint order


def _lip_class_lut(manifest: DatasetManifest) -> bytes:
    missing = [n for n in FINE_CLASSES if n not in manifest.classes]
    if missing:
        raise MulaError(f"manifest '{manifest.name}' lacks the LIP classes {missing}; the synthetic LIP tree "
                        "needs LIP's 20 class names (use the built-in 'synthetic' manifest)")
    return bytes(manifest.classes.index(n) for n in FINE_CLASSES)


def _pascal_class_lut(manifest: DatasetManifest) -> bytes:
    names = sorted(set(COARSE_OF_PART.values()) | {"Background"})
    missing = [n for n in names if n not in manifest.classes]
    if missing:
        raise MulaError(f"manifest '{manifest.name}' lacks the part classes {missing}; the synthetic PASCAL tree "
                        "needs PASCAL-Person-Part's class names (use the built-in 'synthetic_multi_person' manifest)")
    lut = [manifest.classes.index("Background")] * 256
    for segment in range(1, 1 + MAX_PEOPLE * PART_SLOTS):  # people's segments; distractors etc. stay background
        part = (segment - 1) % PART_SLOTS
        if part < len(PARTS):
            lut[segment] = manifest.classes.index(COARSE_OF_PART[PARTS[part]])
    return bytes(lut)


def _joint_names(manifest: DatasetManifest) -> tuple[str, ...]:
    unknown = [j for j in manifest.joints if j not in _BODY_POINTS]
    if unknown:
        raise MulaError(f"manifest '{manifest.name}' names joints the synthetic body does not have: {unknown} "
                        f"(known: {', '.join(_BODY_POINTS)})")
    return manifest.joints


def lip_scene(seed: int, split: str, index: int) -> tuple[str, SceneImage]:
    """The id and scene of image ``index`` of ``split`` in the LIP tree of ``seed`` (what the writer saves)."""
    rng = np.random.default_rng([seed, SPLIT_INDEX[split], index])
    return lip_id(rng, split, index), single_person_scene(rng)


def pascal_scene(seed: int, split: str, index: int) -> tuple[str, SceneImage]:
    """The id and scene of image ``index`` of ``split`` in the PASCAL tree of ``seed``."""
    rng = np.random.default_rng([seed, SPLIT_INDEX[split], index])
    return pascal_id(rng, split, index), multi_person_scene(rng)


def _save_jpeg(scene: SceneImage, path: Path) -> None:
    image = scene.image
    if scene.grayscale:
        image = image.convert("L")
    image.save(path, "JPEG", quality=JPEG_QUALITY, subsampling=JPEG_SUBSAMPLING)


def _save_label(label: np.ndarray, path: Path) -> None:
    Image.fromarray(label).save(path, "PNG", compress_level=1)  # uint8 (H, W) -> mode 'L'


def lip_id(rng: np.random.Generator, split: str, index: int) -> str:
    """A LIP-looking id ``<image>_<person>``; the image number is unique across splits by construction."""
    image = 10000 + (index * len(SPLIT_INDEX) + SPLIT_INDEX[split]) * 7 + int(rng.integers(7))
    return f"{image}_{int(rng.integers(100000, 1000000))}"


def pascal_id(rng: np.random.Generator, split: str, index: int) -> str:
    """A VOC-looking id ``<year>_<number>``, unique across splits by construction."""
    number = (index * len(SPLIT_INDEX) + SPLIT_INDEX[split]) * 3 + int(rng.integers(3))
    return f"{2008 + int(rng.integers(4))}_{number:06d}"


def _csv_row(image_id: str, people_joints: list[tuple[float, float, bool, bool]]) -> str:
    fields = [f"{image_id}.jpg"]
    for x, y, inside, occluded in people_joints:
        if inside:
            fields += [str(int(np.floor(x + 0.5))), str(int(np.floor(y + 0.5))), "1" if occluded else "0"]
        else:
            fields += ["nan", "nan", "nan"]
    return ",".join(fields)


def _lip_job(job: _Job) -> tuple[str, str | None]:
    """Generate one LIP image (and its labels); returns its id and pose CSV row."""
    image_id, scene = lip_scene(job.seed, job.split, job.index)
    root = Path(job.root)
    if job.split == "test":
        _save_jpeg(scene, root / "Testing_images" / "testing_images" / f"{image_id}.jpg")
        return image_id, None
    _save_jpeg(scene, root / "TrainVal_images" / f"{job.split}_images" / f"{image_id}.jpg")
    lut = np.frombuffer(job.class_lut, dtype=np.uint8)
    _save_label(lut[scene.label], root / "TrainVal_parsing_annotations" / f"{job.split}_segmentations" /
                f"{image_id}.png")
    person = scene.people[0]
    return image_id, _csv_row(image_id, [person.joint(name, scene.segment) for name in job.joints])


def _pascal_job(job: _Job) -> tuple[str, None]:
    """Generate one PASCAL-Person-Part image, part labels and joint file; returns its id."""
    image_id, scene = pascal_scene(job.seed, job.split, job.index)
    root = Path(job.root)
    lut = np.frombuffer(job.class_lut, dtype=np.uint8)
    _save_jpeg(scene, root / "JPEGImages" / f"{image_id}.jpg")
    _save_label(lut[scene.segment], root / "SegmentationPart" / f"{image_id}.png")
    joints, boxes = [], []
    for person in scene.people:
        mine = (scene.segment >= person.segment_base) & (scene.segment < person.segment_base + PART_SLOTS)
        ys, xs = np.nonzero(mine)
        if len(xs) == 0:  # entirely hidden or outside the frame: not annotated
            continue
        rows = []
        for name in job.joints:
            x, y, inside, occluded = person.joint(name, scene.segment)
            rows.append((round(x, 2), round(y, 2), 0.0 if occluded else 1.0) if inside else (np.nan, np.nan, 0.0))
        joints.append(rows)
        boxes.append((xs.min(), ys.min(), xs.max(), ys.max()))
    joints_array = np.array(joints, dtype=np.float64).reshape(len(joints), len(job.joints), 3)
    # The real files' layout (MATLAB v5; 1 x P cell arrays `joints` of 14 x 3 and `boxes` of 1 x 4 doubles):
    # see mula_cli/data/matfile.py. Unlabelled joints are NaN with flag 0; occluded ones keep their place, flag 0.
    write_person_joints_mat(root / "PersonJoints" / f"{image_id}.mat", joints_array,
                            np.array(boxes, dtype=np.float64).reshape(-1, 4), v73=False, layout="cells")
    return image_id, None


def _run(jobs: list[_Job], work: Callable[[_Job], tuple[str, str | None]], workers: int,
         progress: Callable[[int], None] | None) -> Iterator[tuple[str, str | None]]:
    """Results of ``work`` over ``jobs`` in job order, reporting progress about ten times a second."""
    pending, last = 0, time.monotonic()

    def report(results: Iterable[tuple[str, str | None]]) -> Iterator[tuple[str, str | None]]:
        nonlocal pending, last
        for result in results:
            pending += 1
            if progress is not None and time.monotonic() - last > 0.1:
                progress(pending)
                pending, last = 0, time.monotonic()
            yield result
        if progress is not None and pending:
            progress(pending)
            pending = 0

    if workers <= 1 or len(jobs) < 2:
        yield from report(map(work, jobs))
        return
    with ProcessPoolExecutor(max_workers=workers, initializer=ignore_stop_signals,
                             initargs=(os.getpid(),)) as pool:
        with starting_workers():  # submitting starts the workers (see mula_cli.utils.interrupts)
            results = pool.map(work, jobs, chunksize=max(1, min(32, len(jobs) // (workers * 4))))
        yield from report(results)


def _counts(counts: dict[str, int], allowed: tuple[str, ...]) -> dict[str, int]:
    unknown = set(counts) - set(allowed)
    if unknown or any(int(n) < 0 for n in counts.values()):
        raise MulaError(f"synthetic split counts must be non-negative numbers for {', '.join(allowed)}; "
                        f"got {counts}")
    return {split: int(counts.get(split, 0)) for split in allowed}


def generate_lip_tree(root: Path, counts: dict[str, int], seed: int, manifest: DatasetManifest, *,
                      workers: int = 1, progress: Callable[[int], None] | None = None) -> GenerationStats:
    """Write a synthetic single-person dataset in LIP's official layout under ``root``.

    Args:
        root: the dataset folder (created if missing).
        counts: images per split, keys ``train``, ``val`` and ``test`` (test images have no labels).
        seed: the same seed and counts give byte-identical files.
        manifest: a LIP-like manifest; class and joint ids are looked up in it by name.
        workers: processes generating images.
        progress: called from this process with the number of images finished since the last call.
    """
    counts = _counts(counts, ("train", "val", "test"))
    lut, joints = _lip_class_lut(manifest), _joint_names(manifest)
    root = Path(root)
    for folder in ("TrainVal_images/train_images", "TrainVal_images/val_images", "TrainVal_pose_annotations",
                   "TrainVal_parsing_annotations/train_segmentations",
                   "TrainVal_parsing_annotations/val_segmentations", "Testing_images/testing_images"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    jobs = [_Job(str(root), split, i, seed, lut, joints) for split, n in counts.items() for i in range(n)]
    ids: dict[str, list[str]] = {split: [] for split in counts}
    rows: dict[str, list[str]] = {split: [] for split in counts}
    for job, (image_id, row) in zip(jobs, list(_run(jobs, _lip_job, workers, progress))):
        ids[job.split].append(image_id)
        if row is not None:
            rows[job.split].append(row)
    for split in ("train", "val"):
        _write_lines(root / "TrainVal_images" / f"{split}_id.txt", ids[split])
        _write_lines(root / "TrainVal_pose_annotations" / f"lip_{split}_set.csv", rows[split])
    _write_lines(root / "Testing_images" / "test_id.txt", ids["test"])
    return GenerationStats(len(jobs), time.perf_counter() - start)


def generate_pascal_tree(root: Path, counts: dict[str, int], seed: int, manifest: DatasetManifest, *,
                         workers: int = 1, progress: Callable[[int], None] | None = None) -> GenerationStats:
    """Write a synthetic multi-person dataset in the PASCAL-Person-Part layout under ``root``.

    Args:
        root: the dataset folder (created if missing).
        counts: images per split, keys ``train`` and ``val``.
        seed: the same seed and counts give byte-identical files.
        manifest: a PASCAL-Person-Part-like manifest; class and joint ids are looked up in it by name.
        workers: processes generating images.
        progress: called from this process with the number of images finished since the last call.
    """
    counts = _counts(counts, ("train", "val"))
    lut, joints = _pascal_class_lut(manifest), _joint_names(manifest)
    root = Path(root)
    for folder in ("JPEGImages", "SegmentationPart", "PersonJoints"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    jobs = [_Job(str(root), split, i, seed, lut, joints) for split, n in counts.items() for i in range(n)]
    ids: dict[str, list[str]] = {split: [] for split in counts}
    for job, (image_id, _) in zip(jobs, list(_run(jobs, _pascal_job, workers, progress))):
        ids[job.split].append(image_id)
    for split in counts:
        _write_lines(root / f"{split}_id.txt", ids[split])
    return GenerationStats(len(jobs), time.perf_counter() - start)


def _write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
