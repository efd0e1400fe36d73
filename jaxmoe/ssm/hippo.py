"""HiPPO matrices, their normal / diagonal-plus-low-rank forms, and discretisation.

Continuous model ``x'(t) = A x(t) + B u(t)``. The HiPPO constructors are evaluated once
at initialisation time, in float64 NumPy (exact enough to diagonalise); the
discretisation functions are differentiable ``jax.numpy`` code (``dt`` is trainable).

* :func:`hippo_legs` / :func:`hippo_legt` / :func:`hippo`: ``(A [N, N], B [N])``.
* :func:`legs_normal_plus_low_rank`: ``A = A_normal - P P^T`` with ``A_normal = -I/2 + skew``.
* :func:`legs_dplr`: eigendecomposition ``A_normal = V diag(Lambda) V^*`` (complex
  ``Lambda = -1/2 + i w``) for S4 / S4D / S5 initialisation.
* :func:`diagonal_init`: ``num_modes`` complex eigenvalues (one of each conjugate pair)
  for S4D / S5 layers (``"legs"``, ``"lin"``, ``"inv"``).
* :func:`discretize_bilinear` (generalised bilinear transform, ``alpha``),
  :func:`discretize_zoh` (zero-order hold), and their diagonal counterparts.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.linalg import expm

MEASURES = ("legs", "legt")
DIAGONAL_INITS = ("legs", "lin", "inv")


def _check_size(n: int, name: str) -> int:
    if int(n) != n or n < 1:
        raise ValueError(f"{name} must be a positive int, got {n!r}.")
    return int(n)


def hippo_legs(state_size: int) -> tuple[np.ndarray, np.ndarray]:
    """HiPPO-LegS (scaled Legendre measure).

    ``A[n, k] = -sqrt(2n+1) sqrt(2k+1)`` if ``n > k``, ``-(n+1)`` if ``n == k``, 0 if
    ``n < k``; ``B[n] = sqrt(2n+1)``.

    Returns:
      ``(A [N, N], B [N])`` float64 NumPy arrays.
    """
    n = _check_size(state_size, "state_size")
    q = np.arange(n, dtype=np.float64)
    r = np.sqrt(2 * q + 1)
    a = -np.tril(np.outer(r, r), k=-1) - np.diag(q + 1)
    return a, r.copy()


def hippo_legt(state_size: int, theta: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """HiPPO-LegT (translated Legendre measure on a window of length ``theta``; the
    Legendre Memory Unit matrices).

    ``A[n, k] = -(2n+1)/theta`` if ``n < k``, ``(-1)^{n-k+1} (2n+1)/theta`` if ``n >= k``;
    ``B[n] = (-1)^n (2n+1)/theta``.

    Returns:
      ``(A [N, N], B [N])`` float64 NumPy arrays.
    """
    n = _check_size(state_size, "state_size")
    if theta <= 0:
        raise ValueError(f"hippo_legt: theta must be positive, got {theta}.")
    q = np.arange(n, dtype=np.float64)
    r = (2 * q + 1)[:, None]
    row, col = np.meshgrid(q, q, indexing="ij")
    a = np.where(row < col, -1.0, (-1.0) ** (row - col + 1)) * r / theta
    b = ((-1.0) ** q) * (2 * q + 1) / theta
    return a, b


def hippo_matrices(measure: str, state_size: int) -> tuple[np.ndarray, np.ndarray]:
    """``(A [N, N], B [N])`` of the named HiPPO measure (``"legs"`` or ``"legt"``)."""
    if measure == "legs":
        return hippo_legs(state_size)
    if measure == "legt":
        return hippo_legt(state_size)
    raise ValueError(f"Unknown HiPPO measure {measure!r}; expected one of {MEASURES}.")


def legs_normal_plus_low_rank(state_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """LegS as normal plus low rank: ``A = A_normal - P P^T``.

    ``P[n] = sqrt(n + 1/2)``; ``A_normal = -I/2 + S`` with ``S`` skew-symmetric.

    Returns:
      ``(A_normal [N, N], P [N], B [N])`` float64.
    """
    a, b = hippo_legs(state_size)
    p = np.sqrt(np.arange(state_size, dtype=np.float64) + 0.5)
    return a + np.outer(p, p), p, b


def legs_dplr(state_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Diagonal-plus-low-rank form of LegS: ``A = V (diag(Lambda) - P~ P~^*) V^*``.

    The normal part ``A_normal = -I/2 + S`` (``S`` skew-symmetric) is unitarily
    diagonalised through the Hermitian matrix ``-i S``: ``Lambda = -1/2 + i w``.

    Returns:
      ``(Lambda [N] complex, P~ = V^* P [N], B~ = V^* B [N], V [N, N] unitary)``,
      eigenvalues sorted by imaginary part.
    """
    a_normal, p, b = legs_normal_plus_low_rank(state_size)
    skew = a_normal + 0.5 * np.eye(state_size)
    w, v = np.linalg.eigh(-1j * skew)
    lam = -0.5 + 1j * w
    v_h = v.conj().T
    return lam, v_h @ p, v_h @ b, v


