"""jaxmoe.ssm.lssl: recurrent == convolution == parallel, decoding == full sequence."""

import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmoe.nn.init import Boxed, is_boxed, unbox
from jaxmoe.ssm import hippo, lssl

BATCH, SEQ, EMBED, STATE = 2, 16, 3, 6


def _jit(fn, **static):
    return jax.jit(functools.partial(fn, **static))


def _params(a_mode, seed=0, perturb=True):
    """Random params; trainable A/B and C/D/dt get perturbed away from their init."""
    params = unbox(lssl.init_lssl(jax.random.PRNGKey(seed), EMBED, state_size=STATE, a_mode=a_mode))
    if perturb:
        keys = iter(jax.random.split(jax.random.PRNGKey(seed + 100), 8))
        params["D"] = jax.random.normal(next(keys), (EMBED,))
        params["C"] = jax.random.normal(next(keys), (EMBED, STATE))
        params["log_dt"] = jax.random.uniform(next(keys), (EMBED,), minval=math.log(1e-2), maxval=math.log(0.5))
        if "A" in params:
            params["A"] = params["A"] + 0.3 * jax.random.normal(next(keys), params["A"].shape)
            params["B"] = params["B"] + 0.3 * jax.random.normal(next(keys), params["B"].shape)
    return params


def _u(seed=1, length=SEQ):
    return jax.random.normal(jax.random.PRNGKey(seed), (BATCH, length, EMBED))


def test_init_shapes_axes_and_dt_range():
    boxed = lssl.init_lssl(jax.random.PRNGKey(0), EMBED, state_size=STATE, a_mode="per_feature")
    for leaf in jax.tree.leaves(boxed, is_leaf=is_boxed):
        assert isinstance(leaf, Boxed) and len(leaf.axes) == leaf.value.ndim
    params = unbox(boxed)
    chex.assert_shape(params["A"], (EMBED, STATE, STATE))
    chex.assert_shape(params["B"], (EMBED, STATE))
    chex.assert_shape(params["C"], (EMBED, STATE))
    chex.assert_shape(params["out_proj"], (EMBED, EMBED))
    np.testing.assert_allclose(np.asarray(params["A"][1]), hippo.hippo_legs(STATE)[0], rtol=1e-6)
    big = unbox(lssl.init_lssl(jax.random.PRNGKey(1), 512, state_size=2))
    dt = np.exp(np.asarray(big["log_dt"]))
    assert dt.min() >= 1e-3 * 0.999 and dt.max() <= 1e-1 * 1.001
    assert dt.min() < 2e-3 and dt.max() > 5e-2  # actually spread over the range
    assert lssl.lssl_a_mode(unbox(lssl.init_lssl(jax.random.PRNGKey(0), 2, state_size=4))) == "fixed"
    assert lssl.lssl_a_mode(unbox(lssl.init_lssl(jax.random.PRNGKey(0), 2, state_size=4, a_mode="shared"))) == "shared"


def _all_modes(fn=lssl.lssl, modes=lssl.LSSL_MODES, **static):
    """One jitted function returning ``{mode: fn(..., mode=mode)}`` (one compile, not three)."""
    return jax.jit(lambda *args: {m: functools.partial(fn, mode=m, **static)(*args) for m in modes})


@pytest.mark.parametrize("a_mode", lssl.A_MODES)
def test_modes_agree(a_mode):
    params, u = _params(a_mode), _u()
    outs = _all_modes()(params, u)
    chex.assert_shape(outs["convolution"], (BATCH, SEQ, EMBED))
    chex.assert_tree_all_finite(outs)
    chex.assert_trees_all_close(outs["convolution"], outs["recurrent"], rtol=1e-4, atol=1e-4)
    chex.assert_trees_all_close(outs["parallel"], outs["recurrent"], rtol=1e-4, atol=1e-4)


def test_modes_agree_for_other_discretisations_and_legt():
    # dt <= 0.2 keeps forward Euler stable (needs dt |lambda| < 2); D = 0 isolates the SSM
    shared = _params("shared", seed=3, perturb=False)
    shared["A"] = shared["A"] + 0.3 * jax.random.normal(jax.random.PRNGKey(3), shared["A"].shape)
    shared["log_dt"] = jnp.linspace(math.log(0.05), math.log(0.2), EMBED)
    shared["D"] = jnp.zeros(EMBED)
    fixed = _params("fixed", seed=5)
    u = _u(4)
    cases = [(0.0, "legs"), (1.0, "legs"), ("zoh", "legs"), (0.5, "legt"), ("zoh", "legt")]

    @jax.jit
    def run(shared, fixed, u):
        out = []
        for disc, measure in cases:
            params = shared if measure == "legs" else fixed
            out.append([lssl.lssl_ssm(params, u, mode=m, measure=measure, discretization=disc)[0]
                        for m in ("recurrent", "convolution")])
        return out

    for case, (rec, conv) in zip(cases, run(shared, fixed, u)):
        np.testing.assert_allclose(np.asarray(conv), np.asarray(rec), rtol=1e-4, atol=1e-4, err_msg=str(case))
    # the discretisation matters (the comparison above is not between identical things)
    outs = run(shared, fixed, u)
    assert not np.allclose(np.asarray(outs[0][0]), np.asarray(outs[2][0]), atol=1e-2)


