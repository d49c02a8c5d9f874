"""Multi-person pose mAP (MPII multi-person protocol) against hand-computed answers."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from mula_cli.evaluation.multi_person_metrics import (
    DEFAULT_REFERENCE,
    HEAD_BOX_FRACTION,
    MPII_HEAD_FACTOR,
    MultiPersonPoseAP,
    voc_ap,
)
from mula_cli.utils.manifests import load_manifest

from conftest import run_cli

PPP = load_manifest("pascal_person_part")
J = PPP.num_joints  # 14: head-top 0, neck 1, L-shoulder 2 ... R-ankle 13

# One standing person: head-top (50, 0), neck (50, 20), so its head size is 20 and the 0.5 radius 10.
# The other joints sit at least 20 px from one another, so a 10 px shift never reaches a neighbour.
BODY = np.array([[50, 0], [50, 20], [30, 25], [20, 50], [15, 75], [40, 80], [40, 120], [40, 160],
                 [70, 25], [80, 50], [85, 75], [60, 80], [60, 120], [60, 160]], np.float64)


def person(dx: float = 0.0) -> np.ndarray:
    """BODY moved ``dx`` px right (people 200 px apart never match each other)."""
    return BODY + np.array([dx, 0.0])


def scored(joints: np.ndarray, score: float | np.ndarray) -> np.ndarray:
    """(J, 2) joints -> (J, 3) prediction with the given joint score(s)."""
    return np.concatenate([joints, np.broadcast_to(np.asarray(score, np.float64), (J,))[:, None]], axis=1)


def all_ap(result: dict, value: float) -> None:
    assert result["map"] == pytest.approx(value)
    assert result["joint_ap"] == pytest.approx([value] * J)
    assert all(v == pytest.approx(value) for v in result["groups"].values())


def test_voc_ap_by_hand() -> None:
    # ranks TP, FP, TP with 4 gt: precision 1, 1/2, 2/3 at recall 1/4, 1/4, 2/4; the envelope is
    # 1 up to recall 1/4 then 2/3: AP = 1/4 * 1 + 1/4 * 2/3
    assert voc_ap(np.array([0.9, 0.8, 0.7]), np.array([True, False, True]), 4) == pytest.approx(100 * (1 / 4 + 1 / 6))
    assert voc_ap(np.zeros(0), np.zeros(0, bool), 3) == 0.0  # nothing detected
    assert math.isnan(voc_ap(np.array([0.5]), np.array([False]), 0))  # no ground truth


def test_perfect_predictions_score_100() -> None:
    m = MultiPersonPoseAP(PPP)
    for n in (1, 2, 3):  # three images of 1, 2 and 3 people
        gt = np.stack([person(200 * i) for i in range(n)])
        m.update([scored(g, 0.5 + 0.1 * i) for i, g in enumerate(gt)], gt)
    r = m.compute()
    all_ap(r, 100.0)
    assert (r["images"], r["gt_people"], r["pred_people"]) == (3, 6, 6)
    assert r["gt_joints"] == [6] * J and r["threshold"] == 0.5 and "head-top to neck" in r["reference"]
    assert set(r["groups"]) == {"Head", "Shoulder", "Elbow", "Wrist", "Hip", "Knee", "Ankle"}


def test_swapped_halves_are_false_positives_of_the_matched_person() -> None:
    # gt A (x+0) and B (x+200). Prediction 1 is A except joints 10-13 placed on B; prediction 2 the
    # reverse. score[1] = (10/14 for A, 4/14 for B) -> 1 matches A; 2 matches B. Joints 0-9: both TP,
    # AP 100. Joints 10-13: each prediction's joint lies on the other person -> 2 FP, AP 0.
    a, b = person(0), person(200)
    p1, p2 = a.copy(), b.copy()
    p1[10:], p2[10:] = b[10:], a[10:]
    m = MultiPersonPoseAP(PPP)
    m.update([scored(p1, 0.9), scored(p2, 0.8)], np.stack([a, b]))
    r = m.compute()
    assert r["joint_ap"] == pytest.approx([100.0] * 10 + [0.0] * 4)
    assert r["map"] == pytest.approx(100 * 10 / 14)
    assert r["groups"]["Wrist"] == pytest.approx(50.0) and r["groups"]["Ankle"] == pytest.approx(50.0)
    assert r["groups"]["Head"] == r["groups"]["Elbow"] == pytest.approx(100.0)


def test_prediction_competes_only_for_its_best_ground_truth() -> None:
    # Prediction 1: joints 0-9 on A, 10-13 on B -> A 10/14, B 4/14; best A.
    # Prediction 2: joints 0-5 on B, 6-13 on A -> A 8/14, B 6/14; best A, so its B score is zeroed.
    # A takes prediction 1 (10/14 > 8/14); B has no nonzero candidate; prediction 2 is unmatched and
    # all its joints are FP, even the 6 lying on B. Per joint (scores 0.9 then 0.8, 2 gt each):
    #   0-5:   TP(1), FP(2): precision 1 at recall 1/2  -> AP 50
    #   6-9:   TP(1), FP(2)                               -> AP 50
    #   10-13: FP(1, on B but matched to A), FP(2)         -> AP 0
    # (Without the best-only rule B would take prediction 2 and joints 0-5 would score 100; without
    # one-to-one, prediction 2 would also count on A: joints 6-9 100, 10-13 25.)
    a, b = person(0), person(200)
    p1 = np.concatenate([a[:10], b[10:]])
    p2 = np.concatenate([b[:6], a[6:]])
    m = MultiPersonPoseAP(PPP)
    m.update(np.stack([scored(p1, 0.9), scored(p2, 0.8)]), np.stack([a, b]))
    r = m.compute()
    assert r["joint_ap"] == pytest.approx([50.0] * 10 + [0.0] * 4)
    assert r["map"] == pytest.approx(500 / 14)


def test_missing_person_caps_recall() -> None:
    # 3 gt people, 2 predicted exactly: every joint has precision 1 up to recall 2/3 -> AP 66.67.
    m = MultiPersonPoseAP(PPP)
    m.update([scored(person(0), 0.7)], np.stack([person(0), person(200)]))
    m.update([scored(person(0), 0.6)], person(0)[None])
    r = m.compute()
    all_ap(r, 100 * 2 / 3)
    assert (r["gt_people"], r["pred_people"]) == (3, 2)


def test_extra_person_ranked_first_lowers_precision() -> None:
    # A and B predicted exactly (0.5), a false person far away (0.9). Per joint: FP, TP, TP with 2 gt:
    # precision 0, 1/2, 2/3 at recall 0, 1/2, 1; envelope 2/3 everywhere -> AP = 2/3 (66.67).
    m = MultiPersonPoseAP(PPP)
    gt = np.stack([person(0), person(200)])
    m.update([scored(person(1000), 0.9), scored(gt[0], 0.5), scored(gt[1], 0.5)], gt)
    all_ap(m.compute(), 100 * 2 / 3)
    # ranked last it costs nothing: TP, TP, FP -> precision 1 up to recall 1 -> AP 100
    m = MultiPersonPoseAP(PPP)
    m.update([scored(person(1000), 0.1), scored(gt[0], 0.5), scored(gt[1], 0.5)], gt)
    all_ap(m.compute(), 100.0)


@pytest.mark.parametrize(("fp_score", "expected"), [
    # TP A 0.9, TP B 0.7, TP C 0.6 over 3 gt; the false person D at:
    (0.95, 75.0),  # FP,TP,TP,TP: precision 0, 1/2, 2/3, 3/4 -> envelope 3/4 over recall 0..1 -> 75
    (0.8, 100 * (1 / 3 + 1 / 3 * 3 / 4 + 1 / 3 * 3 / 4)),  # TP,FP,TP,TP: 1 to recall 1/3, then 3/4 -> 83.33
    (0.1, 100.0),  # TP,TP,TP,FP: precision 1 up to recall 1
])
def test_rank_of_a_false_positive_sets_ap(fp_score: float, expected: float) -> None:
    m = MultiPersonPoseAP(PPP)
    m.update([scored(person(0), 0.9), scored(person(200), 0.7)], np.stack([person(0), person(200)]))
    m.update([scored(person(0), 0.6), scored(person(1000), fp_score)], person(0)[None])
    all_ap(m.compute(), expected)


def test_detections_rank_by_joint_score_not_person_score() -> None:
    # As above with D at 0.1 except its head-top at 0.95: only joint 0 drops to 75; Head = (75 + 100) / 2.
    m = MultiPersonPoseAP(PPP)
    m.update([scored(person(0), 0.9), scored(person(200), 0.7)], np.stack([person(0), person(200)]))
    d = np.full(J, 0.1)
    d[0] = 0.95
    m.update([scored(person(0), 0.6), scored(person(1000), d)], person(0)[None])
    r = m.compute()
    assert r["joint_ap"] == pytest.approx([75.0] + [100.0] * 13)
    assert r["map"] == pytest.approx((75 + 13 * 100) / 14)
    assert r["groups"]["Head"] == pytest.approx(87.5) and r["groups"]["Knee"] == pytest.approx(100.0)


def one_shifted(gt: np.ndarray, joint: int, shift: float, boxes: np.ndarray | None = None,
                reference: str = "head-neck") -> float:
    """AP of ``joint`` when a single person is predicted exactly except that joint, moved ``shift`` px down."""
    pred = np.where(np.isfinite(gt), gt, BODY)  # predict every joint, labelled or not
    pred[joint, 1] += shift
    m = MultiPersonPoseAP(PPP, reference=reference)
    m.update([scored(pred, 0.5)], gt[None], gt_boxes=boxes)
    return m.compute()["joint_ap"][joint]


def test_threshold_boundary_on_the_head_size() -> None:
    # head-neck reference: head size 20 -> radius 10: a wrist 10 px away is inside (<=), 10.01 px away is not
    assert one_shifted(BODY, 4, 10.0) == 100.0
    assert one_shifted(BODY, 4, 10.01) == 0.0
    # threshold 0.25 -> radius 5
    m = MultiPersonPoseAP(PPP, threshold=0.25)
    pred = BODY.copy()
    pred[4, 1] += 6.0
    m.update([scored(pred, 0.5)], BODY[None])
    assert m.compute()["joint_ap"][4] == 0.0 and m.compute()["threshold"] == 0.25


def test_default_reference_is_mpiis_three_quarters_of_head_to_neck() -> None:
    # head-top to neck 20 px. head-neck: radius 0.5 x 20 = 10; MPII (0.6 x head-box diagonal = 0.75 x
    # head-neck on MPII's annotations): radius 0.5 x 0.75 x 20 = 7.5. A wrist 0.45 x 20 = 9 px away is a
    # hit with head-neck (and its former name "head") and a miss with the default
    assert DEFAULT_REFERENCE == "mpii" and MPII_HEAD_FACTOR == 0.75
    assert one_shifted(BODY, 4, 9.0, reference="head-neck") == 100.0
    assert one_shifted(BODY, 4, 9.0, reference="head") == 100.0
    assert one_shifted(BODY, 4, 9.0, reference="mpii") == 0.0
    m = MultiPersonPoseAP(PPP)  # the default
    pred = BODY.copy()
    pred[4, 1] += 9.0
    m.update([scored(pred, 0.5)], BODY[None])
    r = m.compute()
    assert r["joint_ap"][4] == 0.0 and r["reference_name"] == "mpii" and r["reference"].startswith("mpii: 0.75 x")
    # the boundary: 7.5 px is inside, 7.51 px is not
    assert one_shifted(BODY, 4, 7.5, reference="mpii") == 100.0
    assert one_shifted(BODY, 4, 7.51, reference="mpii") == 0.0
    assert MultiPersonPoseAP(PPP, reference="head").compute()["reference_name"] == "head-neck"


def _head_joint_missing(missing: int) -> np.ndarray:
    """A person with head-top (0) or neck (1) unlabelled; labelled: the other head joint (50, top),
    (10, 30), (70, 60), (40, top + 80), whose box is 60 x 80 (diagonal 100)."""
    gt = np.full((J, 2), np.nan)
    kept = 1 - missing
    top = BODY[kept, 1]
    gt[kept] = BODY[kept]
    gt[2], gt[4], gt[7] = [10, 30], [70, 60], [40, top + 80]
    return gt


@pytest.mark.parametrize("missing", [0, 1])
def test_mpii_fallback_is_three_quarters_of_the_box_fallback(missing: int) -> None:
    # As below: head-top or neck unlabelled, labelled joints' box 60 x 80 -> diagonal 100; head-neck
    # radius 0.5 x 0.13 x 100 = 6.5, MPII's 0.75 x 6.5 = 4.875
    gt = _head_joint_missing(missing)
    assert one_shifted(gt, 4, 5.0) == 100.0
    assert one_shifted(gt, 4, 5.0, reference="mpii") == 0.0
    assert one_shifted(gt, 4, 4.85, reference="mpii") == 100.0


@pytest.mark.parametrize("missing", [0, 1])
def test_head_fallback_uses_the_box_of_labelled_joints(missing: int) -> None:
    # Head-top or neck unlabelled -> reference = 0.13 x diagonal of the labelled joints' box. Labelled:
    # the other head joint (50, top), (10, 30), (70, 60), (40, top + 80): box 60 x 80.
    assert HEAD_BOX_FRACTION == 0.13
    gt = _head_joint_missing(missing)
    # box 60 x 80 -> diagonal 100 -> reference 13 -> radius 6.5
    assert one_shifted(gt, 4, 6.4) == 100.0
    assert one_shifted(gt, 4, 6.6) == 0.0
    # a given person box wins over the joints' box: diagonal 200 -> radius 13
    box = np.array([[0.0, 0.0, 120.0, 160.0]])
    assert one_shifted(gt, 4, 12.9, boxes=box) == 100.0
    assert one_shifted(gt, 4, 13.1, boxes=box) == 0.0


def test_box_reference_ignores_the_head() -> None:
    # BODY's joint box: x 15..85, y 0..160 -> diagonal sqrt(70^2 + 160^2) = 174.64 -> radius 11.35;
    # the head reference would give 10
    radius = 0.5 * 0.13 * math.hypot(70, 160)
    assert one_shifted(BODY, 4, 11.0, reference="box") == 100.0
    assert one_shifted(BODY, 4, 11.0) == 0.0
    assert one_shifted(BODY, 4, radius + 0.01, reference="box") == 0.0
    with pytest.raises(ValueError, match="reference"):
        MultiPersonPoseAP(PPP, reference="torso")


def test_person_without_reference_is_unmatchable_but_counted() -> None:
    # A predicted exactly (0.9); C has only its wrist labelled and no box, so no reference: a
    # prediction of that wrist (0.5) is a FP, and C's wrist still counts. Wrist: TP, FP over 2 gt -> 50.
    c = np.full((J, 2), np.nan)
    c[4] = [515, 75]
    pred_c = np.full((J, 3), np.nan)
    pred_c[4] = [515, 75, 0.5]
    gt = np.stack([person(0), c])
    m = MultiPersonPoseAP(PPP)
    m.update([scored(person(0), 0.9), pred_c], gt)
    r = m.compute()
    assert r["joint_ap"][4] == pytest.approx(50.0) and r["gt_joints"][4] == 2
    assert r["unmatchable_gt_people"] == 1 and r["pred_people"] == 2
    assert r["joint_ap"][0] == 100.0  # C predicts no other joint
    # with a box C gets a reference and its prediction matches: 100
    m = MultiPersonPoseAP(PPP)
    m.update([scored(person(0), 0.9), pred_c], gt, gt_boxes=np.array([[np.nan] * 4, [480, 0, 560, 160]]))
    r = m.compute()
    assert r["joint_ap"][4] == 100.0 and r["unmatchable_gt_people"] == 0


def test_missing_scores_fall_back_to_the_person_score() -> None:
    # The false person's joint scores are NaN and its person score 0.95 ranks it first: AP 66.67 as in
    # test_extra_person_ranked_first_lowers_precision; with person score 0.1 it is last: 100.
    gt = np.stack([person(0), person(200)])
    for person_score, expected in ((0.95, 100 * 2 / 3), (0.1, 100.0)):
        m = MultiPersonPoseAP(PPP)
        preds = [scored(gt[0], 0.5), scored(gt[1], 0.5), scored(person(1000), np.nan)]
        m.update(preds, gt, person_scores=np.array([0.5, 0.5, person_score]))
        all_ap(m.compute(), expected)


def test_empty_images() -> None:
    m = MultiPersonPoseAP(PPP)
    m.update([], np.zeros((0, J, 2)))
    m.update([], person(0)[None])  # a person nobody found: AP 0
    m.update([scored(person(0), 0.5)], np.zeros((0, J, 2)))  # a prediction with no gt: FP
    r = m.compute()
    all_ap(r, 0.0)
    assert (r["images"], r["gt_people"], r["pred_people"]) == (3, 1, 1)
    assert math.isnan(MultiPersonPoseAP(PPP).compute()["map"])


def random_images(rng: np.random.Generator, n: int) -> list[tuple[list[np.ndarray], np.ndarray]]:
    images = []
    for _ in range(n):
        people = rng.integers(0, 4)
        gt = np.stack([person(200 * i) for i in range(people)]) if people else np.zeros((0, J, 2))
        gt = gt + rng.normal(0, 3, gt.shape)
        gt[rng.random(gt.shape[:2]) < 0.2] = np.nan
        preds = [scored(g + rng.normal(0, 6, g.shape), rng.random(J)) for g in np.nan_to_num(gt, nan=100)]
        preds += [scored(person(1000) + rng.normal(0, 50, (J, 2)), rng.random(J)) for _ in range(rng.integers(0, 2))]
        images.append((preds, gt))
    return images


def same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if key == "joint_ap":
            np.testing.assert_allclose(a[key], b[key])
        elif key == "groups":
            np.testing.assert_allclose(list(a[key].values()), list(b[key].values()))
        else:
            assert a[key] == b[key] or (math.isnan(a[key]) and math.isnan(b[key])), key


def test_merge_equals_one_accumulator_over_both_sets() -> None:
    images = random_images(np.random.default_rng(0), 12)
    whole, first, second = (MultiPersonPoseAP(PPP) for _ in range(3))
    for i, (preds, gt) in enumerate(images):
        whole.update(preds, gt)
        (first if i < 6 else second).update(preds, gt)
    expected = whole.compute()
    assert 0 < expected["map"] < 100  # a case that can tell pooling from averaging
    halves = [first.compute()["map"], second.compute()["map"]]
    assert np.mean(halves) != pytest.approx(expected["map"])
    by_state = MultiPersonPoseAP(PPP)
    by_state.merge(first.state())
    by_state.merge(second.state())
    same(by_state.compute(), expected)
    first.merge(second)
    same(first.compute(), expected)

def test_gather_pools_ranks(tmp_path) -> None:
    images = random_images(np.random.default_rng(1), 4)
    m = MultiPersonPoseAP(PPP)
    for preds, gt in images:
        m.update(preds, gt)
    expected = m.compute()
    m.gather()  # not distributed: nothing changes
    same(m.compute(), expected)
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        m.all_reduce()
        same(m.compute(), expected)
    finally:
        torch.distributed.destroy_process_group()


def test_equal_match_goes_to_the_higher_person_score() -> None:
    # Two exact copies of A, listed 0.3 first then 0.9: both match A fully (score 1). The higher
    # person score wins, so 0.9 is TP and 0.3 FP: TP, FP over 1 gt -> AP 100. (MPII's first-listed
    # rule would match 0.3: FP, TP -> precision 1/2 at recall 1 -> AP 50.)
    m = MultiPersonPoseAP(PPP)
    m.update([scored(person(0), 0.3), scored(person(0), 0.9)], person(0)[None])
    all_ap(m.compute(), 100.0)


# --- edge rules: "strict" (default) against "mpii" (MPII's evaluateAP / assignGTmulti / getRPC) ---


def test_ground_truth_of_a_picture_without_predictions_mpii_ignores() -> None:
    # Picture 1: A predicted exactly; picture 2: B, nothing predicted. strict: 2 gt, 1 TP -> AP 50.
    # mpii: assignGTmulti fills hasGT only inside its loop over predictions, so B is not counted -> 100.
    results = {}
    for protocol in ("strict", "mpii"):
        m = MultiPersonPoseAP(PPP, protocol=protocol)
        m.update([scored(person(0), 0.5)], person(0)[None])
        m.update([], person(200)[None])
        results[protocol] = r = m.compute()
        assert r["map_protocol"] == protocol and r["gt_people"] == 2
    all_ap(results["strict"], 50.0)
    all_ap(results["mpii"], 100.0)
    assert results["mpii"]["gt_joints"] == [1] * J and results["mpii"]["ignored_gt_people"] == 1
    assert results["strict"]["gt_joints"] == [2] * J and results["strict"]["ignored_gt_people"] == 0


def test_predictions_in_a_picture_without_ground_truth_mpii_ignores() -> None:
    # Picture 1: A predicted exactly (0.5); picture 2: no gt, a person predicted at 0.9. strict: FP, TP
    # over 1 gt -> AP 50. mpii: hasPred is filled inside the loop over gt people, so nothing is added -> 100.
    results = {}
    for protocol in ("strict", "mpii"):
        m = MultiPersonPoseAP(PPP, protocol=protocol)
        m.update([scored(person(0), 0.5)], person(0)[None])
        m.update([scored(person(0), 0.9)], np.zeros((0, J, 2)))
        results[protocol] = m.compute()
    all_ap(results["strict"], 50.0)
    all_ap(results["mpii"], 100.0)
    assert results["mpii"]["ignored_pred_people"] == 1 and results["mpii"]["pred_people"] == 2


@pytest.mark.parametrize("protocol", ["strict", "mpii"])
def test_equal_scores_rank_the_first_listed_first(protocol: str) -> None:
    # A false person and A itself, both 0.5: listed false first -> FP, TP over 1 gt -> AP 50; listed
    # the other way -> TP, FP -> 100. MATLAB's sort is stable, so MPII agrees with strict here.
    for preds, expected in (([person(1000), person(0)], 50.0), ([person(0), person(1000)], 100.0)):
        m = MultiPersonPoseAP(PPP, protocol=protocol)
        m.update([scored(p, 0.5) for p in preds], person(0)[None])
        all_ap(m.compute(), expected)
    assert voc_ap(np.array([0.5, 0.5]), np.array([False, True]), 1, protocol) == pytest.approx(50.0)


def test_equal_match_goes_to_the_first_listed_under_mpii() -> None:
    # As test_equal_match_goes_to_the_higher_person_score: copies of A listed 0.3 then 0.9. MPII's
    # max(pck, [], 1) takes the first, 0.3: FP (0.9), TP (0.3) over 1 gt -> AP 50; strict 100.
    for protocol, expected in (("strict", 100.0), ("mpii", 50.0)):
        m = MultiPersonPoseAP(PPP, protocol=protocol)
        m.update([scored(person(0), 0.3), scored(person(0), 0.9)], person(0)[None])
        all_ap(m.compute(), expected)


def test_nan_joint_scores_rank_first_under_mpii() -> None:
    # A and B exact (0.5), a false person with NaN joint scores and person score 0.1. strict: NaN falls
    # back to 0.1, last -> AP 100. mpii: no fallback; MATLAB's descending sort puts NaN first -> FP, TP,
    # TP over 2 gt -> 66.67.
    gt = np.stack([person(0), person(200)])
    for protocol, expected in (("strict", 100.0), ("mpii", 100 * 2 / 3)):
        m = MultiPersonPoseAP(PPP, protocol=protocol)
        m.update([scored(gt[0], 0.5), scored(gt[1], 0.5), scored(person(1000), np.nan)], gt,
                 person_scores=np.array([0.5, 0.5, 0.1]))
        all_ap(m.compute(), expected)
    # NaN before +inf too; strict voc_ap puts NaN last
    assert voc_ap(np.array([np.inf, np.nan]), np.array([True, False]), 1, "mpii") == pytest.approx(50.0)
    assert voc_ap(np.array([np.nan, 0.1]), np.array([False, True]), 1, "strict") == pytest.approx(100.0)


def test_joint_type_without_ground_truth_under_mpii() -> None:
    # A with its head-top unlabelled, predicted exactly. Head-top has no gt.
    # Predicted there: strict AP NaN, left out of mAP and Head -> 100. mpii: recall 0/0 makes AP NaN and
    # MATLAB's mean keeps it: mAP and Head NaN.
    # Not predicted there either: strict as before; mpii AP 0 (VOCap of no detections), mAP 13/14 x 100.
    gt = person(0)
    gt[0] = np.nan
    for head_top_predicted in (True, False):
        pred = scored(person(0), 0.5)
        if not head_top_predicted:
            pred[0, :2] = np.nan
        strict, mpii = (MultiPersonPoseAP(PPP, protocol=p) for p in ("strict", "mpii"))
        for m in (strict, mpii):
            m.update([pred], gt[None])
        s, r = strict.compute(), mpii.compute()
        assert math.isnan(s["joint_ap"][0]) and s["joint_ap"][1:] == pytest.approx([100.0] * (J - 1))
        assert s["map"] == pytest.approx(100.0) and s["groups"]["Head"] == pytest.approx(100.0)
        assert r["joint_ap"][1:] == pytest.approx([100.0] * (J - 1))
        if head_top_predicted:
            assert math.isnan(r["joint_ap"][0]) and math.isnan(r["map"]) and math.isnan(r["groups"]["Head"])
        else:
            assert r["joint_ap"][0] == 0.0 and r["map"] == pytest.approx(100 * 13 / 14)
            assert r["groups"]["Head"] == pytest.approx(50.0)
        assert r["groups"]["Ankle"] == pytest.approx(100.0)


def test_protocol_is_checked_and_travels_with_the_state() -> None:
    with pytest.raises(ValueError, match="protocol"):
        MultiPersonPoseAP(PPP, protocol="voc")
    strict, mpii = MultiPersonPoseAP(PPP), MultiPersonPoseAP(PPP, protocol="mpii")
    assert strict.state()["protocol"] == "strict"
    with pytest.raises(ValueError, match="'mpii' state"):
        strict.merge(mpii.state())


def _untrained_multi_person(tmp_path):
    """Weights of an untrained multi-person hg-tiny and a one-picture synthetic PASCAL cache."""
    from mula_cli.commands.prepare import prepare_synthetic_dataset
    from mula_cli.model.presets import build_model
    from mula_cli.model.weights import save_weights

    cache = prepare_synthetic_dataset(tmp_path / "tree", train=1, val=1, seed=3, multi_person=True,
                                      out_path=tmp_path / "ppp.h5", quiet=True).path
    torch.manual_seed(0)
    model = build_model("hg-tiny", num_classes=PPP.num_classes, num_joints=J, width=16, partition=True,
                        class_names=PPP.classes, joint_names=PPP.joints)
    weights = tmp_path / "mp.pt"
    save_weights(weights, model, extra={"manifest": PPP.to_json()})
    return weights, cache


def test_evaluate_and_validation_record_the_mpii_reference_by_default(tmp_path) -> None:
    from mula_cli.evaluation.runner import eval_loader, evaluate_model
    from mula_cli.model.weights import load_weights

    weights, cache = _untrained_multi_person(tmp_path)
    for flags, name, start in (((), "mpii", "mpii: 0.75 x the head-top to neck"),
                               (("--pose-reference", "head"), "head-neck", "head-neck: 1.0 x the head-top to neck")):
        result = run_cli("evaluate", weights, "--data", cache, "--workers", "0", "--json", *flags,
                         "--save-dir", tmp_path / name)
        assert result.exit_code == 0, result.output
        pose = json.loads((tmp_path / name / "metrics.json").read_text())["pose"]
        assert pose["reference_name"] == name and pose["reference"].startswith(start), pose["reference"]
    # training-time validation calls evaluate_model without a reference: the same default
    model, config, _ = load_weights(weights)
    loader = eval_loader(cache, "val", config.input_size, config.stride, batch_size=1, workers=0)
    assert evaluate_model(model, loader, PPP).pose["reference_name"] == "mpii"
    refused = run_cli("evaluate", weights, "--data", cache, "--workers", "0", "--pose-reference", "torso")
    assert refused.exit_code == 2 and "use mpii, head-neck, box" in refused.output, refused.output


def test_evaluate_accepts_and_records_map_protocol(tmp_path) -> None:
    weights, cache = _untrained_multi_person(tmp_path)
    result = run_cli("evaluate", weights, "--data", cache, "--workers", "0", "--json", "--map-protocol", "mpii",
                     "--save-dir", tmp_path / "ev")
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert doc["protocol"]["map_protocol"] == "mpii" and doc["pose"]["map_protocol"] == "mpii"
    refused = run_cli("evaluate", weights, "--data", cache, "--workers", "0", "--map-protocol", "voc")
    assert refused.exit_code == 2 and "Traceback" not in refused.output
    assert "--map-protocol 'voc' is unknown" in refused.output and len(refused.output.strip().splitlines()) == 1
