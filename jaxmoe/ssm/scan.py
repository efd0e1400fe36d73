"""Shared utilities for linear state-space recurrences.

The first-order linear recurrence ``h_t = a_t * h_{t-1} + b_t`` (element-wise ``a``) or
``h_t = A_t @ h_{t-1} + b_t`` (dense ``A``) is associative under the binary operator

    (a_i, b_i) o (a_j, b_j) = (a_j * a_i, a_j * b_i + b_j)          (diagonal)
    (A_i, b_i) o (A_j, b_j) = (A_j @ A_i, A_j @ b_i + b_j)          (matrix)

so it can run as a sequential ``lax.scan`` (O(L) steps, O(1) memory per step) or as a
``lax.associative_scan`` (O(log L) depth). :func:`linear_recurrence` offers both, plus
chunking (associative scan inside chunks, ``lax.scan`` carrying the state across
chunks) and reverse-time recurrences.

The convolutional view of a time-invariant SSM uses :func:`krylov` (the sequence
``b, A b, A^2 b, ...`` by repeated squaring, O(log L) matmuls) and
:func:`causal_conv_fft` (causal convolution by FFT, zero padded so nothing wraps).

:func:`check_layer_input` is the one shape check of every layer's input (``[batch, seq,
embed]`` for a sequence, ``[batch, embed]`` for one decode step).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax

RECURRENCE_MODES = ("assoc", "scan")


def check_layer_input(x: jax.Array, embed_dim: int, name: str, ndim: int) -> None:
    """Raise a one-line ValueError unless ``x`` is ``[batch, seq, embed_dim]`` (``ndim`` 3)
    or ``[batch, embed_dim]`` (``ndim`` 2); ``name`` is the layer function's name."""
    if x.ndim != ndim or x.shape[-1] != embed_dim:
        want = "[batch, seq, embed]" if ndim == 3 else "[batch, embed]"
        raise ValueError(f"{name}: input must be {want} with embed={embed_dim}, got shape {x.shape}.")


def _matvec(a: jax.Array, h: jax.Array) -> jax.Array:
    """``a @ h`` over the last axis with broadcasting: a ``[..., N, N]``, h ``[..., N]``."""
    return jnp.matmul(a, h[..., None])[..., 0]


def diagonal_combine(left, right):
    """Binary operator of the element-wise recurrence ``h_t = a_t * h_{t-1} + b_t``.

    ``left = (a_i, b_i)`` is the earlier element, ``right = (a_j, b_j)`` the later one;
    returns ``(a_j * a_i, a_j * b_i + b_j)``.
    """
    a_i, b_i = left
    a_j, b_j = right
    return a_j * a_i, a_j * b_i + b_j


def matrix_combine(left, right):
    """Binary operator of the dense recurrence ``h_t = A_t @ h_{t-1} + b_t``.

    ``A: [..., N, N]``, ``b: [..., N]`` (leading dims broadcast); returns
    ``(A_j @ A_i, A_j @ b_i + b_j)``.
    """
    a_i, b_i = left
    a_j, b_j = right
    return jnp.matmul(a_j, a_i), _matvec(a_j, b_i) + b_j


