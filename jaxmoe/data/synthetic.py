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

Further generators (same pure-function contract, see the second half of this file):
`kernelsynth_series` (Gaussian-process paths under random composite kernels),
`random_walk_series`, `arima_series`, `seasonal_trend_series` (multiplicative season),
`synthetic2_series` (a weighted mixture of all of them plus level shifts, spikes and
missing runs) and `tsmixup_series` (convex mixes of real series).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import signal as _signal

__all__ = [
    "synthetic_series", "SyntheticSource", "COMMON_PERIODS",
    "kernelsynth_series", "random_walk_series", "arima_series", "seasonal_trend_series", "synthetic2_series",
    "tsmixup_series", "add_level_shifts", "add_spikes", "add_missing_runs", "SYNTHETIC_GENERATORS",
    "SYNTHETIC2_WEIGHTS", "KERNEL_PERIODS",
]

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


# =======================================================================================
# More generators: KernelSynth, random walks, ARIMA paths, multiplicative seasonality,
# perturbations (level shifts, spikes, missing runs), a weighted mixture, and TSMixup.
#
# Every generator is a pure function `fn(seed, index, length) -> float32 [length]` like
# `synthetic_series` (missing runs, when present, are NaN). The generator above is left
# exactly as it was, so the `synthetic` source keeps its outputs.

# Periods (in steps) of common sampling frequencies: quarterly, weekly-in-days, monthly,
# hourly-in-a-day, weekly, daily-in-a-year, half-hourly, hourly-in-a-week, ...
KERNEL_PERIODS = (4, 5, 6, 7, 10, 12, 14, 24, 26, 30, 48, 52, 60, 96, 168, 336, 365, 672, 730)
KERNELSYNTH_FEATURES = 64  # random Fourier features per stationary kernel
_PERIODIC_HARMONICS = 8


def _kernel_bank(length: int) -> list[tuple[str, tuple]]:
    """The kernel bank for a series of ``length`` steps on the grid x in [0, 1]."""
    periods = [p for p in KERNEL_PERIODS if p <= length]
    bank = [("linear", (s,)) for s in (0.0, 1.0, 10.0)]
    bank += [("rbf", (ls,)) for ls in (0.1, 1.0, 10.0)]
    bank += [("periodic", (p / length,)) for p in periods]
    bank += [("rq", (a,)) for a in (0.1, 1.0, 10.0)]
    bank += [("white", (w,)) for w in (0.1, 1.0)]
    bank += [("constant", (1.0,))]
    return bank


def _fourier(rng: np.random.Generator, x: np.ndarray, omega: np.ndarray) -> np.ndarray:
    """Random Fourier features: ``sqrt(2/J) sum_j w_j cos(omega_j x + phase_j)``, a sample of
    the stationary GP whose spectral density ``omega`` was drawn from (unit variance)."""
    phase = rng.uniform(0.0, 2.0 * np.pi, len(omega))
    w = rng.normal(0.0, 1.0, len(omega))
    return np.sqrt(2.0 / len(omega)) * (np.cos(np.outer(x, omega) + phase) @ w)


def _kernel_path(rng: np.random.Generator, kind: str, params: tuple, x: np.ndarray) -> np.ndarray:
    """One zero-mean path whose covariance on ``x`` is the bank kernel's:

    - linear ``sigma0^2 + x x'``: ``sigma0 a + b x``;
    - RBF (length scale l): random Fourier features with ``omega ~ N(0, 1/l^2)``;
    - rational quadratic ``(1 + d^2 / 2a)^-a`` (length scale 1): features with ``omega ~
      N(0, tau)``, ``tau ~ Gamma(a, rate a)`` (the RQ kernel is that mixture of RBFs);
    - periodic ``exp(-2 sin^2(pi d / p))`` (length scale 1): its exact harmonic expansion,
      harmonic ``k`` with variance ``I_k(1) / e`` (modified Bessel), truncated at 8;
    - white noise, constant.
    """
    n = len(x)
    if kind == "linear":
        return params[0] * rng.normal() + rng.normal() * x
    if kind == "rbf":
        return _fourier(rng, x, rng.normal(0.0, 1.0 / params[0], KERNELSYNTH_FEATURES))
    if kind == "rq":  # a Gamma(a, rate a) mixture over the RBF's precision 1/l^2
        precision = rng.gamma(params[0], 1.0 / params[0], KERNELSYNTH_FEATURES)
        return _fourier(rng, x, rng.normal(0.0, 1.0, KERNELSYNTH_FEATURES) * np.sqrt(precision))
    if kind == "periodic":
        from scipy.special import ive

        k = np.arange(_PERIODIC_HARMONICS)
        var = ive(k, 1.0) * np.where(k == 0, 1.0, 2.0)  # exp(-1) I_k(1); +-k pairs for k > 0
        arg = 2.0 * np.pi * np.outer(x, k) / params[0]
        a, b = rng.normal(0.0, 1.0, (2, len(k)))
        return (np.cos(arg) * a + np.sin(arg) * b) @ np.sqrt(var / var.sum())
    if kind == "white":
        return np.sqrt(params[0]) * rng.normal(0.0, 1.0, n)
    if kind == "constant":
        return np.full(n, np.sqrt(params[0]) * rng.normal())
    raise ValueError(f"unknown kernel {kind!r}")


