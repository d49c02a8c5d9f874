"""Temporal smoothing of joints across video frames: the One Euro filter (Casiez et al., CHI 2012).

Each coordinate is low-pass filtered with a cut-off frequency that rises with its speed: a joint
that holds still is smoothed strongly (no jitter), one that moves fast follows with little lag.
With ``min_cutoff`` f_c and ``beta``, at time step dt the cut-off is ``f_c + beta * |dx/dt|`` (the
speed itself low-passed at ``d_cutoff``), and the filtered value is the exponential average
``x_hat = a * x + (1 - a) * x_hat_prev`` with ``a = 1 / (1 + 1 / (2 pi f dt))``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def _alpha(cutoff: np.ndarray | float, dt: float) -> np.ndarray | float:
    tau = 1.0 / (2.0 * math.pi * np.asarray(cutoff))
    return 1.0 / (1.0 + tau / dt)


@dataclass(frozen=True)
class OneEuroSettings:
    """Cut-offs in Hz; ``beta`` per unit of the coordinates' speed.

    The defaults are for coordinates in units of the frame's long side (so that they hold at any
    resolution): a joint that jitters by 0.5% of the frame is steadied to a third of that, one that
    crosses half the frame in a second lags by about one frame.
    """

    min_cutoff: float = 1.0
    beta: float = 5.0
    d_cutoff: float = 1.0


class OneEuroFilter:
    """Smooths an array of coordinates (any shape, e.g. (J, 2) joints) sampled at increasing times."""

    def __init__(self, settings: OneEuroSettings = OneEuroSettings()) -> None:
        if settings.min_cutoff <= 0 or settings.d_cutoff <= 0 or settings.beta < 0:
            raise ValueError(f"One Euro cut-offs must be positive and beta not negative, got {settings}")
        self.settings = settings
        self._x: np.ndarray | None = None
        self._dx: np.ndarray | None = None
        self._t: float | None = None

    def __call__(self, x: np.ndarray, t: float) -> np.ndarray:
        """The filtered value of ``x`` observed at ``t`` seconds. Non-finite entries pass through and
        restart their coordinate's filter."""
        x = np.asarray(x, dtype=np.float64)
        if self._x is None or self._t is None or t <= self._t:
            self._reset(x, t)
            return x.copy()
        s = self.settings
        dt = t - self._t
        dx = (x - self._x) / dt
        dx_hat = _alpha(s.d_cutoff, dt) * dx + (1 - _alpha(s.d_cutoff, dt)) * self._dx
        cutoff = s.min_cutoff + s.beta * np.abs(dx_hat)
        a = _alpha(cutoff, dt)
        x_hat = a * x + (1 - a) * self._x
        fresh = ~np.isfinite(self._x) | ~np.isfinite(x)  # a joint that was or is missing starts over
        x_hat = np.where(fresh, x, x_hat)
        self._x, self._dx, self._t = x_hat, np.where(fresh, 0.0, dx_hat), t
        return x_hat.copy()

    def _reset(self, x: np.ndarray, t: float) -> None:
        self._x, self._dx, self._t = x.copy(), np.zeros_like(x), t
