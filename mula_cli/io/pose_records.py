"""Predicted joints and people as JSON records: `mula predict` (pictures and videos) and `mula evaluate`.

One home for the layout, so the picture JSON, the video's JSON Lines and evaluate's COCO results
file name and round joints the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mula_cli.codecs.partition import Person
from mula_cli.utils.manifests import DatasetManifest


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
