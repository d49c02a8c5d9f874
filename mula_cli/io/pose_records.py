"""Predicted joints and people as JSON records: `mula predict` (pictures and videos) and `mula evaluate`.

One home for the layout, so the picture JSON, the video's JSON Lines and evaluate's COCO results
file name and round joints the same way; and for other programs' layouts (``--pose-format``):
OpenPose's JSON in BODY_25 or COCO-18 order and COCO keypoint results in COCO-17 order. Their
keypoint names and order are facts of those formats and live here; which of a dataset's joints each
keypoint is, is a fact of the dataset and lives in its manifest (``pose_formats``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mula_cli.codecs.partition import Person
from mula_cli.utils.errors import MulaError
from mula_cli.utils.manifests import DatasetManifest, pose_format_mapping


def joint_records(names: tuple[str, ...], joints: np.ndarray, scores: np.ndarray) -> list[dict[str, Any]]:
    """One ``{"name", "x", "y", "score"}`` record per joint (x, y rounded to 0.01 px, score to 1e-4)."""
    return [{"name": name, "x": round(float(x), 2), "y": round(float(y), 2), "score": round(float(s), 4)}
            for name, (x, y), s in zip(names, joints, scores)]


def found_joint_records(names: tuple[str, ...], person: Person) -> list[dict[str, Any]]:
    """The records of the joints ``person`` has (finite x and y), in the manifest's order."""
    found = np.isfinite(person.joints[:, :2]).all(axis=1)
    return joint_records(tuple(n for n, ok in zip(names, found) if ok), person.joints[found, :2],
                         person.joints[found, 2])


def people_document(image: Path, people: list[Person], manifest: DatasetManifest) -> dict[str, Any]:
    """Multi-person results: ``people`` is a COCO keypoint results list (``keypoints`` as x, y, score
    triples in the manifest's joint order, 0 0 0 for a joint not found; ``bbox`` x, y, w, h of the found
    joints), each record also naming its joints; ``categories`` describes them as COCO does (1-based skeleton)."""
    records = []
    for k, person in enumerate(people):
        found = np.isfinite(person.joints[:, :2]).all(axis=1)
        flat = [v for (x, y, s), ok in zip(person.joints, found)
                for v in ((round(float(x), 2), round(float(y), 2), round(float(s), 4)) if ok else (0, 0, 0))]
        xy = person.joints[found, :2]
        box = [float(v) for v in (*xy.min(axis=0), *(xy.max(axis=0) - xy.min(axis=0)))] if len(xy) else [0.0] * 4
        records.append({
            "image_id": image.stem, "category_id": 1, "person": k, "score": round(float(person.score), 4),
            "keypoints": flat, "num_keypoints": int(found.sum()), "bbox": [round(v, 2) for v in box],
            "joints": found_joint_records(manifest.joints, person),
        })
    return {"people": records,
            "categories": [{"id": 1, "name": "person", "keypoints": list(manifest.joints),
                            "skeleton": [[a + 1, b + 1] for a, b in manifest.skeleton]}]}


# Other programs' keypoint layouts (format facts; which of a dataset's joints each keypoint is, is a
# dataset fact: its manifest's "pose_formats", read by mula_cli.utils.manifests).
BODY_25 = ("Nose", "Neck", "RShoulder", "RElbow", "RWrist", "LShoulder", "LElbow", "LWrist", "MidHip", "RHip",
           "RKnee", "RAnkle", "LHip", "LKnee", "LAnkle", "REye", "LEye", "REar", "LEar", "LBigToe", "LSmallToe",
           "LHeel", "RBigToe", "RSmallToe", "RHeel")  # OpenPose's default body model
COCO_18 = ("Nose", "Neck", "RShoulder", "RElbow", "RWrist", "LShoulder", "LElbow", "LWrist", "RHip", "RKnee",
           "RAnkle", "LHip", "LKnee", "LAnkle", "REye", "LEye", "REar", "LEar")  # OpenPose's COCO model: BODY_25's names
COCO_17 = ("nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder", "left_elbow",
           "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee", "right_knee",
           "left_ankle", "right_ankle")  # the COCO keypoints task
MAPPED_KEYPOINTS = {"body_25": BODY_25, "coco_17": COCO_17}  # a manifest's "pose_formats" keys and their names
# --pose-format -> (the manifest mapping it reads, the keypoints it writes, in order)
POSE_FORMATS = {"openpose": ("body_25", BODY_25), "openpose-coco18": ("body_25", COCO_18), "coco": ("coco_17", COCO_17)}
OPENPOSE_VERSION = 1.3  # what OpenPose 1.3 and later write in "version"


@dataclass(frozen=True)
class KeypointLayout:
    """How one ``--pose-format``'s keypoints come from a model's joints."""

    pose_format: str
    names: tuple[str, ...]  # the format's keypoints, in its order
    sources: tuple[tuple[int, ...], ...]  # per keypoint, the joints it is the mean of; () = the dataset has none

    def convert(self, joints: np.ndarray) -> np.ndarray:
        """(J, 3) x, y, score (NaN x, y: not found) -> (K, 3) in this layout, NaN rows for keypoints not
        found or not mapped; a mean of several joints needs them all and takes the lowest score."""
        keypoints = np.full((len(self.names), 3), np.nan)
        for k, source in enumerate(self.sources):
            part = joints[list(source)]
            if source and np.isfinite(part[:, :2]).all():
                keypoints[k] = (*part[:, :2].mean(axis=0), part[:, 2].min())
        return keypoints


