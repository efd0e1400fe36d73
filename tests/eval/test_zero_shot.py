"""Zero-shot evaluation: metrics by hand, rolling origins, baselines, probabilistic
forecasters, folder evaluation from the command line (JSON + PNG)."""

import json

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm

from jaxmoe.cli import main
from jaxmoe.eval import zero_shot as Z

NORMAL_CRPS_AT_MEAN = 2 * norm.pdf(0) - 1 / np.sqrt(np.pi)  # CRPS(N(0, 1), 0) = 0.23369...


def test_metrics_by_hand():
    assert Z.smape([1.0, 2.0], [1.0, 4.0]) == pytest.approx((0 + 200 * 2 / 6) / 2)
    assert Z.smape([0.0, np.nan], [0.0, 5.0]) == 0.0
    # CRPS of N(0, 1) at its mean, from samples and from a dense quantile grid
    probs = (np.arange(4000) + 0.5) / 4000
    samples = norm.ppf(probs)[:, None] * np.ones((1, 3))
    assert Z.crps_from_samples(np.zeros(3), samples) == pytest.approx(NORMAL_CRPS_AT_MEAN, abs=1e-3)
    levels = np.arange(0.005, 1.0, 0.01)
    quantiles = norm.ppf(levels)[:, None] * np.ones((1, 2))
    assert Z.crps_from_quantiles(np.zeros(2), levels, quantiles) == pytest.approx(NORMAL_CRPS_AT_MEAN, abs=5e-3)
    # a point forecast's CRPS is its absolute error; scale and location carry through
    assert Z.crps_from_samples([3.0, 1.0], np.array([[1.0, 1.0]])) == pytest.approx(1.0)
    assert Z.crps_from_samples([10.0], 10 + 2 * samples[:, :1]) == pytest.approx(2 * NORMAL_CRPS_AT_MEAN, abs=2e-3)
    assert Z.interval_coverage([1, 2, 3, np.nan], [0, 2.5, 0, 0], [2, 3, 2, 0]) == pytest.approx(1 / 3)


def test_rolling_origins():
    y = np.r_[np.nan, np.nan, np.arange(30.0)]
    origins = Z.rolling_origins(y, 5, num_origins=3, context_length=10)
    assert [o[2] for o in origins] == [30, 25, 20]
    np.testing.assert_array_equal(origins[0][1], np.arange(25.0, 30.0))
    np.testing.assert_array_equal(origins[0][0], np.arange(15.0, 25.0))  # capped at 10 points
    np.testing.assert_array_equal(origins[2][1], np.arange(15.0, 20.0))
    # origins whose context would be too short are left out
    assert len(Z.rolling_origins(np.arange(20.0), 5, num_origins=3, context_length=100)) == 2


def test_mase_and_relative_score_by_hand():
    series = [Z.EvalSeries("line", np.arange(1.0, 21.0), season_length=1, horizon=2)]

    def last_value(context, horizon):
        return np.repeat(context[:, -1:], horizon, axis=1)

    result = Z.evaluate_zero_shot(last_value, series, num_origins=1, baselines=("naive",), model_name="m")
    row = result["series"][0]
    # context 1..18 (in-sample naive MAE 1), target 19, 20, forecast 18: MAE 1.5
    assert row["metrics"]["m"]["mase"] == pytest.approx(1.5)
    assert row["metrics"]["seasonal_naive"]["mase"] == pytest.approx(1.5)
    assert row["metrics"]["m"]["smape"] == pytest.approx(100 * (1 / 37 + 2 / 38))
    assert result["aggregate"]["m"]["relative_mase"] == pytest.approx(1.0)
    assert result["methods"] == ["m", "seasonal_naive", "naive"]


def _seasonal_series(n=96, m=12, seed=0):
    t = np.arange(n)
    rng = np.random.default_rng(seed)
    return 50 + 0.3 * t + 8 * np.sin(2 * np.pi * t / m) + rng.normal(0, 1, n)


