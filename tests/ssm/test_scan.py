"""jaxmoe.ssm.scan: binary operators, linear_recurrence views, Krylov, FFT convolution."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmoe.ssm import scan


def _np_recurrence(a, b, h0=None, matrix=False, reverse=False):
    """Plain loop over axis 0 (NumPy, float64): the reference for every view."""
    a, b = np.asarray(a, np.complex128), np.asarray(b, np.complex128)
    length = b.shape[0]
    state_shape = np.broadcast_shapes(a.shape[1:-1] if matrix else a.shape[1:], b.shape[1:])
    h = np.zeros(state_shape, np.complex128) if h0 is None else np.broadcast_to(h0, state_shape).astype(np.complex128)
    out = np.zeros((length,) + state_shape, np.complex128)
    order = range(length - 1, -1, -1) if reverse else range(length)
    for t in order:
        h = (np.matmul(a[t], h[..., None])[..., 0] if matrix else a[t] * h) + b[t]
        out[t] = h
    return out


def _jit(fn, **static):
    """Jit with keyword arguments fixed (eager associative scans compile op by op: slow)."""
    return jax.jit(functools.partial(fn, **static))


def _rand(key, shape, dtype=jnp.float32):
    return jax.random.normal(key, shape, dtype)


def test_diagonal_combine_is_associative_and_matches_two_steps():
    k = jax.random.split(jax.random.PRNGKey(0), 6)
    e = [(_rand(k[2 * i], (5,)), _rand(k[2 * i + 1], (5,))) for i in range(3)]
    left = scan.diagonal_combine(scan.diagonal_combine(e[0], e[1]), e[2])
    right = scan.diagonal_combine(e[0], scan.diagonal_combine(e[1], e[2]))
    chex.assert_trees_all_close(left, right, rtol=1e-5, atol=1e-6)
    # composing (a0, b0) then (a1, b1) on h: a1 (a0 h + b0) + b1
    h = _rand(jax.random.PRNGKey(9), (5,))
    a01, b01 = scan.diagonal_combine(e[0], e[1])
    chex.assert_trees_all_close(a01 * h + b01, e[1][0] * (e[0][0] * h + e[0][1]) + e[1][1], rtol=1e-5, atol=1e-6)


def test_matrix_combine_is_associative_and_matches_two_steps():
    k = jax.random.split(jax.random.PRNGKey(1), 6)
    e = [(_rand(k[2 * i], (2, 3, 3)), _rand(k[2 * i + 1], (2, 3))) for i in range(3)]
    left = scan.matrix_combine(scan.matrix_combine(e[0], e[1]), e[2])
    right = scan.matrix_combine(e[0], scan.matrix_combine(e[1], e[2]))
    chex.assert_trees_all_close(left, right, rtol=1e-4, atol=1e-5)
    h = _rand(jax.random.PRNGKey(9), (2, 3))
    a01, b01 = scan.matrix_combine(e[0], e[1])
    step = lambda a, b, x: jnp.einsum("bij,bj->bi", a, x) + b  # noqa: E731
    chex.assert_trees_all_close(step(a01, b01, h), step(*e[1], step(*e[0], h)), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("with_h0", [False, True])
def test_diagonal_recurrence_views_match_loop(reverse, with_h0):
    k = jax.random.split(jax.random.PRNGKey(2), 3)
    length = 13
    a = jax.random.uniform(k[0], (length, 2, 3), minval=-1.0, maxval=1.0)
    b = _rand(k[1], (length, 2, 3))
    h0 = _rand(k[2], (2, 3)) if with_h0 else None
    want = _np_recurrence(a, b, None if h0 is None else np.asarray(h0), reverse=reverse).real
    for kwargs in [dict(mode="scan"), dict(mode="assoc"), dict(mode="assoc", chunk_size=4), dict(mode="assoc", chunk_size=1)]:
        got = _jit(scan.linear_recurrence, reverse=reverse, **kwargs)(a, b, h0)
        chex.assert_shape(got, (length, 2, 3))
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-5, err_msg=str(kwargs))


def test_recurrence_on_inner_axis_with_broadcast_complex_transition():
    k = jax.random.split(jax.random.PRNGKey(3), 4)
    batch, length, p = 2, 11, 4
    lam = jax.lax.complex(-jax.random.uniform(k[0], (p,), minval=0.1, maxval=0.5), _rand(k[1], (p,)))
    lam_bar = jnp.exp(lam * 0.3)
    a = jnp.broadcast_to(lam_bar, (1, length, p))
    b = jax.lax.complex(_rand(k[2], (batch, length, p)), _rand(k[3], (batch, length, p)))
    want = _np_recurrence(np.moveaxis(np.broadcast_to(np.asarray(a), (batch, length, p)), 1, 0),
                          np.moveaxis(np.asarray(b), 1, 0))
    want = np.moveaxis(want, 0, 1)
    for kwargs in [dict(mode="scan"), dict(mode="assoc"), dict(mode="assoc", chunk_size=3)]:
        got = _jit(scan.linear_recurrence, axis=1, **kwargs)(a, b)
        assert got.dtype == jnp.complex64
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-5, err_msg=str(kwargs))
    # negative axis addresses the same dimension
    chex.assert_trees_all_close(_jit(scan.linear_recurrence, axis=-2)(a, b), _jit(scan.linear_recurrence, axis=1)(a, b))


def test_reverse_equals_flipped_forward():
    k = jax.random.split(jax.random.PRNGKey(4), 2)
    a = jax.random.uniform(k[0], (9, 5), minval=-1.0, maxval=1.0)
    b = _rand(k[1], (9, 5))
    rev = _jit(scan.linear_recurrence, reverse=True, chunk_size=4)(a, b)
    forward = _jit(scan.linear_recurrence)
    flipped = jnp.flip(forward(jnp.flip(a, 0), jnp.flip(b, 0)), 0)
    chex.assert_trees_all_close(rev, flipped, rtol=1e-5, atol=1e-6)
    assert not np.allclose(np.asarray(rev), np.asarray(forward(a, b)))


@pytest.mark.parametrize("reverse", [False, True])
def test_matrix_recurrence_views_match_loop(reverse):
    k = jax.random.split(jax.random.PRNGKey(5), 3)
    batch, length, h, n = 2, 10, 3, 4
    a = 0.5 * _rand(k[0], (1, length, h, n, n))  # broadcast over batch
    b = _rand(k[1], (batch, length, h, n))
    h0 = _rand(k[2], (batch, h, n))
    a_full = np.broadcast_to(np.asarray(a), (batch, length, h, n, n))
    want = np.moveaxis(
        _np_recurrence(np.moveaxis(a_full, 1, 0), np.moveaxis(np.asarray(b), 1, 0), np.asarray(h0), matrix=True,
                       reverse=reverse), 0, 1).real
    for kwargs in [dict(mode="scan"), dict(mode="assoc"), dict(mode="assoc", chunk_size=3)]:
        got = _jit(scan.linear_recurrence, axis=1, matrix=True, reverse=reverse, **kwargs)(a, b, h0)
        chex.assert_shape(got, (batch, length, h, n))
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4, err_msg=str(kwargs))


def test_chunked_recurrence_gradients_match_and_are_finite():
    k = jax.random.split(jax.random.PRNGKey(6), 2)
    a = jax.random.uniform(k[0], (12, 3), minval=0.2, maxval=0.9)
    b = _rand(k[1], (12, 3))

    def loss(a, b, **kw):
        return jnp.sum(jnp.sin(scan.linear_recurrence(a, b, **kw)))

    g_scan = _jit(jax.grad(functools.partial(loss, mode="scan"), argnums=(0, 1)))(a, b)
    g_chunk = _jit(jax.grad(functools.partial(loss, mode="assoc", chunk_size=5), argnums=(0, 1)))(a, b)
    chex.assert_tree_all_finite(g_chunk)
    chex.assert_trees_all_close(g_scan, g_chunk, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("length", [1, 5, 8, 13])
def test_krylov_matches_matrix_powers(length):
    k = jax.random.split(jax.random.PRNGKey(7), 2)
    a = 0.4 * _rand(k[0], (2, 4, 4))
    b = _rand(k[1], (2, 4))
    got = _jit(scan.krylov, length=length)(a, b)
    chex.assert_shape(got, (2, length, 4))
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    want = np.stack([np.einsum("hij,hj->hi", np.stack([np.linalg.matrix_power(m, l) for m in a64]), b64)
                     for l in range(length)], axis=1)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("complex_input", [False, True])
def test_causal_conv_fft_matches_direct_sum(complex_input):
    k = jax.random.split(jax.random.PRNGKey(8), 4)
    u = _rand(k[0], (2, 9, 3))
    kern = _rand(k[1], (1, 9, 3))
    if complex_input:
        u = jax.lax.complex(u, _rand(k[2], u.shape))
        kern = jax.lax.complex(kern, _rand(k[3], kern.shape))
    got = _jit(scan.causal_conv_fft, axis=1)(u, kern)
    u_np, k_np = np.asarray(u), np.asarray(kern)
    want = np.zeros(np.broadcast_shapes(u_np.shape, k_np.shape), u_np.dtype)
    for t in range(9):
        for lag in range(t + 1):
            want[:, t] += k_np[:, lag] * u_np[:, t - lag]
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-5)
    assert jnp.iscomplexobj(got) == complex_input


@pytest.mark.parametrize("with_h0", [False, True])
def test_lti_ssm_views_agree(with_h0):
    k = jax.random.split(jax.random.PRNGKey(10), 6)
    batch, length, h, n = 2, 12, 3, 4
    a = 0.4 * _rand(k[0], (h, n, n))
    b, c, d = _rand(k[1], (h, n)), _rand(k[2], (h, n)), _rand(k[3], (h,))
    u = _rand(k[4], (batch, length, h))
    h0 = _rand(k[5], (batch, h, n)) if with_h0 else None
    outs = {m: _jit(scan.lti_ssm, mode=m)(a, b, c, d, u, h0=h0) for m in scan.LTI_MODES}
    for m in ("assoc", "conv"):
        chex.assert_trees_all_close(outs[m], outs["scan"], rtol=1e-4, atol=1e-4)
    chex.assert_shape(outs["conv"][0], (batch, length, h))
    chex.assert_shape(outs["conv"][1], (batch, h, n))


def test_bad_inputs_raise_clear_errors():
    a = jnp.ones((4, 3))
    with pytest.raises(ValueError, match="mode must be one of"):
        scan.linear_recurrence(a, a, mode="parallel")
    with pytest.raises(ValueError, match="sequence length"):
        scan.linear_recurrence(jnp.ones((5, 3)), a)
    with pytest.raises(ValueError, match="a.ndim must be"):
        scan.linear_recurrence(jnp.ones((4, 3, 3)), a)
    with pytest.raises(ValueError, match="chunk_size"):
        scan.linear_recurrence(a, a, chunk_size=0)
    with pytest.raises(ValueError, match="N = b.shape"):
        scan.linear_recurrence(jnp.ones((4, 3, 2)), jnp.ones((4, 2)), matrix=True)
    with pytest.raises(ValueError, match="h0"):
        scan.linear_recurrence(a, a, jnp.ones((2,)))
    with pytest.raises(ValueError, match="length must be"):
        scan.krylov(jnp.eye(2), jnp.ones(2), 0)
    with pytest.raises(ValueError, match="same rank"):
        scan.causal_conv_fft(jnp.ones((2, 4, 3)), jnp.ones((4, 3)))
    with pytest.raises(ValueError, match="mode must be one of"):
        scan.lti_ssm(jnp.ones((1, 2, 2)), jnp.ones((1, 2)), jnp.ones((1, 2)), jnp.ones(1), jnp.ones((1, 3, 1)), mode="fft")
