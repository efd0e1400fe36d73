"""LSSL: the Linear State-Space Layer (Gu et al. 2021), one HiPPO SSM per feature.

Per feature channel ``h`` (``H = embed`` channels, state size ``N``)::

    x_k = A_bar_h x_{k-1} + B_bar_h u_k          (A_bar, B_bar: discretised A, B with dt_h)
    y_k = C_h . x_k + D_h u_k

then ``GELU -> dropout -> linear channel mix``. Three views compute the same function:

* ``"recurrent"``: ``lax.scan`` over time (also what :func:`lssl_step` runs per token);
* ``"convolution"``: kernel ``K_h = (C B_bar, C A_bar B_bar, ..., C A_bar^{L-1} B_bar)``
  from the Krylov sequence by repeated squaring, then causal FFT convolution (zero padded
  to 2L) plus ``D u``;
* ``"parallel"``: ``lax.associative_scan`` with the matrix-valued operator
  ``(A_i, b_i) o (A_j, b_j) = (A_j A_i, A_j b_i + b_j)`` (memory ``L H N^2``: a
  reference for short sequences).

Parameters (``init_lssl`` returns them boxed with logical axes; unbox before use)::

    log_dt   [embed]                           uniform in [log dt_min, log dt_max]
    C        [embed, state]                    normal, std 1/sqrt(N)
    D        [embed]                           ones (skip connection)
    A, B     absent                            a_mode="fixed": HiPPO matrices, rebuilt at call time
             [state, state], [state]           a_mode="shared": one trainable pair (HiPPO init)
             [embed, state, state], [embed, state]   a_mode="per_feature"
    out_proj [ssm_inner, embed], out_bias [embed]   channel mix after GELU

The A mode is read from the params (absent / 2-d / 3-d ``A``), so the apply functions need
only the HiPPO ``measure`` (for fixed A, must match init) and the ``discretization``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jaxmoe.nn.init import fan_in_normal, normal, ones, param, split, unbox, zeros
from jaxmoe.ssm.hippo import MEASURES, array_init, discretize, hippo_matrices, log_uniform_dt_init
from jaxmoe.ssm.scan import check_layer_input, krylov, lti_ssm

A_MODES = ("fixed", "shared", "per_feature")
LSSL_MODES = ("recurrent", "convolution", "parallel")
_LTI_MODE = {"recurrent": "scan", "convolution": "conv", "parallel": "assoc"}


def init_lssl(
    key: jax.Array,
    embed_dim: int,
    *,
    state_size: int = 64,
    a_mode: str = "fixed",
    measure: str = "legs",
    dt_min: float = 1e-3,
    dt_max: float = 1e-1,
) -> dict:
    """Boxed LSSL params for inputs ``[batch, seq, embed_dim]`` (see the module doc).

    Args:
      key: PRNG key.
      embed_dim: feature channels ``H``.
      state_size: HiPPO state size ``N`` (LSSL paper: 256; 64 for small configs).
      a_mode: ``"fixed"`` (no A/B params), ``"shared"`` (one trainable A, B) or
        ``"per_feature"`` (one trainable A, B per channel).
      measure: HiPPO measure for A, B (``"legs"`` or ``"legt"``).
      dt_min, dt_max: range of the log-uniform initial step sizes.
    """
    if a_mode not in A_MODES:
        raise ValueError(f"init_lssl: a_mode must be one of {A_MODES}, got {a_mode!r}.")
    if measure not in MEASURES:
        raise ValueError(f"init_lssl: measure must be one of {MEASURES}, got {measure!r}.")
    if not 0 < dt_min <= dt_max:
        raise ValueError(f"init_lssl: need 0 < dt_min <= dt_max, got {dt_min}, {dt_max}.")
    h, n = int(embed_dim), int(state_size)
    if h < 1 or n < 1:
        raise ValueError(f"init_lssl: embed_dim and state_size must be positive, got {embed_dim}, {state_size}.")
    k = split(key, ["log_dt", "C", "out_proj"])
    params = {
        "log_dt": param(k["log_dt"], (h,), ("embed",), log_uniform_dt_init(dt_min, dt_max)),
        "C": param(k["C"], (h, n), ("embed", "state"), normal(1.0 / math.sqrt(n))),
        "D": param(key, (h,), ("embed",), ones),
        "out_proj": param(k["out_proj"], (h, h), ("ssm_inner", "embed"), fan_in_normal()),
        "out_bias": param(key, (h,), ("embed",), zeros),
    }
    if a_mode != "fixed":
        a, b = hippo_matrices(measure, n)
        if a_mode == "shared":
            params["A"] = param(key, (n, n), ("state", None), array_init(a))
            params["B"] = param(key, (n,), ("state",), array_init(b))
        else:
            params["A"] = param(key, (h, n, n), ("embed", "state", None), array_init(a))
            params["B"] = param(key, (h, n), ("embed", "state"), array_init(b))
    return params


def init_lssl_state(batch: int, embed_dim: int, *, state_size: int = 64) -> dict:
    """Zero decoding state ``{"ssm": [batch, embed, state] float32}``."""
    return {"ssm": jnp.zeros((batch, embed_dim, state_size), jnp.float32)}


def lssl_a_mode(params: dict) -> str:
    """``"fixed"``, ``"shared"`` or ``"per_feature"``, read from the params."""
    if "A" not in params:
        return "fixed"
    return "shared" if params["A"].ndim == 2 else "per_feature"


def discretize_lssl(params: dict, *, measure: str = "legs", discretization: float | str = 0.5):
    """Per-channel discrete matrices.

    Args:
      params: LSSL params (boxed or not).
      measure: HiPPO measure of a fixed A (ignored when A is a param).
      discretization: generalised-bilinear ``alpha`` in ``[0, 1]`` (0.5 bilinear,
        0 forward Euler, 1 backward Euler) or ``"zoh"``.

    Returns:
      ``(A_bar [embed, state, state], B_bar [embed, state])`` float32.
    """
    params = unbox(params)
    n = params["C"].shape[-1]
    if "A" in params:
        a, b = params["A"].astype(jnp.float32), params["B"].astype(jnp.float32)
    else:
        a_np, b_np = hippo_matrices(measure, n)
        a, b = jnp.asarray(a_np, jnp.float32), jnp.asarray(b_np, jnp.float32)
    dt = jnp.exp(params["log_dt"].astype(jnp.float32))
    per_feature = a.ndim == 3
    fn = lambda a_, b_, dt_: discretize(a_, b_, dt_, discretization)  # noqa: E731
    in_axes = (0, 0, 0) if per_feature else (None, None, 0)
    return jax.vmap(fn, in_axes=in_axes)(a, b, dt)


def lssl_kernel(params: dict, length: int, *, measure: str = "legs", discretization: float | str = 0.5):
    """Convolution kernel ``K[l, h] = C_h A_bar_h^l B_bar_h``: ``[length, embed]`` float32."""
    params = unbox(params)
    a_bar, b_bar = discretize_lssl(params, measure=measure, discretization=discretization)
    powers = krylov(a_bar, b_bar, length)  # [H, L, N]
    return jnp.einsum("hln,hn->lh", powers, params["C"].astype(jnp.float32))


def lssl_ssm(
    params: dict,
    u: jax.Array,
    *,
    mode: str = "convolution",
    measure: str = "legs",
    discretization: float | str = 0.5,
    state: dict | None = None,
):
    """The linear SSM part of the layer (no GELU / mix).

    Args:
      params: LSSL params (boxed or not).
      u: ``[batch, seq, embed]``.
      mode: ``"recurrent"``, ``"convolution"`` or ``"parallel"``.
      state: optional initial state ``{"ssm": [batch, embed, state]}``.

    Returns:
      ``(y [batch, seq, embed] float32, final state {"ssm": [batch, embed, state]})``.
    """
    if mode not in LSSL_MODES:
        raise ValueError(f"lssl: mode must be one of {LSSL_MODES}, got {mode!r}.")
    params = unbox(params)
    check_layer_input(u, params["C"].shape[0], "lssl", 3)
    u32 = u.astype(jnp.float32)
    batch, _, h = u.shape
    c = params["C"].astype(jnp.float32)
    d = params["D"].astype(jnp.float32)
    a_bar, b_bar = discretize_lssl(params, measure=measure, discretization=discretization)
    n = c.shape[-1]
    h0 = None if state is None else state["ssm"].astype(jnp.float32)
    if h0 is not None and h0.shape != (batch, h, n):
        raise ValueError(f"lssl: state['ssm'] must be [batch, embed, state] = {(batch, h, n)}, got {h0.shape}.")

    y, last = lti_ssm(a_bar, b_bar, c, d, u32, mode=_LTI_MODE[mode], h0=h0)
    return y, {"ssm": last}


def _output(params: dict, y: jax.Array, dropout_rate: float, rng: jax.Array | None) -> jax.Array:
    y = jax.nn.gelu(y)
    if rng is not None and dropout_rate > 0.0:
        keep = jax.random.bernoulli(rng, 1.0 - dropout_rate, y.shape)
        y = jnp.where(keep, y / (1.0 - dropout_rate), 0.0)
    return y @ params["out_proj"].astype(jnp.float32) + params["out_bias"].astype(jnp.float32)


def lssl(
    params: dict,
    u: jax.Array,
    *,
    mode: str = "convolution",
    measure: str = "legs",
    discretization: float | str = 0.5,
    dropout_rate: float = 0.0,
    rng: jax.Array | None = None,
    state: dict | None = None,
    return_state: bool = False,
):
    """LSSL layer: ``[batch, seq, embed] -> [batch, seq, embed]`` (input dtype).

    Args:
      params: from :func:`init_lssl` (boxed or unboxed).
      u: ``[batch, seq, embed]``.
      mode: ``"recurrent"`` (``lax.scan``), ``"convolution"`` (Krylov kernel + FFT) or
        ``"parallel"`` (matrix-valued ``lax.associative_scan``); all compute the same.
      measure: HiPPO measure of a fixed A (must match :func:`init_lssl`).
      discretization: bilinear ``alpha`` in ``[0, 1]`` or ``"zoh"``.
      dropout_rate, rng: dropout after the GELU (only applied when ``rng`` is given).
      state: optional initial state ``{"ssm": [batch, embed, state]}`` (continue a sequence).
      return_state: also return the final state (prefill for :func:`lssl_step`).

    Returns:
      ``y`` or ``(y, state)``.
    """
    if not 0.0 <= dropout_rate < 1.0:
        raise ValueError(f"lssl: dropout_rate must be in [0, 1), got {dropout_rate}.")
    params = unbox(params)
    y, new_state = lssl_ssm(params, u, mode=mode, measure=measure, discretization=discretization, state=state)
    out = _output(params, y, dropout_rate, rng).astype(u.dtype)
    return (out, new_state) if return_state else out


def lssl_step(
    params: dict,
    u_t: jax.Array,
    state: dict,
    *,
    measure: str = "legs",
    discretization: float | str = 0.5,
):
    """One decoding step: ``u_t [batch, embed]`` -> ``(y_t [batch, embed], new_state)``.

    ``state = {"ssm": [batch, embed, state]}`` (see :func:`init_lssl_state`).
    """
    params = unbox(params)
    check_layer_input(u_t, params["C"].shape[0], "lssl_step", 2)
    a_bar, b_bar = discretize_lssl(params, measure=measure, discretization=discretization)
    u32 = u_t.astype(jnp.float32)
    x = jnp.einsum("hnm,bhm->bhn", a_bar, state["ssm"].astype(jnp.float32)) + b_bar * u32[..., None]
    y = jnp.einsum("bhn,hn->bh", x, params["C"].astype(jnp.float32)) + params["D"].astype(jnp.float32) * u32
    return _output(params, y, 0.0, None).astype(u_t.dtype), {"ssm": x}


__all__ = [
    "A_MODES",
    "LSSL_MODES",
    "init_lssl",
    "init_lssl_state",
    "lssl_a_mode",
    "discretize_lssl",
    "lssl_kernel",
    "lssl_ssm",
    "lssl",
    "lssl_step",
]
