"""The partition branch (multi-person pose, bottom-up as Pose Partition Networks): the one home of its
targets, their mirroring and the grouping of joint candidates into people.

Besides the J+1 heatmaps the pose network predicts 2J offset maps at the same stride. Channel 2j
(x) and 2j+1 (y) hold, at each cell inside the Gaussian support of a labelled joint j, the vector
from the cell centre to that person's centroid (the mean of the person's labelled joints), divided by
half the input side, as PPN normalises it. Where the same joint type of several people overlaps,
the cell belongs to the nearest joint (PPN lets the last person listed overwrite instead).

Decoding (:func:`group_people`) follows PPN's test code at stride s instead of at input resolution:
blur, local maxima above a threshold (joint candidates; the highest few per joint type), each
candidate's vote = its cell centre plus its offset, hierarchical clustering of the votes (centroid
linkage, distance threshold), and within a cluster that holds the same joint type twice, a split into
several people.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.ndimage import gaussian_filter, maximum_filter
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist
from torch import Tensor

from mula_cli.codecs.heatmaps import encode_heatmaps, grid_centers
from mula_cli.transforms.affine import apply_affine
from mula_cli.utils.errors import MulaError

#: Default cap on joint candidates per joint type (:attr:`GroupingConfig.max_candidates`)
MAX_CANDIDATES = 30
#: PPN's seeds (:attr:`GroupingConfig.seed_joints`): neck, then head-top, in PASCAL-Person-Part's joint order
PPN_SEEDS = (1, 0)


def _input_hw(input_size: int | tuple[int, int] | None, out_hw: tuple[int, int],
              stride: int) -> tuple[int, int]:
    """(height, width) of the network input; by default the maps' size times the stride."""
    if input_size is None:
        return out_hw[0] * stride, out_hw[1] * stride
    if isinstance(input_size, int):
        return input_size, input_size
    return int(input_size[0]), int(input_size[1])


def encode_offsets(people: Tensor | np.ndarray, out_hw: tuple[int, int], stride: int, sigma: float = 7.0,
                   input_size: int | tuple[int, int] | None = None) -> tuple[Tensor, Tensor]:
    """Offset targets and their mask, for one image or a batch, on the device of ``people``.

    Args:
        people: (..., P, J, 2) joint x, y in input pixels, NaN = unlabelled; P may be 0.
        out_hw: map height and width (input size / stride).
        stride: input pixels per cell.
        sigma: Gaussian sigma of the heatmaps, in input pixels; a cell gets a target where the joint's
            heatmap is non-zero.
        input_size: input side, or (height, width); offsets are divided by half of it. Default:
            ``out_hw`` times ``stride``.

    Returns:
        offsets (..., 2J, H, W) float32, channel 2j = x, 2j+1 = y of joint j, zero outside the mask;
        mask (..., J, H, W) float32, 1 where a target is defined.
    """
    people = torch.as_tensor(people, dtype=torch.float32)
    *lead, p, j, _ = people.shape
    h, w = out_hw
    in_h, in_w = _input_hw(input_size, out_hw, stride)
    if p == 0:
        zeros = people.new_zeros((*lead, j, h, w))
        return people.new_zeros((*lead, 2 * j, h, w)), zeros
    labelled = torch.isfinite(people).all(dim=-1)  # (..., P, J)
    # The heatmap encoder gives exactly the heatmaps' support; its values rank the people by distance
    maps = encode_heatmaps(torch.nan_to_num(people), labelled, out_hw, stride, sigma)[..., :-1, :, :]
    best, owner = maps.max(dim=-4)  # (..., J, H, W): nearest person's value, and who it is
    mask = (best > 0).float()
    xy = torch.where(labelled[..., None], people, torch.zeros_like(people))
    centroid = xy.sum(dim=-2) / labelled.sum(dim=-1, keepdim=True).clamp(min=1)  # (..., P, 2)
    index = owner.unsqueeze(-4)  # (..., 1, J, H, W)
    cx = torch.take_along_dim(centroid[..., 0, None, None, None], index, dim=-4).squeeze(-4)
    cy = torch.take_along_dim(centroid[..., 1, None, None, None], index, dim=-4).squeeze(-4)
    xs = torch.from_numpy(grid_centers(w, stride)).float().to(people.device)
    ys = torch.from_numpy(grid_centers(h, stride)).float().to(people.device)
    dx = (cx - xs) / (in_w / 2.0) * mask
    dy = (cy - ys[:, None]) / (in_h / 2.0) * mask
    offsets = torch.stack([dx, dy], dim=-3).reshape(*lead, 2 * j, h, w)  # x, y interleaved per joint
    return offsets, mask


