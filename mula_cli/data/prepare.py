"""``mula prepare``: read a dataset in its on-disk layout and write one HDF5 cache, safely.

The cache is written to a temporary file beside the target and renamed over it only when
complete (:func:`mula_cli.utils.files.atomic_write`), so an interrupted run never damages an existing cache. Samples are decoded and
validated in worker processes; the main process writes them in order. Every skipped or repaired
sample is listed, with its reason, in ``<target>.report.json``. The first people read from ``.mat``
joint files are kept in :attr:`PrepareResult.preview`, for ``mula prepare`` to print by joint name so a
user can check the manifest's joint order against the pictures.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from itertools import repeat
from pathlib import Path

import numpy as np

from mula_cli.data.cache import CacheWriter
from mula_cli.data.layout import Issue, SplitSources, discover_split, resolve_layout
from mula_cli.data.samples import SampleRecord, SampleRules, load_sample
from mula_cli.utils.errors import MulaError
from mula_cli.utils.files import atomic_write, remove_stale_partials, write_json
from mula_cli.utils.interrupts import ignore_stop_signals, starting_workers
from mula_cli.utils.manifests import DatasetManifest
from mula_cli.utils.paths import default_cache_path

SPLIT_ORDER = ("train", "val", "test")
_IN_PROCESS_BELOW = 200  # samples; starting worker processes costs more than it saves below this
PREVIEW_IMAGES = 2  # joint-file people shown after caching, so a user can check the joint order
PREVIEW_PEOPLE_PER_IMAGE = 2
PREVIEW_PEOPLE = 3


@dataclass(frozen=True)
class PersonPreview:
    """One person as read from a joint file (``.mat``), for checking the manifest's joint order by eye."""

    split: str
    image_id: str
    image_path: Path
    person: int  # index in the file (0-based; the file's cell ``p + 1`` in MATLAB)
    joints: np.ndarray  # (J, 2) float32 x, y as cached (0-based pixels), NaN = unlabelled
    occluded: np.ndarray  # (J,) int8: 1 flagged not visible, 0 visible, -1 unlabelled


@dataclass
class SplitReport:
    cached: int = 0
    skipped: list[Issue] = field(default_factory=list)
    repaired: list[Issue] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class PrepareResult:
    path: Path
    report_path: Path
    layout: str
    splits: dict[str, SplitReport]
    seconds: float
    preview: list[PersonPreview] = field(default_factory=list)  # first people read from .mat files

    @property
    def total(self) -> int:
        return sum(r.cached for r in self.splits.values())

    @property
    def samples_per_s(self) -> float:
        return self.total / self.seconds if self.seconds > 0 else 0.0


