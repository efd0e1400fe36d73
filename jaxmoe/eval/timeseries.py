"""Forecast metrics, classical baselines and a fixed evaluation suite on real series.

Conventions:
- MSE and MAE are computed on z-normalised targets: target and forecast are both
  normalised with the mean / std of the *context window* the forecaster saw (std 0 or
  undefined -> 1), as in Informer-style tables.
- MASE divides the raw-scale MAE by the in-sample mean absolute seasonal difference of the
  whole training part (everything before the held-out tail), lag `season_length`, falling
  back to lag 1 when the training part is not longer than one season.
- Missing targets (NaN) are skipped by every metric; a NaN *forecast* at an observed target
  makes the metric NaN (a failing model is never hidden).
- The held-out tail is fixed per series (`REAL_SERIES[name].horizon`, see
  `jaxmoe.data.real_series`): two seasons, or 10% of the length for non-seasonal series,
  never more than a quarter of the series.
- Baselines see exactly what the model sees: the (NaN-free part of the) context window.
"""

from __future__ import annotations

import inspect
import warnings
from typing import Callable, Mapping, Sequence

import numpy as np

from jaxmoe.data.real_series import REAL_SERIES, default_horizon, load_real_series

__all__ = [
    "mse",
    "mae",
    "mase",
    "mase_scale",
    "naive",
    "seasonal_naive",
    "ets_forecast",
    "holdout_split",
    "evaluate_forecaster",
    "format_table",
    "BASELINES",
]


# ---------------------------------------------------------------------------------------
# Metrics.


def _pair(y_true, y_pred, mask) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true, dtype=np.float64)
    y_pred = np.asarray(y_pred, dtype=np.float64)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has shape {y_true.shape} but y_pred has shape {y_pred.shape}; they must match.")
    valid = np.isfinite(y_true)
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != y_true.shape:
            raise ValueError(f"mask has shape {mask.shape} but y_true has shape {y_true.shape}; they must match.")
        valid &= mask.astype(bool)
    return y_true, y_pred, valid


def mse(y_true, y_pred, mask=None) -> float:
    """Mean squared error over observed (finite, and `mask`-ed in) targets; NaN if none."""
    y_true, y_pred, valid = _pair(y_true, y_pred, mask)
    if not valid.any():
        return float("nan")
    return float(np.mean((y_true[valid] - y_pred[valid]) ** 2))


def mae(y_true, y_pred, mask=None) -> float:
    """Mean absolute error over observed (finite, and `mask`-ed in) targets; NaN if none."""
    y_true, y_pred, valid = _pair(y_true, y_pred, mask)
    if not valid.any():
        return float("nan")
    return float(np.mean(np.abs(y_true[valid] - y_pred[valid])))


def mase_scale(y_train, season_length: int) -> float:
    """Mean |y[t] - y[t - m]| over the training part (pairs with a NaN are skipped).

    Uses lag m = season_length when the series is longer than one season and has at least
    one complete pair at that lag; otherwise lag 1. NaN if no pair exists at all.
    """
    y = np.asarray(y_train, dtype=np.float64).reshape(-1)
    if int(season_length) < 1:
        raise ValueError(f"season_length must be at least 1, got {season_length}.")
    for lag in (int(season_length), 1):
        if len(y) > lag:
            diff = y[lag:] - y[:-lag]
            diff = diff[np.isfinite(diff)]
            if diff.size:
                return float(np.mean(np.abs(diff)))
    return float("nan")


def mase(y_true, y_pred, y_train, season_length: int, mask=None) -> float:
    """Mean absolute scaled error: `mae(y_true, y_pred) / mase_scale(y_train, m)`.

    A zero scale (constant training part) gives 0 for a perfect forecast, inf otherwise.
    """
    error = mae(y_true, y_pred, mask)
    scale = mase_scale(y_train, season_length)
    if not np.isfinite(error) or not np.isfinite(scale):
        return float("nan")
    if scale == 0.0:
        return 0.0 if error == 0.0 else float("inf")
    return error / scale


# ---------------------------------------------------------------------------------------
# Baselines (one series at a time).