def kernelsynth_series(seed: int, index: int, length: int, *, max_kernels: int = 5) -> np.ndarray:
    """KernelSynth (the synthetic data of Chronos): a Gaussian-process path under a random
    composite kernel.

    Draws 1..``max_kernels`` kernels (with replacement) from a bank of linear, RBF, periodic
    (periods of common frequencies: 4, 7, 12, 24, 52, 365, ... steps), rational quadratic,
    white-noise and constant kernels, and combines them left to right with random ``+`` or
    ``*`` on the grid ``x = linspace(0, 1, length)``. Each kernel's path is sampled directly
    (random Fourier features or an exact harmonic expansion, :func:`_kernel_path`; O(length)
    instead of a Cholesky factorisation), and the paths are added or multiplied: a sum of
    independent paths has exactly the summed kernel as covariance, a product has the product
    kernel as covariance (its second moments match; the path itself is not Gaussian). Pure
    function of ``(seed, index, length)``; float32 ``[length]``, finite.
    """
    seed, index, length = _check_args(seed, index, length)
    rng = np.random.default_rng([seed, index, 101])
    x = np.linspace(0.0, 1.0, length)
    bank = _kernel_bank(length)
    chosen = [bank[int(i)] for i in rng.integers(0, len(bank), int(rng.integers(1, max_kernels + 1)))]
    path = _kernel_path(rng, *chosen[0], x)
    for kernel in chosen[1:]:
        other = _kernel_path(rng, *kernel, x)
        path = path + other if rng.random() < 0.5 else path * other
    path = np.nan_to_num(path, nan=0.0, posinf=0.0, neginf=0.0)
    return path.astype(np.float32)


def _check_args(seed, index, length) -> tuple[int, int, int]:
    seed, index, length = int(seed), int(index), int(length)
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be non-negative, got seed={seed}, index={index}.")
    if length < 1:
        raise ValueError(f"length must be at least 1, got {length}.")
    return seed, index, length


def _shocks(rng: np.random.Generator, n: int) -> np.ndarray:
    """Gaussian or heavy-tailed (Student-t) unit shocks."""
    if rng.random() < 0.3:
        df = float(rng.uniform(2.5, 8.0))
        return rng.standard_t(df, n) / np.sqrt(df / (df - 2.0))
    return rng.normal(0.0, 1.0, n)


def random_walk_series(seed: int, index: int, length: int) -> np.ndarray:
    """A random walk: cumulated (Gaussian or Student-t) steps, often with a drift, sometimes
    with volatility clustering (GARCH(1,1)-like) or on a log scale (a price with returns).

    The best forecast of such a series is about its last value (plus the drift): a model
    must learn persistence, not mean reversion. Pure function; float32 `[length]`, finite.
    """
    seed, index, length = _check_args(seed, index, length)
    rng = np.random.default_rng([seed, index, 102])
    steps = _shocks(rng, length)
    if rng.random() < 0.3:  # volatility clustering
        omega, alpha = 0.05, float(rng.uniform(0.05, 0.2))
        beta = float(rng.uniform(0.6, 0.94 - alpha))
        variance, scaled = omega / (1.0 - alpha - beta), np.empty(length)
        for t in range(length):
            scaled[t] = np.sqrt(variance) * steps[t]
            variance = omega + alpha * scaled[t] ** 2 + beta * variance
        steps = scaled / max(float(np.std(scaled)), 1e-12)
    drift = rng.normal(0.0, 0.15) if rng.random() < 0.6 else 0.0
    walk = np.cumsum(steps + drift)
    if rng.random() < 0.3:  # prices: a geometric walk with small daily returns
        volatility = _log_uniform(rng, 0.003, 0.03)
        y = _log_uniform(rng, 1.0, 1e4) * np.exp(volatility * walk)
    else:
        y = walk * _log_uniform(rng, 0.01, 100.0) + rng.normal(0.0, 100.0)
    return np.nan_to_num(y, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)


