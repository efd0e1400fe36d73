"""Grouped matrix multiplication: ``out[rows of group e] = lhs[rows of group e] @ rhs[e]``.

One function, :func:`gmm`, with several backends:

- ``xla``: ``jax.lax.ragged_dot`` with JAX's own autodiff (portable, any platform).
- ``xla_vjp``: the same forward kernel behind an explicit ``custom_vjp`` whose backward
  is ``dx = ragged_dot(dy, rhs^T)`` and ``dW = per-group lhs^T dy``. This is the wiring
  every accelerator kernel plugs into, tested here with the portable kernels.

``auto`` picks by platform; ``JAXMOE_GMM_BACKEND`` overrides the config.
Rows past ``sum(group_sizes)`` produce zeros.
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp

BACKENDS = ("xla", "xla_vjp")


def resolve_backend(requested: str = "auto") -> str:
    """The backend to use: env ``JAXMOE_GMM_BACKEND`` > config > platform default."""
    env = os.environ.get("JAXMOE_GMM_BACKEND")
    choice = env or requested
    if choice == "auto":
        return "xla"
    if choice not in BACKENDS:
        raise ValueError(f"grouped-matmul backend {choice!r} is not available; choose one of auto, {', '.join(BACKENDS)}.")
    return choice


def _ragged(lhs, rhs, group_sizes):
    return jax.lax.ragged_dot(lhs, rhs, group_sizes, preferred_element_type=jnp.float32).astype(lhs.dtype)


def transposed_gmm(lhs: jax.Array, dy: jax.Array, group_sizes: jax.Array) -> jax.Array:
    """Per-group ``lhs_g^T @ dy_g``: ``lhs [M, K]``, ``dy [M, N]`` -> ``[E, K, N]`` (fp32)."""
    dn = jax.lax.RaggedDotDimensionNumbers(
        dot_dimension_numbers=(([0], [0]), ([], [])),
        lhs_ragged_dimensions=[0],
        rhs_group_dimensions=[],
    )
    return jax.lax.ragged_dot_general(lhs, dy, group_sizes, dn, preferred_element_type=jnp.float32)


@jax.custom_vjp
def _gmm_vjp(lhs, rhs, group_sizes):
    return _ragged(lhs, rhs, group_sizes)


def _gmm_fwd(lhs, rhs, group_sizes):
    return _ragged(lhs, rhs, group_sizes), (lhs, rhs, group_sizes)


def _gmm_bwd(res, dy):
    lhs, rhs, group_sizes = res
    dx = jax.lax.ragged_dot(dy.astype(rhs.dtype), jnp.swapaxes(rhs, 1, 2), group_sizes,
                            preferred_element_type=jnp.float32).astype(lhs.dtype)
    dw = transposed_gmm(lhs, dy.astype(lhs.dtype), group_sizes).astype(rhs.dtype)
    return dx, dw, None


_gmm_vjp.defvjp(_gmm_fwd, _gmm_bwd)


@functools.partial(jax.jit, static_argnames=("backend",))
def gmm(lhs: jax.Array, rhs: jax.Array, group_sizes: jax.Array, backend: str = "xla") -> jax.Array:
    """Grouped matmul ``lhs [M, K]`` x ``rhs [E, K, N]`` with ``group_sizes [E]`` -> ``[M, N]``.

    Rows of ``lhs`` are sorted by group; accumulation in fp32, result in lhs's dtype.
    """
    if backend == "xla":
        return _ragged(lhs, rhs, group_sizes)
    if backend == "xla_vjp":
        return _gmm_vjp(lhs, rhs, group_sizes)
    raise ValueError(f"grouped-matmul backend {backend!r} is not available; choose one of {', '.join(BACKENDS)}.")