def keypoint_layout(manifest: DatasetManifest, pose_format: str) -> KeypointLayout:
    """The layout of ``pose_format`` (openpose, openpose-coco18, coco) for ``manifest``'s joints; a MulaError
    when the manifest maps none of its joints to that format, or names a keypoint the format lacks."""
    key, names = POSE_FORMATS[pose_format]
    mapping = pose_format_mapping(manifest, key)
    unknown = [name for name in mapping if name not in MAPPED_KEYPOINTS[key]]
    if unknown:
        raise MulaError(f"dataset manifest '{manifest.name}': pose_formats.{key} names {unknown[0]!r}, which is not a "
                        f"{key} keypoint ({', '.join(MAPPED_KEYPOINTS[key])})")
    index = {joint: i for i, joint in enumerate(manifest.joints)}
    return KeypointLayout(pose_format, names, tuple(tuple(index[j] for j in mapping.get(n, ())) for n in names))


def pose_people(joints: np.ndarray, scores: np.ndarray, people: list[Person] | None) -> list[tuple[np.ndarray, float]]:
    """(J, 3) x, y, score and a score for each person: every person found by a multi-person model
    (``people``), else the one person of a single-person model (scored by its joints' mean)."""
    if people is not None:
        return [(p.joints, float(p.score)) for p in people]
    return [(np.column_stack([joints, scores]), float(np.mean(scores)))]


def openpose_document(people: list[tuple[np.ndarray, float]], layout: KeypointLayout, width: int,
                      height: int) -> dict[str, Any]:
    """OpenPose's JSON for one picture: a person per entry, ``pose_keypoints_2d`` x, y, confidence
    (clipped to 0..1) in the layout's order, 0 0 0 for a keypoint the model has not; the face, hands
    and 3-D lists empty. ``canvas_width`` and ``canvas_height`` are what ControlNet's OpenPose JSON adds."""
    def flat(keypoints: np.ndarray) -> list[float]:
        return [v for x, y, c in keypoints for v in ((round(float(x), 2), round(float(y), 2),
                round(min(max(float(c), 0.0), 1.0), 4)) if np.isfinite(x) and np.isfinite(y) else (0.0, 0.0, 0.0))]

    return {"version": OPENPOSE_VERSION,
            "people": [{"person_id": [-1], "pose_keypoints_2d": flat(layout.convert(joints)),
                        "face_keypoints_2d": [], "hand_left_keypoints_2d": [], "hand_right_keypoints_2d": [],
                        "pose_keypoints_3d": [], "face_keypoints_3d": [], "hand_left_keypoints_3d": [],
                        "hand_right_keypoints_3d": []} for joints, _ in people],
            "canvas_width": width, "canvas_height": height}


def coco_image_id(stem: str) -> int | str:
    """COCO's image id of a picture: the number of a COCO-style name (000000397133.jpg -> 397133), else the name."""
    return int(stem) if stem.isdigit() else stem


def coco_results(image_id: int | str, people: list[tuple[np.ndarray, float]], layout: KeypointLayout) -> list[dict[str, Any]]:
    """COCO keypoint results, one per person: ``keypoints`` x, y, v in COCO-17 order (v 2 for a keypoint
    found, 0 0 0 for one the model has not), ``score`` the person's, ``keypoint_scores`` each keypoint's."""
    records = []
    for joints, score in people:
        keypoints = layout.convert(joints)
        found = np.isfinite(keypoints[:, :2]).all(axis=1)
        records.append({
            "image_id": image_id, "category_id": 1,
            "keypoints": [v for (x, y, _), ok in zip(keypoints, found)
                          for v in ((round(float(x), 2), round(float(y), 2), 2) if ok else (0, 0, 0))],
            "score": round(score, 4),
            "keypoint_scores": [round(float(s), 4) if ok else 0 for (_, _, s), ok in zip(keypoints, found)],
        })
    return records


def formatted_pose(layout: KeypointLayout, people: list[tuple[np.ndarray, float]], image_id: int | str, width: int,
                   height: int) -> dict[str, Any] | list[dict[str, Any]]:
    """One picture's pose in ``layout``'s format: an OpenPose document, or a COCO results list."""
    if layout.pose_format == "coco":
        return coco_results(image_id, people, layout)
    return openpose_document(people, layout, width, height)


def frame_record(layout: KeypointLayout, people: list[tuple[np.ndarray, float]], frame: int, time: float, width: int,
                 height: int) -> dict[str, Any] | list[dict[str, Any]]:
    """One video frame's JSON Lines record in ``layout``'s format: the OpenPose document with the frame's
    index and time added, or the COCO results list with the frame's index as ``image_id``."""
    record = formatted_pose(layout, people, frame, width, height)
    return record if isinstance(record, list) else {**record, "frame": frame, "time": round(time, 4)}
