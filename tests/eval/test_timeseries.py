"""Forecast metrics, classical baselines and the real-series evaluation suite."""

import warnings

import numpy as np
import pytest

from jaxmoe.data.real_series import REAL_SERIES, load_real_series, load_real_train
from jaxmoe.eval import (
    ets_forecast,
    evaluate_forecaster,
    format_table,
    holdout_split,
    mae,
    mase,
    mase_scale,
    mse,
    naive,
    seasonal_naive,
)

# --- metrics --------------------------------------------------------------------------------


def test_mse_mae_by_hand_with_nan_targets():
    y = [1.0, 2.0, 3.0, np.nan]
    p = [2.0, 2.0, 5.0, 100.0]
    assert mse(y, p) == pytest.approx(5.0 / 3.0)
    assert mae(y, p) == pytest.approx(1.0)
    assert mse(y, p, mask=[1, 1, 0, 1]) == pytest.approx(0.5)
    assert np.isnan(mse([np.nan], [1.0]))
    # A NaN forecast at an observed target is never hidden.
    assert np.isnan(mae([1.0, 2.0], [1.0, np.nan]))
    with pytest.raises(ValueError, match="shape"):
        mse([1.0, 2.0], [1.0])
    # Works on batches.
    assert mse(np.ones((2, 3)), np.zeros((2, 3))) == 1.0


def test_mase_by_hand():
    y_train = [1.0, 3.0, 2.0, 4.0, 3.0, 5.0]
    # Seasonal (m=2) differences: |2-1|, |4-3|, |3-2|, |5-4| -> scale 1.
    assert mase_scale(y_train, 2) == pytest.approx(1.0)
    assert mase([6.0, 4.0], [5.0, 5.0], y_train, 2) == pytest.approx(1.0)
    # Lag 1: |2|, |1|, |2|, |1|, |2| -> 8/5.
    assert mase_scale(y_train, 1) == pytest.approx(1.6)
    assert mase([6.0, 4.0], [5.0, 5.0], y_train, 1) == pytest.approx(1.0 / 1.6)
    # Shorter than a season: falls back to lag 1 (|3-1|, |2-3| -> 1.5).
    assert mase_scale([1.0, 3.0, 2.0], 4) == pytest.approx(1.5)
    assert mase([4.0], [1.0], [1.0, 3.0, 2.0], 4) == pytest.approx(2.0)
    # NaN-aware scale: pairs touching a NaN are skipped (|4-1|, |5-4| -> 2 at lag 2).
    assert mase_scale([1.0, np.nan, 4.0, np.nan, 5.0], 2) == pytest.approx(2.0)
    # Constant training part.
    assert mase([1.0], [1.0], [1.0, 1.0, 1.0], 1) == 0.0
    assert mase([2.0], [1.0], [1.0, 1.0, 1.0], 1) == float("inf")


# --- baselines ------------------------------------------------------------------------------


def _seasonal(n, m=12):
    t = np.arange(n)
    return 10.0 + np.sin(2 * np.pi * t / m) + 0.5 * np.cos(4 * np.pi * t / m + 0.3)


def test_seasonal_naive_exact_on_pure_seasonal_series():
    series = _seasonal(120)
    train, test = holdout_split(series, 30)
    np.testing.assert_allclose(seasonal_naive(train, 30, 12), test, atol=1e-12)
    assert mae(test, seasonal_naive(train, 30, 12)) < 1e-12
    # A missing value inside the last season is interpolated, leading NaNs are skipped.
    gappy = np.concatenate([[np.nan] * 5, train])
    gappy[-3] = np.nan
    forecast = seasonal_naive(gappy, 12, 12)
    assert np.isfinite(forecast).all()
    np.testing.assert_allclose(forecast[[0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11]], test[[0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11]])


def test_naive_and_short_history_fallbacks():
    np.testing.assert_array_equal(naive([1.0, 2.0, np.nan], 3), [2.0, 2.0, 2.0])
    np.testing.assert_array_equal(seasonal_naive([1.0, 2.0, 3.0], 4, 12), [3.0] * 4)
    np.testing.assert_array_equal(seasonal_naive([1.0, 2.0, 3.0, 4.0], 5, 1), [4.0] * 5)
    with pytest.raises(ValueError, match="no finite values"):
        naive([np.nan, np.nan], 2)
    with pytest.raises(ValueError, match="horizon"):
        seasonal_naive([1.0, 2.0], 0, 1)


def test_ets_tracks_seasonal_trend_without_warnings():
    t = np.arange(144)
    series = _seasonal(144) + 0.05 * t
    train, test = holdout_split(series, 24)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        forecast = ets_forecast(train, 24, 12)
    assert not caught, [str(w.message) for w in caught]
    assert forecast.shape == (24,)
    assert mae(test, forecast) < 0.1 * np.std(series)


def test_ets_fallbacks_are_finite():
    np.testing.assert_array_equal(ets_forecast([5.0] * 30, 4, 12), [5.0] * 4)
    assert np.isfinite(ets_forecast([1.0, 2.0, 3.0], 5, 12)).all()
    assert np.isfinite(ets_forecast([1.0, np.nan, 3.0, 2.0, 5.0, 4.0], 5, 1)).all()