def _ma_coefficients(rng: np.random.Generator, order: int) -> np.ndarray:
    """Numerator polynomial [1, theta_1, ..., theta_q] with roots inside the unit circle
    (an invertible MA part)."""
    if order == 0:
        return np.ones(1)
    return _ar_coefficients(rng, order)


def arima_series(seed: int, index: int, length: int) -> np.ndarray:
    """An ARIMA(p, d, q) path, sometimes with a seasonal AR factor (period from common
    frequencies), p, q in 0..3, d in 0..2 (mostly 0 or 1); stable AR and invertible MA
    polynomials from random roots. Pure function; float32 `[length]`, finite.
    """
    seed, index, length = _check_args(seed, index, length)
    rng = np.random.default_rng([seed, index, 103])
    p, q = int(rng.integers(0, 4)), int(rng.integers(0, 4))
    d = int(rng.choice([0, 1, 2], p=[0.45, 0.45, 0.1]))
    denominator = _ar_coefficients(rng, p) if p else np.ones(1)
    periods = [m for m in COMMON_PERIODS if 2 * m <= length]
    if periods and rng.random() < 0.35:
        m = int(rng.choice(periods))
        seasonal = np.zeros(m + 1)
        seasonal[0], seasonal[m] = 1.0, -float(rng.uniform(0.3, 0.95))
        denominator = np.polymul(denominator, seasonal)
    numerator = _ma_coefficients(rng, q)
    burn_in = 300 + 3 * (len(denominator) - 1)
    shocks = _shocks(rng, length + burn_in)
    y = _signal.lfilter(numerator, denominator, shocks)[burn_in:]
    y = y / max(float(np.std(y)), 1e-12)
    for _ in range(d):
        y = np.cumsum(y + (rng.normal(0.0, 0.05) if rng.random() < 0.5 else 0.0))
    y = y * _log_uniform(rng, 0.01, 100.0) + rng.normal(0.0, 50.0)
    return np.nan_to_num(y, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)


