"""jaxmoe.ssm.companion: views agree, closed loop, preprocessing kernels, AR(p) recovery."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxmoe.nn.init import Boxed, is_boxed, unbox
from jaxmoe.ssm import companion as cp

BATCH, SEQ, EMBED, STATE = 2, 13, 3, 5
_init = jax.jit(functools.partial(cp.init_companion, embed_dim=EMBED, state_size=STATE))


def _params(seed=0):
    params = unbox(_init(jax.random.PRNGKey(seed)))
    keys = jax.random.split(jax.random.PRNGKey(seed + 100), 2)
    params["a"] = 0.4 * jax.random.normal(keys[0], params["a"].shape)  # a non-trivial last column
    params["D"] = jax.random.normal(keys[1], params["D"].shape)
    return params


def _u(seed=1, length=SEQ):
    return jax.random.normal(jax.random.PRNGKey(seed), (BATCH, length, EMBED))


def test_init_and_companion_matrix_structure():
    boxed = _init(jax.random.PRNGKey(0))
    for leaf in jax.tree.leaves(boxed, is_leaf=is_boxed):
        assert isinstance(leaf, Boxed) and len(leaf.axes) == leaf.value.ndim
    a = jnp.array([[0.1, -0.2, 0.3], [1.0, 2.0, 3.0]])
    m = np.asarray(cp.companion_matrix(a))
    chex.assert_shape(m, (2, 3, 3))
    np.testing.assert_allclose(m[0], [[0, 0, 0.1], [1, 0, -0.2], [0, 1, 0.3]])
    # characteristic polynomial z^3 - a3 z^2 - a2 z - a1
    np.testing.assert_allclose(np.poly(m[1]), [1, -3.0, -2.0, -1.0], atol=1e-5)
    normed = np.asarray(cp.companion_matrix(a, normalize_a=True))
    np.testing.assert_allclose(np.abs(normed[1, :, -1]).sum(), 1.0, rtol=1e-5)


def test_views_agree_and_kernel_is_c_a_power_b():
    params, u = _params(), _u()

    @jax.jit
    def run(params, u):
        outs = {m: cp.companion_ssm(params, u, mode=m) for m in cp.COMPANION_MODES}
        outs["normalized"] = cp.companion_ssm(params, u, normalize_a=True)
        outs["normalized_scan"] = cp.companion_ssm(params, u, mode="scan", normalize_a=True)
        return outs, cp.companion_kernel(params, SEQ)

    outs, kernel = run(params, u)
    chex.assert_shape(outs["conv"], (BATCH, SEQ, EMBED))
    chex.assert_tree_all_finite(outs)
    chex.assert_trees_all_close(outs["conv"], outs["scan"], rtol=1e-4, atol=1e-4)
    chex.assert_trees_all_close(outs["assoc"], outs["scan"], rtol=1e-4, atol=1e-4)
    chex.assert_trees_all_close(outs["normalized"], outs["normalized_scan"], rtol=1e-4, atol=1e-4)
    # kernel against explicit matrix powers of the explicitly written companion matrix
    for h in range(EMBED):
        a_col = np.asarray(params["a"][h], np.float64)
        m = np.diag(np.ones(STATE - 1), -1)
        m[:, -1] += a_col
        b, c = np.asarray(params["b"][h], np.float64), np.asarray(params["c"][h], np.float64)
        want = [c @ np.linalg.matrix_power(m, l) @ b for l in range(SEQ)]
        np.testing.assert_allclose(np.asarray(kernel[:, h]), want, rtol=1e-4, atol=1e-5)


def test_step_over_sequence_equals_full():
    params, u = _params(seed=2), _u(3)
    full, last = jax.jit(functools.partial(cp.companion_ssm, return_state=True))(params, u)
    step = jax.jit(cp.companion_step)
    state = cp.init_companion_state(BATCH, EMBED, state_size=STATE)
    outs = []
    for t in range(SEQ):
        y_t, state = step(params, u[:, t], state)
        outs.append(y_t)
    chex.assert_trees_all_close(jnp.stack(outs, 1), full, rtol=1e-4, atol=1e-4)
    chex.assert_trees_all_close(state, last, rtol=1e-4, atol=1e-4)


def test_closed_loop_rollouts_agree_with_explicit_feedback_loop():
    params, u = _params(seed=4), _u(5)
    params["a"] = 0.3 * params["a"]
    params["k"] = 0.5 * params["k"]
    horizon = 7

    @jax.jit
    def run(params, u):
        out = cp.companion_forecast(params, u, horizon)
        out["scan_rollout"] = cp.companion_forecast(params, u, horizon, rollout="scan")["forecast"]
        return out

    out = run(params, u)
    chex.assert_shape(out["forecast"], (BATCH, horizon, EMBED))
    chex.assert_trees_all_close(out["scan_rollout"], out["forecast"], rtol=1e-4, atol=1e-4)
    # explicit NumPy loop: run the lag, then feed k.x back as the next input
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    u_np = np.asarray(u, np.float64)
    for h in range(EMBED):
        m = np.diag(np.ones(STATE - 1), -1)
        m[:, -1] += p["a"][h]
        x = np.zeros((BATCH, STATE))
        for t in range(SEQ):
            x = x @ m.T + u_np[:, t, h, None] * p["b"][h]
            np.testing.assert_allclose(np.asarray(out["next_input"][:, t, h]), x @ p["k"][h], rtol=1e-4, atol=1e-4)
        u_cur = u_np[:, -1, h]
        for j in range(horizon):
            want = x @ p["c"][h] + p["D"][h] * u_cur
            np.testing.assert_allclose(np.asarray(out["forecast"][:, j, h]), want, rtol=1e-4, atol=1e-4)
            u_cur = x @ p["k"][h]
            x = x @ m.T + u_cur[:, None] * p["b"][h]


def test_shift_register_closed_loop_continues_an_ar_process():
    """a = 0, b = e_1 makes the state the last d inputs; c = k = phi then forecasts the
    noiseless AR(p) recursion exactly."""
    phi = np.array([0.6, -0.5, 0.3])
    d = 4
    series = [1.0, -0.5, 0.25]
    for _ in range(30):
        series.append(sum(phi[i] * series[-1 - i] for i in range(3)))
    series = np.array(series)
    taps = np.r_[phi, 0.0][None]
    params = {"a": jnp.zeros((1, d)), "b": jnp.eye(d)[:1], "c": jnp.asarray(taps, jnp.float32),
              "k": jnp.asarray(taps, jnp.float32), "D": jnp.zeros(1)}
    lag = jnp.asarray(series[:20], jnp.float32)[None, :, None]
    out = cp.companion_forecast(params, lag, 13)
    np.testing.assert_allclose(np.asarray(out["forecast"][0, :, 0]), series[20:], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(out["output"][0, 2:-1, 0]), series[3:20], rtol=1e-4, atol=1e-5)


def test_preprocessing_kernels():
    np.testing.assert_array_equal(cp.differencing_kernel(2), [1.0, -2.0, 1.0])
    np.testing.assert_allclose(cp.moving_average_residual_kernel(4), [0.75, -0.25, -0.25, -0.25])
    kernels = cp.preprocessing_kernels(6, diff_orders=(0, 1, 2), ma_windows=(3,))
    chex.assert_shape(kernels["c"], (4, 6))
    u = _u(6)
    out = cp.preprocess(u, kernels)
    chex.assert_shape(out, (BATCH, SEQ, EMBED, 4))
    u_np = np.asarray(u, np.float64)
    padded = np.concatenate([np.zeros((BATCH, 2, EMBED)), u_np], 1)  # zeros before the start
    first = padded[:, 2:] - padded[:, 1:-1]
    second = padded[:, 2:] - 2 * padded[:, 1:-1] + padded[:, :-2]
    ma_resid = u_np - (padded[:, 2:] + padded[:, 1:-1] + padded[:, :-2]) / 3
    for i, want in enumerate([u_np, first, second, ma_resid]):
        np.testing.assert_allclose(np.asarray(out[..., i]), want, rtol=1e-5, atol=1e-5, err_msg=f"kernel {i}")
    with pytest.raises(ValueError, match="state_size"):
        cp.fir_companion(cp.differencing_kernel(5), 4)


def _ar_series(phi, length, seed):
    rng = np.random.default_rng(seed)
    x, eps = np.zeros(length), rng.normal(size=length)
    for t in range(length):
        x[t] = sum(phi[i] * x[t - 1 - i] for i in range(len(phi)) if t - 1 - i >= 0) + eps[t]
    return x


def test_fit_recovers_ar_coefficients():
    """Adam on SpaceTime's three losses over windows of a synthetic AR(3) series; the
    learnt output and next-input kernels recover phi (and vanish past lag p)."""
    phi = np.array([0.5, -0.3, 0.2])
    series = _ar_series(phi, 3000, seed=0)
    lag_len, horizon = 48, 8
    starts = np.arange(100, len(series) - lag_len - horizon, 8)
    windows = np.stack([series[s: s + lag_len + horizon] for s in starts])[..., None].astype(np.float32)
    lag, future = jnp.asarray(windows[:, :lag_len]), jnp.asarray(windows[:, lag_len:])
    params = unbox(cp.init_companion(jax.random.PRNGKey(0), 1, state_size=4))
    steps = 600
    opt = optax.adam(optax.cosine_decay_schedule(3e-2, steps, alpha=0.03))

    @jax.jit
    def train(params):
        def body(carry, _):
            params, opt_state = carry
            (loss, _), grads = jax.value_and_grad(cp.companion_loss, has_aux=True)(params, lag, future)
            updates, opt_state = opt.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), loss

        (params, _), losses = jax.lax.scan(body, (params, opt.init(params)), None, length=steps)
        return params, losses

    fitted, losses = train(params)
    chex.assert_tree_all_finite(fitted)
    assert float(losses[-1]) < 0.1 * float(losses[0])
    out_kernel = cp.companion_kernel(fitted, 8)[:, 0].at[0].add(fitted["D"][0])
    next_kernel = cp.companion_kernel(fitted, 8, readout="k")[:, 0]
    for kernel in (out_kernel, next_kernel):
        np.testing.assert_allclose(np.asarray(kernel[:3]), phi, atol=0.05)
        assert np.abs(np.asarray(kernel[3:])).max() < 0.06
    # as good as the true AR model written as a companion SSM
    oracle_taps = jnp.asarray(np.r_[phi, 0.0][None], jnp.float32)
    oracle = {"a": jnp.zeros((1, 4)), "b": jnp.eye(4)[:1], "c": oracle_taps, "k": oracle_taps, "D": jnp.zeros(1)}
    fitted_loss = float(cp.companion_loss(fitted, lag, future)[0])
    assert fitted_loss < 1.02 * float(cp.companion_loss(oracle, lag, future)[0])


def test_gradients_finite():
    params, u = _params(seed=7), _u(8)
    future = _u(9, length=4)
    grads = jax.jit(jax.grad(lambda p: cp.companion_loss(p, u, future, normalize_a=True)[0]))(params)
    chex.assert_tree_all_finite(grads)
    assert all(float(jnp.abs(g).sum()) > 0 for g in jax.tree.leaves(grads))


def test_bad_inputs_raise():
    params, u = _params(), _u()
    with pytest.raises(ValueError, match="mode must be one of"):
        cp.companion_ssm(params, u, mode="fft")
    with pytest.raises(ValueError, match="rollout must be one of"):
        cp.companion_forecast(params, u, 3, rollout="loop")
    with pytest.raises(ValueError, match=r"\[batch, seq, embed\]"):
        cp.companion_ssm(params, u[..., :1])
    with pytest.raises(ValueError, match="horizon"):
        cp.companion_closed_loop(params, {"ssm": jnp.zeros((BATCH, EMBED, STATE))}, u[:, -1], 0)
    with pytest.raises(ValueError, match="readout"):
        cp.companion_kernel(params, 4, readout="b")
    with pytest.raises(ValueError, match="weights"):
        cp.companion_loss(params, u, u[:, :2], weights=(1.0, 1.0))
