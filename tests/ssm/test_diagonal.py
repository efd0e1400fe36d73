"""jaxmoe.ssm.diagonal: assoc == scan == conv, decoding, bidirectional, precision."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmoe.nn.init import Boxed, is_boxed, unbox
from jaxmoe.ssm import diagonal, hippo
from jaxmoe.ssm.diagonal import (
    diagonal_ssm,
    diagonal_ssm_kernel,
    diagonal_ssm_step,
    init_diagonal_ssm,
    init_diagonal_ssm_state,
)

BATCH, SEQ, EMBED, STATE = 2, 14, 3, 4


def _params(seed=0, bidirectional=False, init="legs"):
    """Init, then randomise every leaf a little so equivalences are not tested at init only."""
    params = unbox(init_diagonal_ssm(jax.random.PRNGKey(seed), EMBED, d_state=STATE,
                                     bidirectional=bidirectional, init=init))
    keys = iter(jax.random.split(jax.random.PRNGKey(seed + 100), len(params)))
    out = {}
    for name, value in params.items():
        noise = jax.random.normal(next(keys), value.shape)
        out[name] = value + (0.3 * noise if name in ("lambda_re_log", "lambda_im", "log_dt") else 0.5 * noise)
    out["log_dt"] = jnp.clip(out["log_dt"], math.log(1e-2), math.log(0.5))
    return out


def _u(seed=1, length=SEQ, dtype=jnp.float32):
    return jax.random.normal(jax.random.PRNGKey(seed), (BATCH, length, EMBED)).astype(dtype)


def test_init_shapes_axes_and_eigenvalues():
    boxed = init_diagonal_ssm(jax.random.PRNGKey(0), EMBED, d_state=STATE, bidirectional=True)
    for leaf in jax.tree.leaves(boxed, is_leaf=is_boxed):
        assert isinstance(leaf, Boxed) and len(leaf.axes) == leaf.value.ndim
    params = unbox(boxed)
    chex.assert_shape(params["B_re"], (STATE, EMBED))
    chex.assert_shape(params["C_rev_im"], (EMBED, STATE))
    lam = -np.exp(np.asarray(params["lambda_re_log"])) + 1j * np.asarray(params["lambda_im"])
    np.testing.assert_allclose(lam, hippo.diagonal_init(STATE, "legs"), rtol=1e-5)
    assert "C_rev_re" not in unbox(init_diagonal_ssm(jax.random.PRNGKey(0), EMBED, d_state=STATE))


@pytest.mark.parametrize("discretization", ["zoh", "bilinear"])
def test_views_agree(discretization):
    params, u = _params(), _u()

    @jax.jit
    def run(params, u):
        kw = dict(discretization=discretization)
        return {
            "assoc": diagonal_ssm(params, u, mode="assoc", **kw),
            "scan": diagonal_ssm(params, u, mode="scan", **kw),
            "conv": diagonal_ssm(params, u, mode="conv", **kw),
            "chunked": diagonal_ssm(params, u, mode="assoc", chunk_size=5, **kw),
        }

    outs = run(params, u)
    chex.assert_shape(outs["assoc"], (BATCH, SEQ, EMBED))
    chex.assert_tree_all_finite(outs)
    for mode in ("assoc", "conv", "chunked"):
        chex.assert_trees_all_close(outs[mode], outs["scan"], rtol=1e-4, atol=1e-4)


def test_matches_real_reference_and_kernel():
    """Independent reference: the equivalent real system of size 2P in a NumPy loop, and
    ``y = sum_l K[l] u_{k-l} + D u`` with the kernel."""
    params, u = _params(seed=2), _u(3)
    y = jax.jit(diagonal_ssm)(params, u)
    lam = -np.exp(np.asarray(params["lambda_re_log"], np.float64)) + 1j * np.asarray(params["lambda_im"])
    dt = np.exp(np.asarray(params["log_dt"], np.float64))
    b = np.asarray(params["B_re"]) + 1j * np.asarray(params["B_im"])
    c = np.asarray(params["C_re"]) + 1j * np.asarray(params["C_im"])
    # conjugate-symmetric full system: modes (lam, conj(lam)), y = C x + conj(C) conj(x)
    lam_full = np.concatenate([lam, lam.conj()])
    b_full = np.concatenate([b, b.conj()])
    c_full = np.concatenate([c, c.conj()], axis=1)
    lam_bar = np.exp(lam_full * np.concatenate([dt, dt]))
    b_bar = ((lam_bar - 1) / lam_full)[:, None] * b_full
    u_np = np.asarray(u, np.float64)
    x = np.zeros((BATCH, 2 * STATE), np.complex128)
    want = np.zeros_like(u_np)
    for t in range(SEQ):
        x = lam_bar * x + u_np[:, t] @ b_bar.T
        want[:, t] = (x @ c_full.T).real + np.asarray(params["D"]) * u_np[:, t]
    np.testing.assert_allclose(np.asarray(y), want, rtol=1e-4, atol=1e-4)

    kernel = diagonal_ssm_kernel(params, SEQ)
    chex.assert_shape(kernel, (SEQ, EMBED, EMBED))
    k_np = np.asarray(kernel, np.float64)
    via_kernel = np.zeros_like(u_np)
    for t in range(SEQ):
        for lag in range(t + 1):
            via_kernel[:, t] += u_np[:, t - lag] @ k_np[lag].T
    via_kernel += np.asarray(params["D"]) * u_np
    np.testing.assert_allclose(via_kernel, want, rtol=1e-4, atol=1e-4)


def test_step_over_sequence_equals_full_and_prefill():
    params, u = _params(seed=4), _u(5)
    split = 9

    @jax.jit
    def full_and_prefill(params, u):
        full = diagonal_ssm(params, u, mode="scan")
        head, state = diagonal_ssm(params, u[:, :split], mode="conv", return_state=True)
        tail = diagonal_ssm(params, u[:, split:], mode="assoc", state=state)
        return full, jnp.concatenate([head, tail], 1), state

    full, resumed, prefill_state = full_and_prefill(params, u)
    chex.assert_trees_all_close(resumed, full, rtol=1e-4, atol=1e-4)
    step = jax.jit(diagonal_ssm_step)
    state = init_diagonal_ssm_state(BATCH, EMBED, d_state=STATE)
    assert state["ssm"].dtype == jnp.complex64
    outs = []
    for t in range(SEQ):
        if t == split:
            chex.assert_trees_all_close(prefill_state, state, rtol=1e-4, atol=1e-4)
        y_t, state = step(params, u[:, t], state)
        chex.assert_shape(y_t, (BATCH, EMBED))
        outs.append(y_t)
    chex.assert_trees_all_close(jnp.stack(outs, 1), full, rtol=1e-4, atol=1e-4)


def test_bidirectional_equals_forward_plus_flipped_backward():
    params, u = _params(seed=6, bidirectional=True), _u(7)
    fwd_params = {k: v for k, v in params.items() if not k.startswith("C_rev")}
    bwd_params = dict(fwd_params, C_re=params["C_rev_re"], C_im=params["C_rev_im"], D=jnp.zeros(EMBED))

    @jax.jit
    def run(params, u):
        both = {m: diagonal_ssm(params, u, mode=m) for m in ("assoc", "scan", "conv")}
        forward = diagonal_ssm(fwd_params, u)
        backward = jnp.flip(diagonal_ssm(bwd_params, jnp.flip(u, 1)), 1)
        return both, forward + backward, forward

    both, combined, forward = run(params, u)
    for mode in ("assoc", "scan", "conv"):
        chex.assert_trees_all_close(both[mode], combined, rtol=1e-4, atol=1e-4)
    assert not np.allclose(np.asarray(both["assoc"]), np.asarray(forward), atol=1e-2)
    with pytest.raises(ValueError, match="bidirectional"):
        diagonal_ssm_step(params, u[:, 0], init_diagonal_ssm_state(BATCH, EMBED, d_state=STATE))
    with pytest.raises(ValueError, match="bidirectional"):
        diagonal_ssm(params, u, return_state=True)


def test_bf16_inputs_accumulate_in_fp32():
    params = _params(seed=8)
    u16 = _u(9, dtype=jnp.bfloat16)

    @jax.jit
    def run(params, u16):
        y16, state = diagonal_ssm(params, u16, return_state=True)
        return y16, state, diagonal_ssm(params, u16.astype(jnp.float32))

    y16, state, y32 = run(params, u16)
    assert y16.dtype == jnp.bfloat16
    assert state["ssm"].dtype == jnp.complex64
    # the bf16 output is the fp32 computation on the same values, rounded once (1 bf16 ulp)
    rounded = np.asarray(y32.astype(jnp.bfloat16), np.float32)
    np.testing.assert_allclose(np.asarray(y16, np.float32), rounded, rtol=2.0**-7, atol=1e-6)


def test_gradients_finite_and_agree():
    params, u = _params(seed=10, bidirectional=True), _u(11)

    def loss(p, mode):
        return jnp.mean(diagonal_ssm(p, u, mode=mode) ** 2)

    grads = jax.jit(lambda p: {m: jax.grad(loss)(p, m) for m in ("assoc", "conv")})(params)
    chex.assert_tree_all_finite(grads)
    chex.assert_trees_all_close(grads["conv"], grads["assoc"], rtol=1e-3, atol=1e-4)


def test_other_inits_and_errors():
    for init in ("lin", "inv"):
        params = unbox(init_diagonal_ssm(jax.random.PRNGKey(0), EMBED, d_state=STATE, init=init))
        np.testing.assert_allclose(np.asarray(params["lambda_im"]), hippo.diagonal_init(STATE, init).imag, rtol=1e-6)
    params, u = _params(), _u()
    with pytest.raises(ValueError, match="mode must be one of"):
        diagonal_ssm(params, u, mode="fft")
    with pytest.raises(ValueError, match="discretization"):
        diagonal_ssm(params, u, discretization="euler")
    with pytest.raises(ValueError, match=r"\[batch, seq, embed\]"):
        diagonal_ssm(params, u[0])
    with pytest.raises(ValueError, match=r"\[batch, embed\]"):
        diagonal_ssm_step(params, u, init_diagonal_ssm_state(BATCH, EMBED, d_state=STATE))
    with pytest.raises(ValueError, match="state"):
        diagonal_ssm(params, u, state={"ssm": jnp.zeros((BATCH, STATE + 1), jnp.complex64)})
    with pytest.raises(ValueError, match="init must be one of"):
        init_diagonal_ssm(jax.random.PRNGKey(0), EMBED, init="random")
    assert diagonal.DIAGONAL_MODES == ("assoc", "scan", "conv")
