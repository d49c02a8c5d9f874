"""PASCAL-Person-Part joint files (``PersonJoints/<id>.mat``): reading both MATLAB formats, writing.

The extended PASCAL-Person-Part pose files (Xia et al., CVPR 2017), as the one public loader we
found reads them (``scipy.io.loadmat`` on ``PersonJoints/<id>.mat``, one file per image):

- MATLAB v5 (``scipy.io.loadmat`` reads it; it cannot read v7.3/HDF5);
- two variables, ``joints`` and ``boxes``, each a ``1 x P`` cell array, one cell per person, in the
  same order;
- ``joints{p}``: a ``14 x 3`` double array, one row per joint in the dataset's joint order, columns
  x (column), y (row) and a visibility flag (non-zero = visible; that loader's authors call the flag
  unreliable);
- ``boxes{p}``: a ``1 x 4`` double array ``[x1 y1 x2 y2]`` in pixels.

That is what :func:`write_person_joints_mat` writes by default (``layout="cells"``), and so what the
synthetic generator writes. Copies of the data get re-saved and converted, so the reader also accepts
MATLAB v7.3 (HDF5, read with ``h5py``) and finds the joints by shape as well as by name:

- top-level variables as above: one whose name has ``joint``/``keypoint``/``point`` in it, paired
  with one whose name has ``box`` in it when their person counts agree;
- a struct array whose fields include one with ``joint``/``keypoint``/``point`` in its name
  (and optionally one with ``box``), one element per person (``layout="struct"`` writes this);
- a cell array (object array) of ``J x 3`` (or ``J x 2``) arrays, one per person;
- a numeric array shaped ``J x 3``, ``P x J x 3`` or ``J x 3 x P`` (or with 2 instead of 3).

A joint is unlabelled when its coordinates are not finite, negative, or both zero (MATLAB tools
write zeros for missing points). Coordinates are returned as written, 0-based unless the caller
says the file is 1-based (not known for the real files: the public loader uses them directly as
0-based pixel positions).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

_JOINT_WORDS = ("joint", "keypoint", "point", "kpt", "pose")
_BOX_WORDS = ("box", "bbox", "rect")
_V5_HEADER = b"MATLAB 5.0 MAT-file, written by mula"
_V73_HEADER = b"MATLAB 7.3 MAT-file, Platform: mula, Created on: - HDF5 schema 1.00 ."


class MatFileError(ValueError):
    """The file is not a readable MATLAB file or holds no recognisable joint data."""


JOINTS_VARIABLE = "joints"  # the real files' variable names (see the module docstring)
BOXES_VARIABLE = "boxes"
LAYOUTS = ("cells", "struct")


def write_person_joints_mat(path: Path, joints: np.ndarray, boxes: np.ndarray, *, v73: bool = False,
                            layout: str = "cells") -> None:
    """Write one image's people as a PASCAL-Person-Part joint file.

    Args:
        path: the ``.mat`` file to write.
        joints: (P, J, 3) array of (x, y, visible); unlabelled joints have NaN coordinates.
        boxes: (P, 4) person boxes (x1, y1, x2, y2).
        v73: write MATLAB v7.3 (HDF5) instead of v5 (the real files are v5).
        layout: ``"cells"``, the real files' layout: variables ``joints`` and ``boxes``, each a 1 x P
            cell array of J x 3 and 1 x 4 doubles; or ``"struct"``: one 1 x P struct array ``persons``
            with fields ``joints`` and ``bbox`` (a re-packaging the reader also accepts).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, not {layout!r}")
    joints = np.asarray(joints, dtype=np.float64)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(len(joints), 4)
    if v73:
        _write_v73(Path(path), joints, boxes, layout)
    else:
        _write_v5(Path(path), joints, boxes, layout)


def _cell_row(values) -> np.ndarray:
    """A MATLAB 1 x P cell array (a (1, P) object array) holding each value as it is."""
    cells = np.empty((1, len(values)), dtype=object)
    for i, value in enumerate(values):
        cells[0, i] = value
    return cells