def linear_recurrence(
    a: jax.Array,
    b: jax.Array,
    h0: jax.Array | None = None,
    *,
    axis: int = 0,
    reverse: bool = False,
    mode: str = "assoc",
    chunk_size: int | None = None,
    matrix: bool = False,
) -> jax.Array:
    """All states of ``h_t = a_t * h_{t-1} + b_t`` (or ``A_t @ h_{t-1} + b_t``).

    Args:
      a: transition. Diagonal case (``matrix=False``): same rank as ``b`` and
        broadcastable against it, e.g. ``[seq, state]`` with ``b: [batch, seq, state]``
        is not allowed (ranks differ) but ``[1, seq, state]`` is. Matrix case
        (``matrix=True``): ``b``'s shape plus one trailing axis, ``[..., seq, ..., N, N]``,
        broadcastable against ``b`` over all but the last two axes.
      b: inputs ``[..., seq, ...]`` (matrix case: the last axis is the state ``N``).
      h0: optional initial state, ``b``'s shape without the ``axis`` dim (broadcastable).
        With ``reverse=True`` it is the state after the last step.
      axis: the sequence axis (of ``b`` and of ``a``).
      reverse: run ``h_t = a_t * h_{t+1} + b_t`` from the end of the sequence.
      mode: ``"assoc"`` (``lax.associative_scan``) or ``"scan"`` (sequential ``lax.scan``).
      chunk_size: ``"assoc"`` only: split the sequence into chunks of this size,
        associative scan inside each chunk, ``lax.scan`` across chunks (bounds the
        scan's temporaries). ``None`` is one chunk. Ignored by ``"scan"``.
      matrix: dense transitions ``a: [..., N, N]`` instead of element-wise ones.

    Returns:
      ``h`` with ``b``'s shape broadcast against ``a`` (and ``h0``): every state, ``h[t]``
      along ``axis`` being the state after step ``t``.
    """
    if mode not in RECURRENCE_MODES:
        raise ValueError(f"linear_recurrence mode must be one of {RECURRENCE_MODES}, got {mode!r}.")
    a = jnp.asarray(a)
    b = jnp.asarray(b)
    state_dims = 1 if matrix else 0
    if a.ndim != b.ndim + state_dims:
        want = "b.ndim + 1 (a trailing [N, N] matrix)" if matrix else "b.ndim"
        raise ValueError(
            f"linear_recurrence: a has shape {a.shape} and b {b.shape}; a.ndim must be {want}."
        )
    if matrix and not (a.shape[-1] == a.shape[-2] == b.shape[-1]):
        raise ValueError(
            f"linear_recurrence(matrix=True): a must end in [N, N] with N = b.shape[-1] "
            f"= {b.shape[-1]}, got a {a.shape}."
        )
    if not -b.ndim <= axis < b.ndim:
        raise ValueError(f"linear_recurrence: axis {axis} out of range for b of shape {b.shape}.")
    axis = axis % b.ndim
    if matrix and axis == b.ndim - 1:
        raise ValueError("linear_recurrence(matrix=True): the sequence axis cannot be the state axis.")
    if a.shape[axis] != b.shape[axis]:
        raise ValueError(
            f"linear_recurrence: a {a.shape} and b {b.shape} differ in sequence length along axis {axis}."
        )
    if chunk_size is not None and (int(chunk_size) != chunk_size or chunk_size < 1):
        raise ValueError(f"linear_recurrence: chunk_size must be a positive int or None, got {chunk_size!r}.")

    a = jnp.moveaxis(a, axis, 0)
    b = jnp.moveaxis(b, axis, 0)
    if reverse:
        a, b = jnp.flip(a, 0), jnp.flip(b, 0)
    a_state = a.shape[1:-1] if matrix else a.shape[1:]  # a's dims that pair with b's
    try:
        out_shape = jnp.broadcast_shapes(a_state, b.shape[1:])
    except ValueError:
        raise ValueError(f"linear_recurrence: a {a.shape} does not broadcast against b {b.shape}.") from None
    dtype = jnp.result_type(a, b) if h0 is None else jnp.result_type(a, b, h0)
    if h0 is not None:
        h0 = jnp.asarray(h0)
        try:
            out_shape = jnp.broadcast_shapes(out_shape, h0.shape)
        except ValueError:
            raise ValueError(
                f"linear_recurrence: h0 of shape {h0.shape} does not broadcast to the state shape {out_shape}."
            ) from None
        h0 = jnp.broadcast_to(h0.astype(dtype), out_shape)
    a = a.astype(dtype)
    b = jnp.broadcast_to(b.astype(dtype), (b.shape[0],) + out_shape)

    apply = _matvec if matrix else jnp.multiply
    combine = matrix_combine if matrix else diagonal_combine
    length = b.shape[0]

    if mode == "scan":
        def step(h, ab):
            h = apply(ab[0], h) + ab[1]
            return h, h

        init = jnp.zeros(out_shape, dtype) if h0 is None else h0
        _, h = lax.scan(step, init, (a, b))
    elif chunk_size is None or chunk_size >= length:
        if h0 is not None:
            b = b.at[0].add(apply(a[0], h0))
        _, h = lax.associative_scan(combine, (a, b), axis=0)
    else:
        num_chunks = math.ceil(length / chunk_size)
        pad = num_chunks * chunk_size - length
        if pad:
            # Identity transitions and zero inputs after the end leave real outputs alone.
            if matrix:
                eye = jnp.eye(a.shape[-1], dtype=dtype)
                a_pad = jnp.broadcast_to(eye, (pad,) + a.shape[1:])
            else:
                a_pad = jnp.ones((pad,) + a.shape[1:], dtype)
            a = jnp.concatenate([a, a_pad], axis=0)
            b = jnp.concatenate([b, jnp.zeros((pad,) + b.shape[1:], dtype)], axis=0)
        a = a.reshape((num_chunks, chunk_size) + a.shape[1:])
        b = b.reshape((num_chunks, chunk_size) + b.shape[1:])

        def chunk(h, ab):
            a_c, b_c = ab
            b_c = b_c.at[0].add(apply(a_c[0], h))
            _, h_c = lax.associative_scan(combine, (a_c, b_c), axis=0)
            return h_c[-1], h_c

        init = jnp.zeros(out_shape, dtype) if h0 is None else h0
        _, h = lax.scan(chunk, init, (a, b))
        h = h.reshape((num_chunks * chunk_size,) + out_shape)[:length]

    if reverse:
        h = jnp.flip(h, 0)
    return jnp.moveaxis(h, 0, axis)


