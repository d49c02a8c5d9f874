"""The HDF5 data cache that ``mula prepare`` writes and training, evaluation and ``info`` read.

Schema (``schema_version`` 1). Root attributes: ``format`` = "mula-cache", ``schema_version``,
``dataset``, ``manifest`` (the resolved manifest JSON it was built with), ``counts`` (JSON
split -> samples), ``fingerprint`` (SHA-256 over every cached sample's source bytes, in order),
``source`` (the folder it was read from), ``layout``, ``mula_version``, ``complete``.
One group per split, with ``N`` samples and ``P`` people in all (LIP: one person per image)::

    ids           (N,)       str     sample id (file stem)
    image_data    (bytes,)   uint8   every original encoded image file, byte for byte, end to end
    image_offset  (N + 1,)   int64   sample i's file is image_data[image_offset[i]:image_offset[i + 1]]
    label_data    (bytes,)   uint8   PNGs of the class-id maps, end to end
    label_offset  (N + 1,)   int64   as image_offset; an empty range = no usable label
    size          (N, 2)     int32   original height, width
    center        (N, 2)     float32 person centre x, y (see mula_cli.data.samples)
    scale         (N,)       float32 person size / 200 px
    person_index  (N, 2)     int64   first row in the person tables, number of people
    joints        (P, J, 2)  float32 x, y in original pixels; NaN = unlabelled
    occluded      (P, J)     int8    1 occluded, 0 visible, -1 unlabelled
    boxes         (P, 4)     float32 person box x1, y1, x2, y2

Encoded files are stored end to end in one byte array per split rather than as variable-length
elements: a slice read costs about a fifth of a variable-length read, which matters when
DataLoader workers read thousands of samples per second.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import h5py
import numpy as np
from PIL import Image

from mula_cli.data.samples import SampleRecord
from mula_cli.utils.errors import MulaError
from mula_cli.utils.manifests import DatasetManifest, manifest_from_json
from mula_cli.utils.paths import default_cache_path
from mula_cli.utils.version import __version__

CACHE_FORMAT = "mula-cache"
SCHEMA_VERSION = 1
_FLUSH_EVERY = 256
_BYTES_CHUNK = 1 << 18


class CacheWriter:
    """Appends validated samples split by split into a new HDF5 file (the caller renames it when done)."""

    def __init__(self, path: Path, manifest: DatasetManifest, *, source: str, layout: str) -> None:
        self.file = h5py.File(path, "w")
        self.manifest = manifest
        a = self.file.attrs
        a["format"], a["schema_version"], a["dataset"] = CACHE_FORMAT, SCHEMA_VERSION, manifest.name
        a["manifest"], a["source"], a["layout"] = manifest.to_json(), source, layout
        a["mula_version"], a["complete"] = __version__, False
        self._group: h5py.Group | None = None
        self._buffer: list[SampleRecord] = []
        self._n = self._p = 0

    def begin_split(self, split: str, *, has_labels: bool, has_joints: bool) -> None:
        j = self.manifest.num_joints
        g = self.file.create_group(split)
        g.attrs["has_labels"], g.attrs["has_joints"] = has_labels, has_joints
        specs = {
            "ids": ((0,), h5py.string_dtype()), "size": ((0, 2), np.int32), "center": ((0, 2), np.float32), "scale": ((0,), np.float32),
            "person_index": ((0, 2), np.int64), "joints": ((0, j, 2), np.float32),
            "occluded": ((0, j), np.int8), "boxes": ((0, 4), np.float32),
        }
        for name, (shape, dtype) in specs.items():
            chunk = (_FLUSH_EVERY,) + shape[1:]
            g.create_dataset(name, shape=shape, maxshape=(None,) + shape[1:], dtype=dtype, chunks=chunk)
        for name in ("image", "label"):
            g.create_dataset(f"{name}_data", shape=(0,), maxshape=(None,), dtype=np.uint8, chunks=(_BYTES_CHUNK,))
            g.create_dataset(f"{name}_offset", data=np.zeros(1, np.int64), maxshape=(None,), chunks=(4096,))
        self._group, self._n, self._p = g, 0, 0

    def append(self, rec: SampleRecord) -> None:
        self._buffer.append(rec)
        if len(self._buffer) >= _FLUSH_EVERY:
            self._flush()

    def _flush(self) -> None:
        if not self._buffer:
            return
        g, recs = self._group, self._buffer
        n0, n1 = self._n, self._n + len(recs)
        people = [len(r.joints) for r in recs]
        p0, p1 = self._p, self._p + sum(people)
        for name in ("ids", "size", "center", "scale", "person_index"):
            g[name].resize(n1, axis=0)
        for name in ("joints", "occluded", "boxes"):
            g[name].resize(p1, axis=0)
        g["ids"][n0:n1] = [r.id for r in recs]
        for name in ("image", "label"):
            blobs = [getattr(r, name) for r in recs]
            data, offset = g[f"{name}_data"], g[f"{name}_offset"]
            start = int(offset[-1])
            ends = start + np.cumsum([len(b) for b in blobs])
            if ends[-1] > start:
                data.resize(int(ends[-1]), axis=0)
                data[start:int(ends[-1])] = np.frombuffer(b"".join(blobs), np.uint8)
            offset.resize(n1 + 1, axis=0)
            offset[n0 + 1:n1 + 1] = ends
        g["size"][n0:n1] = [(r.height, r.width) for r in recs]
        g["center"][n0:n1] = np.stack([r.center for r in recs])
        g["scale"][n0:n1] = [r.scale for r in recs]
        starts = p0 + np.concatenate([[0], np.cumsum(people)[:-1]])
        g["person_index"][n0:n1] = np.stack([starts, people], axis=1)
        if p1 > p0:
            g["joints"][p0:p1] = np.concatenate([r.joints for r in recs if len(r.joints)])
            g["occluded"][p0:p1] = np.concatenate([r.occluded for r in recs if len(r.joints)])
            g["boxes"][p0:p1] = np.concatenate([r.boxes for r in recs if len(r.joints)])
        self._n, self._p, self._buffer = n1, p1, []

    def end_split(self) -> int:
        self._flush()
        self._group.attrs["count"] = self._n
        return self._n

    def finish(self, counts: dict[str, int], fingerprint: str) -> None:
        a = self.file.attrs
        a["counts"], a["fingerprint"], a["complete"] = json.dumps(counts), fingerprint, True
        self.file.close()

    def abort(self) -> None:
        try:
            self.file.close()
        except Exception:  # noqa: BLE001, S110 - closing a half-written file may fail; it is deleted anyway
            pass


class CacheFile:
    """Read access to a prepared cache. Small per-sample tables are loaded into memory at open."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self.file = h5py.File(self.path, "r")
        except FileNotFoundError:
            raise MulaError(f"cache {self.path} does not exist; run `mula prepare` to create it") from None
        except OSError:
            raise MulaError(f"{self.path} is not a readable HDF5 cache (corrupt or truncated); "
                            "re-create it with `mula prepare ... --force`") from None
        try:
            self._read_attributes()
        except BaseException:
            self.file.close()
            raise
        self.splits = [s for s in ("train", "val", "test") if s in self.file] + sorted(
            s for s in self.file if s not in ("train", "val", "test"))

    def _read_attributes(self) -> None:
        a = self.file.attrs
        redo = "re-create it with `mula prepare ... --force`"
        if a.get("format") != CACHE_FORMAT or "manifest" not in a:
            raise MulaError(f"{self.path} is not a mula data cache; create one with `mula prepare`")
        try:
            schema = int(a.get("schema_version", 0))
        except (TypeError, ValueError):
            raise MulaError(f"{self.path} has an unreadable schema version ({a.get('schema_version')!r}); "
                            f"{redo}") from None
        if schema > SCHEMA_VERSION:
            raise MulaError(f"{self.path} was written by a newer mula (cache schema {schema}); "
                            f"upgrade mula or {redo}")
        if not bool(a.get("complete", False)):
            raise MulaError(f"{self.path} is incomplete (prepare was interrupted); re-run `mula prepare ... --force`")
        try:
            self.manifest: DatasetManifest = manifest_from_json(a["manifest"])
        except MulaError as exc:
            raise MulaError(f"the dataset manifest stored in {self.path} is invalid ({exc}); {redo}") from None
        except (ValueError, TypeError, KeyError) as exc:  # cut-off JSON, a field of the wrong type
            reason = " ".join(str(exc).split())[:120] or type(exc).__name__
            raise MulaError(f"the dataset manifest stored in {self.path} is damaged ({reason}); {redo}") from None
        self.dataset = str(a.get("dataset", self.manifest.name))
        self.fingerprint = str(a.get("fingerprint", ""))  # identifies the data (`mula info`); nothing checks it
        self.source = str(a.get("source", ""))

    def __enter__(self) -> CacheFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.file.close()

    def split(self, name: str) -> CacheSplit:
        if name not in self.file:
            have = ", ".join(self.splits) or "none"
            raise MulaError(f"cache {self.path} has no '{name}' split (it has: {have}); "
                            f"prepare it with `mula prepare ... --splits {name}`")
        return CacheSplit(self.file[name], self.manifest, f"{self.path}:{name}")

    def count(self, split: str) -> int:
        return int(self.file[split]["ids"].shape[0]) if split in self.file else 0


