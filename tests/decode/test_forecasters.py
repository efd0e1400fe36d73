"""The forecaster interface (``jaxmoe.decode.forecast.get_forecaster``) for every forecasting
family: shapes, finite values, the lookback/horizon rules of the window families, one-line
refusals, and ``jaxmoe forecast`` / ``evaluate`` on tiny trained S-Mamba and SpaceTime runs."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmoe.checkpoint import write_config
from jaxmoe.cli import main
from jaxmoe.config import ConfigError, load_config
from jaxmoe.decode.forecast import FORECASTERS, Forecaster, get_forecaster
from jaxmoe.errors import SeriesError
from jaxmoe.models import get_model

S_MAMBA = ["model.embed_dim=16", "model.ffn_dim=32", "model.lookback=12", "model.horizon=3"]
SPACETIME = ["model.embed_dim=8", "model.ffn_dim=16", "model.ssm_state_dim=8", "model.lookback=12", "model.horizon=3"]
CASES = {
    "time_moe": (None, ["model.family=time_moe", "model.embed_dim=16", "model.num_layers=1", "model.num_heads=2",
                        "model.ffn_dim=32", "model.moe.num_experts=4", "model.horizons=[1,4]", "data.seq_len=16"]),
    "moirai_moe": (None, ["model.family=moirai_moe", "model.embed_dim=16", "model.num_layers=1", "model.num_heads=2",
                          "model.moe.num_experts=4", "model.moe.expert_ffn_dim=16", "model.patch_size=4",
                          "data.seq_len=16"]),
    "s_mamba": ("configs/s_mamba_macro.yaml", S_MAMBA),
    "spacetime": ("configs/spacetime_macro.yaml", SPACETIME),
}


def _params(cfg, seed=0):
    """Random params: numpy draws for the transformers (their jitted init compiles for
    seconds), the real init for the small state-space models."""
    module = get_model(cfg.model.family)
    if cfg.model.family in ("s_mamba", "spacetime"):
        return module.init(jax.random.PRNGKey(seed), cfg.model)
    rng = np.random.default_rng(seed)

    def leaf(path, s):
        name = path[-1].key
        if name == "scale":
            return jnp.ones(s.shape, s.dtype)
        return jnp.asarray(rng.normal(0.0, 0.2, s.shape), s.dtype)

    return jax.tree_util.tree_map_with_path(leaf, jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0),
                                                                                       cfg.model)))


@pytest.fixture(scope="module")
def forecasters():
    out = {}
    for family, (path, overrides) in CASES.items():
        cfg = load_config(path, overrides)
        out[family] = (cfg, _params(cfg))
    return out


def _context(batch=2, length=20, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(length)
    ctx = 5.0 + np.sin(2 * np.pi * t / 6.0)[None] + 0.1 * rng.normal(size=(batch, length)).cumsum(1)
    ctx[0, 3] = np.nan  # a missing point
    return ctx


@pytest.mark.parametrize("family", list(CASES))
def test_every_forecasting_family(forecasters, family):
    cfg, params = forecasters[family]
    assert family in FORECASTERS
    fc = get_forecaster(cfg, params)
    assert isinstance(fc, Forecaster) and fc.family == family
    expected_context = cfg.model.lookback if family in ("s_mamba", "spacetime") else cfg.data.seq_len
    assert fc.context_length == expected_context
    ctx = _context()
    point = fc.predict(ctx, 7)
    assert point.shape == (2, 7) and point.dtype == np.float64 and np.isfinite(point).all()
    assert fc.predict(ctx[1], 7).shape == (1, 7)  # a 1-D context is one row
    out = fc.forecast(ctx, 7)
    np.testing.assert_allclose(out["mean"], point, rtol=1e-6)
    if fc.probabilistic:
        q = fc.quantiles(ctx, 7, levels=(0.1, 0.5, 0.9))
        assert sorted(q) == [0.1, 0.5, 0.9] and all(v.shape == (2, 7) for v in q.values())
        assert np.all(q[0.1] <= q[0.5]) and np.all(q[0.5] <= q[0.9])
        np.testing.assert_allclose(q[0.5], point, rtol=1e-6)
        assert fc.samples(ctx, 7, num_samples=5).shape == (2, 5, 7)
        assert sorted(out["quantiles"]) == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    else:
        assert out["quantiles"] == {}
        with pytest.raises(NotImplementedError, match="point forecasts"):
            fc.quantiles(ctx, 7)
        with pytest.raises(NotImplementedError, match="point forecasts"):
            fc.samples(ctx, 7)
    with pytest.raises(ValueError, match="positive integer"):
        fc.predict(ctx, 0)


def test_s_mamba_rolls_forward_past_its_horizon(forecasters):
    cfg, params = forecasters["s_mamba"]
    m = cfg.model
    fc = get_forecaster(cfg, params)
    ctx = _context(length=15)
    ctx[0, 3] = 4.0  # no gap: compare with the model directly
    apply = jax.jit(lambda x: get_model("s_mamba").apply(params, x, m))
    window = ctx[:, -m.lookback:]
    first = np.asarray(apply(window[:, :, None].astype(np.float32)), np.float64)[:, :, 0]
    np.testing.assert_allclose(fc.predict(ctx, 2), first[:, :2], rtol=1e-6)  # within the horizon: truncated
    second_window = np.concatenate([window, first], axis=1)[:, -m.lookback:]
    second = np.asarray(apply(second_window[:, :, None].astype(np.float32)), np.float64)[:, :, 0]
    np.testing.assert_allclose(fc.predict(ctx, 5), np.concatenate([first, second], axis=1)[:, :5], rtol=1e-5)


def test_spacetime_forecasts_any_horizon_in_one_pass(forecasters):
    cfg, params = forecasters["spacetime"]
    m = cfg.model
    ctx = _context(length=12)
    ctx[0, 3] = 4.0
    want = get_model("spacetime").apply(params, jnp.asarray(ctx[:, :, None], jnp.float32), m, 8)
    np.testing.assert_allclose(get_forecaster(cfg, params).predict(ctx, 8), np.asarray(want)[:, :, 0], rtol=1e-5,
                               atol=1e-6)


def test_window_forecasters_fill_gaps_and_refuse_short_contexts(forecasters):
    cfg, params = forecasters["s_mamba"]
    fc = get_forecaster(cfg, params)
    ctx = _context(length=12)
    gap = ctx.copy()
    gap[1, [0, 1, 7]] = np.nan  # leading -> first observed value, inner -> the value before
    filled = gap.copy()
    filled[1, [0, 1]] = gap[1, 2]
    filled[1, 7] = gap[1, 6]
    filled[0, 3] = filled[0, 2]
    np.testing.assert_allclose(fc.predict(gap, 3), fc.predict(filled, 3), rtol=1e-6)
    with pytest.raises(SeriesError, match=r"last 12 points \(model.lookback\).*only 11"):
        fc.predict(ctx[:, 1:], 3)
    with pytest.raises(SeriesError, match="no observed"):
        fc.predict(np.full((1, 12), np.nan), 3)
    # without instance normalisation the forecaster z-normalises each window itself
    raw_cfg = load_config("configs/s_mamba_macro.yaml", S_MAMBA + ["model.instance_norm=false"])
    raw = get_forecaster(raw_cfg, params)
    np.testing.assert_allclose(raw.predict(10.0 * filled + 3.0, 4), 10.0 * raw.predict(filled, 4) + 3.0, rtol=1e-5)


@pytest.mark.parametrize("path,overrides", [
    ("configs/lssl_digits.yaml", []),
    (None, ["model.family=lm"]),
])
def test_non_forecasting_families_are_refused_in_one_line(path, overrides, tmp_path, capsys):
    cfg = load_config(path, overrides)
    with pytest.raises(ConfigError, match="time_moe, moirai_moe, s_mamba, spacetime") as e:
        get_forecaster(cfg, {})
    assert cfg.model.family in str(e.value) and "\n" not in str(e.value)
    run = tmp_path / "run"  # a run directory: refused before any params are read
    (run / "checkpoints").mkdir(parents=True)
    write_config(run, cfg)
    csv = tmp_path / "s.csv"
    csv.write_text("y\n" + "\n".join(str(float(i)) for i in range(30)) + "\n")
    assert main(["forecast", "--checkpoint", str(run), "--csv", str(csv), "--column", "y", "--horizon", "3"]) != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1
    assert cfg.model.family in err and all(f in err for f in FORECASTERS)  # names the forecasting families


# ------------------------------------------------------------------ CLI on tiny runs


@pytest.fixture(scope="module")
def csv_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("csv") / "series.csv"
    t = np.arange(40)
    y = 10 + 3 * np.sin(2 * np.pi * t / 8) + 0.05 * t
    y[30] = np.nan
    path.write_text("t,y\n" + "\n".join(f"{i},{'' if np.isnan(v) else v}" for i, v in enumerate(y)) + "\n")
    return path


@pytest.mark.parametrize("family,config,tiny", [
    ("s_mamba", "configs/s_mamba_macro.yaml", S_MAMBA),
    ("spacetime", "configs/spacetime_macro.yaml", SPACETIME),
])
def test_cli_forecast_and_evaluate_window_families(family, config, tiny, csv_file, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--config", config, *tiny, "train.steps=2", "train.batch_size=8", "data.eval_fraction=0",
                 "train.progress=false", "train.log_every=1", f"train.output_dir={run}"]) == 0
    out = tmp_path / "f.json"
    assert main(["forecast", "--checkpoint", str(run), "--csv", str(csv_file), "--column", "y", "--horizon", "7",
                 "--json", str(out)]) == 0  # 7 > model.horizon (3)
    result = json.loads(out.read_text())
    forecast = np.asarray(result["forecast"])
    assert forecast.shape == (7,) and np.isfinite(forecast).all()
    assert result["context_length"] == 12 and result["quantiles"] == {}  # the model's lookback by default
    assert "forecast of 'y'" in capsys.readouterr().out
    # too short a context: one line naming the lookback
    assert main(["forecast", "--checkpoint", str(run), "--csv", str(csv_file), "--column", "y", "--horizon", "3",
                 "--context", "9"]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "model.lookback" in err
    assert main(["evaluate", "--checkpoint", str(run), "--suite", "nile", "--horizon", "6",
                 "--baselines", "seasonal_naive"]) == 0
    printed = capsys.readouterr().out
    assert family in printed and "nile" in printed
