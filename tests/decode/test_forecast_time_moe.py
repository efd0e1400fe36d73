"""Time-MoE forecasting: horizon schedule, KV cache == full re-run, normalisation, NaNs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmoe.config import load_config
from jaxmoe.decode.forecast import forecast, horizon_schedule
from jaxmoe.models import time_moe as tm


def random_params(m, seed=0, std=0.3):
    """Random params of the right tree/shapes (numpy draws: jit(init) costs ~10 s of XLA
    compile on CPU because of the threefry kernels)."""
    shapes = jax.eval_shape(lambda: tm.init(jax.random.PRNGKey(0), m))
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: jnp.asarray(rng.normal(0.0, std, s.shape), jnp.float32), shapes)


@pytest.fixture(scope="module")
def model():
    cfg = load_config(None, ["model.family=time_moe", "model.embed_dim=16", "model.num_layers=2",
                             "model.num_heads=2", "model.ffn_dim=32", "model.moe.num_experts=4",
                             "model.horizons=[1,4,8]", "data.seq_len=16"])
    return cfg, random_params(cfg.model, 0, 0.3)


def test_horizon_schedule_decompositions():
    heads = (1, 8, 32, 64)
    assert horizon_schedule(96, heads) == [64, 32]
    assert horizon_schedule(6, heads) == [1] * 6
    assert horizon_schedule(100, heads) == [64, 32, 1, 1, 1, 1]
    assert horizon_schedule(64, heads) == [64]
    assert horizon_schedule(200, heads) == [64, 64, 64, 8]
    # even the smallest head is too long: use it and truncate
    assert horizon_schedule(5, (8, 32)) == [8]
    assert horizon_schedule(37, (32, 8)) == [32, 8]
    with pytest.raises(ValueError, match="positive"):
        horizon_schedule(0, heads)


def test_kv_cache_equals_full_rerun(model):
    cfg, p = model
    rng = np.random.default_rng(0)
    ctx = rng.normal(size=(3, 20)).cumsum(1)
    ctx[1, 7] = np.nan  # interior gap
    for horizon in (13, 3):  # schedules [8, 4, 1] and [1, 1, 1]
        cached = forecast(p, cfg, ctx, horizon)
        rerun = forecast(p, cfg, ctx, horizon, use_cache=False)
        assert cached.shape == (3, horizon)
        assert np.isfinite(cached).all()
        np.testing.assert_allclose(cached, rerun, rtol=1e-4, atol=1e-4)
        assert np.abs(cached - cached.mean()).max() > 1e-3  # not a degenerate constant output


def test_truncated_head_and_normalisation(model):
    cfg, p = model
    rng = np.random.default_rng(1)
    ctx = rng.normal(size=(2, 12))
    f6 = forecast(p, cfg, ctx, 6)  # 6 = 4 + 1 + 1
    assert f6.shape == (2, 6)
    # z-normalisation: forecasting a*x + b gives a*forecast(x) + b
    np.testing.assert_allclose(forecast(p, cfg, 5.0 * ctx + 100.0, 6), 5.0 * f6 + 100.0, rtol=1e-4, atol=1e-3)
    # a constant series (std 0): only the mean is subtracted -> forecast = c + forecast of zeros
    const, zeros = forecast(p, cfg, np.stack([np.full(12, 7.0), np.zeros(12)]), 6)
    np.testing.assert_allclose(const, zeros + 7.0, rtol=1e-5, atol=1e-5)


def test_nans_are_masked_and_batching(model):
    cfg, p = model
    rng = np.random.default_rng(2)
    base = rng.normal(size=(2, 14)).cumsum(1)
    ctx = base.copy()
    ctx[0, :4] = np.nan  # leading gap: that row starts at its first observation
    ctx[1, 5] = np.nan
    out = forecast(p, cfg, ctx, 4)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out[0], forecast(p, cfg, base[0, 4:], 4), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out[1], forecast(p, cfg, ctx[1], 4), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="no observed"):
        forecast(p, cfg, np.full((1, 5), np.nan), 3)
    with pytest.raises(ValueError, match="positive"):
        forecast(p, cfg, base, 0)


def test_normalize_false_takes_a_normalised_context(model):
    """``normalize=False``: the caller normalises the context; the forecasts come back in the
    same units and equal the normalised forecasts of the default path."""
    cfg, p = model
    rng = np.random.default_rng(3)
    ctx = 50.0 + 4.0 * rng.normal(size=(2, 18)).cumsum(1)
    ctx[0, 6] = np.nan  # a gap stays a gap (masked, forward-filled)
    raw, normalised = forecast(p, cfg, ctx, 9, return_normalized=True)
    mean = np.nanmean(ctx, axis=1, keepdims=True)
    std = np.nanstd(ctx, axis=1, keepdims=True)
    z = (ctx - mean) / std
    out = forecast(p, cfg, z, 9, normalize=False)
    assert out.shape == (2, 9) and np.isfinite(out).all()
    np.testing.assert_allclose(out, normalised, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out * std + mean, raw, rtol=1e-4, atol=1e-3)
    # without normalisation the model sees the values as given: a shifted context is not undone
    assert np.abs(forecast(p, cfg, z + 3.0, 9, normalize=False) - (out + 3.0)).max() > 1e-3
    # the same through the forecaster interface
    from jaxmoe.decode.forecast import get_forecaster

    fc = get_forecaster(cfg, p, normalize=False)
    np.testing.assert_array_equal(fc.predict(z, 9), out)
    assert fc.context_length == cfg.data.seq_len and not fc.probabilistic
