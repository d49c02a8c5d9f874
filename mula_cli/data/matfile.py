"""PASCAL-Person-Part joint files (``PersonJoints/<id>.mat``): reading both MATLAB formats, writing.

The public copies of the extended PASCAL-Person-Part keypoints hold, per image, one record per
person: a ``J x 3`` array (x, y, visible) and a box. They circulate as MATLAB v5 files
(``scipy.io.loadmat``) and as MATLAB v7.3 files (HDF5, read with ``h5py``), and their variable
and field names vary. The reader therefore looks for the data by shape rather than by name:

- a struct array whose fields include one with ``joint``/``keypoint``/``point`` in its name
  (and optionally one with ``box``), one element per person;
- a cell array (object array) of ``J x 3`` (or ``J x 2``) arrays, one per person;
- a numeric array shaped ``J x 3``, ``P x J x 3`` or ``J x 3 x P`` (or with 2 instead of 3).

A joint is unlabelled when its coordinates are not finite, negative, or both zero (MATLAB tools
write zeros for missing points). Coordinates are returned as written, 0-based unless the caller
says the file is 1-based.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

_JOINT_WORDS = ("joint", "keypoint", "point", "kpt", "pose")
_BOX_WORDS = ("box", "bbox", "rect")
_V5_HEADER = b"MATLAB 5.0 MAT-file, written by mula"
_V73_HEADER = b"MATLAB 7.3 MAT-file, Platform: mula, Created on: - HDF5 schema 1.00 ."


class MatFileError(ValueError):
    """The file is not a readable MATLAB file or holds no recognisable joint data."""


def write_person_joints_mat(path: Path, joints: np.ndarray, boxes: np.ndarray, *, v73: bool = False) -> None:
    """Write a PASCAL-Person-Part style joint file: a 1 x P struct array ``persons``.

    Args:
        path: the ``.mat`` file to write.
        joints: (P, J, 3) array of (x, y, visible); unlabelled joints have NaN coordinates.
        boxes: (P, 4) person boxes (x1, y1, x2, y2).
        v73: write MATLAB v7.3 (HDF5) instead of v5.
    """
    joints = np.asarray(joints, dtype=np.float64)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(len(joints), 4)
    if v73:
        _write_v73(Path(path), joints, boxes)
    else:
        _write_v5(Path(path), joints, boxes)


def _write_v5(path: Path, joints: np.ndarray, boxes: np.ndarray) -> None:
    import io

    from scipy.io import savemat

    persons = np.empty((1, len(joints)), dtype=[("joints", object), ("bbox", object)])
    for i, (j, b) in enumerate(zip(joints, boxes)):
        persons[0, i] = (j, b.reshape(1, 4))
    buf = io.BytesIO()
    savemat(buf, {"persons": persons}, format="5", do_compression=False)
    data = bytearray(buf.getvalue())
    # The header's 116 text bytes carry a creation time: replace them so equal inputs give equal files.
    data[:116] = _V5_HEADER.ljust(116, b" ")
    path.write_bytes(bytes(data))


def _write_v73(path: Path, joints: np.ndarray, boxes: np.ndarray) -> None:
    import h5py

    # MATLAB v7.3 = HDF5 with a 512-byte user block holding a MAT header; arrays are stored
    # column-major (transposed) and struct arrays hold object references into '#refs#'.
    with h5py.File(path, "w", userblock_size=512, track_order=True) as f:
        refs = f.create_group("#refs#")
        group = f.create_group("persons")
        group.attrs["MATLAB_class"] = np.bytes_("struct")
        for field, values in (("joints", joints), ("bbox", boxes.reshape(-1, 1, 4))):
            ref_ds = group.create_dataset(field, (len(values), 1), dtype=h5py.ref_dtype)
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
    for name, value in variables.items():
        if name.startswith("__"):
            continue
        people = _people_from_value(value, num_joints)
        if people is not None:
            return people
    raise MatFileError(f"holds no {num_joints} x 3 joint arrays (variables: {', '.join(k for k in variables if not k.startswith('__'))})")


def _people_from_value(value: object, num_joints: int) -> list[tuple[np.ndarray, np.ndarray | None]] | None:
    arr = np.asarray(value)
    if arr.dtype.names:  # struct array: one element per person
        jfield = next((n for n in arr.dtype.names if any(w in n.lower() for w in _JOINT_WORDS)), None)
        bfield = next((n for n in arr.dtype.names if any(w in n.lower() for w in _BOX_WORDS)), None)
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
        for name, obj in f.items():
            if name.startswith("#"):
                continue
            people = _people_from_h5(f, obj, num_joints)
            if people is not None:
                return people
    raise MatFileError(f"holds no {num_joints} x 3 joint arrays in its HDF5 variables")


def _h5_values(f, ds) -> list[np.ndarray]:
    """A dataset's arrays: dereferenced cells, or the dataset itself (undoing MATLAB's column-major order)."""
    import h5py

    if ds.dtype == h5py.ref_dtype:
        return [np.asarray(f[ref][()]).T for ref in np.asarray(ds[()]).ravel(order="F") if ref]
    return [np.asarray(ds[()]).T]


def _people_from_h5(f, obj, num_joints: int) -> list[tuple[np.ndarray, np.ndarray | None]] | None:
    import h5py

    if isinstance(obj, h5py.Group):
        keys = list(obj.keys())
        jkey = next((k for k in keys if any(w in k.lower() for w in _JOINT_WORDS)), None)
        bkey = next((k for k in keys if any(w in k.lower() for w in _BOX_WORDS)), None)
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
    stacks = [_as_joint_stack(a.astype(np.float64), num_joints) for a in arrays if np.issubdtype(a.dtype, np.number)]
    if not stacks or any(s is None for s in stacks):
        return None
    return [(j, None) for s in stacks for j in s]


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