class CacheSplit:
    """One split of a cache: in-memory tables plus lazy reads of images and label maps."""

    def __init__(self, group: h5py.Group, manifest: DatasetManifest, where: str) -> None:
        self.group, self.manifest, self.where = group, manifest, where
        try:
            self.ids = [s.decode() if isinstance(s, bytes) else str(s) for s in group["ids"][()]]
            self.sizes = group["size"][()]
            self.centers = group["center"][()]
            self.scales = group["scale"][()]
            self.person_index = group["person_index"][()]
            self.joints_table = group["joints"][()]
            self.occluded_table = group["occluded"][()]
            self.boxes_table = group["boxes"][()]
            self.image_offset = group["image_offset"][()]
            self.label_offset = group["label_offset"][()]
            self._image_ds, self._label_ds = group["image_data"], group["label_data"]  # reused per read
        except (KeyError, OSError) as exc:
            raise MulaError(f"cache {where} is damaged ({exc}); re-create it with `mula prepare ... --force`") from None
        self.has_labels = bool(group.attrs.get("has_labels", False))
        self.has_joints = bool(group.attrs.get("has_joints", False))

    def __len__(self) -> int:
        return len(self.ids)

    def image_bytes(self, i: int) -> bytes:
        return self._image_ds[self.image_offset[i]:self.image_offset[i + 1]].tobytes()

    def image(self, i: int) -> Image.Image:
        """The original image decoded to RGB (grayscale, CMYK, palette images converted)."""
        with Image.open(io.BytesIO(self.image_bytes(i))) as img:
            return img.convert("RGB")

    def label(self, i: int) -> np.ndarray | None:
        """The class-id map at original size (uint8), or None when the sample has no usable label."""
        start, end = self.label_offset[i], self.label_offset[i + 1]
        if end == start:
            return None
        with Image.open(io.BytesIO(self._label_ds[start:end].tobytes())) as img:
            return np.array(img, dtype=np.uint8)

    def people(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Joints (P, J, 2) with NaN for unlabelled ones, and occlusion flags (P, J)."""
        rows = self._person_rows(i)
        return self.joints_table[rows], self.occluded_table[rows]

    def boxes(self, i: int) -> np.ndarray:
        """Person boxes (P, 4) x1, y1, x2, y2, a NaN row where the dataset gives none."""
        return self.boxes_table[self._person_rows(i)]

    def _person_rows(self, i: int) -> slice:
        first, count = (int(v) for v in self.person_index[i])
        return slice(first, first + count)

    def single_person_joints(self, i: int) -> np.ndarray:
        """(J, 2) joints of the sample's first person (all NaN when it has none)."""
        joints, _ = self.people(i)
        if len(joints):
            return joints[0]
        return np.full((self.manifest.num_joints, 2), np.nan, np.float32)


def resolve_cache(data: str | Path) -> Path:
    """A cache path from a ``--data`` value: an existing file, or a dataset name under ``MULA_HOME``."""
    path = Path(data).expanduser()
    if path.suffix in (".h5", ".hdf5") or path.exists():
        if not path.is_file():
            raise MulaError(f"data cache {path} does not exist; create it with `mula prepare`")
        return path
    name = str(data).replace("-", "_")
    cached = default_cache_path(name)
    if cached.is_file():
        return cached
    hints = {"synthetic": "mula prepare synthetic", "synthetic_multi_person": "mula prepare synthetic --multi-person"}
    hint = hints.get(name, f"mula prepare {name.replace('_', '-')} /path/to/{data}")
    raise MulaError(f"no prepared dataset '{data}' (looked for {cached}); run `{hint}` first")
