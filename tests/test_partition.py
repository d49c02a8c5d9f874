"""Partition branch: offset targets, their mirroring, and grouping ground-truth maps back into people."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mula_cli.codecs.heatmaps import encode_people_heatmaps, flip_heatmaps, flip_joints
from mula_cli.codecs.partition import (
    PPN_SEEDS,
    GroupingConfig,
    Person,
    encode_offsets,
    flip_offsets,
    group_people,
    grouping_from_options,
)
from mula_cli.utils.errors import MulaError
from mula_cli.utils.manifests import load_manifest

from conftest import run_cli

SIZE, STRIDE, SIGMA = 256, 4, 7.0
CELLS = SIZE // STRIDE
J = 14
NAN = float("nan")

# A standing PASCAL-Person-Part body in units of its height, manifest joint order (x to the image right)
_BODY = np.array([
    [0.0, -0.50], [0.0, -0.33],  # head-top, neck
    [0.11, -0.30], [0.15, -0.13], [0.17, 0.02], [0.07, 0.02], [0.08, 0.25], [0.08, 0.48],  # L arm, leg
    [-0.11, -0.30], [-0.15, -0.13], [-0.17, 0.02], [-0.07, 0.02], [-0.08, 0.25], [-0.08, 0.48],  # R
])


def _flip_index() -> list[int]:
    return load_manifest("pascal_person_part").joint_flip_index()


def _body(rng: np.random.Generator, centre: np.ndarray, height: float) -> np.ndarray:
    """One plausible skeleton: the template jittered, mirrored at random (facing), tilted a little."""
    pts = _BODY + rng.normal(0.0, 0.03, _BODY.shape)
    if rng.random() < 0.5:  # seen from behind: left and right change sides
        pts[:, 0] *= -1
    a = rng.uniform(-0.3, 0.3)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    return centre + height * pts @ rot.T


def _valid(people: np.ndarray, min_joint_gap: float, min_centroid_gap: float) -> bool:
    """Every person has 6+ joints; same-type joints of two people and centroids are far enough apart."""
    labelled = np.isfinite(people).all(-1)
    if (labelled.sum(1) < 6).any():
        return False
    centroids = np.stack([p[m].mean(0) for p, m in zip(people, labelled)])
    for a in range(len(people)):
        for b in range(a):
            if np.linalg.norm(centroids[a] - centroids[b]) < min_centroid_gap:
                return False
            gaps = np.linalg.norm(people[a] - people[b], axis=-1)
            if (gaps[np.isfinite(gaps)] < min_joint_gap).any():
                return False
    return True


def _overlapping(people: np.ndarray) -> bool:
    """Whether each person's joint box overlaps the next one's (people listed left to right)."""
    lo, hi = np.nanmin(people, axis=1), np.nanmax(people, axis=1)
    return bool((lo[1:, 0] < hi[:-1, 0]).all())


def _scene(rng: np.random.Generator, n: int, crowd: bool = False) -> np.ndarray:
    """(n, J, 2) people at a 256 input: random sizes and places (side by side when ``crowd``), some
    joints unlabelled, joints outside the input unlabelled (truncated people)."""
    while True:
        if crowd:
            height = rng.uniform(140, 190)
            x0 = rng.uniform(50, 90)
            centres = [np.array([x0 + 44 * i + rng.uniform(-4, 4), rng.uniform(110, 140)]) for i in range(n)]
            people = np.stack([_body(rng, c, height * rng.uniform(0.9, 1.1)) for c in centres])
        else:
            people = np.stack([_body(rng, rng.uniform(30, 226, 2), rng.uniform(60, 200)) for _ in range(n)])
        for p in people:
            p[rng.choice(J, rng.integers(0, 5), replace=False)] = NAN
        people[((people < 0) | (people > SIZE - 1)).any(-1)] = NAN
        if crowd and not _overlapping(people):
            continue
        if _valid(people, min_joint_gap=16.0, min_centroid_gap=40.0):
            return people


def _targets(people: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    heat = encode_people_heatmaps(people, (CELLS, CELLS), STRIDE, SIGMA, J)[:-1].numpy()
    offsets, _ = encode_offsets(torch.from_numpy(people), (CELLS, CELLS), STRIDE, SIGMA, SIZE)
    return heat, offsets.numpy()


def _assert_recovered(people: np.ndarray, found: list[Person], tol: float = 4.0) -> None:
    """Each gt person is one decoded person: the same joints found, each within ``tol`` pixels."""
    assert len(found) == len(people), f"{len(found)} people decoded for {len(people)}"
    unused = list(range(len(found)))
    for p in people:
        labelled = np.isfinite(p).all(-1)
        match = [q for q in unused if (np.isfinite(found[q].joints[:, 0]) == labelled).all()
                 and (np.linalg.norm(found[q].joints[labelled, :2] - p[labelled], axis=-1) <= tol).all()]
        assert len(match) == 1, f"gt person {p} matched by {len(match)} decoded people"
        unused.remove(match[0])


# ---------------------------------------------------------------------------------------------
# Targets

def test_offset_value_at_a_known_cell_by_hand() -> None:
    people = np.full((1, J, 2), NAN, np.float32)
    people[0, 0], people[0, 1] = (101.5, 61.5), (60.0, 140.0)  # joint 0 on the centre of cell (15, 25)
    offsets, mask = encode_offsets(people, (CELLS, CELLS), STRIDE, SIGMA, SIZE)
    # centroid (80.75, 100.75); cell (row 15, col 25) is centred on (101.5, 61.5); half input = 128
    assert offsets[0, 15, 25].item() == pytest.approx((80.75 - 101.5) / 128, abs=1e-6)
    assert offsets[1, 15, 25].item() == pytest.approx((100.75 - 61.5) / 128, abs=1e-6)
    # one cell to the right: the vector to the same centroid, 4 pixels shorter in x
    assert offsets[0, 15, 26].item() == pytest.approx((80.75 - 105.5) / 128, abs=1e-6)
    assert mask[0, 15, 25] == 1 and mask[0, 0, 0] == 0 and offsets[:2, 0, 0].abs().max() == 0


def test_mask_support_is_the_heatmap_support() -> None:
    rng = np.random.default_rng(1)
    people = _scene(rng, 3)
    _, mask = encode_offsets(people, (CELLS, CELLS), STRIDE, SIGMA, SIZE)
    heat = encode_people_heatmaps(people, (CELLS, CELLS), STRIDE, SIGMA, J)[:-1]
    assert torch.equal(mask.bool(), heat > 0)
    # and the radius by hand: the support is d <= sqrt(2 * 4.6052) * sigma = 21.2 pixels
    one = np.full((1, J, 2), NAN, np.float32)
    one[0, 0] = (101.5, 61.5)
    _, mask = encode_offsets(one, (CELLS, CELLS), STRIDE, SIGMA, SIZE)
    assert mask[0, 15, 25 + 5] == 1 and mask[0, 15, 25 + 6] == 0  # 20 and 24 pixels away
    assert mask[0, 15 - 5, 25] == 1 and mask[0, 15 - 6, 25] == 0
    assert mask[0, 15 + 3, 25 + 4] == 1 and mask[0, 15 + 4, 25 + 4] == 0  # 20 and 22.6 pixels away


def test_the_nearest_joint_wins_where_supports_overlap() -> None:
    people = np.full((2, J, 2), NAN, np.float32)
    people[0, 0], people[0, 1] = (97.5, 61.5), (97.5, 141.5)  # centroid (97.5, 101.5)
    people[1, 0], people[1, 1] = (123.5, 61.5), (181.5, 61.5)  # centroid (152.5, 61.5)
    offsets, mask = encode_offsets(people, (CELLS, CELLS), STRIDE, SIGMA, SIZE)
    for col, centroid in ((26, people[0, :2].mean(0)), (27, people[0, :2].mean(0)),  # x 105.5, 109.5: A
                          (28, people[1, :2].mean(0)), (29, people[1, :2].mean(0))):  # x 113.5, 117.5: B
        centre = np.array([1.5 + 4 * col, 61.5])
        np.testing.assert_allclose(offsets[0:2, 15, col].numpy(), (centroid - centre) / 128, atol=1e-6)
        assert mask[0, 15, col] == 1


def test_unlabelled_joints_and_no_people_give_no_targets() -> None:
    people = np.full((1, J, 2), NAN, np.float32)
    people[0, 0], people[0, 5] = (50.0, 50.0), (80.0, 120.0)
    offsets, mask = encode_offsets(torch.from_numpy(people), (CELLS, CELLS), STRIDE, SIGMA, SIZE)
    assert offsets.shape == (2 * J, CELLS, CELLS) and mask.shape == (J, CELLS, CELLS)
    assert offsets.dtype == mask.dtype == torch.float32 and offsets.device.type == "cpu"
    labelled = {0, 5}
    for j in range(J):
        assert (mask[j].sum() > 0) == (j in labelled)
        assert (offsets[2 * j:2 * j + 2].abs().sum() > 0) == (j in labelled)
    offsets, mask = encode_offsets(torch.zeros(0, J, 2), (CELLS, CELLS), STRIDE, SIGMA, SIZE)
    assert offsets.shape == (2 * J, CELLS, CELLS) and mask.shape == (J, CELLS, CELLS)
    assert offsets.abs().max() == 0 and mask.max() == 0


def test_a_batch_equals_one_image_at_a_time() -> None:
    rng = np.random.default_rng(2)
    batch = np.stack([_scene(rng, 3) for _ in range(2)]).astype(np.float32)
    offsets, mask = encode_offsets(torch.from_numpy(batch), (CELLS, CELLS), STRIDE, SIGMA, SIZE)
    assert offsets.shape == (2, 2 * J, CELLS, CELLS) and mask.shape == (2, J, CELLS, CELLS)
    for b in range(2):
        one, one_mask = encode_offsets(torch.from_numpy(batch[b]), (CELLS, CELLS), STRIDE, SIGMA, SIZE)
        torch.testing.assert_close(offsets[b], one)
        torch.testing.assert_close(mask[b], one_mask)
    empty, empty_mask = encode_offsets(torch.zeros(2, 0, J, 2), (CELLS, CELLS), STRIDE, SIGMA, SIZE)
    assert empty.shape == (2, 2 * J, CELLS, CELLS) and empty_mask.shape == (2, J, CELLS, CELLS)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
def test_targets_on_the_gpu_equal_those_on_the_cpu() -> None:
    people = torch.from_numpy(_scene(np.random.default_rng(3), 4).astype(np.float32))
    offsets, mask = encode_offsets(people.cuda(), (CELLS, CELLS), STRIDE, SIGMA, SIZE)
    assert offsets.device.type == "cuda"
    cpu, cpu_mask = encode_offsets(people, (CELLS, CELLS), STRIDE, SIGMA, SIZE)
    torch.testing.assert_close(offsets.cpu(), cpu, atol=1e-5, rtol=0)
    assert (mask.cpu() != cpu_mask).float().mean() < 1e-3  # cells on the support's edge may round apart


def test_flipped_targets_brought_back_equal_the_targets() -> None:
    flip_index = _flip_index()
    rng = np.random.default_rng(4)
    for _ in range(5):
        people = _scene(rng, int(rng.integers(1, 6)))
        mirrored = flip_joints(people, SIZE, flip_index)
        offsets, mask = encode_offsets(people, (CELLS, CELLS), STRIDE, SIGMA, SIZE)
        m_offsets, m_mask = encode_offsets(mirrored, (CELLS, CELLS), STRIDE, SIGMA, SIZE)
        back = flip_offsets(m_offsets[None], flip_index)[0]
        back_mask = flip_heatmaps(m_mask[None], flip_index)[0]
        assert (back_mask != mask).float().mean() < 1e-3  # only rounding on the support's edge may differ
        both = (mask * back_mask).bool().repeat_interleave(2, dim=0)
        assert both.any()
        torch.testing.assert_close(back[both], offsets[both], atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------
# Grouping

@pytest.mark.parametrize("seed", range(4))
def test_ground_truth_maps_decode_into_the_same_people(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    for _ in range(6):
        people = _scene(rng, int(rng.integers(1, 7)))
        heat, offsets = _targets(people)
        _assert_recovered(people, group_people(heat, offsets, STRIDE, SIZE))


@pytest.mark.parametrize("seed", range(3))
def test_overlapping_crowds_decode_into_the_same_people(seed: int) -> None:
    rng = np.random.default_rng(200 + seed)
    for _ in range(4):
        people = _scene(rng, int(rng.integers(4, 6)), crowd=True)
        assert _overlapping(people)
        heat, offsets = _targets(people)
        found = group_people(torch.from_numpy(heat), torch.from_numpy(offsets), STRIDE, SIZE)
        _assert_recovered(people, found)


def test_noisy_offsets_still_decode_into_the_same_people() -> None:
    rng = np.random.default_rng(300)
    for _ in range(4):
        people = _scene(rng, 5, crowd=True)
        heat, offsets = _targets(people)
        offsets = offsets + rng.normal(0.0, 3.0 / 128, offsets.shape).astype(np.float32)  # 3-pixel votes
        _assert_recovered(people, group_people(heat, offsets, STRIDE, SIZE))


def test_empty_or_sparse_maps_give_no_people() -> None:
    heat = np.zeros((J, CELLS, CELLS), np.float32)
    offsets = np.zeros((2 * J, CELLS, CELLS), np.float32)
    assert group_people(heat, offsets, STRIDE, SIZE) == []
    people = np.full((1, J, 2), NAN)
    people[0, :3] = [(50, 50), (50, 70), (70, 70)]  # three joints: under PPN's four
    heat, offsets = _targets(people)
    assert group_people(heat, offsets, STRIDE, SIZE) == []
    found = group_people(heat, offsets, STRIDE, SIZE, GroupingConfig(min_joints=3))
    assert len(found) == 1 and found[0].score == pytest.approx(3 / J, abs=0.02)


def test_a_background_map_and_a_wrong_shape() -> None:
    people = _scene(np.random.default_rng(5), 2)
    heat = encode_people_heatmaps(people, (CELLS, CELLS), STRIDE, SIGMA, J).numpy()  # J + 1 maps
    _, offsets = _targets(people)
    _assert_recovered(people, group_people(heat, offsets, STRIDE, SIZE))
    with pytest.raises(ValueError, match="do not match"):
        group_people(heat[:5], offsets, STRIDE, SIZE)


def test_a_person_mapped_to_the_original_picture() -> None:
    joints = np.array([[10.0, 20.0, 0.9], [NAN, NAN, 0.0], [100.0, 5.0, 0.5]])
    person = Person(joints, 0.3)
    back = np.array([[2.0, 0.0, 1.0], [0.0, 2.0, -3.0]])  # scale 2, then shift (1, -3)
    moved = person.transformed(back)
    np.testing.assert_allclose(moved.joints[[0, 2]], [[21.0, 37.0, 0.9], [201.0, 7.0, 0.5]])
    assert np.isnan(moved.joints[1, :2]).all() and moved.score == 0.3
    clipped = person.transformed(back, (30, 150))  # (H, W): x into [0, 149], y into [0, 29]
    np.testing.assert_allclose(clipped.joints[[0, 2], :2], [[21.0, 29.0], [149.0, 7.0]])


def test_decoded_ground_truth_scores_full_map() -> None:
    metrics = pytest.importorskip("mula_cli.evaluation.multi_person_metrics")
    ap = metrics.MultiPersonPoseAP(load_manifest("pascal_person_part"))
    rng = np.random.default_rng(400)
    for i in range(12):
        crowd = i % 3 == 0
        people = _scene(rng, 4 if crowd else int(rng.integers(1, 7)), crowd=crowd)
        heat, offsets = _targets(people)
        found = group_people(heat, offsets, STRIDE, SIZE)
        scores = np.array([p.score for p in found])
        ap.update(np.stack([p.joints for p in found]), people, person_scores=scores)
    assert ap.compute()["map"] >= 99.0


def test_non_finite_network_outputs_do_not_break_grouping() -> None:
    """A diverged or float16-overflowing network: NaN/inf offsets vote for their own cell, NaN heatmap
    values are no candidates; decoding still returns a list instead of failing in the clustering."""
    heat = np.zeros((14, 32, 32), np.float32)
    heat[:, 10, 10:24] = 1.0  # a row of peaks, several per type
    heat[:, 20, 5] = np.nan
    offsets = np.zeros((28, 32, 32), np.float32)
    offsets[0, 10, 10] = np.inf
    offsets[3, 10, 12] = np.nan
    people = group_people(heat, offsets, 4, 128, GroupingConfig(min_joints=1, nms_window=1))
    assert isinstance(people, list) and all(np.isfinite(p.score) for p in people)


def _noise(side: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """An untrained or diverging network's output: uniform heatmaps, offsets of random length."""
    rng = np.random.default_rng(seed)
    heat = rng.random((J, side, side)).astype(np.float32)
    offsets = rng.normal(0.0, 0.3, (2 * J, side, side)).astype(np.float32)
    return heat, offsets


