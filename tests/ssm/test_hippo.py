"""jaxmoe.ssm.hippo: HiPPO matrices, NPLR/DPLR forms, discretisation against hand-computed values."""

import cmath
import math

import chex
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmoe.ssm import hippo


def test_legs_entries_match_closed_form():
    n_state = 7
    a, b = hippo.hippo_legs(n_state)
    chex.assert_shape(a, (n_state, n_state))
    chex.assert_shape(b, (n_state,))
    for n in range(n_state):
        assert b[n] == pytest.approx(math.sqrt(2 * n + 1))
        for k in range(n_state):
            if n > k:
                want = -math.sqrt(2 * n + 1) * math.sqrt(2 * k + 1)
            elif n == k:
                want = -(n + 1)
            else:
                want = 0.0
            assert a[n, k] == pytest.approx(want), (n, k)


def test_legt_entries_match_closed_form():
    n_state, theta = 5, 2.0
    a, b = hippo.hippo_legt(n_state, theta)
    for n in range(n_state):
        assert b[n] == pytest.approx((-1) ** n * (2 * n + 1) / theta)
        for k in range(n_state):
            want = -(2 * n + 1) if n < k else (-1) ** (n - k + 1) * (2 * n + 1)
            assert a[n, k] == pytest.approx(want / theta), (n, k)
    # LegT is the Legendre Memory Unit: every eigenvalue is in the open left half plane.
    assert np.all(np.linalg.eigvals(hippo.hippo_legt(8)[0]).real < 0)


def test_hippo_dispatch_and_errors():
    np.testing.assert_array_equal(hippo.hippo_matrices("legs", 4)[0], hippo.hippo_legs(4)[0])
    np.testing.assert_array_equal(hippo.hippo_matrices("legt", 4)[1], hippo.hippo_legt(4)[1])
    with pytest.raises(ValueError, match="Unknown HiPPO measure"):
        hippo.hippo_matrices("fourier", 4)
    with pytest.raises(ValueError, match="positive int"):
        hippo.hippo_legs(0)


def test_legs_normal_plus_low_rank():
    n_state = 8
    a, _ = hippo.hippo_legs(n_state)
    a_normal, p, _ = hippo.legs_normal_plus_low_rank(n_state)
    np.testing.assert_allclose(a_normal - np.outer(p, p), a, atol=1e-12)
    np.testing.assert_allclose(p, np.sqrt(np.arange(n_state) + 0.5))
    skew = a_normal + 0.5 * np.eye(n_state)
    np.testing.assert_allclose(skew, -skew.T, atol=1e-12)


def test_legs_dplr_reconstructs_a():
    n_state = 8
    a, b = hippo.hippo_legs(n_state)
    lam, p_t, b_t, v = hippo.legs_dplr(n_state)
    np.testing.assert_allclose(v.conj().T @ v, np.eye(n_state), atol=1e-10)
    np.testing.assert_allclose(lam.real, -0.5, atol=1e-10)
    recon = v @ (np.diag(lam) - np.outer(p_t, p_t.conj())) @ v.conj().T
    np.testing.assert_allclose(recon, a, atol=1e-9)
    np.testing.assert_allclose(v @ b_t, b, atol=1e-9)


def test_diagonal_init_kinds():
    lam = hippo.diagonal_init(4, "legs")
    full = hippo.legs_dplr(8)[0]
    assert np.all(lam.imag > 0)
    # the chosen half together with its conjugates is the full LegS-normal spectrum
    both = np.sort_complex(np.concatenate([lam, lam.conj()]))
    np.testing.assert_allclose(both, np.sort_complex(full), atol=1e-9)
    np.testing.assert_allclose(hippo.diagonal_init(3, "lin"), -0.5 + 1j * np.pi * np.arange(3))
    np.testing.assert_allclose(hippo.diagonal_init(2, "inv"), -0.5 + 1j * 4 / np.pi * (4 / np.array([1, 3]) - 1))
    with pytest.raises(ValueError, match="Unknown diagonal init"):
        hippo.diagonal_init(4, "random")


# --- discretisation on a 2x2 example, expected values by hand ---------------------------

A11, A12, A21, A22 = -1.0, 0.5, -0.25, -2.0
B1, B2 = 1.0, 2.0
DT = 0.1


def _inv2(m11, m12, m21, m22):
    det = m11 * m22 - m12 * m21
    return m22 / det, -m12 / det, -m21 / det, m11 / det


def _mul2(x, y):
    x11, x12, x21, x22 = x
    y11, y12, y21, y22 = y
    return x11 * y11 + x12 * y21, x11 * y12 + x12 * y22, x21 * y11 + x22 * y21, x21 * y12 + x22 * y22


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_bilinear_2x2_hand_computed(alpha):
    a = jnp.array([[A11, A12], [A21, A22]])
    a_bar, b_bar = hippo.discretize_bilinear(a, jnp.array([B1, B2]), jnp.float32(DT), alpha=alpha)
    # (I - alpha dt A)^{-1} by the explicit 2x2 inverse formula
    inv = _inv2(1 - alpha * DT * A11, -alpha * DT * A12, -alpha * DT * A21, 1 - alpha * DT * A22)
    rhs = (1 + (1 - alpha) * DT * A11, (1 - alpha) * DT * A12, (1 - alpha) * DT * A21, 1 + (1 - alpha) * DT * A22)
    want_a = _mul2(inv, rhs)
    want_b = (DT * (inv[0] * B1 + inv[1] * B2), DT * (inv[2] * B1 + inv[3] * B2))
    np.testing.assert_allclose(np.asarray(a_bar).ravel(), want_a, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(b_bar), want_b, rtol=1e-6)
    if alpha == 0.0:  # forward Euler: I + dt A, dt B
        np.testing.assert_allclose(np.asarray(a_bar), [[1 + DT * A11, DT * A12], [DT * A21, 1 + DT * A22]], rtol=1e-6)
        np.testing.assert_allclose(np.asarray(b_bar), [DT * B1, DT * B2], rtol=1e-6)