def _prepare_history(history) -> np.ndarray:
    """float64 history without leading missing values; interior gaps linearly
    interpolated, trailing gaps carried forward."""
    y = np.asarray(history, dtype=np.float64).reshape(-1)
    finite = np.isfinite(y)
    if not finite.any():
        raise ValueError("The history has no finite values; a forecast needs at least one observation.")
    y = y[int(np.argmax(finite)):]
    finite = np.isfinite(y)
    if not finite.all():
        positions = np.arange(len(y))
        y = np.interp(positions, positions[finite], y[finite])  # constant beyond the last point
    return y


def _check_horizon(horizon: int) -> int:
    if int(horizon) < 1:
        raise ValueError(f"horizon must be at least 1, got {horizon}.")
    return int(horizon)


def naive(history, horizon: int) -> np.ndarray:
    """The last observed value repeated `horizon` times (float64 `[horizon]`)."""
    y = _prepare_history(history)
    return np.full(_check_horizon(horizon), y[-1])


def seasonal_naive(history, horizon: int, season_length: int) -> np.ndarray:
    """The last observed season repeated: `f[k] = y[n - m + (k mod m)]`.

    Falls back to `naive` when m <= 1 or the history is shorter than one season.
    """
    y = _prepare_history(history)
    horizon = _check_horizon(horizon)
    m = int(season_length)
    if m <= 1 or len(y) < m:
        return np.full(horizon, y[-1])
    return y[len(y) - m + np.arange(horizon) % m]


def ets_forecast(history, horizon: int, season_length: int) -> np.ndarray:
    """Holt-Winters ETS (statsmodels `ExponentialSmoothing`): additive damped trend, plus
    additive seasonality when the history holds at least two seasons.

    Fits on the z-normalised history. Falls back, without warnings, to simpler models
    (no seasonality, then no trend) and finally to `seasonal_naive` when a fit fails or
    returns a non-finite or runaway forecast.
    """
    from statsmodels.tsa.holtwinters import ExponentialSmoothing

    y = _prepare_history(history)
    horizon = _check_horizon(horizon)
    m = int(season_length)
    n = len(y)
    mean, std = float(np.mean(y)), float(np.std(y))
    if n < 4 or std == 0.0:
        return seasonal_naive(y, horizon, m)
    z = (y - mean) / std

    candidates = []
    if m > 1 and n >= 2 * m:
        candidates.append(dict(trend="add", damped_trend=True, seasonal="add", seasonal_periods=m))
    candidates.append(dict(trend="add", damped_trend=True, seasonal=None))
    candidates.append(dict(trend=None, seasonal=None))
    for kwargs in candidates:
        try:
            with warnings.catch_warnings(), np.errstate(all="ignore"):
                warnings.simplefilter("ignore")
                fit = ExponentialSmoothing(z, initialization_method="estimated", **kwargs).fit()
                forecast = np.asarray(fit.forecast(horizon), dtype=np.float64)
        except Exception:  # noqa: BLE001 - any statsmodels failure means "try a simpler model"
            continue
        if forecast.shape == (horizon,) and np.isfinite(forecast).all() and np.abs(forecast).max() < 100.0:
            return forecast * std + mean
    return seasonal_naive(y, horizon, m)


BASELINES: dict[str, Callable[[np.ndarray, int, int], np.ndarray]] = {
    "seasonal_naive": seasonal_naive,
    "ets": ets_forecast,
    "naive": lambda history, horizon, season_length: naive(history, horizon),
}