def krylov(a: jax.Array, b: jax.Array, length: int) -> jax.Array:
    """Krylov sequence ``[b, A b, A^2 b, ..., A^{length-1} b]`` by repeated squaring.

    Uses O(log length) matmuls: the block ``[b, ..., A^{m-1} b]`` is extended by
    ``A^m`` applied to itself, then ``A^m`` is squared.

    Args:
      a: ``[..., N, N]``.
      b: ``[..., N]`` (leading dims broadcast against ``a``'s).
      length: number of terms ``L >= 1`` (static).

    Returns:
      ``[..., L, N]``, row ``l`` being ``A^l b``.
    """
    length = int(length)
    if length < 1:
        raise ValueError(f"krylov: length must be >= 1, got {length}.")
    if a.ndim < 2 or a.shape[-1] != a.shape[-2] or b.shape[-1] != a.shape[-1]:
        raise ValueError(f"krylov: need a [..., N, N] and b [..., N], got a {a.shape}, b {b.shape}.")
    cols = b[..., None, :]
    power = a
    while cols.shape[-2] < length:
        # (A^m [b ... A^{m-1} b])^T = cols @ (A^m)^T
        cols = jnp.concatenate([cols, jnp.matmul(cols, jnp.swapaxes(power, -1, -2))], axis=-2)
        if cols.shape[-2] < length:
            power = jnp.matmul(power, power)
    return cols[..., :length, :]


def causal_conv_fft(u: jax.Array, kernel: jax.Array, *, axis: int = 1) -> jax.Array:
    """Causal convolution ``y_t = sum_{l <= t} kernel_l u_{t-l}`` by FFT along ``axis``.

    Both inputs are zero padded to ``L + K`` (``2L`` for a full-length kernel), so the
    circular convolution of the FFT never wraps around. Real inputs use ``rfft``;
    if either input is complex the full complex FFT is used.

    Args:
      u: ``[..., seq, ...]`` with the sequence on ``axis``.
      kernel: same rank as ``u``, kernel taps on ``axis`` (length ``K <= seq`` or any
        length: only the first ``seq`` outputs are returned), other dims broadcast.
      axis: the sequence axis.

    Returns:
      ``u`` broadcast against ``kernel``, length ``seq`` along ``axis``.
    """
    if u.ndim != kernel.ndim:
        raise ValueError(
            f"causal_conv_fft: u {u.shape} and kernel {kernel.shape} must have the same rank "
            "(add size-1 axes to broadcast)."
        )
    length = u.shape[axis]
    n = length + kernel.shape[axis]
    if jnp.iscomplexobj(u) or jnp.iscomplexobj(kernel):
        y = jnp.fft.ifft(jnp.fft.fft(u, n=n, axis=axis) * jnp.fft.fft(kernel, n=n, axis=axis), n=n, axis=axis)
    else:
        y = jnp.fft.irfft(jnp.fft.rfft(u, n=n, axis=axis) * jnp.fft.rfft(kernel, n=n, axis=axis), n=n, axis=axis)
    return lax.slice_in_dim(y, 0, length, axis=axis)