def seasonal_trend_series(seed: int, index: int, length: int) -> np.ndarray:
    """A positive trend modulated by a multiplicative season whose amplitude grows with the
    level (the AirPassengers shape), with multiplicative noise. Pure function; float32, finite."""
    seed, index, length = _check_args(seed, index, length)
    rng = np.random.default_rng([seed, index, 104])
    t = np.arange(length, dtype=np.float64)
    u = t / max(length - 1, 1)
    growth = rng.uniform(0.2, 3.0)
    if rng.random() < 0.5:
        level = np.exp(growth * u)
    else:
        level = 1.0 + growth * u
    if rng.random() < 0.3:  # a damped or reversing trend
        level = level + rng.normal(0.0, 0.5) * u**2
    level = np.maximum(level, 0.05)
    periods = [m for m in COMMON_PERIODS if 2 * m <= length] or [max(2, length // 2)]
    period = float(rng.choice(periods))
    season = np.zeros(length)
    for k in range(1, int(rng.integers(1, 4)) + 1):
        season += rng.normal(0.0, 1.0 / k) * np.sin(2 * np.pi * k * t / period + rng.uniform(0, 2 * np.pi))
    season = season / max(float(np.abs(season).max()), 1e-9)
    depth = rng.uniform(0.1, 0.5)
    noise = 1.0 + _log_uniform(rng, 0.005, 0.08) * rng.normal(0.0, 1.0, length)
    y = level * (1.0 + depth * season) * noise * _log_uniform(rng, 1.0, 1e4)
    return y.astype(np.float32)


def add_level_shifts(rng: np.random.Generator, y: np.ndarray, max_shifts: int = 3) -> np.ndarray:
    """Add 1..max_shifts permanent jumps of about one standard deviation at random steps."""
    y = np.asarray(y, dtype=np.float64).copy()
    spread = max(float(np.nanstd(y)), 1e-6)
    for _ in range(int(rng.integers(1, max_shifts + 1))):
        at = int(rng.integers(1, max(len(y), 2)))
        y[at:] += rng.normal(0.0, 1.0) * spread
    return y


def add_spikes(rng: np.random.Generator, y: np.ndarray, rate: float | None = None) -> np.ndarray:
    """Add isolated outliers (0.2%..2% of the steps) of 3..8 standard deviations."""
    y = np.asarray(y, dtype=np.float64).copy()
    spread = max(float(np.nanstd(y)), 1e-6)
    rate = rng.uniform(0.002, 0.02) if rate is None else rate
    where = rng.random(len(y)) < rate
    y[where] += rng.choice([-1.0, 1.0], int(where.sum())) * rng.uniform(3.0, 8.0, int(where.sum())) * spread
    return y


def add_missing_runs(rng: np.random.Generator, y: np.ndarray, max_runs: int = 3) -> np.ndarray:
    """Set 1..max_runs runs (each up to 10% of the length) to NaN."""
    y = np.asarray(y, dtype=np.float64).copy()
    n = len(y)
    for _ in range(int(rng.integers(1, max_runs + 1))):
        width = int(rng.integers(1, max(2, n // 10) + 1))
        start = int(rng.integers(0, max(n - width, 1)))
        y[start:start + width] = np.nan
    return y


SYNTHETIC_GENERATORS = {
    "synthetic": synthetic_series,
    "kernelsynth": kernelsynth_series,
    "randomwalk": random_walk_series,
    "arima": arima_series,
    "seasonal_trend": seasonal_trend_series,
}
SYNTHETIC2_WEIGHTS = {"kernelsynth": 0.3, "randomwalk": 0.2, "arima": 0.2, "seasonal_trend": 0.15, "synthetic": 0.15}


def synthetic2_series(seed: int, index: int, length: int, weights: dict[str, float] | None = None) -> np.ndarray:
    """A mixture of the generators (`SYNTHETIC2_WEIGHTS` by default), then perturbations:
    level shifts (15% of series), spikes (15%), missing runs as NaN (10%).

    Pure function of its arguments; float32 `[length]` (NaN only inside missing runs).
    """
    seed, index, length = _check_args(seed, index, length)
    weights = dict(SYNTHETIC2_WEIGHTS if weights is None else weights)
    unknown = [k for k in weights if k not in SYNTHETIC_GENERATORS]
    if unknown or not weights:
        raise ValueError(f"unknown generator(s) {unknown}; choose from: {', '.join(SYNTHETIC_GENERATORS)}.")
    names = list(weights)
    p = np.asarray([float(weights[k]) for k in names])
    rng = np.random.default_rng([seed, index, 105])
    name = names[int(rng.choice(len(names), p=p / p.sum()))]
    y = SYNTHETIC_GENERATORS[name](seed, index, length).astype(np.float64)
    if rng.random() < 0.15:
        y = add_level_shifts(rng, y)
    if rng.random() < 0.15:
        y = add_spikes(rng, y)
    if rng.random() < 0.10 and length >= 8:
        y = add_missing_runs(rng, y)
    return y.astype(np.float32)


def tsmixup_series(pool: Sequence[np.ndarray], seed: int, index: int, length: int, *,
                   groups: Sequence[int] | None = None, max_components: int = 3,
                   alpha: float = 1.5) -> np.ndarray:
    """TSMixup: a convex combination of 1..`max_components` mean-scaled real series.

    Components come from different groups (datasets) when `groups` is given. From each
    chosen series a random segment of up to `length` points is cut and divided by its mean
    absolute value; segments are aligned at their start, truncated to the shortest and
    mixed with Dirichlet(`alpha`) weights. A mix shorter than `length` is right-padded with
    NaN. Pure function of `(pool, seed, index, length)`; float32 `[length]`.
    """
    seed, index, length = _check_args(seed, index, length)
    if not len(pool):
        raise ValueError("tsmixup needs a non-empty pool of series.")
    rng = np.random.default_rng([seed, index, 106])
    groups = np.arange(len(pool)) if groups is None else np.asarray(groups)
    labels = np.unique(groups)
    k = int(min(rng.integers(1, max_components + 1), len(labels)))
    picked_groups = rng.choice(labels, size=k, replace=False)
    segments = []
    for g in picked_groups:
        members = np.flatnonzero(groups == g)
        s = np.asarray(pool[int(members[int(rng.integers(0, len(members)))])], dtype=np.float64)
        if len(s) > length:
            start = int(rng.integers(0, len(s) - length + 1))
            s = s[start:start + length]
        scale = float(np.nanmean(np.abs(s))) if np.isfinite(s).any() else 1.0
        segments.append(s / (scale if scale > 0 and np.isfinite(scale) else 1.0))
    shortest = min(len(s) for s in segments)
    weights = rng.dirichlet(np.full(k, float(alpha)))
    mix = sum(w * s[:shortest] for w, s in zip(weights, segments))
    out = np.full(length, np.nan)
    out[:shortest] = mix
    return out.astype(np.float32)