@pytest.mark.parametrize("name", list(REAL_SERIES))
def test_ets_on_each_real_series(name):
    info = REAL_SERIES[name]
    history = load_real_train(name)[-512:]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        forecast = ets_forecast(history, info.horizon, info.season_length)
    assert not caught, [str(w.message) for w in caught]
    assert forecast.shape == (info.horizon,) and np.isfinite(forecast).all()
    observed = history[np.isfinite(history)]
    spread = observed.max() - observed.min()
    assert np.all(np.abs(forecast - observed[-1]) < 2 * spread)


def test_holdout_split():
    train, test = holdout_split(np.arange(10), 3)
    np.testing.assert_array_equal(train, np.arange(7))
    np.testing.assert_array_equal(test, [7, 8, 9])
    with pytest.raises(ValueError, match="no training points"):
        holdout_split(np.arange(3), 3)


# --- evaluation suite ----------------------------------------------------------------------


def _seasonal_naive_fn(context, horizon, season_length):
    return np.stack([seasonal_naive(row, horizon, season_length) for row in context])


def test_seasonal_naive_forecaster_matches_baseline_rows():
    rows = evaluate_forecaster(_seasonal_naive_fn, suite="real", context_length=256)
    assert [r["series"] for r in rows] == list(REAL_SERIES) + ["average"]
    for row in rows:
        for metric in ("mse", "mae", "mase"):
            assert row[f"model_{metric}"] == pytest.approx(row[f"seasonal_naive_{metric}"], rel=1e-6)
            assert np.isfinite(row[f"ets_{metric}"])
    # Baselines are not trivially equal to each other.
    assert rows[-1]["ets_mase"] != pytest.approx(rows[-1]["seasonal_naive_mase"], rel=1e-3)


def test_plain_forecast_fn_and_context_padding():
    seen = []

    def fn(context, horizon):
        seen.append((context.shape, context.dtype, horizon, np.isnan(context).sum()))
        return np.repeat(context[:, -1:], horizon, axis=1)

    rows = evaluate_forecaster(fn, suite=["nile", "elnino"], context_length=400, baselines=("naive",))
    # nile keeps 90 training points -> 310 NaNs of left padding; elnino fills the context.
    assert sorted(seen) == sorted([((1, 400), np.float32, 10, 310), ((1, 400), np.float32, 24, 0)])
    for row in rows:
        assert row["model_mase"] == pytest.approx(row["naive_mase"])
    assert rows[0]["observed_context"] == 90


def test_metrics_are_on_context_normalised_targets():
    name = "elec_equip"
    series = load_real_series(name)
    h, m = REAL_SERIES[name].horizon, REAL_SERIES[name].season_length
    train, test = holdout_split(series, h)
    context = train[-100:].astype(np.float64)
    mu, sd = context.mean(), context.std()

    rows = evaluate_forecaster(lambda c, hh: np.full((len(c), hh), np.nanmean(c, axis=1, keepdims=True)),
                               suite=[name], context_length=100, baselines=())
    row = rows[0]
    assert row["model_mse"] == pytest.approx(np.mean(((test - mu) / sd) ** 2), rel=1e-5)
    assert row["model_mae"] == pytest.approx(np.mean(np.abs((test - mu) / sd)), rel=1e-5)
    scale = np.mean(np.abs(train[m:] - train[:-m]))
    assert row["model_mase"] == pytest.approx(np.mean(np.abs(test - mu)) / scale, rel=1e-5)
    assert rows[-1]["model_mse"] == row["model_mse"]


def test_contexts_with_missing_values():
    # co2's last 2048 training weeks include its NaN gaps: they reach the forecaster as NaN
    # and the baselines cope with them.
    seen = []

    def fn(context, horizon):
        seen.append(int(np.isnan(context).sum()))
        return _seasonal_naive_fn(context, horizon, 52)

    rows = evaluate_forecaster(fn, suite=["co2"], context_length=2048)
    assert seen[0] > 0
    for key, value in rows[0].items():
        if key.endswith(("_mse", "_mae", "_mase")):
            assert np.isfinite(value), key
    assert rows[0]["model_mase"] == pytest.approx(rows[0]["seasonal_naive_mase"])


def test_custom_suite_fixed_horizon_and_bad_output():
    suite = {"seasonal": (_seasonal(120), 12)}
    rows = evaluate_forecaster(_seasonal_naive_fn, suite=suite, context_length=48, horizon=12)
    assert rows[0]["horizon"] == 12 and rows[0]["model_mse"] == pytest.approx(0.0, abs=1e-10)
    with pytest.raises(ValueError, match=r"\[batch, horizon\]"):
        evaluate_forecaster(lambda c, h: np.zeros((len(c), h + 1)), suite=suite, context_length=48)
    with pytest.raises(ValueError, match="Unknown baseline"):
        evaluate_forecaster(None, suite=suite, baselines=("arima",))


def test_format_table():
    rows = evaluate_forecaster(_seasonal_naive_fn, suite=["nile", "macrodata_cpi"], context_length=64)
    table = format_table(rows, model_name="TimeMoE")
    lines = table.splitlines()
    assert "TimeMoE" in lines[0] and "seasonal naive" in lines[0] and "ETS" in lines[0]
    assert "MSE" in lines[1] and "MASE" in lines[1]
    assert any(line.startswith("nile") for line in lines)
    assert any(line.startswith("average") for line in lines)
    assert len({len(line.rstrip()) for line in lines[1:]}) == 1  # fixed width
    assert f"{rows[0]['ets_mase']:.3f}" in table