def prepare_dataset(
    manifest: DatasetManifest,
    root: Path,
    out: Path | None = None,
    splits: list[str] | None = None,
    *,
    force: bool = False,
    workers: int | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> PrepareResult:
    """Cache a dataset folder.

    Args:
        manifest: the dataset's manifest (layouts, classes, joints).
        root: the dataset's root folder.
        out: cache path; default ``$MULA_HOME/data/<dataset>.h5``.
        splits: splits to cache; default every split present on disk.
        force: replace an existing cache.
        workers: decoding processes; default one per CPU core (at most 8).
        progress: called as ``progress(split, done_delta, total)`` while samples are processed.

    Raises:
        MulaError: unrecognisable layout, missing split, existing cache without ``force``, or nothing usable.
    """
    out = Path(out) if out is not None else default_cache_path(manifest.name)
    if out.exists() and not force:
        raise MulaError(f"{out} already exists; add --force to rebuild it (the old cache is kept until the new one is complete)")
    layout = resolve_layout(manifest, Path(root))
    present = layout.splits()
    if splits:
        missing = [s for s in splits if s not in present]
        if missing:
            raise MulaError(f"{root} has no {', '.join(missing)} split in the {layout.name} layout "
                            f"(found: {', '.join(present) or 'none'}); drop it from --splits")
        wanted = list(dict.fromkeys(splits))
    else:
        wanted = [s for s in SPLIT_ORDER if s in present] + [s for s in present if s not in SPLIT_ORDER]
    _check_shared_image_folders(layout, wanted)
    sources = [discover_split(manifest, layout, s) for s in wanted]
    rules = SampleRules(manifest.num_classes, manifest.num_joints, manifest.ignore_label, manifest.palette,
                        bool(manifest.raw.get("mat_coordinates_one_based", False)))

    start = time.perf_counter()
    reports: dict[str, SplitReport] = {}
    fingerprint = hashlib.sha256()
    preview: list[PersonPreview] = []

    def write_cache(temp: Path) -> None:
        writer = CacheWriter(temp, manifest, source=str(Path(root).resolve()), layout=layout.name)
        try:
            for src in sources:
                reports[src.split] = _cache_split(writer, src, rules, workers, fingerprint, progress, preview)
            if not any(r.cached for r in reports.values()):
                first = next((i for r in reports.values() for i in r.skipped), None)
                example = f" (first: {first.id}: {first.reason})" if first else ""
                raise MulaError(f"no usable sample in {root}: every image was unreadable or missing{example}")
            writer.finish({s: r.cached for s, r in reports.items()}, fingerprint.hexdigest())
        except BaseException:
            writer.abort()  # closes the file; atomic_write deletes it
            raise

    remove_stale_partials(out.parent)  # a cache half-written by a killed prepare
    atomic_write(out, write_cache)
    report_path = out.with_name(out.name + ".report.json")
    result = PrepareResult(out, report_path, layout.name, reports, time.perf_counter() - start, preview)
    write_report(result, manifest, Path(root))
    return result


def _check_shared_image_folders(layout, wanted: list[str]) -> None:
    """Splits that share one image folder (PASCAL) can only be told apart by their id lists."""
    for split in wanted:
        shared = [s for s in wanted if s != split and layout.get("images", s) == layout.get("images", split)]
        if shared and layout.get("ids", split) is None:
            raise MulaError(f"{layout.root} has no id list for split '{split}' (expected {split}_id.txt) and its "
                            f"images share a folder with '{shared[0]}'; add the id list or choose --splits")


def _records(src: SplitSources, rules: SampleRules, workers: int | None) -> Iterator[SampleRecord]:
    n = len(src.samples)
    workers = min(os.cpu_count() or 1, 8) if workers is None else workers
    if workers <= 1 or n < _IN_PROCESS_BELOW:
        for sample in src.samples:
            yield record_sample(sample, rules)
        return
    with ProcessPoolExecutor(max_workers=workers, initializer=ignore_stop_signals,
                             initargs=(os.getpid(),)) as pool:
        with starting_workers():  # submitting starts the workers (see mula_cli.utils.interrupts)
            results = pool.map(record_sample, src.samples, repeat(rules), chunksize=16)
        yield from results


def record_sample(sample, rules: SampleRules) -> SampleRecord:
    """Load one sample (a module-level function so worker processes can receive it)."""
    return load_sample(sample, rules)


def _cache_split(writer: CacheWriter, src: SplitSources, rules: SampleRules, workers: int | None,
                 fingerprint, progress, preview: list[PersonPreview] | None = None) -> SplitReport:
    report = SplitReport()
    for issue in src.issues:
        (report.skipped if issue.skipped else report.repaired).append(issue)
    t0 = time.perf_counter()
    writer.begin_split(src.split, has_labels=src.has_labels, has_joints=src.has_joints)
    total = len(src.samples)
    for sample, rec in zip(src.samples, _records(src, rules, workers)):
        for issue in rec.issues:
            (report.skipped if issue.skipped else report.repaired).append(issue)
        if not rec.skipped:
            writer.append(rec)
            fingerprint.update(f"{src.split}/{rec.id}".encode() + rec.digest)
            if preview is not None and sample.joints_mat is not None:
                add_preview(preview, src.split, sample.image_path, rec)
        if progress is not None:
            progress(src.split, 1, total)
    report.cached = writer.end_split()
    report.seconds = time.perf_counter() - t0
    return report


def add_preview(preview: list[PersonPreview], split: str, image_path: Path, rec: SampleRecord) -> None:
    """Keep the first people read from joint files: up to ``PREVIEW_PEOPLE_PER_IMAGE`` from each of the
    first ``PREVIEW_IMAGES`` images that have people, ``PREVIEW_PEOPLE`` in all."""
    images = list(dict.fromkeys((p.split, p.image_id) for p in preview))
    if len(rec.joints) == 0 or len(preview) >= PREVIEW_PEOPLE or len(images) >= PREVIEW_IMAGES:
        return
    for person in range(min(len(rec.joints), PREVIEW_PEOPLE_PER_IMAGE, PREVIEW_PEOPLE - len(preview))):
        preview.append(PersonPreview(split, rec.id, Path(image_path), person,
                                     np.asarray(rec.joints[person], np.float32).copy(),
                                     np.asarray(rec.occluded[person], np.int8).copy()))


def write_report(result: PrepareResult, manifest: DatasetManifest, root: Path) -> None:
    """Write ``<cache>.report.json`` atomically."""
    doc = {
        "dataset": manifest.name,
        "source": str(root.resolve()),
        "layout": result.layout,
        "cache": str(result.path),
        "seconds": round(result.seconds, 3),
        "samples_per_s": round(result.samples_per_s, 1),
        "splits": {
            split: {
                "cached": r.cached,
                "skipped": [i.as_dict() for i in r.skipped],
                "repaired": [i.as_dict() for i in r.repaired],
            }
            for split, r in result.splits.items()
        },
    }
    write_json(result.report_path, doc)
