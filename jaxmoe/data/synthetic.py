"""Seeded, unbounded synthetic time series for pretraining and tests.

Each series is a random combination (sum, or a product of a positive level with a
seasonal factor) of a few components:

- **seasonal**: one to three periods (common calendar periods such as 7, 12, 24, 52,
  168, or a random real period), each with one to three harmonics;
- **trend**: linear, piecewise linear, exponential-ish (normalised so it stays bounded)
  or logistic;
- **RBF bumps**: a few Gaussian bumps of random centre, width and height;
- **AR(p)**: p in 1..3 with coefficients built from characteristic roots inside the unit
  circle (so the process is stable), driven by Gaussian noise;
- **observation noise**: Gaussian or Student-t, at a random level relative to the signal,
  plus occasional spikes;

followed by a random scale (1e-2 .. 1e3) and offset, so per-window normalisation matters.

`synthetic_series(seed, index, length)` is a pure function of its arguments: the same
`(seed, index, length)` always returns the same float32 array, different indices give
independent series, and there is no upper bound on `index` (the stream is unbounded).
`SyntheticSource(seed, length, size)` exposes `size` of them as a random-access source
(`__len__`, `__getitem__`) for `grain.MapDataset.source`.
"""

from __future__ import annotations

import numpy as np
from scipy import signal as _signal

__all__ = ["synthetic_series", "SyntheticSource", "COMMON_PERIODS"]

# Periods that real data tend to have (hourly-daily, daily-weekly, monthly-yearly,
# weekly-yearly, half-hourly-daily, hourly-weekly, daily-yearly, quarterly).
COMMON_PERIODS = (4, 7, 12, 24, 48, 52, 96, 168, 365)


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


def _unit(x: np.ndarray) -> np.ndarray:
    """Scale to unit standard deviation (zero-variance inputs are returned unchanged)."""
    std = float(np.std(x))
    return x / std if std > 1e-12 else x


def _seasonal(rng: np.random.Generator, t: np.ndarray) -> np.ndarray:
    out = np.zeros_like(t)
    for _ in range(int(rng.integers(1, 4))):
        if rng.random() < 0.7:
            period = float(rng.choice(COMMON_PERIODS))
        else:
            period = rng.uniform(3.0, 300.0)
        amplitude = _log_uniform(rng, 0.2, 2.0)
        decay = rng.uniform(0.5, 2.0)
        for k in range(1, int(rng.integers(1, 4)) + 1):
            phase = rng.uniform(0.0, 2.0 * np.pi)
            out += amplitude / k**decay * np.sin(2.0 * np.pi * k * t / period + phase)
    return out


def _trend(rng: np.random.Generator, t: np.ndarray) -> np.ndarray:
    u = t / max(len(t) - 1, 1)  # in [0, 1]
    kind = rng.integers(0, 4)
    if kind == 0:  # linear
        return rng.normal(0.0, 2.0) * u
    if kind == 1:  # piecewise linear with up to four change points
        num_changes = int(rng.integers(1, 5))
        knots = np.sort(rng.uniform(0.0, 1.0, num_changes))
        slopes = rng.normal(0.0, 2.0, num_changes + 1)
        out = slopes[0] * u
        for knot, before, after in zip(knots, slopes[:-1], slopes[1:]):
            out += (after - before) * np.maximum(u - knot, 0.0)
        return out
    if kind == 2:  # exponential-ish, normalised to a bounded range
        rate = rng.uniform(-4.0, 4.0)
        if abs(rate) < 1e-3:
            rate = 1e-3
        return rng.normal(0.0, 2.0) * np.expm1(rate * u) / np.expm1(rate)
    # logistic step
    centre = rng.uniform(0.1, 0.9)
    width = _log_uniform(rng, 0.01, 0.2)
    return rng.normal(0.0, 2.0) / (1.0 + np.exp(-(u - centre) / width))


def _bumps(rng: np.random.Generator, t: np.ndarray) -> np.ndarray:
    n = len(t)
    out = np.zeros_like(t)
    for _ in range(int(rng.integers(1, 6))):
        centre = rng.uniform(0.0, n)
        width = _log_uniform(rng, 1.0, max(n / 4.0, 1.5))
        out += rng.normal(0.0, 1.5) * np.exp(-0.5 * ((t - centre) / width) ** 2)
    return out


