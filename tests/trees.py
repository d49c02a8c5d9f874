"""Small dataset trees in the official on-disk layouts, built by hand for the tests.

The synthetic generator makes realistic trees; these builders make tiny ones whose every byte the
test controls, so that each bad-input case can be planted exactly.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from mula_cli.data.matfile import write_person_joints_mat

LIP_JOINTS = 16


def lip_sample(rng: np.random.Generator, h: int = 40, w: int = 30) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A random image, a label map with a few classes and 16 joints (some unlabelled)."""
    image = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    label = np.zeros((h, w), np.uint8)
    label[h // 4: 3 * h // 4, w // 4: 3 * w // 4] = rng.integers(1, 20)
    label[h // 4: h // 2, w // 4: w // 2] = 14
    label[h // 4: h // 2, w // 2: 3 * w // 4] = 15
    joints = np.stack([rng.uniform(2, w - 3, LIP_JOINTS), rng.uniform(2, h - 3, LIP_JOINTS)], axis=1).round()
    joints[rng.random(LIP_JOINTS) < 0.2] = np.nan
    return image, label, joints


def csv_row(name: str, joints: np.ndarray, occluded: np.ndarray | None = None) -> str:
    fields = [f"{name}.jpg"]
    for j, (x, y) in enumerate(joints):
        if np.isnan(x):
            fields += ["nan", "nan", "nan"]
        else:
            fields += [str(int(x)), str(int(y)), str(int(occluded[j]) if occluded is not None else 0)]
    return ",".join(fields)


def jpeg_bytes(image: np.ndarray, mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).convert(mode).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def lip_paths(root: Path, variant: str, split: str) -> dict[str, Path]:
    """Where each part of a LIP split goes in a layout variant: official, nested or flattened."""
    if variant == "flattened":
        return {"images": root / f"{split}_images", "ids": root / f"{split}_id.txt",
                "labels": root / f"{split}_segmentations", "csv": root / f"lip_{split}_set.csv"}
    ann = root / "TrainVal_parsing_annotations"
    if variant == "nested":
        ann = ann / "TrainVal_parsing_annotations"
    return {"images": root / "TrainVal_images" / f"{split}_images", "ids": root / "TrainVal_images" / f"{split}_id.txt",
            "labels": ann / f"{split}_segmentations",
            "csv": root / "TrainVal_pose_annotations" / f"lip_{split}_set.csv"}


def build_lip_tree(root: Path, variant: str = "official", counts: dict[str, int] | None = None,
                   seed: int = 0, sizes: list[tuple[int, int]] | None = None) -> dict[str, dict[str, tuple]]:
    """Write a tiny LIP tree; returns split -> id -> (image, label, joints) for checking the cache.

    ``sizes``: (height, width) of each split's pictures in turn (default: all 40 x 30).
    """
    sizes = sizes or [(40, 30)]
    counts = counts or {"train": 6, "val": 4, "test": 2}
    rng = np.random.default_rng(seed)
    truth: dict[str, dict[str, tuple]] = {}
    for split, n in counts.items():
        truth[split] = {}
        if split == "test":
            folder = root / ("test_images" if variant == "flattened" else "Testing_images/testing_images")
            folder.mkdir(parents=True, exist_ok=True)
            ids = [f"{9000 + i}_{i}" for i in range(n)]
            for k, sid in enumerate(ids):
                image, _, _ = lip_sample(rng, *sizes[k % len(sizes)])
                (folder / f"{sid}.jpg").write_bytes(jpeg_bytes(image))
                truth[split][sid] = (image, None, None)
            id_file = root / ("test_id.txt" if variant == "flattened" else "Testing_images/test_id.txt")
            id_file.write_text("\n".join(ids) + "\n")
            continue
        p = lip_paths(root, variant, split)
        for key in ("images", "labels"):
            p[key].mkdir(parents=True, exist_ok=True)
        p["csv"].parent.mkdir(parents=True, exist_ok=True)
        ids = [f"{1000 * (split == 'val') + i}_{100 + i}" for i in range(n)]
        rows = []
        for k, sid in enumerate(ids):
            image, label, joints = lip_sample(rng, *sizes[k % len(sizes)])
            (p["images"] / f"{sid}.jpg").write_bytes(jpeg_bytes(image))
            (p["labels"] / f"{sid}.png").write_bytes(png_bytes(label))
            rows.append(csv_row(sid, joints))
            truth[split][sid] = (image, label, joints)
        p["ids"].write_text("\n".join(ids) + "\n")
        p["csv"].write_text("\n".join(rows) + "\n")
    return truth


def build_lip_cache(root: Path, counts: dict[str, int], seed: int) -> Path:
    """A LIP tree under ``root/LIP`` prepared into ``root/lip.h5`` (returned)."""
    from mula_cli.data.prepare import prepare_dataset
    from mula_cli.utils.manifests import load_manifest

    build_lip_tree(root / "LIP", counts=counts, seed=seed)
    path = root / "lip.h5"
    prepare_dataset(load_manifest("lip"), root / "LIP", path)
    return path


def build_pascal_tree(root: Path, counts: dict[str, int] | None = None, seed: int = 0,
                      num_joints: int = 14) -> dict[str, dict[str, tuple]]:
    """Write a tiny PASCAL-Person-Part tree (1-3 people per image, every other .mat file v7.3)."""
    counts = counts or {"train": 4, "val": 3}
    rng = np.random.default_rng(seed)
    for sub in ("JPEGImages", "SegmentationPart", "PersonJoints"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    truth: dict[str, dict[str, tuple]] = {}
    k = 0
    for split, n in counts.items():
        truth[split] = {}
        ids = [f"2008_{k + i:06d}" for i in range(n)]
        for i, sid in enumerate(ids):
            h, w = 48, 64
            image = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
            label = rng.integers(0, 7, (h, w), dtype=np.uint8)
            people = int(rng.integers(1, 4))
            joints = np.zeros((people, num_joints, 3))
            joints[..., 0] = rng.uniform(1, w - 2, (people, num_joints)).round()
            joints[..., 1] = rng.uniform(1, h - 2, (people, num_joints)).round()
            joints[..., 2] = 1
            joints[0, 3] = (np.nan, np.nan, 0)
            boxes = np.stack([joints[:, :, 0].min(1), joints[:, :, 1].min(1),
                              joints[:, :, 0].max(1), joints[:, :, 1].max(1)], axis=1)
            (root / "JPEGImages" / f"{sid}.jpg").write_bytes(jpeg_bytes(image))
            (root / "SegmentationPart" / f"{sid}.png").write_bytes(png_bytes(label))
            write_person_joints_mat(root / "PersonJoints" / f"{sid}.mat", joints, boxes, v73=bool(i % 2))
            truth[split][sid] = (image, label, joints)
        k += n
        (root / f"{split}_id.txt").write_text("\n".join(ids) + "\n")
    return truth