def holdout_split(series, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """`(train, test)`: the last `horizon` points are the fixed held-out tail."""
    series = np.asarray(series)
    horizon = _check_horizon(horizon)
    if series.ndim != 1:
        raise ValueError(f"holdout_split expects a 1-D series, got shape {series.shape}.")
    if horizon >= len(series):
        raise ValueError(
            f"horizon {horizon} leaves no training points in a series of {len(series)}; use a shorter horizon."
        )
    return series[:-horizon], series[-horizon:]


# ---------------------------------------------------------------------------------------
# Evaluation suite.


def _suite_series(suite) -> list[tuple[str, np.ndarray, int, int | None]]:
    """-> [(name, series, season_length, default horizon or None)]."""
    if isinstance(suite, str):
        if suite == "real":
            names = list(REAL_SERIES)
        elif suite in REAL_SERIES:
            names = [suite]
        else:
            raise ValueError(f"Unknown suite {suite!r}; use 'real', a real series name, a list of them, "
                             "or a dict name -> (series, season_length).")
        return [(n, load_real_series(n), REAL_SERIES[n].season_length, REAL_SERIES[n].horizon) for n in names]
    if isinstance(suite, Mapping):
        out = []
        for name, value in suite.items():
            try:
                series, season_length = value
            except (TypeError, ValueError):
                raise ValueError(f"Suite entry {name!r} must be a (series, season_length) pair.") from None
            series = np.asarray(series, dtype=np.float32).reshape(-1)
            out.append((str(name), series, int(season_length), default_horizon(len(series), int(season_length))))
        return out
    names = list(suite)
    unknown = [n for n in names if n not in REAL_SERIES]
    if unknown:
        raise ValueError(f"Unknown real series {unknown}; choose from: {', '.join(REAL_SERIES)}.")
    return [(n, load_real_series(n), REAL_SERIES[n].season_length, REAL_SERIES[n].horizon) for n in names]


def _context_stats(context: np.ndarray) -> tuple[float, float]:
    observed = context[np.isfinite(context)]
    mean = float(np.mean(observed))
    std = float(np.std(observed))
    return mean, (std if std > 0 and np.isfinite(std) else 1.0)


def _accepts_season_length(fn) -> bool:
    try:
        parameters = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return "season_length" in parameters or any(
        p.kind == inspect.Parameter.VAR_KEYWORD for p in parameters.values()
    )


def evaluate_forecaster(
    forecast_fn: Callable[..., np.ndarray] | None,
    suite="real",
    context_length: int = 512,
    horizon: int | None = None,
    *,
    baselines: Sequence[str] = ("seasonal_naive", "ets"),
) -> list[dict]:
    """Forecast the held-out tail of every series in a suite and score it.

    Args:
      forecast_fn: `forecast_fn(context, horizon) -> [batch, horizon]` where `context` is
        float32 `[batch, context_length]`, the last `context_length` training points of
        each series, left-padded with NaN when the series is shorter (NaN may also appear
        inside, e.g. co2). If it takes a `season_length` argument it also receives the
        season length. Series are batched by (horizon, season_length). None = baselines only.
      suite: "real" (every `REAL_SERIES`), a real series name, a list of names, or a dict
        `name -> (series, season_length)` (default horizon by the same rule).
      context_length: points of history handed to the forecasters.
      horizon: forecast length for every series; None = each series' default horizon.
      baselines: names from `BASELINES` to score beside the model.

    Returns:
      One dict per series and a final `{"series": "average", ...}` row (means over series).
      Keys: "series", "length", "season_length", "horizon", "observed_context" (non-NaN
      context points) and `f"{method}_{metric}"` for method in ("model", *baselines) and
      metric in ("mse", "mae", "mase"). MSE/MAE are on z-normalised targets, MASE on the
      raw scale.
    """
    if int(context_length) < 1:
        raise ValueError(f"context_length must be at least 1, got {context_length}.")
    context_length = int(context_length)
    unknown = [b for b in baselines if b not in BASELINES]
    if unknown:
        raise ValueError(f"Unknown baseline(s) {unknown}; choose from: {', '.join(BASELINES)}.")
    methods = (["model"] if forecast_fn is not None else []) + list(baselines)

    entries = []
    for name, series, season_length, series_horizon in _suite_series(suite):
        h = int(horizon) if horizon is not None else int(series_horizon)
        train, test = holdout_split(series, h)
        context = np.full(context_length, np.nan, dtype=np.float32)
        tail = train[-context_length:].astype(np.float32)
        context[context_length - len(tail):] = tail
        if not np.isfinite(context).any():
            raise ValueError(f"Series {name!r} has no observed point in its last {context_length} training points.")
        entries.append(dict(name=name, series=series, train=train, test=test, context=context,
                            season_length=season_length, horizon=h))

    model_forecasts: dict[str, np.ndarray] = {}
    if forecast_fn is not None:
        pass_season = _accepts_season_length(forecast_fn)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, e in enumerate(entries):
            groups.setdefault((e["horizon"], e["season_length"] if pass_season else 0), []).append(i)
        for (h, m), members in groups.items():
            batch = np.stack([entries[i]["context"] for i in members])
            kwargs = {"season_length": m} if pass_season else {}
            out = np.asarray(forecast_fn(batch, h, **kwargs), dtype=np.float64)
            if out.shape != (len(members), h):
                raise ValueError(
                    f"forecast_fn returned shape {out.shape} for a context of shape {batch.shape} and "
                    f"horizon {h}; it must return [batch, horizon] = {(len(members), h)}."
                )
            for row, i in enumerate(members):
                model_forecasts[entries[i]["name"]] = out[row]

    rows = []
    for e in entries:
        mean, std = _context_stats(e["context"])
        observed = e["context"][int(np.argmax(np.isfinite(e["context"]))):]
        row = {
            "series": e["name"],
            "length": len(e["series"]),
            "season_length": e["season_length"],
            "horizon": e["horizon"],
            "observed_context": int(np.isfinite(e["context"]).sum()),
        }
        for method in methods:
            if method == "model":
                forecast = model_forecasts[e["name"]]
            else:
                forecast = BASELINES[method](observed, e["horizon"], e["season_length"])
            y_true = e["test"].astype(np.float64)
            row[f"{method}_mse"] = mse((y_true - mean) / std, (forecast - mean) / std)
            row[f"{method}_mae"] = mae((y_true - mean) / std, (forecast - mean) / std)
            row[f"{method}_mase"] = mase(y_true, forecast, e["train"], e["season_length"])
        rows.append(row)

    average = {"series": "average", "length": None, "season_length": None, "horizon": None,
               "observed_context": None}
    for method in methods:
        for metric in ("mse", "mae", "mase"):
            key = f"{method}_{metric}"
            average[key] = float(np.mean([r[key] for r in rows]))
    rows.append(average)
    return rows


_METHOD_TITLES = {"model": "model", "seasonal_naive": "seasonal naive", "ets": "ETS", "naive": "naive"}


def format_table(rows: Sequence[Mapping], model_name: str | None = None) -> str:
    """Fixed-width text table of `evaluate_forecaster` rows: MSE / MAE / MASE per method,
    the model first, then the baselines."""
    if not rows:
        return "(no rows)"
    methods = [k[: -len("_mse")] for k in rows[0] if k.endswith("_mse")]
    titles = {m: _METHOD_TITLES.get(m, m) for m in methods}
    if model_name and "model" in titles:
        titles["model"] = model_name
    name_width = max(8, *(len(str(r["series"])) for r in rows))
    cell = 8
    group_width = 3 * cell + 2

    def fmt_number(value) -> str:
        if value is None:
            return "-"
        if isinstance(value, (int, np.integer)):
            return str(value)
        value = float(value)
        if not np.isfinite(value):
            return "nan" if np.isnan(value) else ("inf" if value > 0 else "-inf")
        return f"{value:.3f}" if abs(value) < 1000 else f"{value:.3g}"

    head1 = f"{'':<{name_width}} {'':>6} {'':>4} {'':>4} " + " | ".join(
        f"{titles[m][:group_width]:^{group_width}}" for m in methods)
    head2 = f"{'series':<{name_width}} {'len':>6} {'m':>4} {'h':>4} " + " | ".join(
        f"{'MSE':>{cell}} {'MAE':>{cell}} {'MASE':>{cell}}" for _ in methods)
    lines = [head1, head2, "-" * len(head2)]
    for r in rows:
        if r["series"] == "average":
            lines.append("-" * len(head2))
        line = (f"{str(r['series']):<{name_width}} {fmt_number(r.get('length')):>6} "
                f"{fmt_number(r.get('season_length')):>4} {fmt_number(r.get('horizon')):>4} ")
        line += " | ".join(
            " ".join(f"{fmt_number(r[f'{m}_{metric}']):>{cell}}" for metric in ("mse", "mae", "mase"))
            for m in methods)
        lines.append(line)
    return "\n".join(lines)
