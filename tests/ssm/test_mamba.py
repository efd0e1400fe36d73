"""jaxmoe.ssm.mamba: assoc == lax.scan reference, chunked == unchunked, decode == full."""

import dataclasses
import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmoe.nn.init import Boxed, is_boxed, unbox
from jaxmoe.ssm.mamba import (
    MambaConfig,
    causal_depthwise_conv,
    init_mamba,
    init_mamba_state,
    mamba,
    mamba_step,
    selective_scan,
)

BATCH, SEQ, EMBED, STATE, CONV = 2, 23, 8, 4, 3
KW = dict(d_state=STATE, d_conv=CONV, expand=2)


_init = jax.jit(functools.partial(init_mamba, embed_dim=EMBED, **KW))  # one compile for all tests


def _params(seed=0):
    return unbox(_init(jax.random.PRNGKey(seed)))


def _x(seed=1, length=SEQ, dtype=jnp.float32):
    return jax.random.normal(jax.random.PRNGKey(seed), (BATCH, length, EMBED)).astype(dtype)


def test_init_shapes_axes_and_values():
    boxed = _init(jax.random.PRNGKey(0))
    for leaf in jax.tree.leaves(boxed, is_leaf=is_boxed):
        assert isinstance(leaf, Boxed) and len(leaf.axes) == leaf.value.ndim
    params = unbox(boxed)
    e, r = 2 * EMBED, math.ceil(EMBED / 16)
    chex.assert_shape(params["in_proj"], (EMBED, 2 * e))
    chex.assert_shape(params["conv_kernel"], (CONV, e))
    chex.assert_shape(params["x_proj"], (e, r + 2 * STATE))
    chex.assert_shape(params["dt_proj"], (r, e))
    chex.assert_shape(params["out_proj"], (e, EMBED))
    np.testing.assert_allclose(np.asarray(params["A_log"]), np.log(np.tile(np.arange(1, STATE + 1), (e, 1))), rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(params["D"]), np.ones(e))
    dt = np.asarray(jax.nn.softplus(params["dt_bias"]))  # log-uniform in [1e-3, 1e-1]
    assert dt.min() >= 1e-3 * 0.999 and dt.max() <= 1e-1 * 1.001 and dt.min() < 5e-3 and dt.max() > 3e-2
    wide = unbox(jax.eval_shape(functools.partial(init_mamba, embed_dim=64, d_state=2, expand=4), jax.random.PRNGKey(1)))
    assert wide["dt_proj"].shape == (4, 256)  # dt_rank = ceil(64 / 16)
    cfg = MambaConfig(EMBED, **KW)
    assert cfg.inner_dim == e and cfg.rank == r
    from_cfg = jax.eval_shape(functools.partial(init_mamba, **dataclasses.asdict(cfg)), jax.random.PRNGKey(0))
    chex.assert_trees_all_equal_shapes(unbox(from_cfg), params)


def _numpy_selective_scan(x, dt, a, b, c, d):
    """Spec reference, float64 loop: h_t = exp(dt A) h + dt B x; y = C.h + D x."""
    x, dt, a, b, c, d = (np.asarray(t, np.float64) for t in (x, dt, a, b, c, d))
    batch, length, e = x.shape
    h = np.zeros((batch, e, a.shape[1]))
    ys = np.zeros((batch, length, e))
    for t in range(length):
        h = np.exp(dt[:, t, :, None] * a) * h + (dt[:, t] * x[:, t])[..., None] * b[:, t, None, :]
        ys[:, t] = np.einsum("ben,bn->be", h, c[:, t]) + d * x[:, t]
    return ys, h


def test_selective_scan_modes_match_numpy_reference():
    k = jax.random.split(jax.random.PRNGKey(2), 6)
    e = 5
    x = jax.random.normal(k[0], (BATCH, SEQ, e))
    dt = jax.nn.softplus(jax.random.normal(k[1], (BATCH, SEQ, e)))
    a = -jnp.exp(jax.random.normal(k[2], (e, STATE)))
    b, c = jax.random.normal(k[3], (BATCH, SEQ, STATE)), jax.random.normal(k[4], (BATCH, SEQ, STATE))
    d = jax.random.normal(k[5], (e,))
    want_y, want_h = _numpy_selective_scan(x, dt, a, b, c, d)

    @jax.jit
    def run(*args):
        return {
            "scan": selective_scan(*args, mode="scan"),
            "assoc": selective_scan(*args, mode="assoc"),
            "chunk5": selective_scan(*args, mode="assoc", chunk_size=5),
        }

    for name, (y, h) in run(x, dt, a, b, c, d).items():
        np.testing.assert_allclose(np.asarray(y), want_y, rtol=1e-4, atol=1e-4, err_msg=name)
        np.testing.assert_allclose(np.asarray(h), want_h, rtol=1e-4, atol=1e-4, err_msg=name)


def test_causal_depthwise_conv_matches_explicit_sum():
    k = jax.random.split(jax.random.PRNGKey(3), 3)
    x = jax.random.normal(k[0], (BATCH, 7, 5))
    kernel, bias = jax.random.normal(k[1], (CONV, 5)), jax.random.normal(k[2], (5,))
    y, tail = causal_depthwise_conv(x, kernel, bias)
    x_np, k_np = np.asarray(x), np.asarray(kernel)
    want = np.zeros_like(x_np) + np.asarray(bias)
    for t in range(7):
        for j in range(CONV):  # PyTorch Conv1d(padding=K-1)[..., :L]: w[j] x[t - (K-1) + j]
            src = t - (CONV - 1) + j
            if src >= 0:
                want[:, t] += k_np[j] * x_np[:, src]
    np.testing.assert_allclose(np.asarray(y), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(tail), x_np[:, -(CONV - 1):])