def _ar_coefficients(rng: np.random.Generator, order: int) -> np.ndarray:
    """Denominator polynomial [1, -phi_1, ..., -phi_p] with all roots inside |z| < 0.97."""
    roots: list[complex] = []
    while len(roots) < order:
        radius = rng.uniform(0.1, 0.97)
        if order - len(roots) >= 2 and rng.random() < 0.5:
            angle = rng.uniform(0.05, np.pi - 0.05)
            roots += [radius * np.exp(1j * angle), radius * np.exp(-1j * angle)]
        else:
            roots.append(radius * (1.0 if rng.random() < 0.8 else -1.0))
    return np.real(np.poly(roots))


def _ar(rng: np.random.Generator, length: int) -> np.ndarray:
    order = int(rng.integers(1, 4))
    denominator = _ar_coefficients(rng, order)
    burn_in = 200
    shocks = rng.normal(0.0, 1.0, length + burn_in)
    return _signal.lfilter([1.0], denominator, shocks)[burn_in:]


def synthetic_series(seed: int, index: int, length: int) -> np.ndarray:
    """One synthetic series, a pure function of `(seed, index, length)`.

    Args:
      seed: non-negative stream seed.
      index: non-negative series index; any value is valid (the stream is unbounded).
      length: number of points (>= 1).

    Returns:
      float32 `[length]`, finite.
    """
    seed, index, length = int(seed), int(index), int(length)
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be non-negative, got seed={seed}, index={index}.")
    if length < 1:
        raise ValueError(f"length must be at least 1, got {length}.")
    rng = np.random.default_rng([seed, index])
    t = np.arange(length, dtype=np.float64)

    use = {
        "seasonal": rng.random() < 0.75,
        "trend": rng.random() < 0.6,
        "bumps": rng.random() < 0.3,
        "ar": rng.random() < 0.55,
    }
    if not any(use.values()):
        use[str(rng.choice(list(use)))] = True

    seasonal = _seasonal(rng, t) if use["seasonal"] else np.zeros_like(t)
    trend = _trend(rng, t) if use["trend"] else np.zeros_like(t)
    bumps = _bumps(rng, t) if use["bumps"] else np.zeros_like(t)
    ar = _unit(_ar(rng, length)) * _log_uniform(rng, 0.1, 1.5) if use["ar"] else np.zeros_like(t)

    if use["seasonal"] and rng.random() < 0.3:
        # Multiplicative: a positive level (with trend) modulated by the seasonal factor.
        level = 3.0 + trend - min(float(trend.min()), 0.0)
        depth = rng.uniform(0.1, 0.6)
        factor = 1.0 + depth * seasonal / max(float(np.abs(seasonal).max()), 1e-6)
        y = level * factor + bumps + ar
    else:
        y = seasonal + trend + bumps + ar

    # Observation noise relative to the signal's spread.
    spread = max(float(np.std(y)), 0.1)
    noise_level = _log_uniform(rng, 0.005, 0.4) * spread
    if rng.random() < 0.25:
        noise = rng.standard_t(float(rng.uniform(3.0, 10.0)), length)
    else:
        noise = rng.normal(0.0, 1.0, length)
    y = y + noise_level * noise
    if rng.random() < 0.1:  # occasional spikes
        spikes = rng.random(length) < 0.005
        y = y + spikes * rng.normal(0.0, 5.0 * spread, length)

    scale = _log_uniform(rng, 1e-2, 1e3)
    offset = rng.normal(0.0, 3.0)
    return ((y + offset) * scale).astype(np.float32)


class SyntheticSource:
    """Random-access source of `size` synthetic series of `length` points.

    Item `i` is `synthetic_series(seed, i, length)`. Works with `grain.MapDataset.source`.
    """

    def __init__(self, seed: int, length: int, size: int):
        if int(size) < 1:
            raise ValueError(f"size must be at least 1, got {size}.")
        if int(length) < 1:
            raise ValueError(f"length must be at least 1, got {length}.")
        if int(seed) < 0:
            raise ValueError(f"seed must be non-negative, got {seed}.")
        self.seed = int(seed)
        self.length = int(length)
        self.size = int(size)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> np.ndarray:
        index = int(index)
        if index < 0:
            index += self.size
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} is out of range for a SyntheticSource of size {self.size}.")
        return synthetic_series(self.seed, index, self.length)

    def __repr__(self) -> str:
        return f"SyntheticSource(seed={self.seed}, length={self.length}, size={self.size})"