def test_baselines_run_and_give_quantiles():
    y = _seasonal_series()
    future = _seasonal_series(108)[96:]
    err = {}
    for name, fn in Z.ZERO_SHOT_BASELINES.items():
        out = fn(y, 12, 12)
        point = out["mean"] if isinstance(out, dict) else out
        assert point.shape == (12,) and np.isfinite(point).all(), name
        err[name] = np.abs(point - future).mean()
        if name == "auto_arima":
            q = np.stack([out["quantiles"][a] for a in Z.QUANTILE_LEVELS])
            assert (np.diff(q, axis=0) >= 0).all() and (q[-1] > q[0]).all()
    # the seasonal models beat the naive forecast on a trending seasonal series
    assert err["ets"] < err["naive"] and err["auto_arima"] < err["naive"]


def test_probabilistic_forecaster_plugs_in():
    series = [Z.EvalSeries("a", _seasonal_series(), 12, 12), Z.EvalSeries("b", _seasonal_series(80, 4, 1), 4, 8)]
    calls = []

    def gaussian(context, horizon, season_length):  # takes the season: batched by (h, m)
        calls.append((context.shape, horizon, season_length))
        last = np.array([row[np.isfinite(row)][-season_length:] for row in context])
        point = np.tile(last, (1, horizon // season_length + 1))[:, :horizon]
        levels = [0.1, 0.5, 0.9]
        return {"mean": point, "quantile_levels": levels,
                "quantiles": np.stack([point + norm.ppf(a) * 3.0 for a in levels], axis=1)}

    result = Z.evaluate_zero_shot(gaussian, series, context_length=64, num_origins=2,
                                  baselines=("seasonal_naive",), model_name="gauss")
    assert sorted(calls) == [((2, 64), 8, 4), ((2, 64), 12, 12)]
    m = result["series"][0]["metrics"]["gauss"]
    # the point forecast is the seasonal naive one, so the MASE matches it exactly
    assert m["mase"] == pytest.approx(result["series"][0]["metrics"]["seasonal_naive"]["mase"])
    assert 0 < m["crps"] < m["mase"] and 0 <= m["coverage"] <= 1
    agg = result["aggregate"]["gauss"]
    assert agg["relative_mase"] == pytest.approx(1.0) and agg["relative_crps"] < 1.0
    table = Z.format_zero_shot(result)
    assert "relative CRPS" in table and "gauss" in table
    json.dumps(Z.to_json(result))  # strict JSON
    with pytest.raises(ValueError, match="batch, horizon"):
        Z.evaluate_zero_shot(lambda c, h: np.zeros((1, h)), series, context_length=64, num_origins=2)


def test_folder_evaluation_from_the_command_line(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    months = pd.date_range("2001-01-01", periods=96, freq="MS").strftime("%Y-%m-%d")
    pd.DataFrame({"date": months, "sales": _seasonal_series()}).to_csv(data / "shop.csv", index=False)
    walk = 100 + np.cumsum(np.random.default_rng(2).normal(size=150))
    pd.DataFrame({"price": walk, "volume": np.abs(walk)}).to_parquet(data / "stock.parquet")
    (data / "manifest.yaml").write_text("files:\n  shop.csv: {horizon: 12}\n  stock.parquet: {column: price, season: 1, horizon: 10, name: stock}\n")
    series = Z.load_folder(data)
    assert [(s.name, s.season_length, s.horizon) for s in series] == [("shop", 12, 12), ("stock", 1, 10)]
    out_json, out_png = tmp_path / "r.json", tmp_path / "r.png"
    assert main(["evaluate", "--data", str(data), "--origins", "2", "--baselines", "seasonal_naive,naive,ets",
                 "--json", str(out_json), "--plot", str(out_png)]) == 0
    printed = capsys.readouterr().out
    assert "relative MASE" in printed and "shop" in printed
    result = json.loads(out_json.read_text())
    assert [r["series"] for r in result["series"]] == ["shop", "stock"]
    assert result["series"][0]["origins"] == 2 and set(result["aggregate"]) == {"seasonal_naive", "naive", "ets"}
    assert result["aggregate"]["seasonal_naive"]["relative_mase"] == pytest.approx(1.0)
    assert out_png.stat().st_size > 5000
    # flags win over the manifest; unknown columns and baselines are one-line errors
    assert [s.horizon for s in Z.load_folder(data, horizon=6)] == [6, 6]
    assert main(["evaluate", "--data", str(data), "--column", "nope"]) == 1
    assert "nope" in capsys.readouterr().err
    assert main(["evaluate", "--suite", "zero_shot", "--baselines", "prophet"]) == 1