def _write_v5(path: Path, joints: np.ndarray, boxes: np.ndarray, layout: str) -> None:
    import io

    from scipy.io import savemat

    if layout == "cells":
        variables = {JOINTS_VARIABLE: _cell_row(list(joints)), BOXES_VARIABLE: _cell_row([b.reshape(1, 4) for b in boxes])}
    else:
        persons = np.empty((1, len(joints)), dtype=[("joints", object), ("bbox", object)])
        for i, (j, b) in enumerate(zip(joints, boxes)):
            persons[0, i] = (j, b.reshape(1, 4))
        variables = {"persons": persons}
    buf = io.BytesIO()
    savemat(buf, variables, format="5", do_compression=False)
    data = bytearray(buf.getvalue())
    # The header's 116 text bytes carry a creation time: replace them so equal inputs give equal files.
    data[:116] = _V5_HEADER.ljust(116, b" ")
    path.write_bytes(bytes(data))


def _write_v73(path: Path, joints: np.ndarray, boxes: np.ndarray, layout: str) -> None:
    import h5py

    # MATLAB v7.3 = HDF5 with a 512-byte user block holding a MAT header; arrays are stored
    # column-major (transposed) and cell and struct arrays hold object references into '#refs#'.
    with h5py.File(path, "w", userblock_size=512, track_order=True) as f:
        refs = f.create_group("#refs#")
        if layout == "cells":
            parent, names, matlab_class = f, (JOINTS_VARIABLE, BOXES_VARIABLE), "cell"
        else:
            parent = f.create_group("persons")
            parent.attrs["MATLAB_class"] = np.bytes_("struct")
            names, matlab_class = ("joints", "bbox"), None
        for field, values in zip(names, (joints, boxes.reshape(-1, 1, 4))):
            ref_ds = parent.create_dataset(field, (len(values), 1), dtype=h5py.ref_dtype)
            if matlab_class:
                ref_ds.attrs["MATLAB_class"] = np.bytes_(matlab_class)
            for i, value in enumerate(values):
                ds = refs.create_dataset(f"{field}_{i}", data=np.ascontiguousarray(value.T), track_times=False)
                ds.attrs["MATLAB_class"] = np.bytes_("double")
                ref_ds[i, 0] = ds.ref
    header = _V73_HEADER.ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02" + b"IM"
    with open(path, "r+b") as raw:
        raw.write(header.ljust(512, b"\x00"))