def diagonal_init(num_modes: int, kind: str = "legs") -> np.ndarray:
    """Complex eigenvalues for a conjugate-symmetric diagonal SSM (S4D / S5).

    Only one eigenvalue of each conjugate pair is returned (imaginary part >= 0); the
    layer's output ``2 Re(C x)`` accounts for the other.

    Args:
      num_modes: number of complex modes ``P`` (the real state size is ``2P``).
      kind: ``"legs"`` (eigenvalues of the normal part of HiPPO-LegS of size 2P),
        ``"lin"`` (S4D-Lin, ``-1/2 + i pi n``) or ``"inv"`` (S4D-Inv,
        ``-1/2 + i 2P/pi (2P/(2n+1) - 1)``).

    Returns:
      ``Lambda [P]`` complex128.
    """
    p = _check_size(num_modes, "num_modes")
    n = np.arange(p, dtype=np.float64)
    if kind == "legs":
        lam = legs_dplr(2 * p)[0]
        lam = lam[np.argsort(lam.imag)][p:]
        if not np.all(lam.imag > 0):
            raise AssertionError("LegS spectrum is expected to come in conjugate pairs")
        return lam
    if kind == "lin":
        return -0.5 + 1j * np.pi * n
    if kind == "inv":
        big_n = 2 * p
        return -0.5 + 1j * big_n / np.pi * (big_n / (2 * n + 1) - 1)
    raise ValueError(f"Unknown diagonal init {kind!r}; expected one of {DIAGONAL_INITS}.")


def _as_matrix_b(a: jax.Array, b: jax.Array, name: str) -> tuple[jax.Array, bool]:
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"{name}: A must be [N, N], got {a.shape}.")
    if b.ndim not in (1, 2) or b.shape[0] != a.shape[0]:
        raise ValueError(f"{name}: B must be [N] or [N, M] with N = {a.shape[0]}, got {b.shape}.")
    return (b[:, None], True) if b.ndim == 1 else (b, False)


def log_uniform_dt_init(dt_min: float = 1e-3, dt_max: float = 1e-1):
    """Initializer (``jaxmoe.nn.init`` style) of ``log dt`` uniform in ``[log dt_min, log dt_max]``."""
    if not 0 < dt_min <= dt_max:
        raise ValueError(f"need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}.")

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, math.log(dt_min), math.log(dt_max))

    return init


def array_init(value):
    """Initializer that broadcasts a fixed (e.g. HiPPO) array to the requested shape."""

    def init(key, shape, dtype=jnp.float32):
        del key
        return jnp.broadcast_to(jnp.asarray(value, dtype), shape)

    return init


