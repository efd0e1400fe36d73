"""SpaceTime companion-matrix SSM (Zhang et al. 2023).

One SISO SSM per channel ``h`` (``H = embed``), state size ``d``::

    A = S + a e_d^T          S: ones on the sub-diagonal; a: learnable last column
    x_t = A x_{t-1} + b u_t
    y_t = c . x_t + D u_t    (open loop; kernel K_l = c^T A^l b, FFT convolution + skip)

A companion matrix is the state matrix of any AR(p) / ARMA process (``a`` holds the
characteristic polynomial), so one layer can fit an AR(p) series exactly.

**Closed loop.** A second readout ``k`` predicts the layer's own next input,
``u_hat_{t+1} = k . x_t``. Past the end of the lag window the layer feeds those
predictions back, ``x_{t+1} = A x_t + b (k . x_t) = (A + b k^T) x_t``, and keeps reading
``y = c . x + D u_hat``, so an ``h``-step forecast is a matrix power of ``A + b k^T``
(:func:`companion_closed_loop`). ``y_t`` (open loop) and the forecast both predict the
series one step ahead: ``forecast[j]`` predicts ``u_{L+j}`` from a lag ``u_0..u_{L-1}``.

**Preprocessing.** Differencing and moving-average residuals are FIR filters, i.e. fixed
companion SSMs with ``a = 0``, ``b = e_1`` and the filter taps in ``c``
(:func:`preprocess`).

Params (``init_companion`` returns them boxed)::

    a, b, c, k   [embed, state]
    D            [embed]
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxmoe.nn.init import normal, param, split, unbox, zeros
from jaxmoe.ssm.scan import causal_conv_fft, check_layer_input, krylov, lti_ssm

COMPANION_MODES = ("conv", "scan", "assoc")
ROLLOUTS = ("scan", "power")


def init_companion(key: jax.Array, embed_dim: int, *, state_size: int = 64, a_scale: float = 0.1) -> dict:
    """Boxed companion-SSM params for ``[batch, seq, embed_dim]`` inputs.

    ``a ~ N(0, a_scale^2 / d)`` (a small last column keeps ``A`` close to a shift, so
    the initial kernel is stable), ``b, c, k ~ N(0, 1/d)``, ``D = 0``.
    """
    h, d = int(embed_dim), int(state_size)
    if h < 1 or d < 1:
        raise ValueError(f"init_companion: embed_dim and state_size must be positive, got {embed_dim}, {state_size}.")
    keys = split(key, ["a", "b", "c", "k"])
    std = 1.0 / math.sqrt(d)
    return {
        "a": param(keys["a"], (h, d), ("embed", "state"), normal(a_scale * std)),
        "b": param(keys["b"], (h, d), ("embed", "state"), normal(std)),
        "c": param(keys["c"], (h, d), ("embed", "state"), normal(std)),
        "k": param(keys["k"], (h, d), ("embed", "state"), normal(std)),
        "D": param(key, (h,), ("embed",), zeros),
    }


def init_companion_state(batch: int, embed_dim: int, *, state_size: int = 64) -> dict:
    """Zero decoding state ``{"ssm": [batch, embed, state] float32}``."""
    return {"ssm": jnp.zeros((batch, embed_dim, state_size), jnp.float32)}


def companion_matrix(a: jax.Array, *, normalize_a: bool = False) -> jax.Array:
    """``A = S + a e_d^T``: ``a [..., d] -> [..., d, d]`` (sub-diagonal ones, last column ``a``).

    With ``normalize_a`` the column is divided by its L1 norm first (SpaceTime's
    ``norm_order=1``), which keeps every root of the characteristic polynomial in the
    closed unit disc.
    """
    a = jnp.asarray(a, jnp.float32)
    if normalize_a:
        a = a / (jnp.sum(jnp.abs(a), axis=-1, keepdims=True) + 1e-8)
    d = a.shape[-1]
    shift = jnp.eye(d, k=-1, dtype=a.dtype)
    return (shift + jnp.zeros(a.shape[:-1] + (1, 1), a.dtype)).at[..., :, d - 1].add(a)


def _matrices(params: dict, normalize_a: bool):
    f32 = lambda name: params[name].astype(jnp.float32)  # noqa: E731
    return companion_matrix(f32("a"), normalize_a=normalize_a), f32("b"), f32("c"), f32("k"), f32("D")


def companion_kernel(
    params: dict, length: int, *, normalize_a: bool = False, readout: str = "c"
) -> jax.Array:
    """``K[l, h] = r_h^T A_h^l b_h`` for ``l < length`` with ``r = c`` (open-loop output,
    ``readout="c"``) or ``r = k`` (next-input prediction, ``readout="k"``): ``[length, embed]``.
    The skip ``D`` is not included."""
    if readout not in ("c", "k"):
        raise ValueError(f"companion_kernel: readout must be 'c' or 'k', got {readout!r}.")
    params = unbox(params)
    a, b, c, k, _ = _matrices(params, normalize_a)
    return jnp.einsum("hln,hn->lh", krylov(a, b, length), c if readout == "c" else k)


def companion_ssm(
    params: dict,
    u: jax.Array,
    *,
    mode: str = "conv",
    normalize_a: bool = False,
    state: dict | None = None,
    return_state: bool = False,
):
    """Open-loop companion SSM: ``[batch, seq, embed] -> [batch, seq, embed]`` (input dtype).

    Args:
      params: from :func:`init_companion` (boxed or not).
      u: ``[batch, seq, embed]``.
      mode: ``"conv"`` (kernel by Krylov repeated squaring + FFT), ``"scan"``
        (``lax.scan``) or ``"assoc"`` (matrix-valued associative scan).
      normalize_a: L1-normalise ``a`` (see :func:`companion_matrix`).
      state: optional initial state ``{"ssm": [batch, embed, state]}``.
      return_state: also return the final state (input to :func:`companion_closed_loop`).

    Returns:
      ``y`` or ``(y, {"ssm": [batch, embed, state]})``.
    """
    if mode not in COMPANION_MODES:
        raise ValueError(f"companion_ssm: mode must be one of {COMPANION_MODES}, got {mode!r}.")
    params = unbox(params)
    check_layer_input(u, params["D"].shape[0], "companion_ssm", 3)
    a, b, c, _, d = _matrices(params, normalize_a)
    h0 = None if state is None else state["ssm"].astype(jnp.float32)
    y, last = lti_ssm(a, b, c, d, u.astype(jnp.float32), mode=mode, h0=h0)
    y = y.astype(u.dtype)
    return (y, {"ssm": last}) if return_state else y


def companion_step(params: dict, u_t: jax.Array, state: dict, *, normalize_a: bool = False):
    """One open-loop step: ``u_t [batch, embed]`` -> ``(y_t [batch, embed], new_state)``."""
    params = unbox(params)
    check_layer_input(u_t, params["D"].shape[0], "companion_step", 2)
    a, b, c, _, d = _matrices(params, normalize_a)
    u32 = u_t.astype(jnp.float32)
    x = jnp.einsum("hnm,bhm->bhn", a, state["ssm"].astype(jnp.float32)) + b * u32[..., None]
    y = jnp.einsum("bhn,hn->bh", x, c) + d * u32
    return y.astype(u_t.dtype), {"ssm": x}


def _check_rollout(horizon: int, rollout: str):
    if rollout not in ROLLOUTS:
        raise ValueError(f"companion_closed_loop: rollout must be one of {ROLLOUTS}, got {rollout!r}.")
    if int(horizon) != horizon or horizon < 1:
        raise ValueError(f"companion_closed_loop: horizon must be a positive int, got {horizon!r}.")


def companion_closed_loop(
    params: dict,
    state: dict,
    last_input: jax.Array,
    horizon: int,
    *,
    normalize_a: bool = False,
    rollout: str = "power",
) -> jax.Array:
    """Closed-loop forecast from the state after a lag window.

    ``forecast[0] = c . x + D u_{L-1}`` (the last open-loop output) and, for ``j >= 1``,
    ``forecast[j] = c . M^j x + D k . M^{j-1} x`` with ``M = A + b k^T``.

    Args:
      params: companion params.
      state: ``{"ssm": [batch, embed, state]}``, the state ``x_{L-1}`` after the lag.
      last_input: ``u_{L-1}``, ``[batch, embed]``.
      horizon: number of forecast steps (static).
      rollout: ``"power"`` (Krylov powers of ``M`` by repeated squaring) or ``"scan"``
        (feed each predicted input back through a ``lax.scan``; same result).

    Returns:
      ``[batch, horizon, embed]`` float32.
    """
    _check_rollout(horizon, rollout)
    params = unbox(params)
    a, b, c, k, d = _matrices(params, normalize_a)
    x = state["ssm"].astype(jnp.float32)
    u_last = last_input.astype(jnp.float32)
    if rollout == "scan":
        def step(carry, _):
            x, u_cur = carry
            y = jnp.einsum("bhn,hn->bh", x, c) + d * u_cur
            u_next = jnp.einsum("bhn,hn->bh", x, k)
            x = jnp.einsum("hnm,bhm->bhn", a, x) + b * u_next[..., None]
            return (x, u_next), y

        _, ys = lax.scan(step, (x, u_last), None, length=horizon)
        return jnp.swapaxes(ys, 0, 1)
    m = a + b[:, :, None] * k[:, None, :]  # [H, d, d]
    powers = krylov(m, x, horizon)  # [B, H, horizon, d]: M^j x
    y = jnp.einsum("bhjn,hn->bjh", powers, c)
    u_fed = jnp.einsum("bhjn,hn->bjh", powers[:, :, :-1], k)  # k . M^{j-1} x for j >= 1
    u_fed = jnp.concatenate([u_last[:, None], u_fed], axis=1)
    return y + d * u_fed


def companion_forecast(
    params: dict,
    lag: jax.Array,
    horizon: int,
    *,
    normalize_a: bool = False,
    mode: str = "conv",
    rollout: str = "power",
) -> dict:
    """Open loop over a lag window, then closed loop for ``horizon`` steps.

    Args:
      lag: ``[batch, seq, embed]`` observed inputs ``u_0..u_{L-1}``.

    Returns:
      ``{"output": [batch, seq, embed]`` open-loop ``y_t`` (predicts ``u_{t+1}``),
      ``"next_input": [batch, seq, embed]`` ``k . x_t`` (predicts ``u_{t+1}``),
      ``"forecast": [batch, horizon, embed]`` (predicts ``u_L..u_{L+horizon-1}``)``}``,
      all float32.
    """
    _check_rollout(horizon, rollout)
    params = unbox(params)
    lag = lag.astype(jnp.float32)
    y, state = companion_ssm(params, lag, mode=mode, normalize_a=normalize_a, return_state=True)
    next_input = causal_conv_fft(
        lag, companion_kernel(params, lag.shape[1], normalize_a=normalize_a, readout="k")[None], axis=1
    )
    forecast = companion_closed_loop(
        params, state, lag[:, -1], horizon, normalize_a=normalize_a, rollout=rollout
    )
    return {"output": y, "next_input": next_input, "forecast": forecast}


def companion_loss(
    params: dict,
    lag: jax.Array,
    future: jax.Array,
    *,
    weights: Sequence[float] = (1.0, 1.0, 1.0),
    normalize_a: bool = False,
):
    """SpaceTime's training loss: ``w0 * horizon + w1 * lag + w2 * next_input`` (MSEs).

    * horizon: closed-loop ``forecast`` vs ``future``;
    * lag: open-loop ``y_t`` vs ``u_{t+1}`` inside the lag;
    * next_input: ``k . x_t`` vs ``u_{t+1}`` inside the lag.

    Args:
      lag: ``[batch, seq, embed]``; future: ``[batch, horizon, embed]``.

    Returns:
      ``(loss, {"horizon", "lag", "next_input"})``.
    """
    if lag.ndim != 3 or future.ndim != 3 or lag.shape[0] != future.shape[0] or lag.shape[2] != future.shape[2]:
        raise ValueError(
            f"companion_loss: need lag [batch, seq, embed] and future [batch, horizon, embed], "
            f"got {lag.shape} and {future.shape}."
        )
    w = tuple(weights)
    if len(w) != 3:
        raise ValueError(f"companion_loss: weights must be 3 numbers (horizon, lag, next_input), got {weights}.")
    out = companion_forecast(params, lag, future.shape[1], normalize_a=normalize_a)
    lag = lag.astype(jnp.float32)
    parts = {
        "horizon": jnp.mean((out["forecast"] - future.astype(jnp.float32)) ** 2),
        "lag": jnp.mean((out["output"][:, :-1] - lag[:, 1:]) ** 2),
        "next_input": jnp.mean((out["next_input"][:, :-1] - lag[:, 1:]) ** 2),
    }
    loss = w[0] * parts["horizon"] + w[1] * parts["lag"] + w[2] * parts["next_input"]
    return loss, parts


# --- fixed preprocessing kernels -------------------------------------------------------


def differencing_kernel(order: int) -> np.ndarray:
    """Taps of the order-``n`` difference ``(1 - z^{-1})^n``: ``[n + 1]`` (order 0 is identity)."""
    if int(order) != order or order < 0:
        raise ValueError(f"differencing_kernel: order must be a non-negative int, got {order!r}.")
    return np.array([(-1) ** i * math.comb(order, i) for i in range(order + 1)], np.float64)


def moving_average_residual_kernel(window: int) -> np.ndarray:
    """Taps of ``u_t - mean(u_{t-w+1..t})``: ``[w]``."""
    if int(window) != window or window < 1:
        raise ValueError(f"moving_average_residual_kernel: window must be a positive int, got {window!r}.")
    taps = np.full(window, -1.0 / window)
    taps[0] += 1.0
    return taps


def fir_companion(taps: np.ndarray, state_size: int) -> dict:
    """A fixed companion SSM whose kernel is the FIR filter ``taps``: ``a = 0``,
    ``b = e_1``, ``c = taps`` (padded to ``state_size``), ``k = 0``, ``D = 0``.
    Returns unboxed ``[1, state]`` params (one channel)."""
    taps = np.asarray(taps, np.float64)
    if taps.ndim != 1 or taps.shape[0] > state_size:
        raise ValueError(f"fir_companion: need 1-D taps of length <= state_size={state_size}, got {taps.shape}.")
    c = np.zeros((1, state_size))
    c[0, : taps.shape[0]] = taps
    e1 = np.zeros((1, state_size))
    e1[0, 0] = 1.0
    zeros_ = np.zeros((1, state_size))
    return {
        "a": jnp.asarray(zeros_, jnp.float32),
        "b": jnp.asarray(e1, jnp.float32),
        "c": jnp.asarray(c, jnp.float32),
        "k": jnp.asarray(zeros_, jnp.float32),
        "D": jnp.zeros((1,), jnp.float32),
    }


def preprocessing_kernels(
    state_size: int, *, diff_orders: Sequence[int] = (0, 1, 2), ma_windows: Sequence[int] = ()
) -> dict:
    """Stack fixed FIR companion SSMs (one channel each) for :func:`preprocess`:
    differencing of each order in ``diff_orders`` then MA residuals of each window."""
    taps = [differencing_kernel(o) for o in diff_orders] + [moving_average_residual_kernel(w) for w in ma_windows]
    if not taps:
        raise ValueError("preprocessing_kernels: give at least one differencing order or MA window.")
    parts = [fir_companion(t, state_size) for t in taps]
    return jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=0), *parts)


def preprocess(u: jax.Array, kernels: dict) -> jax.Array:
    """Apply ``K`` fixed companion kernels to every channel: ``[batch, seq, C] ->
    [batch, seq, C, K]`` (float32). ``kernels`` from :func:`preprocessing_kernels`."""
    if u.ndim != 3:
        raise ValueError(f"preprocess: input must be [batch, seq, channels], got shape {u.shape}.")
    k = companion_kernel(kernels, u.shape[1])  # [L, K]
    return causal_conv_fft(u.astype(jnp.float32)[..., None], k[None, :, None, :], axis=1)


__all__ = [
    "COMPANION_MODES",
    "ROLLOUTS",
    "init_companion",
    "init_companion_state",
    "companion_matrix",
    "companion_kernel",
    "companion_ssm",
    "companion_step",
    "companion_closed_loop",
    "companion_forecast",
    "companion_loss",
    "differencing_kernel",
    "moving_average_residual_kernel",
    "fir_companion",
    "preprocessing_kernels",
    "preprocess",
]