def read_person_joints_mat(path: Path, num_joints: int, *, one_based: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Read the people of one joint file.

    Args:
        path: the ``.mat`` file (MATLAB v5 or v7.3).
        num_joints: joints per person (from the dataset manifest), used to find the arrays.
        one_based: subtract 1 from coordinates written in MATLAB's 1-based convention.

    Returns:
        joints (P, J, 3) float32 of (x, y, visible) with NaN for unlabelled joints, and boxes (P, 4)
        float32 (x1, y1, x2, y2; NaN where the file has none).

    Raises:
        MatFileError: unreadable file or no joint data of the expected shape.
    """
    people = _read_v5_or_v73(Path(path), num_joints)
    if not people:
        return np.zeros((0, num_joints, 3), np.float32), np.zeros((0, 4), np.float32)
    joints = np.stack([_clean_joints(j, num_joints) for j, _ in people])
    if one_based:
        joints[..., :2] -= 1.0
    boxes = np.stack([_clean_box(b) for _, b in people])
    return joints.astype(np.float32), boxes.astype(np.float32)


def _read_v5_or_v73(path: Path, num_joints: int) -> list[tuple[np.ndarray, np.ndarray | None]]:
    from scipy.io import loadmat

    try:
        variables = loadmat(str(path), squeeze_me=False, struct_as_record=True)
    except NotImplementedError:  # scipy's way of saying "this is a v7.3 (HDF5) file"
        return _read_v73(path, num_joints)
    except Exception as exc:  # noqa: BLE001 - scipy raises many types for damaged files
        raise MatFileError(f"not a readable MATLAB file ({type(exc).__name__}: {exc})") from None
    names = _joint_names_first([k for k in variables if not k.startswith("__")])
    for name in names:
        people = _people_from_value(variables[name], num_joints)
        if people is not None:
            siblings = (_box_list(variables[k]) for k in names if k != name and _is_box_name(k))
            return _with_sibling_boxes(people, siblings)
    raise MatFileError(f"holds no {num_joints} x 3 joint arrays (variables: {', '.join(k for k in variables if not k.startswith('__'))})")


def _people_from_value(value: object, num_joints: int) -> list[tuple[np.ndarray, np.ndarray | None]] | None:
    arr = np.asarray(value)
    if arr.dtype.names:  # struct array: one element per person
        jfield = next((n for n in arr.dtype.names if _is_joint_name(n)), None)
        bfield = next((n for n in arr.dtype.names if _is_box_name(n)), None)
        if jfield is None:
            for n in arr.dtype.names:  # a wrapper struct: look one level down
                for item in arr.ravel():
                    found = _people_from_value(item[n], num_joints)
                    if found is not None:
                        return found
            return None
        people = []
        for item in arr.ravel():
            joints = _as_joint_array(item[jfield], num_joints)
            if joints is None:
                return None
            people.append((joints, np.asarray(item[bfield], dtype=np.float64) if bfield else None))
        return people
    if arr.dtype == object:  # cell array of per-person arrays
        people = []
        for item in arr.ravel():
            joints = _as_joint_array(item, num_joints)
            if joints is None:
                return None
            people.append((joints, None))
        return people
    if np.issubdtype(arr.dtype, np.number):
        stack = _as_joint_stack(arr.astype(np.float64), num_joints)
        return None if stack is None else [(j, None) for j in stack]
    return None


def _as_joint_array(value: object, num_joints: int) -> np.ndarray | None:
    arr = np.asarray(value)
    if arr.dtype == object and arr.size == 1:
        arr = np.asarray(arr.ravel()[0])
    if not np.issubdtype(arr.dtype, np.number):
        return None
    stack = _as_joint_stack(arr.astype(np.float64), num_joints)
    return None if stack is None or len(stack) != 1 else stack[0]


def _as_joint_stack(arr: np.ndarray, num_joints: int) -> np.ndarray | None:
    """Turn J x 3, 3 x J, P x J x 3, J x 3 x P (2 instead of 3 allowed) into (P, J, k)."""
    arr = np.squeeze(arr) if arr.ndim > 3 else arr
    if arr.ndim == 2:
        if arr.shape[0] == num_joints and arr.shape[1] in (2, 3):
            return arr[None]
        if arr.shape[1] == num_joints and arr.shape[0] in (2, 3):
            return arr.T[None]
        return None
    if arr.ndim == 3:
        for perm in ((0, 1, 2), (2, 0, 1), (0, 2, 1), (1, 2, 0), (2, 1, 0), (1, 0, 2)):
            t = arr.transpose(perm)
            if t.shape[1] == num_joints and t.shape[2] in (2, 3):
                return t
    return None


def _read_v73(path: Path, num_joints: int) -> list[tuple[np.ndarray, np.ndarray | None]]:
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise MatFileError(f"not a readable MATLAB v7.3/HDF5 file ({exc})") from None
    with f:
        names = _joint_names_first([k for k in f.keys() if not k.startswith("#")])
        for name in names:
            people = _people_from_h5(f, f[name], num_joints, name)
            if people is not None:
                siblings = (_h5_box_list(f, f[k]) for k in names if k != name and _is_box_name(k))
                return _with_sibling_boxes(people, siblings)
    raise MatFileError(f"holds no {num_joints} x 3 joint arrays in its HDF5 variables")


def _h5_values(f, ds) -> list[np.ndarray]:
    """A dataset's arrays: dereferenced cells, or the dataset itself (undoing MATLAB's column-major order)."""
    import h5py

    if ds.dtype == h5py.ref_dtype:
        return [np.asarray(f[ref][()]).T for ref in np.asarray(ds[()]).ravel(order="F") if ref]
    return [np.asarray(ds[()]).T]


def _people_from_h5(f, obj, num_joints: int, name: str = "") -> list[tuple[np.ndarray, np.ndarray | None]] | None:
    import h5py

    if isinstance(obj, h5py.Group):
        keys = list(obj.keys())
        jkey = next((k for k in keys if _is_joint_name(k)), None)
        bkey = next((k for k in keys if _is_box_name(k)), None)
        if jkey is None or not isinstance(obj[jkey], h5py.Dataset):
            return None
        joint_arrays = _h5_values(f, obj[jkey])
        box_arrays = _h5_values(f, obj[bkey]) if bkey and isinstance(obj[bkey], h5py.Dataset) else []
        stacks = [_as_joint_stack(a.astype(np.float64), num_joints) for a in joint_arrays]
        if any(s is None for s in stacks):
            return None
        joints = [j for s in stacks for j in s]
        boxes: list[np.ndarray | None] = list(box_arrays) if len(box_arrays) == len(joints) else [None] * len(joints)
        return list(zip(joints, boxes))
    arrays = _h5_values(f, obj)
    if not arrays and obj.dtype == h5py.ref_dtype and _is_joint_name(name):
        return []  # an empty cell array of joints: an image without annotated people
    stacks = [_as_joint_stack(a.astype(np.float64), num_joints) for a in arrays if np.issubdtype(a.dtype, np.number)]
    if not stacks or any(s is None for s in stacks):
        return None
    return [(j, None) for s in stacks for j in s]


def _is_joint_name(name: str) -> bool:
    return any(w in name.lower() for w in _JOINT_WORDS)


def _is_box_name(name: str) -> bool:
    return any(w in name.lower() for w in _BOX_WORDS)


def _joint_names_first(names: list[str]) -> list[str]:
    """Variable names with the joint-named ones first (``joints`` before ``boxes``), otherwise in file order."""
    return sorted(names, key=lambda n: not _is_joint_name(n))


def _box_list(value: object) -> list[np.ndarray] | None:
    """Per-person boxes from a v5 variable: a cell array of 4-element arrays, or a P x 4 numeric array."""
    arr = np.asarray(value)
    if arr.dtype == object:
        items = [np.asarray(item) for item in arr.ravel()]
    elif np.issubdtype(arr.dtype, np.number) and arr.ndim == 2 and 4 in arr.shape:
        items = list(arr if arr.shape[1] == 4 else arr.T)
    else:
        return None
    if not all(np.issubdtype(i.dtype, np.number) and i.size == 4 for i in items):
        return None
    return [i.astype(np.float64).reshape(4) for i in items]


def _h5_box_list(f, obj) -> list[np.ndarray] | None:
    """Per-person boxes from a v7.3 variable (a cell array of 4-element arrays, or a P x 4 array)."""
    import h5py

    if not isinstance(obj, h5py.Dataset):
        return None
    arrays = _h5_values(f, obj)
    if obj.dtype == h5py.ref_dtype:
        return _box_list(_cell_row(arrays)) if arrays else []
    return _box_list(arrays[0]) if len(arrays) == 1 else None


def _with_sibling_boxes(people: list[tuple[np.ndarray, np.ndarray | None]],
                        candidates: Iterable[list[np.ndarray] | None]) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """People without boxes of their own take them from the first candidate variable holding one box per person
    (the real layout: boxes in their own variable); otherwise ``people`` unchanged."""
    if not people or any(box is not None for _, box in people):
        return people
    boxes = next((c for c in candidates if c is not None and len(c) == len(people)), None)
    return people if boxes is None else [(joints, box) for (joints, _), box in zip(people, boxes)]


def _clean_joints(arr: np.ndarray, num_joints: int) -> np.ndarray:
    out = np.full((num_joints, 3), np.nan)
    out[:, 2] = 0.0
    xy = arr[:, :2]
    missing = ~np.isfinite(xy).all(axis=1) | (xy < 0).any(axis=1) | (xy == 0).all(axis=1)
    out[~missing, :2] = xy[~missing]
    if arr.shape[1] == 3:
        vis = np.nan_to_num(arr[:, 2], nan=0.0)
        out[~missing, 2] = vis[~missing]
    else:
        out[~missing, 2] = 1.0
    return out


def _clean_box(box: np.ndarray | None) -> np.ndarray:
    if box is None or np.asarray(box).size != 4:
        return np.full(4, np.nan)
    return np.asarray(box, dtype=np.float64).reshape(4)
