"""SpaceTime forecaster: shapes, the three-part loss, fitting a synthetic AR(2) series with
the closed-loop decoder (beats the last value), and ``jaxmoe train``."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmoe.cli import main
from jaxmoe.config import ConfigError, load_config
from jaxmoe.data.arrays import ArrayPipeline
from jaxmoe.data.datasets import forecast_windows
from jaxmoe.demos.ssm import fit
from jaxmoe.models import get_model, spacetime

CONFIG = "configs/spacetime_macro.yaml"
TINY = ["model.embed_dim=8", "model.ffn_dim=16", "model.ssm_state_dim=8", "model.lookback=12", "model.horizon=3"]


@pytest.fixture(scope="module")
def model():
    cfg = load_config(CONFIG, TINY).model
    return cfg, spacetime.init(jax.random.PRNGKey(0), cfg)


def _batch(cfg, key=1, batch=2, variates=3):
    k1, k2 = jax.random.split(jax.random.PRNGKey(key))
    return {"x": jax.random.normal(k1, (batch, cfg.lookback, variates)),
            "y": jax.random.normal(k2, (batch, cfg.horizon, variates))}


def test_shapes_and_finite(model):
    cfg, params = model
    assert get_model("spacetime") is spacetime
    b = _batch(cfg)
    x2 = b["x"].at[:, :, 1].add(5.0 * jnp.sin(jnp.arange(12.0)))

    @jax.jit
    def run(params, x, x2):
        return (spacetime.forward(params, x, cfg), spacetime.apply(params, x, cfg, horizon=7),
                spacetime.apply(params, x2, cfg))

    out, long, other = run(params, b["x"], x2)
    assert out["forecast"].shape == (2, 3, 3) and out["lag_pred"].shape == (2, 12, 3)
    assert out["next_input"].shape == out["decoder_input"].shape == (6, 12, 8)
    chex.assert_tree_all_finite(out)
    assert long.shape == (2, 7, 3)
    chex.assert_trees_all_close(long[:, :3], out["forecast"], atol=1e-5, rtol=1e-5)  # same rollout, longer
    # channel independent: each variate's forecast depends on that variate only
    diff = jnp.abs(other - out["forecast"]).max(axis=(0, 1))
    assert float(diff[0]) == 0.0 and float(diff[2]) == 0.0 and float(diff[1]) > 1e-4


def test_loss_has_three_parts(model):
    cfg, params = model
    b = _batch(cfg)

    @jax.jit
    def run(params, batch):
        loss, metrics = spacetime.loss_fn(params, batch, cfg, None)
        parts = spacetime.loss_parts(params, batch, cfg)
        grads_k = {name: jax.grad(lambda p: spacetime.loss_parts(p, batch, cfg)[name])(params)["decoder"]["k"]
                   for name in spacetime.LOSS_PARTS}
        return loss, metrics, parts, spacetime.forward(params, batch["x"], cfg), grads_k

    loss, metrics, parts, out, grads_k = run(params, b)
    assert set(parts) == {"horizon", "lag", "next_input"} and all(float(v) > 0 for v in parts.values())
    np.testing.assert_allclose(float(loss), float(sum(parts.values())), rtol=1e-6)  # weights 1, 1, 1
    assert float(metrics["mse"]) == float(parts["horizon"])
    np.testing.assert_allclose(float(parts["horizon"]), float(jnp.mean((out["forecast"] - b["y"]) ** 2)), rtol=1e-6)
    np.testing.assert_allclose(float(parts["lag"]), float(jnp.mean((out["lag_pred"][:, :-1] - b["x"][:, 1:]) ** 2)),
                               rtol=1e-6)
    # the decoder's next-input readout k shapes the closed-loop forecast and the next-input
    # prediction, never the open-loop lag outputs
    assert float(jnp.abs(grads_k["lag"]).max()) == 0.0
    assert float(jnp.abs(grads_k["horizon"]).max()) > 0.0 and float(jnp.abs(grads_k["next_input"]).max()) > 0.0
    weighted = load_config(CONFIG, [*TINY, "model.loss_weights=[2.0, 0.0, 0.5]"]).model
    loss2, _ = jax.jit(lambda p, bb: spacetime.loss_fn(p, bb, weighted, None))(params, b)
    np.testing.assert_allclose(float(loss2), float(2 * parts["horizon"] + 0.5 * parts["next_input"]), rtol=1e-5)
    with pytest.raises(ConfigError, match="loss_weights"):
        load_config(CONFIG, ["model.loss_weights=[1, 1]"])


def _ar2(n, seed):
    rng = np.random.default_rng(seed)
    x = np.zeros(n + 200)
    e = rng.normal(size=n + 200)
    for t in range(2, n + 200):
        x[t] = 1.5 * x[t - 1] - 0.75 * x[t - 2] + e[t]
    return x[200:, None].astype(np.float32)


def test_fits_ar2_and_beats_last_value():
    lookback, horizon = 24, 6
    cfg = load_config(CONFIG, ["model.embed_dim=8", "model.ffn_dim=16", "model.ssm_state_dim=8", "model.num_layers=1",
                               f"model.lookback={lookback}", f"model.horizon={horizon}", "model.instance_norm=false",
                               "model.preprocess_diff_orders=[0]", "model.preprocess_ma_windows=[]",
                               "train.learning_rate=0.01", "train.warmup_steps=5", "train.steps=150",
                               "train.batch_size=32"])
    series = _ar2(2000, 0)
    scale = series.std()
    train_x, train_y = forecast_windows(series / scale, lookback, horizon, 0, 1600)
    test_x, test_y = forecast_windows(series / scale, lookback, horizon, 1600, 2000, stride=3)
    params, losses = fit(cfg, pipeline=ArrayPipeline({"x": train_x, "y": train_y}, 32, seed=0))
    pred = np.asarray(spacetime.apply(params, jnp.asarray(test_x), cfg.model))
    mse = np.mean((pred - test_y) ** 2)
    last = np.mean((test_x[:, -1:] - test_y) ** 2)
    # the true AR(2) recursion (no noise) is the best possible forecast
    a = np.zeros_like(test_y)
    hist = test_x[:, -2:, 0]
    for j in range(horizon):
        nxt = 1.5 * hist[:, -1] - 0.75 * hist[:, -2]
        a[:, j, 0] = nxt
        hist = np.stack([hist[:, -1], nxt], axis=1)
    oracle = np.mean((a - test_y) ** 2)
    assert np.all(np.isfinite(pred)) and losses[-1] < losses[0]
    # seed 0: model 0.604, true AR(2) recursion 0.606, last value 1.46
    assert mse < 0.75 * last and mse < 1.15 * oracle, (mse, last, oracle)


def test_jaxmoe_train_two_steps(tmp_path):
    run = tmp_path / "run"
    rc = main(["train", "--config", CONFIG, *TINY, "train.steps=2", "train.batch_size=8", "data.eval_fraction=0",
               "train.progress=false", "train.log_every=1", f"train.output_dir={run}"])
    assert rc == 0
    text = (run / "metrics.jsonl").read_text()
    assert text.count('"horizon_loss"') == 2 and text.count('"next_input_loss"') == 2
    assert (run / "checkpoints" / "2").is_dir()
