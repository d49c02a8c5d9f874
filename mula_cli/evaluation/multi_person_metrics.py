"""Multi-person pose mAP: the MPII multi-person protocol (Pishchulin et al.'s ``evaluateAP``).

Xia et al. and MuLA report this on PASCAL-Person-Part. Per image, every predicted person ``q`` is
compared with every ground-truth person ``p``: ``match[q, p, j]`` says that joint ``j`` is labelled
in ``p``, predicted in ``q`` and within ``threshold * ref_p`` of it; ``score[q, p]`` is the fraction
of ``p``'s labelled joints matched. As in ``assignGTmulti``, each prediction keeps only its best
ground truth, then each ground truth takes the remaining prediction of highest score (> 0), one to
one. Every predicted joint is a detection with its joint score, a true positive iff its person is
matched and ``match`` holds for that joint. Per joint type, detections of the whole set are sorted
by score (stable) and scored by VOC all-point interpolated AP against the number of labelled
ground-truth joints of that type (people with no match included); mAP is the mean over joint
types that have ground truth (a type without any is NaN and left out).

Reference distance ``ref_p`` (option ``reference``; ``compute()`` records its name and factor):

- ``"mpii"`` (default): MPII's radius. MPII multi-person AP scores a joint within 0.5 x the head
  size, head size = 0.6 x the head-box diagonal, which on MPII's ground truth is 0.75 x the head-top
  to neck distance (``MPII_HEAD_FACTOR``). PASCAL-Person-Part has no head boxes, so ``ref_p`` =
  0.75 x ``||head-top - neck||`` of the ground-truth person; where either joint is unlabelled (or
  both coincide), 0.75 x ``HEAD_BOX_FRACTION`` (0.13) x the diagonal of the person's box: the
  ``gt_boxes`` row when given, else the box of the person's labelled joints.
- ``"head-neck"`` (``"head"`` is its former name, still accepted): the full ``||head-top - neck||``,
  the LIP PCKh head size, with the fallback 0.13 x the box diagonal: 4/3 of MPII's radius, so more
  lenient (it was the default before ``"mpii"``). Why 0.13: the head (crown to chin) is about 13 %
  of stature (the 7.5-heads canon, anthropometric tables), and a standing person's box diagonal is
  about the stature (height ~ stature; a width of 0.25-0.35 of it adds under 6 %), so on an average
  body the fallback equals the head length. A truncated person's joint box is smaller than the
  body, which makes the fallback stricter there: pass ``gt_boxes`` when they exist.
- ``"box"``: always ``HEAD_BOX_FRACTION`` x the box diagonal, as above (the head-neck scale).

A ground-truth person with no usable reference (no box and fewer than two distinct labelled
joints) cannot be matched: predictions near it are false positives, but its labelled joints still
count as ground truth (misses). ``compute()`` reports how many there were.

Detection scores: a joint's own score; where it is NaN, the person score (given, or by default the
mean of the person's finite joint scores); where both are missing, ranked last. The person score
also breaks ties when two predictions match a ground truth equally well (MPII takes the first one
listed, which is the same when predictions come sorted by person score).

Edge rules (option ``protocol``): ``"strict"`` (default) scores every picture as above: ground truth
of a picture without predictions is missed, predictions of a picture without ground truth are false
positives, an equal match goes to the higher person score, a NaN joint score falls back to the person
score, and a joint type without ground truth is NaN and left out of the means. ``"mpii"`` reproduces
MPII's ``evaluateAP`` / ``assignGTmulti`` / ``getRPC`` exactly on these cases: a picture without
predicted people (rows) or without ground-truth people adds nothing, neither ground truth nor
detections (``assignGTmulti`` fills ``hasGT`` and ``hasPred`` only inside its loop over
prediction-ground truth pairs); an equal match goes to the first prediction listed (MATLAB's ``max``);
a NaN joint score stays NaN and ranks first (MATLAB's ``sort(..., 'descend')`` puts NaN first; equal
scores keep their order, first listed first, under both protocols); a joint type without ground truth
has AP NaN when it has detections (recall 0/0) and 0 when it has none, and mAP and the groups are
plain means, NaN as soon as one joint type is NaN (MATLAB's ``mean``).

The accumulator holds every detection, not sums: AP cannot be added across ranks, so ranks pool
their detections (:meth:`MultiPersonPoseAP.gather`, or ``state()`` / ``merge()``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from mula_cli.evaluation.metrics import nanmean
from mula_cli.utils.manifests import DatasetManifest

HEAD_BOX_FRACTION = 0.13
#: MPII's head size (0.6 x the head-box diagonal) over the head-top to neck distance, on MPII's ground truth
MPII_HEAD_FACTOR = 0.75
_BOX = "(given box, else box of its labelled joints)"
REFERENCES = {
    "mpii": f"mpii: {MPII_HEAD_FACTOR} x the head-top to neck distance of each ground-truth person (MPII's head "
            f"size, 0.6 x the head-box diagonal); {MPII_HEAD_FACTOR} x {HEAD_BOX_FRACTION} x its box diagonal "
            f"{_BOX} where either joint is unlabelled",
    "head-neck": f"head-neck: 1.0 x the head-top to neck distance of each ground-truth person; "
                 f"{HEAD_BOX_FRACTION} x its box diagonal {_BOX} where either joint is unlabelled",
    "box": f"box: {HEAD_BOX_FRACTION} x the diagonal of each ground-truth person's box {_BOX}",
}
#: the factor on the head-top to neck distance and on the box fallback of each reference
_FACTORS = {"mpii": MPII_HEAD_FACTOR, "head-neck": 1.0, "box": 1.0}
REFERENCE_ALIASES = {"head": "head-neck"}  # former names, still accepted
DEFAULT_REFERENCE = "mpii"
PROTOCOLS = ("strict", "mpii")  # edge rules; see the module docstring


def voc_ap(scores: np.ndarray, tp: np.ndarray, num_gt: int, protocol: str = "strict") -> float:
    """VOC all-point interpolated AP in percent (MPII's ``VOCap``) of detections ranked by score.

    Equal scores keep their order (first listed first). Without ground truth: NaN under ``"strict"``;
    under ``"mpii"`` NaN when there are detections and 0 when there are none, as MPII's ``getRPC`` and
    ``VOCap`` give. ``"mpii"`` also ranks NaN scores first (MATLAB's descending sort), ``"strict"`` last.
    """
    scores = np.asarray(scores, np.float64)
    if num_gt == 0:
        return float("nan") if protocol == "strict" or scores.size else 0.0
    if protocol == "mpii":  # lexsort is stable; its last key (NaN or not) sorts first
        order = np.lexsort((-np.where(np.isnan(scores), 0.0, scores), ~np.isnan(scores)))
    else:
        order = np.argsort(-scores, kind="stable")  # stable: ties keep input order
    hits = np.asarray(tp, bool)[order]
    ctp = np.cumsum(hits)
    recall = ctp / num_gt
    precision = ctp / np.arange(1, hits.size + 1)
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # monotone precision envelope
    steps = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
    return float(100.0 * np.sum((mrec[steps] - mrec[steps - 1]) * mpre[steps]))


class MultiPersonPoseAP:
    """Per-joint AP and mAP accumulator for multi-person pose.

    Args:
        manifest: gives the joints, the head-top and neck joints and the reported groups.
        threshold: matching radius as a fraction of the reference distance.
        reference: ``"mpii"`` (default), ``"head-neck"`` (or its former name ``"head"``) or ``"box"``
            (see the module docstring).
        protocol: edge rules, ``"strict"`` or ``"mpii"`` (see the module docstring).
    """

    def __init__(self, manifest: DatasetManifest, threshold: float = 0.5, reference: str = DEFAULT_REFERENCE,
                 protocol: str = "strict") -> None:
        reference = REFERENCE_ALIASES.get(reference, reference)
        if reference not in REFERENCES:
            raise ValueError(f"reference must be one of {list(REFERENCES)}, not {reference!r}")
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {list(PROTOCOLS)}, not {protocol!r}")
        self.manifest = manifest
        self.threshold = float(threshold)
        self.reference = reference
        self.protocol = protocol
        self._reset()

    def _reset(self) -> None:
        j = self.manifest.num_joints
        self._scores: list[list[np.ndarray]] = [[] for _ in range(j)]
        self._tp: list[list[np.ndarray]] = [[] for _ in range(j)]
        self._gt_counts = np.zeros(j, np.int64)
        self._counts = {"images": 0, "gt_people": 0, "pred_people": 0, "matched_people": 0, "unmatchable_gt_people": 0,
                        "ignored_gt_people": 0, "ignored_pred_people": 0}  # ignored: "mpii" only

    def _references(self, gt: np.ndarray, labelled: np.ndarray, boxes: np.ndarray | None) -> np.ndarray:
        """Reference distance per gt person (NaN = cannot be matched)."""
        lo = np.where(labelled[..., None], gt, np.inf).min(1)
        hi = np.where(labelled[..., None], gt, -np.inf).max(1)
        joint_box = np.where(labelled.any(1, keepdims=True), np.concatenate([lo, hi], 1), np.nan)
        box = joint_box if boxes is None else np.where(np.isfinite(boxes).all(1, keepdims=True), boxes, joint_box)
        diagonal = np.hypot(box[:, 2] - box[:, 0], box[:, 3] - box[:, 1])
        ref = np.where(diagonal > 0, HEAD_BOX_FRACTION * diagonal, np.nan)
        if self.reference != "box":
            top, neck = self.manifest.pckh.head_top, self.manifest.pckh.neck
            head = np.linalg.norm(gt[:, top] - gt[:, neck], axis=1)  # NaN where either is unlabelled
            ref = np.where(labelled[:, top] & labelled[:, neck] & (head > 0), head, ref)
        return _FACTORS[self.reference] * ref

    def update(self, pred_people: Sequence[np.ndarray] | np.ndarray, gt_people: np.ndarray,
               gt_boxes: np.ndarray | None = None, person_scores: np.ndarray | None = None) -> float:
        """Add one image; returns the fraction of its labelled ground-truth joints that a matched
        prediction hits (NaN when it labels none), the image's own score, e.g. to rank pictures.

        Args:
            pred_people: Q predicted people, each (J, 3) x, y, score in original pixels (NaN x/y = not predicted).
            gt_people: (P, J, 2) ground-truth joints (NaN = unlabelled).
            gt_boxes: (P, 4) person boxes x1, y1, x2, y2 (a NaN row = none).
            person_scores: (Q,) person scores; default the mean of each person's finite joint scores.
        """
        j = self.manifest.num_joints
        pred = np.asarray(pred_people, np.float64).reshape(-1, j, 3)
        gt = np.asarray(gt_people, np.float64).reshape(-1, j, 2)
        boxes = None if gt_boxes is None else np.asarray(gt_boxes, np.float64).reshape(-1, 4)
        if boxes is not None and len(boxes) != len(gt):
            raise ValueError(f"{len(boxes)} gt boxes for {len(gt)} gt people")
        xy, joint_scores = pred[..., :2], pred[..., 2]
        predicted = np.isfinite(xy).all(-1)  # (Q, J)
        if person_scores is None:
            finite = np.isfinite(joint_scores)
            with np.errstate(invalid="ignore", divide="ignore"):
                person = np.where(finite, joint_scores, 0).sum(1) / finite.sum(1)
        else:
            person = np.asarray(person_scores, np.float64).reshape(-1)
            if len(person) != len(pred):
                raise ValueError(f"{len(person)} person scores for {len(pred)} predicted people")
        labelled = np.isfinite(gt).all(-1)  # (P, J)
        mpii = self.protocol == "mpii"
        if mpii and (len(pred) == 0 or len(gt) == 0):  # MPII counts nothing of a one-sided picture
            self._counts["images"] += 1
            self._counts["gt_people"] += len(gt)
            self._counts["pred_people"] += int(predicted.any(1).sum())
            self._counts["ignored_gt_people"] += len(gt)
            self._counts["ignored_pred_people"] += int(predicted.any(1).sum())
            return 0.0 if labelled.any() else float("nan")
        ref = self._references(gt, labelled, boxes)

        dist = np.linalg.norm(xy[:, None] - gt[None], axis=-1)  # (Q, P, J), NaN unless both present
        with np.errstate(invalid="ignore"):
            match = dist <= self.threshold * ref[None, :, None]  # NaN (no reference) never matches
            score = match.sum(-1) / np.maximum(labelled.sum(1), 1)[None, :]
        assigned = np.full(len(pred), -1)
        if score.size:
            # Each prediction competes only for its best ground truth (assignGTmulti)...
            keep = np.zeros_like(score, bool)
            keep[np.arange(len(pred)), score.argmax(1)] = True
            score = np.where(keep, score, 0.0)
            # ...then each ground truth takes its best remaining prediction; a prediction has at most one
            # nonzero column, so this is one to one. Scanning in person-score order breaks ties by it
            # ("strict"); MPII's max takes the first prediction listed.
            order = (np.arange(len(pred)) if mpii
                     else np.argsort(-np.where(np.isnan(person), -np.inf, person), kind="stable"))
            best = order[score[order].argmax(0)]
            found = score[best, np.arange(len(gt))] > 0
            assigned[best[found]] = np.flatnonzero(found)

        tp = np.zeros(predicted.shape, bool)
        hit = assigned >= 0
        tp[hit] = match[np.flatnonzero(hit), assigned[hit]]
        if mpii:
            det_scores = joint_scores  # NaN stays NaN: voc_ap ranks it first
        else:
            det_scores = np.where(np.isfinite(joint_scores), joint_scores, person[:, None])
            det_scores = np.where(np.isnan(det_scores), -np.inf, det_scores)  # no score at all: ranked last
        for k in range(j):
            rows = predicted[:, k]
            if rows.any():
                self._scores[k].append(det_scores[rows, k])
                self._tp[k].append(tp[rows, k])
        self._gt_counts += labelled.sum(0)
        self._counts["images"] += 1
        self._counts["gt_people"] += len(gt)
        self._counts["pred_people"] += int(predicted.any(1).sum())
        self._counts["matched_people"] += int(hit.sum())  # annotated people found (matched one to one)
        self._counts["unmatchable_gt_people"] += int((~np.isfinite(ref) & labelled.any(1)).sum())
        return float(tp.sum() / labelled.sum()) if labelled.any() else float("nan")

    def state(self) -> dict[str, Any]:
        """Everything accumulated, as plain picklable objects (for :meth:`merge` on another rank)."""
        return {
            "scores": [np.concatenate(s) if s else np.zeros(0) for s in self._scores],
            "tp": [np.concatenate(t) if t else np.zeros(0, bool) for t in self._tp],
            "gt_counts": self._gt_counts.copy(),
            "counts": dict(self._counts),
            "protocol": self.protocol,
        }

    def merge(self, other: MultiPersonPoseAP | dict[str, Any]) -> None:
        """Pool another accumulator (or its :meth:`state`) into this one, its detections after ours."""
        state = other.state() if isinstance(other, MultiPersonPoseAP) else other
        if len(state["scores"]) != self.manifest.num_joints:
            raise ValueError("merging a state of a different number of joints")
        if state.get("protocol", self.protocol) != self.protocol:
            raise ValueError(f"merging a {state['protocol']!r} state into a {self.protocol!r} accumulator")
        for k in range(self.manifest.num_joints):
            self._scores[k].append(np.asarray(state["scores"][k], np.float64))
            self._tp[k].append(np.asarray(state["tp"][k], bool))
        self._gt_counts += np.asarray(state["gt_counts"], np.int64)
        for key, value in state["counts"].items():
            self._counts[key] = self._counts.get(key, 0) + int(value)

    def gather(self) -> None:
        """Pool every rank's detections in rank order, so that each rank computes the whole set's AP.

        A no-op unless torch.distributed is initialised. Under NCCL the current CUDA device must be set.
        """
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return
        states: list[Any] = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(states, self.state())
        self._reset()
        for state in states:
            self.merge(state)

    all_reduce = gather  # the name the single-person accumulators use in evaluation loops

    def compute(self) -> dict[str, object]:
        """AP per joint, mAP, group means (percent, NaN = no ground truth), threshold, reference, protocol
        and counts."""
        state = self.state()
        ap = np.array([voc_ap(s, t, int(n), self.protocol)
                       for s, t, n in zip(state["scores"], state["tp"], self._gt_counts)])
        # "strict" leaves joint types without ground truth out; MPII's mean does not skip NaN
        mean = nanmean if self.protocol == "strict" else (lambda v: float(np.mean(v)))
        groups = {name: mean(ap[list(js)]) for name, js in self.manifest.pckh.groups.items()}
        return {
            "map": mean(ap),
            "joint_ap": [float(v) for v in ap],
            "groups": groups,
            "threshold": self.threshold,
            "reference": REFERENCES[self.reference],
            "reference_name": self.reference,
            "map_protocol": self.protocol,
            "gt_joints": [int(n) for n in self._gt_counts],
            **self._counts,
        }