def discretize_bilinear(a: jax.Array, b: jax.Array, dt: jax.Array, alpha: float = 0.5):
    """Generalised bilinear transform.

    ``A_bar = (I - alpha dt A)^{-1} (I + (1 - alpha) dt A)``,
    ``B_bar = dt (I - alpha dt A)^{-1} B``. ``alpha = 0.5`` is the bilinear (Tustin)
    transform, ``0`` forward Euler, ``1`` backward Euler.

    Args:
      a: ``[N, N]``.
      b: ``[N]`` or ``[N, M]``.
      dt: scalar step (vmap for one step per channel).
      alpha: in ``[0, 1]``.

    Returns:
      ``(A_bar [N, N], B_bar like b)``.
    """
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"discretize_bilinear: alpha must be in [0, 1], got {alpha}.")
    a = jnp.asarray(a)
    b = jnp.asarray(b)
    b, squeeze = _as_matrix_b(a, b, "discretize_bilinear")
    eye = jnp.eye(a.shape[0], dtype=a.dtype)
    lhs = eye - alpha * dt * a
    rhs = jnp.concatenate([eye + (1.0 - alpha) * dt * a, dt * b], axis=1)
    sol = jnp.linalg.solve(lhs, rhs)
    a_bar, b_bar = sol[:, : a.shape[0]], sol[:, a.shape[0]:]
    return a_bar, (b_bar[:, 0] if squeeze else b_bar)


def discretize_zoh(a: jax.Array, b: jax.Array, dt: jax.Array):
    """Zero-order hold: ``A_bar = exp(dt A)``, ``B_bar = A^{-1} (A_bar - I) B``.

    Computed through the block matrix exponential
    ``exp(dt [[A, B], [0, 0]]) = [[A_bar, B_bar], [0, I]]``, which stays exact when ``A``
    is singular.

    Args:
      a: ``[N, N]``; b: ``[N]`` or ``[N, M]``; dt: scalar.

    Returns:
      ``(A_bar [N, N], B_bar like b)``.
    """
    a = jnp.asarray(a)
    b = jnp.asarray(b)
    b, squeeze = _as_matrix_b(a, b, "discretize_zoh")
    n, m = b.shape
    block = jnp.zeros((n + m, n + m), jnp.result_type(a, b))
    block = block.at[:n, :n].set(a).at[:n, n:].set(b)
    e = expm(dt * block)
    a_bar, b_bar = e[:n, :n], e[:n, n:]
    return a_bar, (b_bar[:, 0] if squeeze else b_bar)


def discretize_diagonal_zoh(lam: jax.Array, b: jax.Array, dt: jax.Array):
    """Zero-order hold of a diagonal system: ``Lambda_bar = exp(Lambda dt)``,
    ``B_bar = (Lambda_bar - 1) / Lambda * B``.

    Args:
      lam: ``[P]`` complex eigenvalues (nonzero).
      b: ``[P]`` or ``[P, M]``.
      dt: scalar or ``[P]`` (one step per mode).
    """
    lam_bar = jnp.exp(lam * dt)
    scale = (lam_bar - 1.0) / lam
    return lam_bar, (scale[:, None] * b if b.ndim == 2 else scale * b)


def discretize_diagonal_bilinear(lam: jax.Array, b: jax.Array, dt: jax.Array):
    """Bilinear transform of a diagonal system: ``Lambda_bar = (1 + dt/2 Lambda) /
    (1 - dt/2 Lambda)``, ``B_bar = dt / (1 - dt/2 Lambda) * B``. Shapes as
    :func:`discretize_diagonal_zoh`."""
    denom = 1.0 - 0.5 * dt * lam
    lam_bar = (1.0 + 0.5 * dt * lam) / denom
    scale = dt / denom
    return lam_bar, (scale[:, None] * b if b.ndim == 2 else scale * b)


def discretize(a: jax.Array, b: jax.Array, dt: jax.Array, method: float | str = 0.5):
    """Dispatch: ``method`` is a generalised-bilinear ``alpha`` in ``[0, 1]`` or ``"zoh"``."""
    if isinstance(method, str):
        if method == "zoh":
            return discretize_zoh(a, b, dt)
        raise ValueError(f"Unknown discretisation {method!r}; use 'zoh' or a float alpha in [0, 1].")
    return discretize_bilinear(a, b, dt, alpha=method)


__all__ = [
    "MEASURES",
    "DIAGONAL_INITS",
    "hippo_legs",
    "hippo_legt",
    "hippo_matrices",
    "legs_normal_plus_low_rank",
    "legs_dplr",
    "diagonal_init",
    "discretize_bilinear",
    "discretize_zoh",
    "discretize_diagonal_zoh",
    "discretize_diagonal_bilinear",
    "discretize",
    "log_uniform_dt_init",
    "array_init",
]