def test_bilinear_matrix_b_and_bad_alpha():
    a = jnp.array([[A11, A12], [A21, A22]])
    b = jnp.array([[B1, 3.0], [B2, -1.0]])
    _, b_bar = hippo.discretize_bilinear(a, b, 0.1)
    _, b_col = hippo.discretize_bilinear(a, b[:, 1], 0.1)
    chex.assert_shape(b_bar, (2, 2))
    np.testing.assert_allclose(np.asarray(b_bar[:, 1]), np.asarray(b_col), rtol=1e-6)
    with pytest.raises(ValueError, match="alpha must be in"):
        hippo.discretize_bilinear(a, b, 0.1, alpha=1.5)
    with pytest.raises(ValueError, match="A must be"):
        hippo.discretize_bilinear(jnp.ones((2, 3)), b, 0.1)


def test_zoh_2x2_hand_computed():
    # lower-triangular A = [[l1, 0], [c, l2]]:
    #   exp(dt A) = [[e1, 0], [c (e1 - e2) / (l1 - l2), e2]],  e_i = exp(l_i dt)
    #   B_bar = A^{-1} (exp(dt A) - I) B,  A^{-1} = [[1/l1, 0], [-c/(l1 l2), 1/l2]]
    l1, l2, c = -1.0, -3.0, 0.7
    e1, e2 = math.exp(l1 * DT), math.exp(l2 * DT)
    want_a = (e1, 0.0, c * (e1 - e2) / (l1 - l2), e2)
    m = (want_a[0] - 1) * B1, want_a[2] * B1 + (want_a[3] - 1) * B2
    want_b = (m[0] / l1, -c / (l1 * l2) * m[0] + m[1] / l2)
    a_bar, b_bar = hippo.discretize_zoh(jnp.array([[l1, 0.0], [c, l2]]), jnp.array([B1, B2]), DT)
    np.testing.assert_allclose(np.asarray(a_bar).ravel(), want_a, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.asarray(b_bar), want_b, rtol=1e-5)


def test_zoh_singular_a_hand_computed():
    # nilpotent A = [[0, 0], [1, 0]]: exp(dt A) = I + dt A, B_bar = (dt I + dt^2/2 A) B
    a_bar, b_bar = hippo.discretize_zoh(jnp.array([[0.0, 0.0], [1.0, 0.0]]), jnp.array([B1, B2]), DT)
    np.testing.assert_allclose(np.asarray(a_bar), [[1.0, 0.0], [DT, 1.0]], atol=1e-7)
    np.testing.assert_allclose(np.asarray(b_bar), [DT * B1, DT * B2 + DT**2 / 2 * B1], rtol=1e-6)


def test_diagonal_discretisations_hand_computed():
    lam = jnp.array([-0.5 + 2.0j, -1.0 + 0.0j], jnp.complex64)
    b = jnp.array([1.0 + 1.0j, 2.0 + 0.0j], jnp.complex64)
    dt = jnp.array([0.1, 0.3], jnp.float32)
    lam_bar, b_bar = hippo.discretize_diagonal_zoh(lam, b, dt)
    for i, (l, bi, d) in enumerate([(-0.5 + 2.0j, 1 + 1j, 0.1), (-1.0, 2.0, 0.3)]):
        assert complex(lam_bar[i]) == pytest.approx(cmath.exp(l * d), rel=1e-6)
        assert complex(b_bar[i]) == pytest.approx((cmath.exp(l * d) - 1) / l * bi, rel=1e-5)
    lam_bar, b_bar = hippo.discretize_diagonal_bilinear(lam, b, dt)
    for i, (l, bi, d) in enumerate([(-0.5 + 2.0j, 1 + 1j, 0.1), (-1.0, 2.0, 0.3)]):
        assert complex(lam_bar[i]) == pytest.approx((1 + d / 2 * l) / (1 - d / 2 * l), rel=1e-6)
        assert complex(b_bar[i]) == pytest.approx(d / (1 - d / 2 * l) * bi, rel=1e-6)
    # [P, M] inputs scale row-wise
    _, b_mat = hippo.discretize_diagonal_zoh(lam, jnp.stack([b, 2 * b], axis=1), dt)
    np.testing.assert_allclose(np.asarray(b_mat[:, 1]), 2 * np.asarray(hippo.discretize_diagonal_zoh(lam, b, dt)[1]),
                               rtol=1e-6)


def test_dense_and_diagonal_discretisations_agree_on_diagonal_a():
    lam = jnp.array([-0.3, -2.0])
    b = jnp.array([1.0, -0.5])
    dense = hippo.discretize(jnp.diag(lam), b, 0.2, "zoh")
    diag = hippo.discretize_diagonal_zoh(lam, b, 0.2)
    np.testing.assert_allclose(np.asarray(dense[0]), np.diag(np.asarray(diag[0])), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(np.asarray(dense[1]), np.asarray(diag[1]), rtol=1e-5)
    dense = hippo.discretize(jnp.diag(lam), b, 0.2, 0.5)
    diag = hippo.discretize_diagonal_bilinear(lam, b, 0.2)
    np.testing.assert_allclose(np.asarray(dense[0]), np.diag(np.asarray(diag[0])), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(np.asarray(dense[1]), np.asarray(diag[1]), rtol=1e-6)
    with pytest.raises(ValueError, match="Unknown discretisation"):
        hippo.discretize(jnp.diag(lam), b, 0.2, "foh")