def flip_offsets(offsets: Tensor, flip_index: list[int]) -> Tensor:
    """Bring (..., 2J, H, W) offsets predicted on a mirrored input back to the unmirrored one.

    Flips the width, swaps left/right joints and negates the x offsets, so that the result can be
    averaged with the prediction on the unmirrored input. Exact when the input width is W * stride.
    """
    index = torch.tensor([c for k in flip_index for c in (2 * k, 2 * k + 1)], device=offsets.device)
    sign = torch.tensor([-1.0, 1.0] * len(flip_index), dtype=offsets.dtype, device=offsets.device)
    return offsets.flip(-1).index_select(-3, index) * sign[:, None, None]


def _integral(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _number(value: object) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


# field: (test, requirement); the command-line options name the requirement with their own names
_LIMITS = {
    "peak_threshold": (lambda v: _number(v) and 0 <= v < 1, "in [0, 1)"),
    "nms_window": (lambda v: _integral(v) and v >= 1, "an integer of at least 1"),
    "blur_sigma": (lambda v: _number(v) and 0 <= v < float("inf"), "at least 0 (0 = no blur)"),
    "cluster_distance": (lambda v: _number(v) and 0 < v <= 2, "in (0, 2] (a fraction of the input side)"),
    "join_distance": (lambda v: _number(v) and 0 < v <= 2, "in (0, 2] (a fraction of the input side)"),
    "min_joints": (lambda v: _integral(v) and v >= 1, "an integer of at least 1"),
    "max_candidates": (lambda v: _integral(v) and v >= 1, "an integer of at least 1"),
    "seed_joints": (lambda v: isinstance(v, tuple) and all(_integral(k) and k >= 0 for k in v)
                    and len(set(v)) == len(v), "a tuple of distinct joint indices (empty: every type seeds)"),
}


def _broken_limits(values: dict[str, object]) -> list[tuple[str, str]]:
    """(field, requirement) of every value in ``values`` outside its field's range."""
    return [(name, _LIMITS[name][1]) for name, value in values.items() if not _LIMITS[name][0](value)]


@dataclass(frozen=True)
class GroupingConfig:
    """Thresholds of :func:`group_people`.

    Attributes:
        peak_threshold: a candidate's blurred heatmap value must exceed this (PPN ``conf_th``).
        nms_window: side, in cells, of the window a candidate is the maximum of.
        blur_sigma: Gaussian blur of the heatmaps before peak finding, input pixels (PPN: 3); 0 = none.
        cluster_distance: distance threshold of the hierarchical clustering of votes, as a fraction of
            the longer input side; 120/384 by default. PPN's ``dist_th`` is 120 px of the original
            picture, not of its 384-px test crop (docs/multi_person.md, "The grouping radius").
        join_distance: inside a cluster holding a joint type twice, the largest distance, as a fraction
            of the longer input side, from a candidate's vote to a person's mean vote for it to join
            that person; farther candidates start a new person.
        min_joints: people with fewer joints are dropped (PPN keeps people with 4 joints or more).
        max_candidates: at most this many candidates per joint type, the highest peaks (as OpenPose-
            style decoders cap them): an untrained or diverging network's noise maps otherwise give
            thousands of candidates, hundreds of people and seconds of clustering per picture.
        seed_joints: which joint types may start a person when a cluster holding a type twice is split.
            Empty (default): every type, most-detected first; any candidate left without a partner starts
            a person. ``PPN_SEEDS`` is PPN's rule, (neck, head-top) in PASCAL-Person-Part's joint order
            (both multi-person manifests' order): those types go first, in this order, and only their
            leftover candidates start people; the other types' are dropped. Measured against each other
            in docs/multi_person.md, "Seeding people".

    Raises:
        ValueError: naming every field out of its range.
    """

    peak_threshold: float = 0.1
    nms_window: int = 3
    blur_sigma: float = 3.0
    cluster_distance: float = 120.0 / 384.0
    join_distance: float = 0.125
    min_joints: int = 4
    max_candidates: int = MAX_CANDIDATES
    seed_joints: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        broken = _broken_limits({name: getattr(self, name) for name in _LIMITS})
        if broken:
            problems = (f"{name} must be {need} (got {getattr(self, name)!r})" for name, need in broken)
            raise ValueError("GroupingConfig: " + "; ".join(problems))


@dataclass(frozen=True, eq=False)
class Person:
    """One decoded person.

    Attributes:
        joints: (J, 3) x, y in input pixels and the heatmap value; x, y NaN and score 0 where not found.
        score: sum of the joint scores / J (the mean score of the found joints times the fraction found).
    """

    joints: np.ndarray
    score: float

    def transformed(self, matrix: np.ndarray, hw: tuple[int, int] | None = None) -> Person:
        """The person with joints mapped by a 2x3 affine matrix, clipped into an (H, W) picture if given."""
        xy = apply_affine(self.joints[:, :2], matrix)
        if hw is not None:
            xy = np.clip(xy, 0.0, [hw[1] - 1.0, hw[0] - 1.0])
        return Person(np.concatenate([xy, self.joints[:, 2:]], axis=1), self.score)


#: The command-line option of each field that has one (``mula evaluate`` / ``mula predict``)
_OPTION_OF = {"peak_threshold": "--min-score", "cluster_distance": "--group-distance",
              "min_joints": "--min-joints"}


def grouping_from_options(min_score: float | None, group_distance: float | None,
                          min_joints: int | None) -> GroupingConfig:
    """The command-line options of ``mula evaluate`` / ``mula predict`` as a config (None keeps a default).

    Raises:
        MulaError: one line naming the options (not the fields) out of range.
    """
    given = {"peak_threshold": min_score, "cluster_distance": group_distance, "min_joints": min_joints}
    given = {k: v for k, v in given.items() if v is not None}
    broken = _broken_limits(given)
    if broken:
        raise MulaError("; ".join(f"{_OPTION_OF[name]} must be {need}, not {given[name]}"
                                  for name, need in broken))
    return replace(GroupingConfig(), **given)


def _as_numpy(x: Tensor | np.ndarray) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


def _find_peaks(maps: np.ndarray, window: int, threshold: float) -> tuple[np.ndarray, ...]:
    """(type, row, col) of every local maximum of (J, h, w) maps above ``threshold``, one per plateau."""
    size = (1, window, window)
    peak = (maps == maximum_filter(maps, size=size, mode="constant", cval=-np.inf)) & (maps > threshold)
    # Equal neighbours (a joint half-way between two cells) would give two candidates for one joint:
    # keep only the last one of each plateau in raster order
    rank = np.where(peak, np.arange(maps.size).reshape(maps.shape), -1)
    peak &= rank == maximum_filter(rank, size=size, mode="constant", cval=-1)
    return np.nonzero(peak)


def _best_per_type(maps: np.ndarray, t: np.ndarray, r: np.ndarray, c: np.ndarray,
                   k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``k`` highest of the peaks (t, r, c) of each joint type in ``maps``, still in raster order.

    Ties keep the earlier peak in raster order."""
    order = np.lexsort((-maps[t, r, c], t))  # by type, then by value, highest first (stable)
    by_type = t[order]
    rank = np.arange(len(order)) - np.searchsorted(by_type, by_type, side="left")  # place within its type
    keep = np.sort(order[rank < k])
    return t[keep], r[keep], c[keep]


def _subcell(maps: np.ndarray, t: np.ndarray, r: np.ndarray, c: np.ndarray, axis: int) -> np.ndarray:
    """Shift in cells, within +-0.5, of each peak's vertex along ``axis`` (1 = rows, 2 = columns).

    A parabola through the log values: the maps are Gaussians, whose logs are parabolas."""
    n = maps.shape[axis]
    pos = r if axis == 1 else c
    lo, hi = np.maximum(pos - 1, 0), np.minimum(pos + 1, n - 1)
    logs = np.log(np.maximum(maps, 1e-6))
    centre = logs[t, r, c]
    before = logs[t, lo, c] if axis == 1 else logs[t, r, lo]
    after = logs[t, hi, c] if axis == 1 else logs[t, r, hi]
    curv = before + after - 2.0 * centre
    inside = (pos > 0) & (pos < n - 1) & (curv < 0)
    shift = np.where(inside, 0.5 * (before - after) / np.where(inside, curv, -1.0), 0.0)
    return np.clip(shift, -0.5, 0.5)


def _split(types: np.ndarray, votes: np.ndarray, join_px: float, seeds: tuple[int, ...] = ()) -> list[list[int]]:
    """Split one cluster that holds some joint type twice into people (lists of member indices).

    Types go most-detected first (they seed the most people); each type's candidates are matched one to
    one to the people so far by vote distance (Hungarian) among the pairs within ``join_px`` (the gate
    comes first: a candidate whose nearest person goes to another candidate can still join the next
    nearest within the gate); unmatched candidates start new people. With ``seeds`` (PPN's rule, which
    matches greedily), those types go first, in that order, and only their unmatched candidates start
    people: the others' are dropped."""
    kinds, counts = np.unique(types, return_counts=True)
    order = [int(k) for k in kinds[np.argsort(-counts, kind="stable")]]
    if seeds:
        order = [k for k in seeds if k in order] + [k for k in order if k not in seeds]
    members: list[list[int]] = []
    sums = np.zeros((0, 2))
    for k in order:
        cand = np.flatnonzero(types == k)
        joined = np.zeros(len(cand), dtype=bool)
        if members:
            dist = cdist(votes[cand], sums / np.array([len(m) for m in members])[:, None])
            gated = dist > join_px
            # a forbidden pair costs more than any set of allowed ones: the assignment has as many
            # allowed pairs as possible, and among those the shortest total distance
            cost = np.where(gated, dist[~gated].sum() + 1.0, dist)
            rows, cols = linear_sum_assignment(cost)
            for row, col in zip(rows, cols):
                if not gated[row, col]:
                    members[col].append(int(cand[row]))
                    sums[col] += votes[cand[row]]
                    joined[row] = True
        if seeds and k not in seeds:
            continue
        for i in cand[~joined]:
            members.append([int(i)])
            sums = np.vstack([sums, votes[i]])
    return members


def _cluster(votes: np.ndarray, points: np.ndarray, radius: float) -> np.ndarray:
    """Cluster index (0, 1, ...) of each vote: centroid linkage cut at ``radius`` input pixels, the same
    for every person. ``points`` (the candidates' positions) are unused here; they are what a radius
    relative to each person's extent needs (``benchmarks/grouping_check.py`` measures one in this place)."""
    if len(votes) == 1:
        return np.zeros(1, dtype=np.int64)
    tree = linkage(votes.astype(np.float64), method="centroid")
    return fcluster(tree, t=radius, criterion="distance") - 1


def group_people(heatmaps: Tensor | np.ndarray, offsets: Tensor | np.ndarray, stride: int,
                 input_size: int | tuple[int, int], config: GroupingConfig | None = None) -> list[Person]:
    """Group the joint candidates of one image into people.

    Args:
        heatmaps: (J, h, w) joint maps at stride ``stride`` (flip-averaged already if wanted); a
            trailing background map (J + 1 maps) is ignored.
        offsets: (2J, h, w) predicted centroid offsets, as :func:`encode_offsets` encodes them.
        stride: input pixels per cell.
        input_size: input side, or (height, width), in pixels.
        config: thresholds; default ``GroupingConfig()``.

    Returns:
        The people with at least ``config.min_joints`` joints, highest score first; joint positions in
        input pixels.
    """
    cfg = config or GroupingConfig()
    # a diverged or overflowing (float16) network: a non-finite offset votes for its own cell, a
    # non-finite heatmap value is no candidate, rather than clustering failing on the whole picture
    off = np.nan_to_num(_as_numpy(offsets), nan=0.0, posinf=0.0, neginf=0.0)
    j = off.shape[0] // 2
    raw = np.nan_to_num(_as_numpy(heatmaps)[:j], nan=0.0, posinf=0.0, neginf=0.0)
    if raw.shape[0] != j or off.shape[0] != 2 * j or raw.shape[1:] != off.shape[1:]:
        raise ValueError(f"heatmaps {raw.shape} do not match offsets {off.shape}")
    if any(k >= j for k in cfg.seed_joints):
        raise ValueError(f"seed_joints {cfg.seed_joints} name joint types beyond the {j} maps")
    in_h, in_w = _input_hw(input_size, raw.shape[1:], stride)
    cells = cfg.blur_sigma / stride
    maps = gaussian_filter(raw, sigma=(0, cells, cells)) if cells > 0 else raw
    t, r, c = _find_peaks(maps, cfg.nms_window, cfg.peak_threshold)
    t, r, c = _best_per_type(maps, t, r, c, cfg.max_candidates)  # clustering is O(n^2) in candidates
    if len(t) == 0:
        return []
    cell_x, cell_y = grid_centers(raw.shape[2], stride)[c], grid_centers(raw.shape[1], stride)[r]
    x = cell_x + _subcell(maps, t, r, c, 2) * stride
    y = cell_y + _subcell(maps, t, r, c, 1) * stride
    scores = raw[t, r, c]  # PPN scores candidates by the unblurred map
    # The offset is relative to the cell centre, not to the refined peak
    votes = np.stack([cell_x + off[2 * t, r, c] * (in_w / 2.0),
                      cell_y + off[2 * t + 1, r, c] * (in_h / 2.0)], axis=1)

    side = max(in_h, in_w)
    clusters = _cluster(votes, np.stack([x, y], axis=1), cfg.cluster_distance * side)
    groups: list[list[int]] = []
    for k in range(int(clusters.max()) + 1):
        idx = np.flatnonzero(clusters == k)
        if len(np.unique(t[idx])) == len(idx):  # one of each type: one person, as in PPN
            groups.append(list(idx))
        else:
            split = _split(t[idx], votes[idx], cfg.join_distance * side, cfg.seed_joints)
            groups.extend([int(idx[m]) for m in person] for person in split)

    people = []
    for group in groups:
        if len(group) < cfg.min_joints:
            continue
        joints = np.full((j, 3), np.nan, dtype=np.float64)
        joints[:, 2] = 0.0
        g = np.asarray(group)
        joints[t[g]] = np.stack([x[g], y[g], scores[g]], 1)
        people.append(Person(joints, float(joints[:, 2].sum() / j)))
    return sorted(people, key=lambda p: -p.score)