def test_assoc_equals_scan_reference_and_chunked_equals_unchunked():
    params, x = _params(), _x()

    @jax.jit
    def run(params, x):
        return {
            "scan": mamba(params, x, mode="scan"),
            "assoc": mamba(params, x, mode="assoc"),
            "chunk4": mamba(params, x, chunk_size=4),
            "chunk7": mamba(params, x, chunk_size=7),
        }

    outs = run(params, x)
    chex.assert_shape(outs["assoc"], (BATCH, SEQ, EMBED))
    chex.assert_tree_all_finite(outs)
    chex.assert_trees_all_close(outs["assoc"], outs["scan"], rtol=1e-4, atol=1e-5)
    chex.assert_trees_all_close(outs["chunk4"], outs["assoc"], rtol=1e-4, atol=1e-5)
    chex.assert_trees_all_close(outs["chunk7"], outs["assoc"], rtol=1e-4, atol=1e-5)


def test_gradients_chunked_equal_unchunked_and_finite():
    params, x = _params(seed=4), _x(5)

    def loss(p, **kw):
        return jnp.mean(mamba(p, x, **kw) ** 2)

    grads = jax.jit(lambda p: {
        "assoc": jax.grad(loss)(p),
        "chunk": jax.grad(functools.partial(loss, chunk_size=6))(p),  # rematerialised chunks
    })(params)
    chex.assert_tree_all_finite(grads)
    chex.assert_trees_all_close(grads["chunk"], grads["assoc"], rtol=1e-3, atol=1e-6)
    assert float(jnp.abs(grads["assoc"]["A_log"]).sum()) > 0


def test_step_over_sequence_equals_full_and_prefill():
    params, x = _params(seed=6), _x(7)
    split = 10

    @jax.jit
    def full_and_prefill(params, x):
        full = mamba(params, x)
        head, state = mamba(params, x[:, :split], chunk_size=4, return_state=True)
        tail = mamba(params, x[:, split:], mode="scan", state=state)
        return full, jnp.concatenate([head, tail], 1), state

    full, resumed, prefill_state = full_and_prefill(params, x)
    chex.assert_trees_all_close(resumed, full, rtol=1e-4, atol=1e-5)
    step = jax.jit(mamba_step)
    state = init_mamba_state(BATCH, EMBED, **KW)
    chex.assert_shape(state["conv"], (BATCH, CONV - 1, 2 * EMBED))
    chex.assert_shape(state["ssm"], (BATCH, 2 * EMBED, STATE))
    outs = []
    for t in range(SEQ):
        if t == split:
            chex.assert_trees_all_close(prefill_state, state, rtol=1e-4, atol=1e-5)
        y_t, state = step(params, x[:, t], state)
        outs.append(y_t)
    chex.assert_trees_all_close(jnp.stack(outs, 1), full, rtol=1e-4, atol=1e-5)


def test_prefill_shorter_than_conv_window():
    params, x = _params(seed=8), _x(9, length=4)

    @jax.jit
    def run(params, x):
        full = mamba(params, x)
        head, state = mamba(params, x[:, :1], return_state=True)  # 1 token < d_conv - 1
        y_t, state = mamba_step(params, x[:, 1], state)
        tail = mamba(params, x[:, 2:], state=state)
        return full, jnp.concatenate([head, y_t[:, None], tail], 1), state

    full, resumed, state = run(params, x)
    chex.assert_shape(state["conv"], (BATCH, CONV - 1, 2 * EMBED))
    chex.assert_trees_all_close(resumed, full, rtol=1e-4, atol=1e-5)


def test_bf16_runs_with_fp32_scan():
    params, x = _params(seed=10), _x(11, dtype=jnp.bfloat16)
    y, state = jax.jit(functools.partial(mamba, return_state=True))(params, x)
    assert y.dtype == jnp.bfloat16 and state["ssm"].dtype == jnp.float32
    chex.assert_tree_all_finite(y)
    y32 = jax.jit(mamba)(params, x.astype(jnp.float32))
    np.testing.assert_allclose(np.asarray(y, np.float32), np.asarray(y32), rtol=0.1, atol=0.05)


def test_bad_inputs_raise():
    params, x = _params(), _x()
    with pytest.raises(ValueError, match="mode must be one of"):
        mamba(params, x, mode="parallel")
    with pytest.raises(ValueError, match="chunk_size"):
        mamba(params, x, chunk_size=0)
    with pytest.raises(ValueError, match=r"\[batch, seq, embed\]"):
        mamba(params, x[..., :3])
    with pytest.raises(ValueError, match=r"state\['conv'\]"):
        mamba_step(params, x[:, 0], {"conv": jnp.zeros((BATCH, CONV, 2 * EMBED)),
                                     "ssm": jnp.zeros((BATCH, 2 * EMBED, STATE))})
    with pytest.raises(ValueError, match=r"\[batch, embed\]"):
        mamba_step(params, x, init_mamba_state(BATCH, EMBED, **KW))
    with pytest.raises(ValueError, match="d_state"):
        MambaConfig(EMBED, d_state=0)
    with pytest.raises(ValueError, match="dt_min"):
        init_mamba(jax.random.PRNGKey(0), EMBED, dt_min=0.5, dt_max=0.1)
