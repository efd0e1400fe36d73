"""S-Mamba forecaster: shapes, instance norm / de-norm, bidirectional structure, a real
training run on macrodata that beats the last value, and ``jaxmoe train``."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmoe.cli import main
from jaxmoe.config import load_config
from jaxmoe.demos.ssm import evaluate_forecaster, fit
from jaxmoe.models import get_model, s_mamba

CONFIG = "configs/s_mamba_macro.yaml"
TINY = ["model.embed_dim=16", "model.ffn_dim=32", "model.lookback=12", "model.horizon=3", "model.dropout_rate=0.0"]


@pytest.fixture(scope="module")
def model():
    cfg = load_config(CONFIG, TINY).model
    params = jax.jit(s_mamba.init, static_argnums=1)(jax.random.PRNGKey(0), cfg)
    apply = jax.jit(lambda p, x: s_mamba.apply(p, x, cfg))
    return cfg, params, apply


def _x(key, batch=2, variates=5, cfg=None):
    return jax.random.normal(jax.random.PRNGKey(key), (batch, cfg.lookback, variates)) + 0.3


def test_shapes_finite_and_param_axes(model):
    cfg, params, apply = model
    assert get_model("s_mamba") is s_mamba
    x = _x(1, cfg=cfg)
    batch = {"x": x, "y": jnp.zeros((2, cfg.horizon, 5))}

    @jax.jit
    def run(params, batch):
        (loss, metrics), grads = jax.value_and_grad(
            lambda p: s_mamba.loss_fn(p, batch, cfg, jax.random.PRNGKey(0)), has_aux=True)(params)
        return s_mamba.apply(params, batch["x"], cfg), s_mamba.loss_fn(params, batch, cfg, None), grads

    y, (loss, metrics), grads = run(params, batch)
    assert y.shape == (2, cfg.horizon, 5) and y.dtype == jnp.float32
    chex.assert_tree_all_finite(y)
    np.testing.assert_allclose(float(loss), float(jnp.mean(y ** 2)), rtol=1e-5)
    np.testing.assert_allclose(float(metrics["mae"]), float(jnp.mean(jnp.abs(y))), rtol=1e-5)
    chex.assert_tree_all_finite(grads)
    assert float(jnp.abs(grads["layers"]["mamba_b"]["in_proj"]).sum()) > 0
    # variates are tokens: no parameter has a variate dimension
    assert params["embed"]["kernel"].shape == (cfg.lookback, cfg.embed_dim)
    assert params["head"]["kernel"].shape == (cfg.embed_dim, cfg.horizon)
    axes = s_mamba.param_axes(cfg)
    assert axes["embed"]["kernel"] == (None, "embed")
    assert axes["layers"]["ffn"]["w1"]["kernel"] == ("layers", "embed", "mlp")


def test_instance_norm_statistics():
    x = np.random.default_rng(0).normal(size=(2, 12, 3)).astype(np.float32) * 4 + 7
    xn, mean, std = s_mamba.instance_norm(jnp.asarray(x), axis=1)
    np.testing.assert_allclose(mean, x.mean(1, keepdims=True), rtol=1e-5)
    np.testing.assert_allclose(std, np.sqrt(x.var(1, ddof=0, keepdims=True) + 1e-5), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(xn).mean(1), 0, atol=1e-5)


def test_forecast_follows_offset_and_scale_of_each_variate(model):
    cfg, params, apply = model
    x = _x(3, cfg=cfg)
    scale = jnp.array([0.5, 1.0, 2.0, 3.0, 10.0])
    shift = jnp.array([-4.0, 0.0, 1.5, 100.0, -20.0])
    y = apply(params, x)
    chex.assert_trees_all_close(apply(params, x * scale + shift), y * scale + shift, atol=2e-3, rtol=1e-4)
    # without instance normalisation the forecast does not follow the input's scale
    raw = load_config(CONFIG, [*TINY, "model.instance_norm=false"]).model
    apply_raw = jax.jit(lambda p, xx: s_mamba.apply(p, xx, raw))
    y_raw = apply_raw(params, x)
    assert float(jnp.max(jnp.abs(apply_raw(params, x * scale + shift) - (y_raw * scale + shift)))) > 1.0


def test_bidirectional_structure(model):
    cfg, params, apply = model
    x = _x(4, cfg=cfg)
    y = apply(params, x)
    # reversing the variate order with the two directions swapped reverses the output exactly
    swapped = dict(params, layers=dict(params["layers"], mamba_f=params["layers"]["mamba_b"],
                                       mamba_b=params["layers"]["mamba_f"]))
    chex.assert_trees_all_close(apply(swapped, jnp.flip(x, axis=2)), jnp.flip(y, axis=2), atol=1e-5, rtol=1e-5)
    # with tied directions the model is equivariant to reversal; with different ones it is not
    tied = dict(params, layers=dict(params["layers"], mamba_b=params["layers"]["mamba_f"]))
    chex.assert_trees_all_close(apply(tied, jnp.flip(x, axis=2)), jnp.flip(apply(tied, x), axis=2), atol=1e-5,
                                rtol=1e-5)
    assert float(jnp.max(jnp.abs(apply(params, jnp.flip(x, axis=2)) - jnp.flip(y, axis=2)))) > 1e-3

    # information flows both ways along the variates; each direction alone is causal
    jacobian = jax.jit(jax.jacrev(lambda p, xx: s_mamba.apply(p, xx, cfg), argnums=1))  # [B, H, C, B, L, C]

    def influence(p, out_var, in_var):
        return float(jnp.abs(jacobian(p, x)[:, :, out_var, ..., in_var]).max())

    assert influence(params, 0, 4) > 1e-6 and influence(params, 4, 0) > 1e-6
    zero_b = jax.tree.map(jnp.zeros_like, params["layers"]["mamba_b"])
    no_b = dict(params, layers=dict(params["layers"], mamba_b=zero_b))
    assert influence(no_b, 0, 4) == 0.0 and influence(no_b, 4, 0) > 1e-6


def test_macrodata_forecaster_beats_last_value():
    cfg = load_config(CONFIG, ["model.embed_dim=32", "model.ffn_dim=32", "model.num_layers=1", "train.steps=100",
                               "train.learning_rate=0.002", "train.warmup_steps=5", "model.dropout_rate=0.0"])
    params, losses = fit(cfg)
    scores = evaluate_forecaster(cfg, params)
    assert scores["test_windows"] == 38 and scores["variates"] == 12
    assert np.mean(losses[-10:]) < losses[0]
    assert scores["mse"] < 0.95 * scores["baseline_mse"], scores


def test_jaxmoe_train_two_steps(tmp_path):
    run = tmp_path / "run"
    rc = main(["train", "--config", CONFIG, *TINY, "train.steps=2", "train.batch_size=8", "data.eval_fraction=0",
               "train.progress=false", "train.log_every=1", f"train.output_dir={run}"])
    assert rc == 0
    assert (run / "metrics.jsonl").read_text().count('"mse"') == 2
    assert (run / "checkpoints" / "2").is_dir()