def test_recurrence_matches_explicit_discretisation():
    """Independent reference: NumPy loop with A_bar, B_bar from the bilinear formula."""
    params, u = _params("fixed", seed=6), _u(7, length=6)
    a, b = hippo.hippo_legs(STATE)
    y, _ = _jit(lssl.lssl_ssm, mode="convolution")(params, u)
    u_np = np.asarray(u, np.float64)
    for h in range(EMBED):
        dt = math.exp(float(params["log_dt"][h]))
        lhs = np.eye(STATE) - dt / 2 * a
        a_bar = np.linalg.solve(lhs, np.eye(STATE) + dt / 2 * a)
        b_bar = dt * np.linalg.solve(lhs, b)
        x = np.zeros((BATCH, STATE))
        for t in range(u.shape[1]):
            x = x @ a_bar.T + u_np[:, t, h, None] * b_bar
            want = x @ np.asarray(params["C"][h]) + float(params["D"][h]) * u_np[:, t, h]
            np.testing.assert_allclose(np.asarray(y[:, t, h]), want, rtol=1e-4, atol=1e-4)


def test_kernel_is_the_impulse_response():
    params = _params("per_feature", seed=8)
    delta = jnp.zeros((1, SEQ, EMBED)).at[0, 0].set(1.0)

    @jax.jit
    def run(params):
        return lssl.lssl_kernel(params, SEQ), lssl.lssl_ssm(params, delta, mode="recurrent")[0]

    kernel, response = run(params)
    chex.assert_shape(kernel, (SEQ, EMBED))
    chex.assert_trees_all_close(response[0], kernel.at[0].add(params["D"]), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("a_mode", ["fixed", "per_feature"])
def test_step_over_sequence_equals_full_and_prefill(a_mode):
    params, u = _params(a_mode, seed=9), _u(10)
    split = 11

    @jax.jit
    def full_and_prefill(params, u):
        full = lssl.lssl(params, u, mode="recurrent")
        head, state = lssl.lssl(params, u[:, :split], mode="convolution", return_state=True)
        tail = lssl.lssl(params, u[:, split:], mode="convolution", state=state)
        return full, jnp.concatenate([head, tail], 1), state

    full, resumed, prefill_state = full_and_prefill(params, u)
    chex.assert_trees_all_close(resumed, full, rtol=1e-4, atol=1e-4)
    step = jax.jit(lssl.lssl_step)
    state = lssl.init_lssl_state(BATCH, EMBED, state_size=STATE)
    outs = []
    for t in range(SEQ):
        if t == split:  # the state a convolution-mode prefill returns is the recurrent state
            chex.assert_trees_all_close(prefill_state, state, rtol=1e-4, atol=1e-4)
        y_t, state = step(params, u[:, t], state)
        outs.append(y_t)
    chex.assert_trees_all_close(jnp.stack(outs, 1), full, rtol=1e-4, atol=1e-4)


def test_gradients_finite_and_agree_across_modes():
    params, u = _params("shared", seed=11), _u(12)

    def loss(p, mode):
        return jnp.mean(lssl.lssl(p, u, mode=mode) ** 2)

    grads = jax.jit(lambda p: {m: jax.grad(loss)(p, m) for m in ("recurrent", "convolution")})(params)
    chex.assert_tree_all_finite(grads)
    chex.assert_trees_all_close(grads["convolution"], grads["recurrent"], rtol=1e-3, atol=1e-4)
    assert float(jnp.abs(grads["recurrent"]["A"]).sum()) > 0  # the shared A is trained


def test_dropout():
    params, u = _params("fixed"), _u()

    @jax.jit
    def run(rng):
        return (lssl.lssl(params, u), lssl.lssl(params, u, dropout_rate=0.0, rng=rng),
                lssl.lssl(params, u, dropout_rate=0.5, rng=rng))

    base, same, drop1 = run(jax.random.PRNGKey(0))
    chex.assert_trees_all_close(base, same)
    assert not np.allclose(np.asarray(drop1), np.asarray(base))
    chex.assert_trees_all_close(run(jax.random.PRNGKey(0))[2], drop1)  # same key, same mask
    assert not np.allclose(np.asarray(run(jax.random.PRNGKey(1))[2]), np.asarray(drop1))


def test_bad_inputs_raise():
    params, u = _params("fixed"), _u()
    with pytest.raises(ValueError, match="mode must be one of"):
        lssl.lssl(params, u, mode="fft")
    with pytest.raises(ValueError, match=r"\[batch, seq, embed\]"):
        lssl.lssl(params, u[..., :2])
    with pytest.raises(ValueError, match=r"\[batch, embed\]"):
        lssl.lssl_step(params, u, lssl.init_lssl_state(BATCH, EMBED, state_size=STATE))
    with pytest.raises(ValueError, match="a_mode"):
        lssl.init_lssl(jax.random.PRNGKey(0), 2, a_mode="learned")
    with pytest.raises(ValueError, match="state\\['ssm'\\]"):
        lssl.lssl(params, u, state={"ssm": jnp.zeros((BATCH, EMBED, STATE + 1))})
    with pytest.raises(ValueError, match="dropout_rate"):
        lssl.lssl(params, u, dropout_rate=1.0)
