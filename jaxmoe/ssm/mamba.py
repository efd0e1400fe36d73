"""Mamba selective state-space block (Gu & Dao 2023), as used by S-Mamba.

``E = expand * embed`` inner channels, ``N = d_state``, ``R = dt_rank = ceil(embed / 16)``::

    x, z   = split(u @ in_proj)                               [batch, seq, E] each
    x      = silu(causal_depthwise_conv(x, d_conv) + conv_bias)
    dt_low, B_t, C_t = split(x @ x_proj)                     [R], [N], [N]
    dt     = softplus(dt_low @ dt_proj + dt_bias)            [batch, seq, E]
    A      = -exp(A_log)                                     [E, N]
    h_t    = exp(dt_t A) * h_{t-1} + dt_t B_t x_t            [batch, E, N]
    y_t    = C_t . h_t + D * x_t
    out    = (y * silu(z)) @ out_proj                        [batch, seq, embed]

Training runs the recurrence as a ``lax.associative_scan`` over the sequence
(``mode="assoc"``); with ``chunk_size`` the sequence is cut into chunks, each chunk's
``[batch, chunk, E, N]`` elements are built, scanned and contracted with ``C`` inside a
rematerialised ``lax.scan`` step, so neither the forward nor the backward pass holds
``[batch, seq, E, N]``. Chunking trades speed for memory (the chunks run one after the
other and the backward pass recomputes each chunk; ``benchmarks/ssm_scan.py`` measures
it), so leave ``chunk_size=None`` while ``[batch, seq, E, N]`` fits. ``mode="scan"`` is
the sequential ``lax.scan`` reference (the same step :func:`mamba_step` runs when
decoding). Scan arithmetic is float32.

Params (flat dict; ``init_mamba`` returns them boxed)::

    in_proj    [embed, 2E]          ("embed", "ssm_inner")
    conv_kernel [d_conv, E]         ("conv", "ssm_inner")    conv_bias [E]
    x_proj     [E, R + 2N]          ("ssm_inner", None)
    dt_proj    [R, E]               (None, "ssm_inner")      dt_bias [E]  (inverse softplus of dt)
    A_log      [E, N]               ("ssm_inner", "state")   log(1..N)
    D          [E]                  ones
    out_proj   [E, embed]           ("ssm_inner", "embed")

Decoding state: ``{"conv": [batch, d_conv - 1, E], "ssm": [batch, E, N] float32}``.
All sizes are read from the params, so the apply functions take no config.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from jax import lax

from jaxmoe.nn.init import fan_in_normal, param, split, unbox
from jaxmoe.ssm.hippo import array_init
from jaxmoe.ssm.scan import linear_recurrence

MAMBA_MODES = ("assoc", "scan")


@dataclasses.dataclass(frozen=True)
class MambaConfig:
    """Static sizes of a Mamba block (hashable; usable as a jit static argument).

    ``init_mamba(key, **dataclasses.asdict(cfg))`` and
    ``init_mamba_state(batch, **dataclasses.asdict(cfg))`` accept its fields directly.
    """

    embed_dim: int
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    dt_rank: int | None = None

    def __post_init__(self):
        for name in ("embed_dim", "d_state", "d_conv", "expand"):
            value = getattr(self, name)
            if int(value) != value or value < 1:
                raise ValueError(f"MambaConfig.{name} must be a positive int, got {value!r}.")
        if self.dt_rank is not None and (int(self.dt_rank) != self.dt_rank or self.dt_rank < 1):
            raise ValueError(f"MambaConfig.dt_rank must be a positive int or None, got {self.dt_rank!r}.")

    @property
    def inner_dim(self) -> int:
        """``E = expand * embed_dim``."""
        return self.expand * self.embed_dim

    @property
    def rank(self) -> int:
        """``dt_rank``, defaulting to ``ceil(embed_dim / 16)``."""
        return self.dt_rank if self.dt_rank is not None else math.ceil(self.embed_dim / 16)


def _dt_bias_init(dt_min: float, dt_max: float, floor: float = 1e-4):
    """``dt_bias = softplus^{-1}(dt)`` with ``dt`` log-uniform in ``[dt_min, dt_max]``."""

    def init(key, shape, dtype=jnp.float32):
        log_dt = jax.random.uniform(key, shape, jnp.float32, math.log(dt_min), math.log(dt_max))
        dt = jnp.maximum(jnp.exp(log_dt), floor)
        return (dt + jnp.log(-jnp.expm1(-dt))).astype(dtype)

    return init


def _uniform(bound: float):
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def init_mamba(
    key: jax.Array,
    embed_dim: int,
    *,
    d_state: int = 16,
    d_conv: int = 4,
    expand: int = 2,
    dt_rank: int | None = None,
    dt_min: float = 1e-3,
    dt_max: float = 1e-1,
) -> dict:
    """Boxed params of a Mamba block over ``[batch, seq, embed_dim]`` (see module doc).

    Args:
      key: PRNG key.
      embed_dim: model width ``D``.
      d_state: SSM state size ``N`` per inner channel.
      d_conv: depthwise causal conv width.
      expand: inner width ``E = expand * D``.
      dt_rank: rank of the dt projection, default ``ceil(D / 16)``.
      dt_min, dt_max: range of the log-uniform initial ``dt``.
    """
    cfg = MambaConfig(embed_dim, d_state, d_conv, expand, dt_rank)
    if not 0 < dt_min <= dt_max:
        raise ValueError(f"init_mamba: need 0 < dt_min <= dt_max, got {dt_min}, {dt_max}.")
    d, e, n, r = cfg.embed_dim, cfg.inner_dim, cfg.d_state, cfg.rank
    k = split(key, ["in_proj", "conv_kernel", "conv_bias", "x_proj", "dt_proj", "dt_bias", "out_proj"])
    return {
        "in_proj": param(k["in_proj"], (d, 2 * e), ("embed", "ssm_inner"), fan_in_normal()),
        "conv_kernel": param(k["conv_kernel"], (cfg.d_conv, e), ("conv", "ssm_inner"), _uniform(cfg.d_conv**-0.5)),
        "conv_bias": param(k["conv_bias"], (e,), ("ssm_inner",), _uniform(cfg.d_conv**-0.5)),
        "x_proj": param(k["x_proj"], (e, r + 2 * n), ("ssm_inner", None), fan_in_normal()),
        "dt_proj": param(k["dt_proj"], (r, e), (None, "ssm_inner"), _uniform(r**-0.5)),
        "dt_bias": param(k["dt_bias"], (e,), ("ssm_inner",), _dt_bias_init(dt_min, dt_max)),
        "A_log": param(key, (e, n), ("ssm_inner", "state"), array_init(jnp.log(jnp.arange(1, n + 1.0)))),
        "D": param(key, (e,), ("ssm_inner",), array_init(1.0)),
        "out_proj": param(k["out_proj"], (e, d), ("ssm_inner", "embed"), fan_in_normal()),
    }


def init_mamba_state(
    batch: int,
    embed_dim: int,
    *,
    d_state: int = 16,
    d_conv: int = 4,
    expand: int = 2,
    dt_rank: int | None = None,
    dtype=jnp.float32,
) -> dict:
    """Zero decoding state ``{"conv": [batch, d_conv - 1, E] dtype, "ssm": [batch, E, N] float32}``
    (same keyword arguments as :func:`init_mamba`; ``dt_rank`` does not matter here)."""
    cfg = MambaConfig(embed_dim, d_state, d_conv, expand, dt_rank)
    return {
        "conv": jnp.zeros((batch, cfg.d_conv - 1, cfg.inner_dim), dtype),
        "ssm": jnp.zeros((batch, cfg.inner_dim, cfg.d_state), jnp.float32),
    }


def _sizes(params: dict) -> tuple[int, int, int, int]:
    """``(d_conv, E, N, R)`` read from the params."""
    d_conv, e = params["conv_kernel"].shape
    n = params["A_log"].shape[1]
    r = params["dt_proj"].shape[0]
    return d_conv, e, n, r


def causal_depthwise_conv(x: jax.Array, kernel: jax.Array, bias: jax.Array, left: jax.Array | None = None):
    """``y[t, e] = bias[e] + sum_k kernel[k, e] x[t - (K-1) + k, e]`` (PyTorch ``Conv1d``
    with ``groups=E, padding=K-1`` truncated to ``seq``).

    Args:
      x: ``[batch, seq, E]``; kernel ``[K, E]``; bias ``[E]``.
      left: ``[batch, K-1, E]`` inputs before ``x`` (decode/prefill state), zeros if None.

    Returns:
      ``(y [batch, seq, E], last K-1 inputs [batch, K-1, E])``.
    """
    width = kernel.shape[0]
    if left is None:
        left = jnp.zeros((x.shape[0], width - 1, x.shape[2]), x.dtype)
    padded = jnp.concatenate([left.astype(x.dtype), x], axis=1)
    length = x.shape[1]
    y = sum(padded[:, k : k + length] * kernel[k] for k in range(width)) + bias
    return y, padded[:, padded.shape[1] - (width - 1) :]


def _ssm_step(h, x_t, dt_t, b_t, c_t, a, d):
    """One selective-SSM step: h ``[B, E, N]``, x_t/dt_t ``[B, E]``, b_t/c_t ``[B, N]``."""
    h = jnp.exp(dt_t[..., None] * a) * h + (dt_t * x_t)[..., None] * b_t[:, None, :]
    return h, jnp.einsum("ben,bn->be", h, c_t) + d * x_t


def selective_scan(
    x: jax.Array,
    dt: jax.Array,
    a: jax.Array,
    b: jax.Array,
    c: jax.Array,
    d: jax.Array,
    *,
    h0: jax.Array | None = None,
    mode: str = "assoc",
    chunk_size: int | None = None,
):
    """The selective SSM ``h_t = exp(dt_t A) h_{t-1} + dt_t B_t x_t``, ``y_t = C_t . h_t + D x_t``.

    Args:
      x, dt: ``[batch, seq, E]``.
      a: ``[E, N]`` (negative real).
      b, c: ``[batch, seq, N]``.
      d: ``[E]``.
      h0: optional initial state ``[batch, E, N]``.
      mode: ``"assoc"`` (associative scan, chunked if ``chunk_size``) or ``"scan"``.
      chunk_size: sequence chunk of the associative scan; ``None`` is one chunk.

    Returns:
      ``(y [batch, seq, E] float32, final state [batch, E, N] float32)``.
    """
    if mode not in MAMBA_MODES:
        raise ValueError(f"mamba: mode must be one of {MAMBA_MODES}, got {mode!r}.")
    if chunk_size is not None and (int(chunk_size) != chunk_size or chunk_size < 1):
        raise ValueError(f"mamba: chunk_size must be a positive int or None, got {chunk_size!r}.")
    x, dt, a, b, c, d = (t.astype(jnp.float32) for t in (x, dt, a, b, c, d))
    batch, length, e = x.shape
    h = jnp.zeros((batch, e, a.shape[1]), jnp.float32) if h0 is None else h0.astype(jnp.float32)

    if mode == "scan":
        def step(h, inputs):
            return _ssm_step(h, *inputs, a, d)

        time_major = tuple(jnp.swapaxes(t, 0, 1) for t in (x, dt, b, c))
        h, y = lax.scan(step, h, time_major)
        return jnp.swapaxes(y, 0, 1), h

    def chunk(h, inputs):
        x_c, dt_c, b_c, c_c = inputs  # [B, C, E], [B, C, E], [B, C, N], [B, C, N]
        a_bar = jnp.exp(dt_c[..., None] * a)  # [B, C, E, N]
        bu = (dt_c * x_c)[..., None] * b_c[:, :, None, :]
        hs = linear_recurrence(a_bar, bu, h, axis=1, mode="assoc")
        return hs[:, -1], jnp.einsum("blen,bln->ble", hs, c_c) + d * x_c

    if chunk_size is None or chunk_size >= length:
        h, y = chunk(h, (x, dt, b, c))
        return y, h
    num_chunks = math.ceil(length / chunk_size)
    pad = num_chunks * chunk_size - length
    # dt = 0 past the end: exp(0 * A) = 1 and zero input keep the final state unchanged.
    def to_chunks(t):
        t = jnp.pad(t, ((0, 0), (0, pad), (0, 0)))
        return jnp.swapaxes(t.reshape(batch, num_chunks, chunk_size, t.shape[-1]), 0, 1)

    h, y = lax.scan(jax.checkpoint(chunk, prevent_cse=False), h, tuple(to_chunks(t) for t in (x, dt, b, c)))
    y = jnp.swapaxes(y, 0, 1).reshape(batch, num_chunks * chunk_size, e)[:, :length]
    return y, h


def _project(params: dict, x_conv: jax.Array):
    """``x_conv [..., E] -> (dt [..., E], B [..., N], C [..., N])``."""
    _, _, n, r = _sizes(params)
    proj = x_conv @ params["x_proj"].astype(x_conv.dtype)
    dt_low, b, c = jnp.split(proj, [r, r + n], axis=-1)
    dt = jax.nn.softplus(
        (dt_low @ params["dt_proj"].astype(x_conv.dtype)).astype(jnp.float32) + params["dt_bias"].astype(jnp.float32)
    )
    return dt, b, c


def mamba(
    params: dict,
    x: jax.Array,
    *,
    mode: str = "assoc",
    chunk_size: int | None = None,
    state: dict | None = None,
    return_state: bool = False,
):
    """Mamba block: ``[batch, seq, embed] -> [batch, seq, embed]`` (input dtype).

    Args:
      params: from :func:`init_mamba` (boxed or unboxed).
      x: ``[batch, seq, embed]``; projections run in ``x.dtype``, the scan in float32.
      mode: ``"assoc"`` (training path) or ``"scan"`` (``lax.scan`` reference).
      chunk_size: chunk the associative scan over the sequence (bounds memory to
        ``[batch, chunk, E, N]``); ``None`` scans the whole sequence at once.
      state: optional ``{"conv", "ssm"}`` state to continue from (see :func:`init_mamba_state`).
      return_state: also return the state after the last token (prefill for :func:`mamba_step`).

    Returns:
      ``y`` or ``(y, state)``.
    """
    params = unbox(params)
    d_conv, e, n, _ = _sizes(params)
    embed = params["in_proj"].shape[0]
    if x.ndim != 3 or x.shape[-1] != embed:
        raise ValueError(f"mamba: input must be [batch, seq, embed] with embed={embed}, got shape {x.shape}.")
    if state is not None:
        _check_state(state, x.shape[0], d_conv, e, n, "mamba")
    dtype = x.dtype
    xz = x @ params["in_proj"].astype(dtype)
    xs, z = jnp.split(xz, 2, axis=-1)
    xs_conv, conv_state = causal_depthwise_conv(
        xs, params["conv_kernel"].astype(dtype), params["conv_bias"].astype(dtype),
        None if state is None else state["conv"],
    )
    xs_conv = jax.nn.silu(xs_conv)
    dt, b, c = _project(params, xs_conv)
    a = -jnp.exp(params["A_log"].astype(jnp.float32))
    y, h = selective_scan(
        xs_conv, dt, a, b, c, params["D"],
        h0=None if state is None else state["ssm"], mode=mode, chunk_size=chunk_size,
    )
    y = y.astype(dtype) * jax.nn.silu(z)
    out = y @ params["out_proj"].astype(dtype)
    return (out, {"conv": conv_state, "ssm": h}) if return_state else out


def _check_state(state: dict, batch: int, d_conv: int, e: int, n: int, name: str):
    want = {"conv": (batch, d_conv - 1, e), "ssm": (batch, e, n)}
    for key, shape in want.items():
        if key not in state or tuple(state[key].shape) != shape:
            got = None if key not in state else tuple(state[key].shape)
            raise ValueError(f"{name}: state[{key!r}] must have shape {shape}, got {got} (see init_mamba_state).")


def mamba_step(params: dict, x_t: jax.Array, state: dict):
    """One decoding step: ``x_t [batch, embed]`` -> ``(y_t [batch, embed], new_state)``.

    ``state = {"conv": [batch, d_conv - 1, E], "ssm": [batch, E, N]}``.
    """
    params = unbox(params)
    d_conv, e, n, _ = _sizes(params)
    embed = params["in_proj"].shape[0]
    if x_t.ndim != 2 or x_t.shape[-1] != embed:
        raise ValueError(f"mamba_step: input must be [batch, embed] with embed={embed}, got shape {x_t.shape}.")
    _check_state(state, x_t.shape[0], d_conv, e, n, "mamba_step")
    dtype = x_t.dtype
    xs, z = jnp.split(x_t @ params["in_proj"].astype(dtype), 2, axis=-1)
    window = jnp.concatenate([state["conv"].astype(dtype), xs[:, None]], axis=1)  # [B, d_conv, E]
    xs_conv = jax.nn.silu(jnp.sum(window * params["conv_kernel"].astype(dtype), axis=1) + params["conv_bias"].astype(dtype))
    dt, b, c = _project(params, xs_conv)
    a = -jnp.exp(params["A_log"].astype(jnp.float32))
    h, y = _ssm_step(
        state["ssm"].astype(jnp.float32), xs_conv.astype(jnp.float32), dt,
        b.astype(jnp.float32), c.astype(jnp.float32), a, params["D"].astype(jnp.float32),
    )
    out = (y.astype(dtype) * jax.nn.silu(z)) @ params["out_proj"].astype(dtype)
    return out, {"conv": window[:, 1:], "ssm": h}


__all__ = [
    "MAMBA_MODES",
    "MambaConfig",
    "init_mamba",
    "init_mamba_state",
    "causal_depthwise_conv",
    "selective_scan",
    "mamba",
    "mamba_step",
]
