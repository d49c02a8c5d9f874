"""The One Euro filter: steady joints stop jittering, moving joints follow with little lag."""

from __future__ import annotations

import numpy as np
import pytest

from mula_cli.inference.smoothing import OneEuroFilter, OneEuroSettings

FPS = 30.0
PIXELS = OneEuroSettings(min_cutoff=1.0, beta=0.01)  # for coordinates in pixels


def _run(signal: np.ndarray, settings: OneEuroSettings = PIXELS) -> np.ndarray:
    smooth = OneEuroFilter(settings)
    return np.stack([smooth(x, i / FPS) for i, x in enumerate(signal)])


def test_jitter_of_a_joint_that_holds_still_is_removed() -> None:
    rng = np.random.default_rng(0)
    noisy = np.array([100.0, 50.0]) + rng.normal(0, 3.0, (300, 2))
    smoothed = _run(noisy)
    assert smoothed[30:].std(axis=0).max() < 0.45 * noisy[30:].std(axis=0).min()
    assert np.abs(smoothed[30:].mean(axis=0) - [100.0, 50.0]).max() < 1.0


def test_a_fast_joint_follows_with_little_lag() -> None:
    t = np.arange(120) / FPS
    moving = np.stack([100 + 300 * t, 80 + 0 * t], axis=1)  # 300 px/s to the right
    smoothed = _run(moving)
    lag = moving[30:, 0] - smoothed[30:, 0]
    assert lag.max() < 10.0  # about a frame of motion
    without_speed_term = _run(moving, OneEuroSettings(min_cutoff=1.0, beta=0.0))
    assert (moving[30:, 0] - without_speed_term[30:, 0]).max() > 3 * lag.max()


def test_constant_input_missing_joints_and_time_going_back() -> None:
    smooth = OneEuroFilter()
    joints = np.array([[10.0, 20.0], [np.nan, np.nan], [5.0, 5.0]])
    for i in range(5):
        out = smooth(joints, i / FPS)
    assert np.array_equal(out[[0, 2]], joints[[0, 2]]) and np.isnan(out[1]).all()
    back = smooth(joints + 40.0, 0.0)  # a new clip: time restarts, so does the filter
    assert np.array_equal(back[[0, 2]], joints[[0, 2]] + 40.0)
    reappears = smooth(np.array([[10.0, 20.0], [7.0, 8.0], [5.0, 5.0]]), 1 / FPS)
    assert np.array_equal(reappears[1], [7.0, 8.0])  # a joint coming back is not dragged from NaN


def test_invalid_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        OneEuroFilter(OneEuroSettings(min_cutoff=0.0))
