"""Heatmap encoding/decoding and mirror swaps against hand-computed references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from mula_cli.codecs.heatmaps import (
    decode_argmax,
    decode_official,
    encode_heatmaps,
    flip_heatmaps,
    flip_joints,
    flip_labels,
    flip_logits,
    gaussian_blur,
)
from mula_cli.utils.manifests import load_manifest


def _reference_map(center, stride, grid, sigma):
    """The recipe written out point by point: Gaussian at cell centres, cut below exp(-4.6052)."""
    out = np.zeros((grid, grid))
    start = stride / 2.0 - 0.5
    for gy in range(grid):
        for gx in range(grid):
            x, y = start + gx * stride, start + gy * stride
            e = ((x - center[0]) ** 2 + (y - center[1]) ** 2) / 2.0 / sigma / sigma
            if e <= 4.6052:
                out[gy, gx] = min(1.0, math.exp(-e))
    return out


@pytest.mark.parametrize("stride,grid", [(4, 16), (8, 8)])
def test_encoding_matches_the_recipe_point_by_point(stride: int, grid: int) -> None:
    joints = np.array([[10.0, 20.0], [33.3, 5.5], [-30.0, 12.0], [60.0, 60.0]])
    labelled = np.array([True, True, True, False])
    maps = encode_heatmaps(joints, labelled, (grid, grid), stride, sigma=7.0).numpy()
    for j in range(3):
        np.testing.assert_allclose(maps[j], _reference_map(joints[j], stride, grid, 7.0), atol=1e-6)
    assert maps[3].max() == 0.0
    np.testing.assert_allclose(maps[4], 1.0 - maps[:4].max(0))


def test_batched_encoding_equals_one_sample_at_a_time() -> None:
    rng = np.random.default_rng(0)
    joints = torch.from_numpy(rng.uniform(-10, 140, (3, 5, 2)))
    labelled = torch.from_numpy(rng.random((3, 5)) > 0.3)
    batch = encode_heatmaps(joints, labelled, (32, 32), 4)
    assert batch.shape == (3, 6, 32, 32)
    for b in range(3):
        torch.testing.assert_close(batch[b], encode_heatmaps(joints[b], labelled[b], (32, 32), 4))


def test_argmax_decoding_returns_cell_centres_in_input_pixels() -> None:
    maps = torch.zeros(1, 2, 64, 64)
    maps[0, 0, 10, 20] = 1.0
    maps[0, 1, 63, 0] = 0.5
    coords, scores = decode_argmax(maps, 4)
    assert coords[0, 0].tolist() == [1.5 + 20 * 4, 1.5 + 10 * 4]
    assert coords[0, 1].tolist() == [1.5, 1.5 + 63 * 4]
    assert scores[0].tolist() == [1.0, 0.5]


def test_blur_matches_scipy_gaussian_filter() -> None:
    rng = np.random.default_rng(0)
    maps = rng.random((1, 2, 40, 33)).astype(np.float64)
    ours = gaussian_blur(torch.from_numpy(maps), 3.0).numpy()
    for j in range(2):
        np.testing.assert_allclose(ours[0, j], gaussian_filter(maps[0, j], sigma=3.0), atol=1e-10)


def test_official_decoding_recovers_encoded_joints() -> None:
    joints = np.array([[100.0, 60.0], [31.0, 200.0]])
    maps = encode_heatmaps(joints, np.array([True, True]), (64, 64), 4)
    coords, _ = decode_official(maps[None, :2], (256, 256))
    assert (coords[0] - torch.from_numpy(joints).float()).abs().max() <= 1.0


def test_mirror_helpers_use_the_manifest_pairs() -> None:
    m = load_manifest("lip")
    joints = np.arange(32, dtype=np.float64).reshape(16, 2)
    flipped = flip_joints(joints, 100, m.joint_flip_index())
    r_ankle, l_ankle = m.joints.index("R-ankle"), m.joints.index("L-ankle")
    assert flipped[r_ankle].tolist() == [99 - joints[l_ankle, 0], joints[l_ankle, 1]]
    np.testing.assert_array_equal(flip_joints(flipped, 100, m.joint_flip_index()), joints)

    labels = np.array([[0, 14, 15, 16], [17, 18, 19, 5]], np.uint8)
    out = flip_labels(labels, m.class_flip_lut())
    assert out.tolist() == [[17, 14, 15, 0], [5, 18, 19, 16]]  # mirrored, then 14<->15 etc. swapped

    maps = torch.rand(2, 17, 8, 8)
    back = flip_heatmaps(flip_heatmaps(maps, m.joint_flip_index()), m.joint_flip_index())
    torch.testing.assert_close(back, maps)
    assert torch.equal(flip_heatmaps(maps, m.joint_flip_index())[:, 16], maps[:, 16].flip(-1))
    logits = torch.rand(1, 20, 4, 4)
    swapped = flip_logits(logits, m.class_flip_lut())
    assert torch.equal(swapped[:, 14], logits[:, 15].flip(-1))
    assert torch.equal(swapped[:, 0], logits[:, 0].flip(-1))
