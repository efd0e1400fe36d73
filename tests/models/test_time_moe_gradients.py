"""Regression: the Time-MoE value-bias gradient blow-up on padded windows.

Series shorter than the context used to be left-padded with zeros. Padded inputs are exactly
0, the residual stream there stays exactly 0 through every layer, and every RMSNorm multiplies
the gradient flowing back into that stream by ``1/sqrt(eps)`` (1000 at eps 1e-6). Observed
points attend to the padded keys, so gradient enters the zero stream and grows geometrically
with depth; only ``layers.mixer.v.bias`` collects it (every weight gradient there is
multiplied by a zero activation). At 12 layers x 384 wide in bf16 it reached 1e21 and
overflowed the global norm, so clipping silently zeroed every update.

These tests build the triggering case at small size on CPU (8 layers, 64 wide: the
unfixed code gives |grad v.bias| ~ 1e8 here) through the real data pipeline.
"""

import jax
import jax.numpy as jnp
import numpy as np

from jaxmoe.config import load_config
from jaxmoe.data.timeseries import build_timeseries_pipeline
from jaxmoe.models import time_moe as tm

CONTEXT = 128


def deep_cfg():
    return load_config(None, ["model.family=time_moe", "model.embed_dim=64", "model.num_layers=8",
                              "model.num_heads=4", "model.ffn_dim=128", "model.moe.num_experts=4",
                              "model.moe.experts_per_token=2", "model.horizons=[1,8,32]",
                              f"data.seq_len={CONTEXT}"]).model


def _grad_max(params, batch, m):
    grads = jax.jit(jax.grad(lambda p: tm.loss_fn(p, batch, m)[0]))(params)
    flat = jax.tree_util.tree_flatten_with_path(grads)[0]
    return {jax.tree_util.keystr(k): float(jnp.max(jnp.abs(v))) for k, v in flat}


def _short_series_batch():
    rng = np.random.default_rng(0)
    series = [rng.standard_normal(n).cumsum() + 10.0 for n in (40, 60, 300)]  # two shorter than a window
    pipe = build_timeseries_pipeline(sources=[(series, 1.0)], context_length=CONTEXT, stride=CONTEXT,
                                     batch_size=4, seed=0, shuffle=False)
    return {k: jnp.asarray(v) for k, v in next(pipe.iterator()).items()}


def test_padded_windows_keep_gradients_bounded():
    m = deep_cfg()
    params = tm.init(jax.random.PRNGKey(0), m)
    batch = _short_series_batch()
    mask = np.asarray(batch["mask"])
    assert (mask.sum(1) < CONTEXT + 1).any(), "the batch must hold padded windows"
    grads = _grad_max(params, batch, m)
    worst = max(grads, key=grads.get)
    assert grads[worst] < 10.0, f"gradient of {worst} is {grads[worst]:.3g}"


def test_leading_padding_is_aligned_like_trailing_padding():
    """A window whose data starts late (leading NaN/padding, e.g. from a user pipeline) gives
    the same loss as the same data placed at the start, and bounded gradients."""
    m = deep_cfg()
    params = tm.init(jax.random.PRNGKey(0), m)
    rng = np.random.default_rng(1)
    n, w = 50, CONTEXT + 1
    data = rng.standard_normal((2, n)).cumsum(1).astype(np.float32)
    right = np.zeros((2, w), np.float32)
    right_mask = np.zeros((2, w), np.float32)
    right[:, :n], right_mask[:, :n] = data, 1.0
    left = np.zeros((2, w), np.float32)
    left_mask = np.zeros((2, w), np.float32)
    left[:, w - n:], left_mask[:, w - n:] = data, 1.0
    b_right = {"values": jnp.asarray(right), "mask": jnp.asarray(right_mask)}
    b_left = {"values": jnp.asarray(left), "mask": jnp.asarray(left_mask)}
    loss_r = float(tm.loss_fn(params, b_right, m)[0])
    loss_l = float(tm.loss_fn(params, b_left, m)[0])
    np.testing.assert_allclose(loss_l, loss_r, rtol=1e-5)
    grads = _grad_max(params, b_left, m)
    assert max(grads.values()) < 10.0, max(grads.items(), key=lambda kv: kv[1])


def test_constant_context_carries_no_loss():
    """A constant context normalises to exact zeros (the same degenerate stream): its labels
    are masked, so it contributes neither loss nor gradient."""
    m = deep_cfg()
    params = tm.init(jax.random.PRNGKey(0), m)
    w = CONTEXT + 1
    values = np.full((1, w), 5.0, np.float32)
    values[0, -1] = 100.0  # the series jumps right after the context
    batch = {"values": jnp.asarray(values), "mask": jnp.ones((1, w), jnp.float32)}
    _, labels, label_mask = tm.prepare_batch(batch["values"], batch["mask"])
    assert float(label_mask.sum()) == 0.0
    grads = _grad_max(params, batch, m)
    assert max(grads.values()) < 1.0
