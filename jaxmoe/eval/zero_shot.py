"""Zero-shot evaluation on real series: rolling origins, scaled metrics, classical baselines.

Protocol (what the figures mean):

- **Rolling origins.** With horizon H and k origins (default 3), origin j = 0..k-1 forecasts
  the H points ending `j * H` points before the series' end (the last H points, then the H
  before them, ...). The context is everything before the origin, capped at
  `context_length` points; forecasters get it left-padded with NaN to `context_length`
  (baselines get the observed part). Origins whose context would hold fewer than
  `MIN_CONTEXT` observed points are dropped.
- **MASE** = MAE of the forecast / in-sample MAE of the seasonal naive forecast on that
  origin's context (lag m = the series' season length, lag 1 when m = 1 or the context is
  not longer than one season). **sMAPE** = mean of 200 |y - f| / (|y| + |f|) (0 where both
  are 0), in percent. **MSE** on targets z-normalised with the context's mean and std.
- **Probabilistic forecasts** (quantiles or samples): **CRPS**, estimated from samples
  (E|X - y| - E|X - X'| / 2) or from quantiles (twice the mean pinball loss over the
  quantile levels), divided by the same scale as MASE; **coverage** of the 10-90% interval
  (nominal 80%).
- Per series, each metric is the mean over its origins. The **aggregate relative score** of a
  method is the geometric mean over series of (its MASE / seasonal naive MASE): below 1
  beats seasonal naive. Relative CRPS divides by the seasonal-naive MASE too (the CRPS of a
  point forecast is its MAE).

Forecasters plug in as `fn(context [batch, context_length] float, horizon) -> forecasts`,
where forecasts are `[batch, horizon]` point forecasts, or a dict with `"mean"` (and/or
`"median"`, the point forecast when present), optionally `"quantiles"` (a dict
`level -> [batch, horizon]`, or an array `[batch, levels, horizon]` with
`"quantile_levels"`) and/or `"samples"` `[batch, samples, horizon]`. A forecaster taking a
`season_length` keyword gets it (series are then batched by horizon and season).

Baselines: seasonal naive, naive, ETS (additive damped trend, additive season when the
context holds two seasons) and AutoARIMA (a small ARIMA order search by AICc with KPSS /
seasonal-strength differencing; it also gives Gaussian quantiles, so it has a CRPS).
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from jaxmoe.errors import SeriesError
from jaxmoe.eval.timeseries import (
    _accepts_season_length,
    _check_horizon,
    _prepare_history,
    ets_forecast,
    mase_scale,
    naive,
    seasonal_naive,
)

__all__ = [
    "MIN_CONTEXT",
    "QUANTILE_LEVELS",
    "EvalSeries",
    "smape",
    "crps_from_samples",
    "crps_from_quantiles",
    "interval_coverage",
    "rolling_origins",
    "auto_arima_forecast",
    "ZERO_SHOT_BASELINES",
    "zero_shot_suite",
    "load_folder",
    "evaluate_zero_shot",
    "format_zero_shot",
    "plot_zero_shot",
]

MIN_CONTEXT = 8
QUANTILE_LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
MANIFEST_NAMES = ("manifest.yaml", "manifest.yml", "series.yaml", "series.yml")


@dataclasses.dataclass
class EvalSeries:
    """One series to evaluate: `values` float64 `[time]` (NaN = missing)."""

    name: str
    values: np.ndarray
    season_length: int = 1
    horizon: int | None = None
    frequency: str = ""


# ---------------------------------------------------------------------------------------
# Metrics.


def smape(y_true, y_pred) -> float:
    """Symmetric MAPE in percent over observed targets: mean 200 |y - f| / (|y| + |f|), 0 where
    both are 0. NaN when no target is observed."""
    y = np.asarray(y_true, dtype=np.float64)
    f = np.asarray(y_pred, dtype=np.float64)
    valid = np.isfinite(y)
    if not valid.any():
        return float("nan")
    y, f = y[valid], f[valid]
    denominator = np.abs(y) + np.abs(f)
    with np.errstate(invalid="ignore", divide="ignore"):
        terms = np.where(denominator == 0, 0.0, 200.0 * np.abs(y - f) / denominator)
    return float(np.mean(terms))


def crps_from_samples(y_true, samples) -> float:
    """Mean over observed steps of the sample CRPS: E|X - y| - E|X - X'| / 2.

    `samples` is `[num_samples, horizon]`; exact for the empirical distribution of the samples.
    """
    y = np.asarray(y_true, dtype=np.float64).reshape(-1)
    x = np.asarray(samples, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != len(y):
        raise ValueError(f"samples must be [num_samples, {len(y)}], got shape {x.shape}.")
    valid = np.isfinite(y)
    if not valid.any():
        return float("nan")
    y, x = y[valid], np.sort(x[:, valid], axis=0)
    s = x.shape[0]
    term1 = np.mean(np.abs(x - y[None]), axis=0)
    # E|X - X'| over sorted samples: (2 / s^2) * sum_i (2i - s - 1) x_(i), i = 1..s.
    weights = (2.0 * np.arange(1, s + 1) - s - 1.0)[:, None]
    term2 = 2.0 * np.sum(weights * x, axis=0) / s**2
    return float(np.mean(term1 - 0.5 * term2))


def crps_from_quantiles(y_true, levels: Sequence[float], quantiles) -> float:
    """Mean over observed steps of 2 x the mean pinball loss over the quantile levels
    (the quantile-grid approximation of the CRPS). `quantiles` is `[levels, horizon]`."""
    y = np.asarray(y_true, dtype=np.float64).reshape(-1)
    q = np.asarray(quantiles, dtype=np.float64)
    a = np.asarray(levels, dtype=np.float64).reshape(-1, 1)
    if q.shape != (len(a), len(y)):
        raise ValueError(f"quantiles must be [{len(a)}, {len(y)}], got shape {q.shape}.")
    valid = np.isfinite(y)
    if not valid.any():
        return float("nan")
    diff = y[None, valid] - q[:, valid]
    pinball = np.maximum(a * diff, (a - 1.0) * diff)
    return float(np.mean(2.0 * pinball.mean(axis=0)))


def interval_coverage(y_true, lower, upper) -> float:
    """Fraction of observed targets inside [lower, upper]."""
    y = np.asarray(y_true, dtype=np.float64)
    lo, hi = np.asarray(lower, dtype=np.float64), np.asarray(upper, dtype=np.float64)
    valid = np.isfinite(y)
    if not valid.any():
        return float("nan")
    return float(np.mean((y[valid] >= lo[valid]) & (y[valid] <= hi[valid])))


# ---------------------------------------------------------------------------------------
# Rolling origins.


def rolling_origins(series, horizon: int, num_origins: int = 3, context_length: int = 512,
                    min_context: int = MIN_CONTEXT) -> list[tuple[np.ndarray, np.ndarray, int]]:
    """`[(context, target, end)]` for origins j = 0..num_origins-1, last origin first.

    Origin j's target is `series[n - (j+1) H : n - j H]` and its context the at most
    `context_length` points before it (leading NaNs of the series are cut first). Origins
    whose context holds fewer than `min_context` observed points are left out.
    """
    y = np.asarray(series, dtype=np.float64).reshape(-1)
    finite = np.isfinite(y)
    if not finite.any():
        return []
    y = y[int(np.argmax(finite)):]
    h = _check_horizon(horizon)
    out = []
    for j in range(int(num_origins)):
        end = len(y) - j * h
        start = end - h
        if start <= 0:
            break
        context = y[max(0, start - int(context_length)):start]
        if np.isfinite(context).sum() < min_context:
            break
        out.append((context, y[start:end], end))
    return out


# ---------------------------------------------------------------------------------------
# Baselines.


def _kpss_differences(y: np.ndarray, max_d: int = 2) -> int:
    from statsmodels.tsa.stattools import kpss

    d = 0
    x = y
    while d < max_d and len(x) > 10 and np.std(x) > 0:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                p_value = kpss(x, regression="c", nlags="auto")[1]
        except Exception:  # noqa: BLE001 - no test, no differencing
            break
        if p_value >= 0.05:
            break
        x = np.diff(x)
        d += 1
    return d


def _seasonal_strength(y: np.ndarray, m: int) -> float:
    """1 - var(remainder) / var(season + remainder) of an STL decomposition (0 if it fails)."""
    from statsmodels.tsa.seasonal import STL

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = STL(y, period=m, robust=False).fit()
    except Exception:  # noqa: BLE001
        return 0.0
    denominator = np.var(fit.seasonal + fit.resid)
    return float(max(0.0, 1.0 - np.var(fit.resid) / denominator)) if denominator > 0 else 0.0


def _difference(z: np.ndarray, d: int, big_d: int, m: int) -> list[tuple[str, np.ndarray]]:
    """The chain of differenced series: [("", z), ("seasonal", ...), ("regular", ...), ...]."""
    chain = [("", z)]
    for _ in range(big_d):
        u = chain[-1][1]
        chain.append(("seasonal", u[m:] - u[:-m]))
    for _ in range(d):
        chain.append(("regular", np.diff(chain[-1][1])))
    return chain


def _integrate(paths: np.ndarray, chain: list[tuple[str, np.ndarray]], m: int) -> np.ndarray:
    """Undo `_difference` on forecast paths `[n_paths, horizon]` of the last series of the chain."""
    f = paths
    for k in range(len(chain) - 1, 0, -1):
        kind, parent = chain[k][0], chain[k - 1][1]
        if kind == "regular":
            f = parent[-1] + np.cumsum(f, axis=1)
        else:
            out = np.empty_like(f)
            for i in range(f.shape[1]):
                base = parent[len(parent) - m + i] if i < m else out[:, i - m]
                out[:, i] = base + f[:, i]
            f = out
    return f


def auto_arima_forecast(history, horizon: int, season_length: int, *,
                        quantile_levels: Sequence[float] = QUANTILE_LEVELS, max_seasonal_period: int = 24,
                        max_fit_points: int = 256) -> dict:
    """A small, fast AutoARIMA: `{"mean": [horizon], "quantiles": {level: [horizon]}}`.

    On the z-normalised history (its last `max(max_fit_points, 6 m)` points): d in 0..2 by
    repeated KPSS tests; for 1 < m <= `max_seasonal_period` and at least three seasons,
    D = 1 when the STL seasonal strength exceeds 0.64. The differenced series gets an ARMA
    (p, q) in {(1,0), (0,1), (1,1), (2,1)} and, on the best of those, seasonal (P, Q) in
    {(1,0), (0,1)}, with a mean (a drift of the undifferenced series) when d + D <= 1;
    the lowest AICc wins. Gaussian quantiles from the psi weights of the full (integrated) model.
    Falls back to seasonal naive (no quantiles) when every fit fails or runs away.
    """
    from statsmodels.tsa.statespace.sarimax import SARIMAX

    y = _prepare_history(history)
    h = _check_horizon(horizon)
    m = int(season_length)
    fallback = {"mean": seasonal_naive(y, h, m), "quantiles": {}}
    y = y[-max(int(max_fit_points), 6 * m):]
    mean, std = float(np.mean(y)), float(np.std(y))
    if len(y) < 10 or std == 0.0:
        return fallback
    z = (y - mean) / std
    seasonal = 1 < m <= max_seasonal_period and len(z) >= 3 * m
    big_d = int(seasonal and _seasonal_strength(z, m) > 0.64)
    d = _kpss_differences(z[m:] - z[:-m] if big_d else z, max_d=2 - big_d)
    chain = _difference(z, d, big_d, m)
    w = chain[-1][1]
    if len(w) < 8 or np.std(w) == 0.0:
        return fallback
    trend = "c" if d + big_d <= 1 else "n"

    def fit(order, seasonal_order):
        try:
            with warnings.catch_warnings(), np.errstate(all="ignore"):
                warnings.simplefilter("ignore")
                model = SARIMAX(w, order=order, seasonal_order=seasonal_order, trend=trend, concentrate_scale=True)
                result = model.fit(disp=0, maxiter=50)
            aicc = float(result.aicc)
            return (aicc, result) if np.isfinite(aicc) else None
        except Exception:  # noqa: BLE001 - a failed candidate is skipped
            return None

    best = None
    for p, q in ((1, 0), (0, 1), (1, 1), (2, 1)):
        r = fit((p, 0, q), (0, 0, 0, 0))
        if r is not None and (best is None or r[0] < best[0]):
            best = (r[0], r[1], (p, 0, q))
    if best is not None and seasonal:
        for sp, sq in ((1, 0), (0, 1)):
            r = fit(best[2], (sp, 0, sq, m))
            if r is not None and r[0] < best[0]:
                best = (r[0], r[1], best[2])
    if best is None:
        return fallback
    from scipy.stats import norm
    from statsmodels.tsa.arima_process import arma2ma

    result = best[1]
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            point_w = np.asarray(result.forecast(h), dtype=np.float64)
            # Forecast-error spread of the undifferenced series from the psi weights of
            # phi(B) Phi(B^m) (1 - B)^d (1 - B^m)^D y = theta(B) Theta(B^m) e.
            ar = np.convolve(result.polynomial_ar, result.polynomial_seasonal_ar)
            for _ in range(d):
                ar = np.convolve(ar, [1.0, -1.0])
            for _ in range(big_d):
                ar = np.convolve(ar, np.r_[1.0, np.zeros(m - 1), -1.0])
            ma = np.convolve(result.polynomial_ma, result.polynomial_seasonal_ma)
            psi = arma2ma(ar, ma, lags=h)
            se = np.sqrt(float(result.scale) * np.cumsum(psi**2))
    except Exception:  # noqa: BLE001
        return fallback
    point = _integrate(point_w[None], chain, m)[0]
    if point.shape != (h,) or not np.isfinite(point).all() or np.abs(point).max() > 100.0 or not np.isfinite(se).all():
        return fallback
    quantiles = {float(a): (point + norm.ppf(a) * se) * std + mean for a in quantile_levels}
    return {"mean": point * std + mean, "quantiles": quantiles}


ZERO_SHOT_BASELINES: dict[str, Callable[[np.ndarray, int, int], Any]] = {
    "seasonal_naive": seasonal_naive,
    "naive": lambda history, horizon, season_length: naive(history, horizon),
    "ets": ets_forecast,
    "auto_arima": auto_arima_forecast,
}
_TITLES = {"seasonal_naive": "seasonal naive", "naive": "naive", "ets": "ETS", "auto_arima": "AutoARIMA"}


# ---------------------------------------------------------------------------------------
# Series sets.


def zero_shot_suite() -> list[EvalSeries]:
    """The shipped zero-shot suite (`jaxmoe.data.eval_suite.ZERO_SHOT_SUITE`)."""
    from jaxmoe.data.eval_suite import ZERO_SHOT_SUITE, load_suite_series

    return [EvalSeries(name=s.name, values=load_suite_series(s.name), season_length=s.season_length,
                       horizon=s.horizon, frequency=s.frequency) for s in ZERO_SHOT_SUITE.values()]


_TARGET_NAMES = ("value", "y", "target", "values")


def _read_table(path: Path):
    import pandas as pd

    try:
        if path.suffix.lower() == ".parquet":
            return pd.read_parquet(path)
        return pd.read_csv(path)
    except Exception as e:  # noqa: BLE001
        raise SeriesError(f"{str(path)!r} could not be read ({str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}).") from None


def _read_manifest(folder: Path) -> dict:
    import yaml

    for name in MANIFEST_NAMES:
        path = folder / name
        if path.exists():
            try:
                data = yaml.safe_load(path.read_text()) or {}
            except yaml.YAMLError as e:
                raise SeriesError(f"{str(path)!r} is not valid YAML ({str(e).splitlines()[0]}).") from None
            if not isinstance(data, dict):
                raise SeriesError(f"{str(path)!r} must be a mapping with optional keys column, season, horizon, files.")
            files = data.get("files") or {}
            if not isinstance(files, dict):
                raise SeriesError(f"{str(path)!r}: `files` must map file names to {{column, season, horizon, name}}.")
            return data
    return {}


def load_folder(folder, *, column: str | None = None, season: int | None = None,
                horizon: int | None = None) -> list[EvalSeries]:
    """Every series of a folder of CSV / Parquet files.

    Per file, column / season / horizon come from the arguments (command-line flags, which
    win), else from the folder's `manifest.yaml` (`files: {NAME: {column, season, horizon,
    name}}`, top-level `column` / `season` / `horizon` as defaults for every file), else are
    inferred: the column named value/y/target, else the only numeric non-time column, else
    every numeric non-time column (one series each); the season from a date/time column's
    step (monthly 12, quarterly 4, weekly 52, daily 7, hourly 24, ...), else 1; the
    horizon by the `evaluate_zero_shot` default.
    """
    from jaxmoe.data.corpus import CALENDAR_COLUMN_NAMES, NotTimeSeries, infer_time_axis

    folder = Path(os.fspath(folder)).expanduser()
    if not folder.is_dir():
        raise SeriesError(f"--data {str(folder)!r} is not a folder of CSV/Parquet files.")
    manifest = _read_manifest(folder)
    entries = manifest.get("files") or {}
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".csv", ".parquet"))
    if entries:
        missing = [name for name in entries if not (folder / name).exists()]
        if missing:
            raise SeriesError(f"The manifest in {str(folder)!r} names {missing[0]!r}, which is not in the folder.")
        files = [folder / name for name in entries]
    if not files:
        raise SeriesError(f"{str(folder)!r} holds no .csv or .parquet file.")
    out = []
    for path in files:
        entry = entries.get(path.name) or {}
        frame = _read_table(path)
        col = column or entry.get("column") or manifest.get("column")
        m = season or entry.get("season") or manifest.get("season")
        h = horizon or entry.get("horizon") or manifest.get("horizon")
        inferred_season = 1
        try:
            _, groups, _, inferred_season = infer_time_axis(frame)
            if len(groups) != 1:
                inferred_season = 1
        except NotTimeSeries:
            pass
        numeric = [c for c in frame.columns if str(c).lower() not in CALENDAR_COLUMN_NAMES
                   and np.issubdtype(frame[c].dtype, np.number) and frame[c].dtype != bool]
        if col is not None:
            if col not in frame.columns:
                raise SeriesError(f"Column {col!r} is not in {str(path)!r}; available columns: "
                                  f"{', '.join(map(str, frame.columns))}.")
            columns = [col]
        else:
            named = [c for c in numeric if str(c).lower() in _TARGET_NAMES]
            columns = named[:1] or numeric
            if not columns:
                raise SeriesError(f"{str(path)!r} has no numeric column; name one with --column or the manifest.")
        for c in columns:
            import pandas as pd

            values = pd.to_numeric(frame[c], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
            if not np.isfinite(values).any():
                raise SeriesError(f"Column {c!r} of {str(path)!r} has no finite values.")
            name = entry.get("name") or (path.stem if len(columns) == 1 else f"{path.stem}:{c}")
            out.append(EvalSeries(name=str(name), values=values, season_length=int(m or inferred_season or 1),
                                  horizon=int(h) if h else None))
    return out


def default_horizon_for(length: int, season_length: int, num_origins: int) -> int:
    """Two seasons (10% of the length without season), so that every origin keeps a context of
    at least `MIN_CONTEXT` points and at least the part the origins do not use."""
    m = int(season_length)
    h = 2 * m if m > 1 else max(1, int(round(0.1 * length)))
    room = (length - MIN_CONTEXT) // (int(num_origins) + 1)
    return max(1, min(h, room))


# ---------------------------------------------------------------------------------------
# Evaluation.


def _normalise_output(out, batch: int, horizon: int) -> list[dict]:
    """A forecaster's output -> one `{"point", "quantiles": {level: [H]}, "samples"}` per row."""
    if not isinstance(out, Mapping):
        point = np.asarray(out, dtype=np.float64)
        quantiles, samples = {}, None
    else:
        point = out.get("median", out.get("mean", out.get("point")))
        if point is None:
            raise ValueError("a forecaster dict must hold 'mean' or 'median' [batch, horizon].")
        point = np.asarray(point, dtype=np.float64)
        raw_q = out.get("quantiles")
        quantiles = {}
        if isinstance(raw_q, Mapping):
            quantiles = {float(k): np.asarray(v, dtype=np.float64) for k, v in raw_q.items()}
        elif raw_q is not None:
            levels = out.get("quantile_levels")
            arr = np.asarray(raw_q, dtype=np.float64)
            if levels is None or arr.ndim != 3 or arr.shape[1] != len(levels):
                raise ValueError("array 'quantiles' must be [batch, levels, horizon] with 'quantile_levels'.")
            quantiles = {float(a): arr[:, i] for i, a in enumerate(levels)}
        samples = out.get("samples")
        samples = None if samples is None else np.asarray(samples, dtype=np.float64)
    if point.shape != (batch, horizon):
        raise ValueError(f"the forecaster returned shape {point.shape}; it must be [batch, horizon] = {(batch, horizon)}.")
    for level, q in quantiles.items():
        if q.shape != (batch, horizon):
            raise ValueError(f"quantile {level} has shape {q.shape}; it must be {(batch, horizon)}.")
    if samples is not None and (samples.ndim != 3 or samples.shape[0] != batch or samples.shape[2] != horizon):
        raise ValueError(f"samples have shape {samples.shape}; they must be [batch, samples, horizon].")
    return [{"point": point[i], "quantiles": {a: q[i] for a, q in quantiles.items()},
             "samples": None if samples is None else samples[i]} for i in range(batch)]


def _scores(target, forecast: dict, context: np.ndarray, season_length: int) -> dict:
    observed = context[np.isfinite(context)]
    mean, std = (float(np.mean(observed)), float(np.std(observed))) if observed.size else (0.0, 1.0)
    std = std if std > 0 and np.isfinite(std) else 1.0
    scale = mase_scale(context[int(np.argmax(np.isfinite(context))):], season_length)
    point = forecast["point"]
    valid = np.isfinite(target)
    mae = float(np.mean(np.abs(target[valid] - point[valid]))) if valid.any() else float("nan")

    def scaled(value: float) -> float:
        if not np.isfinite(value) or not np.isfinite(scale):
            return float("nan")
        if scale == 0.0:
            return 0.0 if value == 0.0 else float("inf")
        return value / scale

    out = {
        "mase": scaled(mae),
        "smape": smape(target, point),
        "mse": float(np.mean(((target[valid] - point[valid]) / std) ** 2)) if valid.any() else float("nan"),
    }
    quantiles, samples = forecast["quantiles"], forecast["samples"]
    if samples is not None:
        out["crps"] = scaled(crps_from_samples(target, samples))
        lo, hi = np.quantile(samples, [0.1, 0.9], axis=0)
        out["coverage"] = interval_coverage(target, lo, hi)
    elif len(quantiles) >= 2:
        levels = sorted(quantiles)
        out["crps"] = scaled(crps_from_quantiles(target, levels, np.stack([quantiles[a] for a in levels])))
        lo = next((quantiles[a] for a in levels if abs(a - 0.1) < 1e-9), None)
        hi = next((quantiles[a] for a in levels if abs(a - 0.9) < 1e-9), None)
        if lo is not None and hi is not None:
            out["coverage"] = interval_coverage(target, lo, hi)
    return out


def _geometric_mean(values: Sequence[float]) -> tuple[float, int]:
    """(geometric mean of the finite positive values, how many were used)."""
    v = np.asarray([x for x in values if np.isfinite(x) and x > 0], dtype=np.float64)
    return (float(np.exp(np.mean(np.log(v)))) if v.size else float("nan")), int(v.size)


def evaluate_zero_shot(
    forecaster: Callable[..., Any] | None,
    series: Sequence[EvalSeries],
    *,
    context_length: int = 512,
    num_origins: int = 3,
    horizon: int | None = None,
    baselines: Sequence[str] = ("seasonal_naive", "naive", "ets", "auto_arima"),
    model_name: str = "model",
    progress: bool = False,
) -> dict:
    """Score a forecaster and the baselines on rolling origins of every series.

    Args:
      forecaster: see the module docstring; None scores the baselines only.
      series: EvalSeries (their `horizon`, else `horizon`, else `default_horizon_for`).
      context_length: most context points per origin.
      num_origins: origins per series.
      horizon: forecast length for series without one.
      baselines: names from `ZERO_SHOT_BASELINES`; seasonal naive is always scored (it is
        the reference of the relative scores).
      model_name: the forecaster's name in the result.
      progress: a tqdm bar over series for the baselines.

    Returns:
      A JSON-ready dict: `methods`, `series` (per series: name, length, season_length,
      horizon, origins, `metrics[method]` = means over origins of mase, smape, mse and, for
      probabilistic methods, crps and coverage; `per_origin`), `aggregate[method]`
      (relative_mase = geometric mean of MASE / seasonal-naive MASE, relative_crps, mean
      mase / smape / coverage, series_used) and `plots` (the last origin's data per series).
    """
    if int(context_length) < MIN_CONTEXT:
        raise ValueError(f"context_length must be at least {MIN_CONTEXT}, got {context_length}.")
    if int(num_origins) < 1:
        raise ValueError(f"num_origins must be at least 1, got {num_origins}.")
    unknown = [b for b in baselines if b not in ZERO_SHOT_BASELINES]
    if unknown:
        raise ValueError(f"Unknown baseline(s) {unknown}; choose from: {', '.join(ZERO_SHOT_BASELINES)}.")
    baselines = list(dict.fromkeys(["seasonal_naive", *baselines]))
    methods = ([model_name] if forecaster is not None else []) + baselines
    context_length = int(context_length)

    tasks = []  # (series index, origin index, context, target)
    prepared = []
    for si, s in enumerate(series):
        values = np.asarray(s.values, dtype=np.float64).reshape(-1)
        h = int(s.horizon or horizon or default_horizon_for(int(np.isfinite(values).sum()), s.season_length, num_origins))
        origins = rolling_origins(values, h, num_origins, context_length)
        if not origins:
            raise SeriesError(f"Series {s.name!r} ({len(values)} points) is too short for a {h}-step forecast "
                              f"with at least {MIN_CONTEXT} context points.")
        prepared.append((s, h, origins))
        for oi, (context, target, _) in enumerate(origins):
            tasks.append((si, oi, context, target))

    forecasts: dict[tuple[str, int, int], dict] = {}
    if forecaster is not None:
        pass_season = _accepts_season_length(forecaster)
        groups: dict[tuple[int, int], list[int]] = {}
        for ti, (si, oi, context, target) in enumerate(tasks):
            key = (len(target), prepared[si][0].season_length if pass_season else 0)
            groups.setdefault(key, []).append(ti)
        for (h, m), members in groups.items():
            batch = np.full((len(members), context_length), np.nan, dtype=np.float32)
            for row, ti in enumerate(members):
                context = tasks[ti][2]
                batch[row, context_length - len(context):] = context
            kwargs = {"season_length": m} if pass_season else {}
            out = _normalise_output(forecaster(batch, h, **kwargs), len(members), h)
            for row, ti in enumerate(members):
                forecasts[(model_name, tasks[ti][0], tasks[ti][1])] = out[row]

    from tqdm.auto import tqdm

    for si, oi, context, target in tqdm(tasks, desc="baselines", disable=not progress, dynamic_ncols=True):
        s = prepared[si][0]
        history = context[int(np.argmax(np.isfinite(context))):]
        for b in baselines:
            raw = ZERO_SHOT_BASELINES[b](history, len(target), s.season_length)
            forecasts[(b, si, oi)] = _normalise_output(
                {"mean": np.asarray(raw["mean"])[None], "quantiles": {a: np.asarray(v)[None] for a, v in raw["quantiles"].items()}}
                if isinstance(raw, Mapping) else np.asarray(raw)[None], 1, len(target))[0]

    rows, plots = [], []
    for si, (s, h, origins) in enumerate(prepared):
        per_origin = []
        for oi, (context, target, end) in enumerate(origins):
            per_origin.append({"end": int(end), **{method: _scores(target, forecasts[(method, si, oi)], context, s.season_length)
                                                    for method in methods}})
        metrics = {}
        for method in methods:
            keys = per_origin[0][method].keys()
            metrics[method] = {k: float(np.mean([o[method][k] for o in per_origin])) for k in keys}
        rows.append({"series": s.name, "length": int(len(s.values)), "season_length": int(s.season_length),
                     "horizon": int(h), "origins": len(origins), "frequency": s.frequency,
                     "metrics": metrics, "per_origin": per_origin})
        context, target, _ = origins[0]
        plots.append({"series": s.name, "context": context, "target": target,
                      "forecasts": {method: forecasts[(method, si, 0)] for method in methods}})

    aggregate = {}
    for method in methods:
        ratios = [r["metrics"][method]["mase"] / r["metrics"]["seasonal_naive"]["mase"]
                  if r["metrics"]["seasonal_naive"]["mase"] > 0 else float("nan") for r in rows]
        relative, used = _geometric_mean(ratios)
        entry = {"relative_mase": relative, "series_used": used,
                 "mean_mase": float(np.mean([r["metrics"][method]["mase"] for r in rows])),
                 "mean_smape": float(np.mean([r["metrics"][method]["smape"] for r in rows]))}
        if all("crps" in r["metrics"][method] for r in rows):
            crps_ratios = [r["metrics"][method]["crps"] / r["metrics"]["seasonal_naive"]["mase"]
                           if r["metrics"]["seasonal_naive"]["mase"] > 0 else float("nan") for r in rows]
            entry["relative_crps"] = _geometric_mean(crps_ratios)[0]
        if all("coverage" in r["metrics"][method] for r in rows):
            entry["mean_coverage"] = float(np.mean([r["metrics"][method]["coverage"] for r in rows]))
        aggregate[method] = entry
    return {"model": model_name if forecaster is not None else None, "methods": methods,
            "context_length": context_length, "num_origins": int(num_origins),
            "series": rows, "aggregate": aggregate, "plots": plots}


def to_json(result: Mapping) -> dict:
    """The result without its plotting arrays, NaN/inf as null (strict JSON)."""
    def clean(value):
        if isinstance(value, float):
            return value if math.isfinite(value) else None
        if isinstance(value, dict):
            return {str(k): clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        if isinstance(value, np.generic):
            return clean(value.item())
        return value

    return clean({k: v for k, v in result.items() if k != "plots"})


def _fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) < 1000 else f"{value:.3g}"
    return str(value)


def format_zero_shot(result: Mapping) -> str:
    """A fixed-width table: per series the MASE of every method (plus sMAPE, CRPS and
    coverage for the model), then the aggregate rows."""
    methods = result["methods"]
    model = result.get("model")
    titles = [(_TITLES.get(m, m))[:10] for m in methods]
    name_width = max(10, *(len(r["series"]) for r in result["series"]))
    extra = model is not None
    head = f"{'series':<{name_width}} {'len':>6} {'m':>3} {'h':>3} {'o':>2} | " + " ".join(f"{t:>10}" for t in titles)
    if extra:
        head += f" | {'sMAPE':>7} {'CRPS':>7} {'cov80':>6}"
    lines = ["MASE per series (mean over origins)", head, "-" * len(head)]
    for r in result["series"]:
        line = (f"{r['series']:<{name_width}} {r['length']:>6} {r['season_length']:>3} {r['horizon']:>3} "
                f"{r['origins']:>2} | " + " ".join(f"{_fmt(r['metrics'][m]['mase']):>10}" for m in methods))
        if extra:
            mm = r["metrics"][model]
            line += f" | {_fmt(mm['smape'], 2):>7} {_fmt(mm.get('crps')):>7} {_fmt(mm.get('coverage'), 2):>6}"
        lines.append(line)
    agg = result["aggregate"]
    summary = [("relative MASE (geometric mean vs seasonal naive)", [_fmt(agg[m]["relative_mase"]) for m in methods]),
               ("mean MASE", [_fmt(agg[m]["mean_mase"]) for m in methods]),
               ("mean sMAPE (%)", [_fmt(agg[m]["mean_smape"], 2) for m in methods])]
    if any("relative_crps" in agg[m] for m in methods):
        summary.append(("relative CRPS (probabilistic methods)", [_fmt(agg[m].get("relative_crps")) for m in methods]))
        summary.append(("10-90% coverage (nominal 0.80)", [_fmt(agg[m].get("mean_coverage"), 2) for m in methods]))
    width = max(len(label) for label, _ in summary)
    lines += ["", f"{'over ' + str(len(result['series'])) + ' series':<{width}} | " + " ".join(f"{t:>10}" for t in titles)]
    lines += [f"{label:<{width}} | " + " ".join(f"{v:>10}" for v in values) for label, values in summary]
    return "\n".join(lines)


def plot_zero_shot(result: Mapping, path, *, tail: int = 200) -> None:
    """A PNG panel, one plot per series: the last origin's context (its last `tail` points
    at most), the actual future, every method's forecast and the model's 10-90% band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots = result["plots"]
    n = len(plots)
    cols = min(3, max(1, n))
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.0 * rows), squeeze=False)
    colours = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown"]
    model = result.get("model")
    for ax, item in zip(axes.flat, plots):
        context = item["context"][-tail:]
        target = item["target"]
        x0 = np.arange(len(context))
        x1 = np.arange(len(context), len(context) + len(target))
        ax.plot(x0, context, color="black", lw=0.9)
        ax.plot(x1, target, color="black", lw=0.9, ls="--", label="actual")
        for colour, (method, forecast) in zip(colours, item["forecasts"].items()):
            quantiles = forecast["quantiles"]
            if method == model and 0.1 in quantiles and 0.9 in quantiles:
                ax.fill_between(x1, quantiles[0.1], quantiles[0.9], color=colour, alpha=0.2)
            ax.plot(x1, forecast["point"], color=colour, lw=1.4 if method == model else 0.9,
                    label=_TITLES.get(method, method))
        ax.axvline(len(context) - 0.5, color="grey", ls=":", lw=0.8)
        ax.set_title(item["series"], fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
