"""Complex diagonal SSM (S4D / S5 style, multi-input multi-output like S5).

State ``x_k [P]`` complex (``P = d_state`` modes, one of each conjugate pair of a real
system of size ``2P``), input and output ``[embed]``::

    Lambda = -exp(lambda_re_log) + i lambda_im          (init: diagonalised HiPPO-LegS)
    Lambda_bar = exp(Lambda dt),  B_bar = (Lambda_bar - 1) / Lambda * B     (zero-order hold)
    x_k = Lambda_bar * x_{k-1} + B_bar u_k               (element-wise: cheap associative scan)
    y_k = 2 Re(C x_k) + D * u_k

Views: ``"assoc"`` (``lax.associative_scan``, the training path), ``"scan"`` (sequential
``lax.scan``) and ``"conv"`` (each mode's states are a causal FFT convolution of
``B_bar u`` with the impulse response ``Lambda_bar^l``; :func:`diagonal_ssm_kernel` gives
the full ``[seq, embed, embed]`` output kernel). ``bidirectional=True`` adds a second scan
with ``reverse=True`` read out by its own ``C_rev``:
``y = 2 Re(C x_fwd) + 2 Re(C_rev x_bwd) + D u``.

All state arithmetic runs in float32 / complex64 even for bf16 activations; the output
has the input's dtype.

Params (``init_diagonal_ssm`` returns them boxed; complex values are stored as real and
imaginary float32 leaves so every optimizer handles them)::

    lambda_re_log [state]   lambda_im [state]   log_dt [state]
    B_re, B_im    [state, embed]
    C_re, C_im    [embed, state]     (C_rev_re, C_rev_im when bidirectional)
    D             [embed]
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxmoe.nn.init import normal, param, split, unbox
from jaxmoe.ssm.hippo import (
    DIAGONAL_INITS,
    array_init,
    diagonal_init,
    discretize_diagonal_bilinear,
    discretize_diagonal_zoh,
    log_uniform_dt_init,
)
from jaxmoe.ssm.scan import causal_conv_fft, check_layer_input, linear_recurrence

DIAGONAL_MODES = ("assoc", "scan", "conv")
DIAGONAL_DISCRETIZATIONS = ("zoh", "bilinear")


def init_diagonal_ssm(
    key: jax.Array,
    embed_dim: int,
    *,
    d_state: int = 64,
    bidirectional: bool = False,
    init: str = "legs",
    dt_min: float = 1e-3,
    dt_max: float = 1e-1,
) -> dict:
    """Boxed params of a diagonal SSM over ``[batch, seq, embed_dim]``.

    Args:
      key: PRNG key.
      embed_dim: input/output channels ``H``.
      d_state: complex modes ``P``.
      bidirectional: add ``C_rev`` for a second, reverse-time scan.
      init: eigenvalue init, ``"legs"`` (HiPPO-LegS normal part), ``"lin"`` or ``"inv"``.
      dt_min, dt_max: per-mode step sizes, log-uniform in this range.
    """
    if init not in DIAGONAL_INITS:
        raise ValueError(f"init_diagonal_ssm: init must be one of {DIAGONAL_INITS}, got {init!r}.")
    if not 0 < dt_min <= dt_max:
        raise ValueError(f"init_diagonal_ssm: need 0 < dt_min <= dt_max, got {dt_min}, {dt_max}.")
    h, p = int(embed_dim), int(d_state)
    if h < 1 or p < 1:
        raise ValueError(f"init_diagonal_ssm: embed_dim and d_state must be positive, got {embed_dim}, {d_state}.")
    lam = diagonal_init(p, init)
    k = split(key, ["log_dt", "B_re", "B_im", "C_re", "C_im", "C_rev_re", "C_rev_im"])
    b_init, c_init = normal(1.0 / math.sqrt(2 * h)), normal(1.0 / math.sqrt(2 * p))
    params = {
        "lambda_re_log": param(key, (p,), ("state",), array_init(np.log(-lam.real))),
        "lambda_im": param(key, (p,), ("state",), array_init(lam.imag)),
        "log_dt": param(k["log_dt"], (p,), ("state",), log_uniform_dt_init(dt_min, dt_max)),
        "B_re": param(k["B_re"], (p, h), ("state", "embed"), b_init),
        "B_im": param(k["B_im"], (p, h), ("state", "embed"), b_init),
        "C_re": param(k["C_re"], (h, p), ("embed", "state"), c_init),
        "C_im": param(k["C_im"], (h, p), ("embed", "state"), c_init),
        "D": param(key, (h,), ("embed",), array_init(1.0)),
    }
    if bidirectional:
        params["C_rev_re"] = param(k["C_rev_re"], (h, p), ("embed", "state"), c_init)
        params["C_rev_im"] = param(k["C_rev_im"], (h, p), ("embed", "state"), c_init)
    return params


def init_diagonal_ssm_state(batch: int, embed_dim: int, *, d_state: int = 64) -> dict:
    """Zero decoding state ``{"ssm": [batch, d_state] complex64}`` (``embed_dim`` is
    accepted for symmetry with :func:`init_diagonal_ssm`; the state does not depend on it)."""
    del embed_dim
    return {"ssm": jnp.zeros((batch, d_state), jnp.complex64)}


def is_bidirectional(params: dict) -> bool:
    return "C_rev_re" in params


def discretize_diagonal_ssm(params: dict, discretization: str = "zoh"):
    """``(Lambda_bar [state] complex64, B_bar [state, embed] complex64)``."""
    if discretization not in DIAGONAL_DISCRETIZATIONS:
        raise ValueError(
            f"diagonal_ssm: discretization must be one of {DIAGONAL_DISCRETIZATIONS}, got {discretization!r}."
        )
    params = unbox(params)
    f32 = lambda name: params[name].astype(jnp.float32)  # noqa: E731
    lam = jax.lax.complex(-jnp.exp(f32("lambda_re_log")), f32("lambda_im"))
    b = jax.lax.complex(f32("B_re"), f32("B_im"))
    dt = jnp.exp(f32("log_dt"))
    fn = discretize_diagonal_zoh if discretization == "zoh" else discretize_diagonal_bilinear
    return fn(lam, b, dt)


def _c(params: dict, prefix: str) -> jax.Array:
    return jax.lax.complex(params[prefix + "_re"].astype(jnp.float32), params[prefix + "_im"].astype(jnp.float32))


def _mode_powers(lam_bar: jax.Array, length: int) -> jax.Array:
    """``Lambda_bar^l`` for ``l = 0..length-1``: ``[length, state]``."""
    steps = jnp.arange(length, dtype=jnp.float32)[:, None]
    return jnp.exp(steps * jnp.log(lam_bar))


def _states(lam_bar, bu, h0, *, mode, chunk_size, reverse):
    """All states ``[batch, seq, state]`` of ``x_k = lam_bar x_{k-1} + bu_k``."""
    length = bu.shape[1]
    if mode in ("assoc", "scan"):
        a = jnp.broadcast_to(lam_bar, (1, length, lam_bar.shape[-1]))
        return linear_recurrence(a, bu, h0, axis=1, reverse=reverse, mode=mode, chunk_size=chunk_size)
    powers = _mode_powers(lam_bar, length)  # [L, P]
    if reverse:
        bu = jnp.flip(bu, 1)
    xs = causal_conv_fft(bu, powers[None], axis=1)
    if h0 is not None:
        xs = xs + powers[None] * (lam_bar * h0)[:, None, :]
    return jnp.flip(xs, 1) if reverse else xs


def diagonal_ssm(
    params: dict,
    x: jax.Array,
    *,
    mode: str = "assoc",
    chunk_size: int | None = None,
    discretization: str = "zoh",
    state: dict | None = None,
    return_state: bool = False,
):
    """Diagonal SSM layer: ``[batch, seq, embed] -> [batch, seq, embed]`` (input dtype).

    Args:
      params: from :func:`init_diagonal_ssm` (boxed or unboxed); bidirectional if it
        holds ``C_rev_*``.
      x: ``[batch, seq, embed]``.
      mode: ``"assoc"``, ``"scan"`` or ``"conv"`` (all compute the same function).
      chunk_size: ``"assoc"``: chunk the associative scan over the sequence.
      discretization: ``"zoh"`` (default) or ``"bilinear"``.
      state: optional initial state ``{"ssm": [batch, state]}`` (unidirectional only).
      return_state: also return the final state (unidirectional only).

    Returns:
      ``y`` or ``(y, {"ssm": [batch, state] complex64})``.
    """
    if mode not in DIAGONAL_MODES:
        raise ValueError(f"diagonal_ssm: mode must be one of {DIAGONAL_MODES}, got {mode!r}.")
    params = unbox(params)
    check_layer_input(x, params["D"].shape[0], "diagonal_ssm", 3)
    bidirectional = is_bidirectional(params)
    if bidirectional and (state is not None or return_state):
        raise ValueError("diagonal_ssm: a bidirectional SSM has no causal state; drop state/return_state.")
    lam_bar, b_bar = discretize_diagonal_ssm(params, discretization)
    u = x.astype(jnp.float32)
    h0 = None
    if state is not None:
        h0 = state["ssm"].astype(jnp.complex64)
        if h0.shape != (x.shape[0], lam_bar.shape[0]):
            raise ValueError(
                f"diagonal_ssm: state['ssm'] must be [batch, state] = {(x.shape[0], lam_bar.shape[0])}, got {h0.shape}."
            )
    bu = jnp.einsum("ph,blh->blp", b_bar, u.astype(jnp.complex64))
    kw = dict(mode=mode, chunk_size=chunk_size)
    xs = _states(lam_bar, bu, h0, reverse=False, **kw)
    y = 2.0 * jnp.einsum("hp,blp->blh", _c(params, "C"), xs).real
    if bidirectional:
        xs_rev = _states(lam_bar, bu, None, reverse=True, **kw)
        y = y + 2.0 * jnp.einsum("hp,blp->blh", _c(params, "C_rev"), xs_rev).real
    y = (y + params["D"].astype(jnp.float32) * u).astype(x.dtype)
    return (y, {"ssm": xs[:, -1]}) if return_state else y


def diagonal_ssm_step(params: dict, x_t: jax.Array, state: dict, *, discretization: str = "zoh"):
    """One decoding step: ``x_t [batch, embed]`` -> ``(y_t [batch, embed], new_state)``.

    ``state = {"ssm": [batch, state] complex64}`` (see :func:`init_diagonal_ssm_state`).
    """
    params = unbox(params)
    check_layer_input(x_t, params["D"].shape[0], "diagonal_ssm_step", 2)
    if is_bidirectional(params):
        raise ValueError("diagonal_ssm_step: a bidirectional SSM cannot be decoded step by step.")
    lam_bar, b_bar = discretize_diagonal_ssm(params, discretization)
    u = x_t.astype(jnp.float32)
    h = lam_bar * state["ssm"].astype(jnp.complex64) + jnp.einsum("ph,bh->bp", b_bar, u.astype(jnp.complex64))
    y = 2.0 * jnp.einsum("hp,bp->bh", _c(params, "C"), h).real + params["D"].astype(jnp.float32) * u
    return y.astype(x_t.dtype), {"ssm": h}


def diagonal_ssm_kernel(params: dict, length: int, *, discretization: str = "zoh") -> jax.Array:
    """Forward output kernel ``K[l] = 2 Re(C diag(Lambda_bar^l) B_bar)``: ``[length, embed_out,
    embed_in]`` float32, so that ``y_k = sum_l K[l] u_{k-l} + D u_k`` (unidirectional)."""
    params = unbox(params)
    lam_bar, b_bar = discretize_diagonal_ssm(params, discretization)
    powers = _mode_powers(lam_bar, length)
    return 2.0 * jnp.einsum("hp,lp,pi->lhi", _c(params, "C"), powers, b_bar).real


__all__ = [
    "DIAGONAL_MODES",
    "DIAGONAL_DISCRETIZATIONS",
    "init_diagonal_ssm",
    "init_diagonal_ssm_state",
    "is_bidirectional",
    "discretize_diagonal_ssm",
    "diagonal_ssm",
    "diagonal_ssm_step",
    "diagonal_ssm_kernel",
]