def test_noise_maps_give_at_most_the_capped_candidates_per_joint_type() -> None:
    """Noise maps have ~500 local maxima per type at 96x96: only the best ``max_candidates`` of each type
    are clustered, which bounds the people and the time (O(n^2) clustering)."""
    heat, offsets = _noise(96)
    cap = GroupingConfig().max_candidates
    assert 20 <= cap <= 30
    every = group_people(heat, offsets, 4, 384, GroupingConfig(peak_threshold=0.0, min_joints=1))
    per_type = np.isfinite(np.stack([p.joints[:, 0] for p in every])).sum(0)  # every candidate is someone's
    assert (per_type <= cap).all() and per_type.sum() >= J * cap // 2, per_type
    # the people too: each has min_joints of the J * cap candidates or more
    found = group_people(heat, offsets, 4, 384, GroupingConfig(peak_threshold=0.0))
    assert 0 < len(found) <= J * cap // GroupingConfig().min_joints
    few = GroupingConfig(peak_threshold=0.0, min_joints=1, max_candidates=3)
    small = group_people(heat, offsets, 4, 384, few)
    assert (np.isfinite(np.stack([p.joints[:, 0] for p in small])).sum(0) <= 3).all()


def test_the_cap_keeps_the_highest_peaks_and_changes_nothing_on_ordinary_maps() -> None:
    heat = np.zeros((J, 32, 32), np.float32)
    values = np.linspace(0.2, 0.9, 8)
    for i, v in enumerate(values):  # 8 peaks of joint 0, far apart, increasing along the row
        heat[0, 4 + 3 * (i // 4), 4 + 6 * (i % 4)] = v
    offsets = np.zeros((2 * J, 32, 32), np.float32)
    cfg = GroupingConfig(min_joints=1, nms_window=1, blur_sigma=0.0, max_candidates=3)
    kept = sorted(p.joints[0, 2] for p in group_people(heat, offsets, 4, 128, cfg))
    np.testing.assert_allclose(kept, values[-3:], rtol=1e-6)
    rng = np.random.default_rng(500)
    for i in range(4):
        people = _scene(rng, 5 if i % 2 else int(rng.integers(1, 7)), crowd=bool(i % 2))
        heat, offsets = _targets(people)
        capped = group_people(heat, offsets, STRIDE, SIZE)
        free = group_people(heat, offsets, STRIDE, SIZE, GroupingConfig(max_candidates=10**6))
        assert len(capped) == len(free)
        for a, b in zip(capped, free):
            np.testing.assert_array_equal(a.joints, b.joints)


def test_a_joint_pairs_with_the_next_nearest_person_within_the_gate() -> None:
    """Inside one cluster, joint 0 seeds two people, A and B (votes 60 px apart); of the two joint-1
    candidates, c1 votes on A and c2 60 px from A but 70 px from B. The shortest total pairs c1-A, c2-B,
    which the 65-px gate forbids; gating first pairs c1-B and c2-A, both within the gate, so c2 is kept."""
    side, stride = 256, 4
    cells = side // stride
    heat = np.zeros((J, cells, cells), np.float32)
    offsets = np.zeros((2 * J, cells, cells), np.float32)
    dx, dy = 60.0 * 23 / 72, math.sqrt(60.0**2 - (60.0 * 23 / 72) ** 2)  # |c2 - A| = 60, |c2 - B| = 70
    votes = {(0, 10, 10): (100.0, 100.0), (0, 10, 50): (160.0, 100.0),  # A, B
             (1, 50, 10): (100.0, 100.0), (1, 50, 50): (100.0 + dx, 100.0 + dy)}  # c1, c2
    for (t, r, c), (vx, vy) in votes.items():
        heat[t, r, c] = 1.0
        centre_x, centre_y = (c + 0.5) * stride - 0.5, (r + 0.5) * stride - 0.5
        offsets[2 * t, r, c] = (vx - centre_x) / (side / 2)
        offsets[2 * t + 1, r, c] = (vy - centre_y) / (side / 2)
    cfg = GroupingConfig(min_joints=2, join_distance=65.0 / side)
    found = group_people(heat, offsets, stride, side, cfg)
    assert len(found) == 2, f"{len(found)} people: {[p.joints[:2, :2].tolist() for p in found]}"
    assert all(np.isfinite(p.joints[:2, 0]).all() for p in found)


def _planted(votes: dict[tuple[int, int, int], tuple[float, float]], side: int = 256,
             stride: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Maps with one peak per (type, row, col) key, whose offset votes for the given (x, y) input pixel."""
    cells = side // stride
    heat = np.zeros((J, cells, cells), np.float32)
    offsets = np.zeros((2 * J, cells, cells), np.float32)
    for (t, r, c), (vx, vy) in votes.items():
        heat[t, r, c] = 1.0
        offsets[2 * t, r, c] = (vx - ((c + 0.5) * stride - 0.5)) / (side / 2)
        offsets[2 * t + 1, r, c] = (vy - ((r + 0.5) * stride - 0.5)) / (side / 2)
    return heat, offsets


def test_ppn_seeding_keeps_a_twice_detected_joint_from_splitting_a_person() -> None:
    """One person, its votes within 10 px of (100, 100), its L-elbow (3) detected twice: the two elbows vote
    10 px left and right of it. Every type seeding, the elbows go first (most detected) and seed two people,
    and the other joints join the nearer: two half-people of 6 and 9 joints. PPN's rule seeds from the neck
    only: the other joints join that one person and the second elbow, left over, is dropped."""
    votes = {(3, 20, 20): (90.0, 100.0), (3, 20, 40): (110.0, 100.0)}
    for t in (0, 1, 2, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13):
        votes[(t, 10 + 3 * (t % 5), 10 + 12 * (t // 5))] = (92.0 if t < 6 else 108.0, 100.0)
    heat, offsets = _planted(votes)
    every = group_people(heat, offsets, 4, 256)
    assert sorted(int(np.isfinite(p.joints[:, 0]).sum()) for p in every) == [6, 9]
    ppn = group_people(heat, offsets, 4, 256, GroupingConfig(seed_joints=PPN_SEEDS))
    assert len(ppn) == 1 and np.isfinite(ppn[0].joints[:, 0]).all()


def test_ppn_seeding_drops_a_person_without_neck_or_head_top_in_a_shared_cluster() -> None:
    """Two people in one cluster (votes 40 px apart, within the grouping radius, beyond the join gate): A
    has all 14 joints, B only its legs (hips, knees, ankles). Every type seeding finds both; PPN's rule
    drops B's joints, as none is a neck or a head-top. A person alone in its cluster is kept either way."""
    votes = {(t, 8 + 3 * (t % 5), 8 + 4 * (t // 5)): (100.0, 100.0) for t in range(J)}
    legs = (5, 6, 7, 11, 12, 13)
    votes.update({(t, 40 + 3 * (t % 5), 40 + 4 * (t // 5)): (140.0, 100.0) for t in legs})
    heat, offsets = _planted(votes)
    assert len(group_people(heat, offsets, 4, 256)) == 2
    ppn = group_people(heat, offsets, 4, 256, GroupingConfig(seed_joints=PPN_SEEDS))
    assert len(ppn) == 1 and np.isfinite(ppn[0].joints[:, 0]).all()
    alone = {k: v for k, v in votes.items() if k[1] >= 40}
    heat, offsets = _planted(alone)
    assert len(group_people(heat, offsets, 4, 256, GroupingConfig(seed_joints=PPN_SEEDS))) == 1
    with pytest.raises(ValueError, match="seed_joints"):
        group_people(heat, offsets, 4, 256, GroupingConfig(seed_joints=(14,)))


def test_ppn_seeds_are_the_neck_and_head_top_of_the_multi_person_manifests() -> None:
    for name in ("pascal_person_part", "synthetic_multi_person"):
        m = load_manifest(name)
        assert PPN_SEEDS == (m.pckh.neck, m.pckh.head_top) == (m.joints.index("neck"), m.joints.index("head-top"))


@pytest.mark.parametrize("field, value", [
    ("peak_threshold", 1.0), ("peak_threshold", -0.1), ("peak_threshold", NAN), ("nms_window", 0),
    ("nms_window", 2.5), ("blur_sigma", -1.0), ("blur_sigma", math.inf), ("cluster_distance", 0.0),
    ("cluster_distance", 5.0), ("join_distance", 0.0), ("join_distance", 3.0), ("min_joints", 0),
    ("max_candidates", 0), ("max_candidates", 2.0), ("seed_joints", (1, 1)), ("seed_joints", (-1,)),
    ("seed_joints", [1, 0]), ("seed_joints", (1.0,))])
def test_grouping_config_names_the_field_out_of_range(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=f"^GroupingConfig: {field} must be") as caught:
        GroupingConfig(**{field: value})
    assert not isinstance(caught.value, MulaError) and "--" not in str(caught.value)


def test_the_grouping_options_are_refused_with_their_flag_names() -> None:
    assert grouping_from_options(None, None, None) == GroupingConfig()
    given = GroupingConfig(peak_threshold=0.0, cluster_distance=0.5, min_joints=1)
    assert grouping_from_options(0.0, 0.5, 1) == given
    for args, flag in (((1.5, None, None), "--min-score"), ((None, 5.0, None), "--group-distance"),
                       ((None, None, 0), "--min-joints")):
        with pytest.raises(MulaError, match=f"^{flag} must be") as caught:
            grouping_from_options(*args)
        assert "\n" not in str(caught.value) and "_" not in str(caught.value)
    refused = run_cli("predict", "missing.jpg", "--device", "cpu", "--min-score", "1.5", "--min-joints", "0")
    assert refused.exit_code == 2 and "Traceback" not in refused.output, refused.output
    assert "--min-score must be in [0, 1)" in refused.output and "--min-joints must be" in refused.output
    assert "peak_threshold" not in refused.output