LTI_MODES = ("scan", "assoc", "conv")


def lti_ssm(
    a: jax.Array,
    b: jax.Array,
    c: jax.Array,
    d: jax.Array,
    u: jax.Array,
    *,
    mode: str = "conv",
    h0: jax.Array | None = None,
):
    """Per-channel (SISO) discrete time-invariant SSM in one of three equivalent views.

    ``x_k = A_h x_{k-1} + B_h u_k``, ``y_k = C_h . x_k + D_h u_k`` for every channel ``h``.

    Args:
      a: ``[H, N, N]`` discrete transition per channel.
      b, c: ``[H, N]``.
      d: ``[H]``.
      u: ``[batch, seq, H]``.
      mode: ``"scan"`` (``lax.scan``), ``"assoc"`` (matrix-valued associative scan; memory
        ``seq * H * N^2``) or ``"conv"`` (Krylov kernel ``C A^l B`` + causal FFT conv).
      h0: optional initial state ``[batch, H, N]``.

    Returns:
      ``(y [batch, seq, H], final state [batch, H, N])`` in ``u``'s dtype.
    """
    if mode not in LTI_MODES:
        raise ValueError(f"lti_ssm: mode must be one of {LTI_MODES}, got {mode!r}.")
    batch, length, h = u.shape
    n = a.shape[-1]
    if a.shape != (h, n, n) or b.shape != (h, n) or c.shape != (h, n) or d.shape != (h,):
        raise ValueError(
            f"lti_ssm: need a [H, N, N], b [H, N], c [H, N], d [H] with H = {h}; got "
            f"{a.shape}, {b.shape}, {c.shape}, {d.shape}."
        )
    if h0 is not None and h0.shape != (batch, h, n):
        raise ValueError(f"lti_ssm: initial state must be [batch, H, N] = {(batch, h, n)}, got {h0.shape}.")

    if mode == "scan":
        def step(x, u_t):  # x [B, H, N], u_t [B, H]
            x = jnp.einsum("hnm,bhm->bhn", a, x) + b * u_t[..., None]
            return x, x

        init = jnp.zeros((batch, h, n), u.dtype) if h0 is None else h0
        last, xs = lax.scan(step, init, jnp.swapaxes(u, 0, 1))
        y = jnp.einsum("lbhn,hn->blh", xs, c)
    elif mode == "assoc":
        xs = linear_recurrence(
            jnp.broadcast_to(a, (1, length, h, n, n)), b * u[..., None], h0, axis=1, mode="assoc", matrix=True
        )
        last = xs[:, -1]
        y = jnp.einsum("blhn,hn->blh", xs, c)
    else:
        powers = krylov(a, b, length)  # [H, L, N]: A^l B
        y = causal_conv_fft(u, jnp.einsum("hln,hn->lh", powers, c)[None], axis=1)
        last = jnp.einsum("hln,blh->bhn", powers, jnp.flip(u, 1))  # sum_l A^l B u_{L-1-l}
        if h0 is not None:
            # the initial state adds A^{k+1} h0 to x_k
            h0_powers = krylov(a, jnp.einsum("hnm,bhm->bhn", a, h0), length)  # [B, H, L, N]
            y = y + jnp.einsum("bhln,hn->blh", h0_powers, c)
            last = last + h0_powers[:, :, -1]
    return y + d * u, last
