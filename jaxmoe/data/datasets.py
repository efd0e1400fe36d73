"""Small in-memory datasets that need no download (the ``windows`` and ``classification``
data kinds of :mod:`jaxmoe.data.pipelines`; batched by :class:`jaxmoe.data.arrays.ArrayPipeline`).

* :func:`digits_sequences`: scikit-learn's 8x8 handwritten digits (1797 images shipped with
  the package) read pixel by pixel: ``tokens`` int32 ``[N, 64]`` with pixel values 0..16
  (17 ids), ``labels`` int32 ``[N]``; a fixed, seeded train/test split.
* :func:`forecast_split`: a multivariate series ``[time, variates]`` (default: statsmodels
  ``macrodata``, 203 quarters x 12 variates) z-normalised per variate with the statistics
  of the training part, cut chronologically into lookback/horizon windows: the training
  windows lie entirely before the split point; every test window's targets lie after it
  (its lookback may reach back into the training part).
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from jaxmoe.errors import DataError

__all__ = [
    "ForecastSplit",
    "digits_sequences",
    "load_forecast_series",
    "forecast_windows",
    "forecast_split",
    "cached_forecast_split",
    "cached_digits",
]


# --------------------------------------------------------------------------- digits


def digits_sequences(test_fraction: float = 0.25, seed: int = 0) -> dict:
    """scikit-learn digits as pixel sequences with a fixed seeded split.

    Returns:
      ``{"train": {"tokens": int32 [n, 64], "labels": int32 [n]}, "test": {...},
      "vocab_size": 17, "num_classes": 10}``; pixels row by row, values 0..16.
    """
    from sklearn.datasets import load_digits

    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"the digits test fraction must be in (0, 1), got {test_fraction}.")
    d = load_digits()
    tokens = d.data.astype(np.int32)
    labels = d.target.astype(np.int32)
    order = np.random.default_rng([seed, 0xD1]).permutation(len(labels))
    n_test = int(round(len(labels) * test_fraction))
    test, train = order[:n_test], order[n_test:]
    return {"train": {"tokens": tokens[train], "labels": labels[train]},
            "test": {"tokens": tokens[test], "labels": labels[test]},
            "vocab_size": 17, "num_classes": 10}


# ----------------------------------------------------------------------- forecasting


@dataclasses.dataclass(frozen=True)
class ForecastSplit:
    """Chronological windows of a z-normalised multivariate series (see module doc).

    ``train_x [n, lookback, C]``, ``train_y [n, horizon, C]``, ``test_x``, ``test_y`` alike;
    ``mean``/``std`` ``[C]`` are the training-part statistics used to normalise;
    ``series`` the normalised ``[time, C]`` series; ``split`` the first test time index.
    """

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    series: np.ndarray
    split: int
    columns: tuple[str, ...]


def load_forecast_series(source: str = "macrodata") -> tuple[np.ndarray, tuple[str, ...]]:
    """``[time, variates]`` float32 and column names.

    Sources: ``"macrodata"`` (statsmodels, 12 variates), ``"macrodata:col1,col2"`` (a subset),
    ``"csv:PATH"`` (every numeric column of a CSV file; rows with missing values dropped).
    """
    from jaxmoe.data.real_series import MULTIVARIATE_COLUMNS, load_multivariate

    kind, _, rest = str(source).partition(":")
    if kind == "macrodata":
        cols = tuple(c for c in rest.split(",") if c) or MULTIVARIATE_COLUMNS["macrodata"]
        return load_multivariate("macrodata", cols), tuple(cols)
    if kind == "csv" and rest:
        import pandas as pd

        try:
            frame = pd.read_csv(rest)
        except FileNotFoundError:
            raise DataError(f"CSV file '{rest}' does not exist.") from None
        except Exception as e:  # parser errors
            raise DataError(f"CSV file '{rest}' could not be read: {str(e).splitlines()[0]}.") from None
        frame = frame.select_dtypes("number").dropna()
        if frame.shape[1] == 0 or frame.shape[0] == 0:
            raise DataError(f"CSV file '{rest}' has no numeric columns without missing values.")
        return frame.to_numpy(np.float32), tuple(map(str, frame.columns))
    raise DataError(f"data source {source!r} is not a multivariate series; use macrodata, macrodata:COL1,COL2 "
                    "or csv:PATH.")


def forecast_windows(series: np.ndarray, lookback: int, horizon: int, first_target: int, end: int,
                     stride: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Windows whose targets ``[t, t + horizon)`` start at ``t >= max(first_target, lookback)``
    and end by ``end``: ``x [n, lookback, C]`` (``series[t - lookback:t]``), ``y [n, horizon, C]``."""
    starts = np.arange(max(first_target, lookback), end - horizon + 1, stride)
    if len(starts) == 0:
        c = series.shape[1]
        return np.zeros((0, lookback, c), np.float32), np.zeros((0, horizon, c), np.float32)
    x = np.stack([series[t - lookback:t] for t in starts]).astype(np.float32)
    y = np.stack([series[t:t + horizon] for t in starts]).astype(np.float32)
    return x, y


def forecast_split(source: str = "macrodata", *, lookback: int, horizon: int, test_fraction: float = 0.2,
                   stride: int = 1) -> ForecastSplit:
    """Load ``source``, z-normalise with training statistics, cut train/test windows."""
    raw, cols = load_forecast_series(source)
    t = raw.shape[0]
    if not 0.0 <= test_fraction < 1.0:
        raise DataError(f"the test fraction must be in [0, 1), got {test_fraction}.")
    split = t - int(round(t * test_fraction))
    if split < lookback + horizon:
        raise DataError(f"the training part of {source!r} has {split} time steps, fewer than lookback + horizon = "
                        f"{lookback + horizon}; lower model.lookback or model.horizon.")
    mean = raw[:split].mean(0)
    std = raw[:split].std(0) + 1e-8
    series = ((raw - mean) / std).astype(np.float32)
    train_x, train_y = forecast_windows(series, lookback, horizon, 0, split, stride)
    test_x, test_y = forecast_windows(series, lookback, horizon, split, t, 1)
    return ForecastSplit(train_x, train_y, test_x, test_y, mean.astype(np.float32), std.astype(np.float32),
                         series, split, cols)


@functools.lru_cache(maxsize=8)
def cached_forecast_split(source: str, lookback: int, horizon: int, test_fraction: float, stride: int = 1):
    return forecast_split(source, lookback=lookback, horizon=horizon, test_fraction=test_fraction, stride=stride)


@functools.lru_cache(maxsize=4)
def cached_digits(test_fraction: float, seed: int = 0):
    return digits_sequences(test_fraction, seed)
