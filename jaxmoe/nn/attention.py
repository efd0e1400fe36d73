"""Causal grouped-KV self-attention with RoPE (on all or part of each head) and a KV cache.

Params (logical axes in brackets)::

    q: kernel [embed, heads, head_dim]      (+ bias [heads, head_dim])
    k: kernel [embed, kv_heads, head_dim]   (+ bias)
    v: kernel [embed, kv_heads, head_dim]   (+ bias)
    o: kernel [heads, head_dim, embed]
    q_norm / k_norm: scale [head_dim]        (QK-norm, optional; [heads, head_dim] when over the
                                             whole projection, as in OLMoE)

The cache of one layer is ``{"k": [batch, max_len, kv_heads, head_dim], "v": ...}``.
With a cache, the new keys/values are written at ``cache_index`` and the queries attend
to every cached position ``<=`` their own; this one path serves prefill (many tokens at
index 0) and decode (one token at index t).

RoPE rotates every head dim by default; ``rope_dims=r`` rotates only the first ``r`` dims of
each head (rotate-half layout within them) and leaves the rest without position, as
Moirai-MoE does with half of each head.

Without a cache the kernel is chosen by :func:`select_implementation` (cuDNN flash attention
on GPU for half-precision training and prefill, XLA otherwise) and :func:`causal_attention`
runs it, falling back to XLA when cuDNN refuses a shape or dtype; every attention variant
(:mod:`jaxmoe.nn.mla` too) goes through that one helper.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxmoe.nn.init import normal, ones, param, split, zeros
from jaxmoe.nn.layers import init_rmsnorm, rmsnorm
from jaxmoe.nn.rope import RopeScaling, apply_rope


def init_attention(key, embed_dim: int, num_heads: int, kv_heads: int, head_dim: int, *,
                   qkv_bias: bool = False, qk_norm: bool = False, std: float = 0.02,
                   qk_norm_full: bool = False) -> dict:
    k = split(key, ["q", "k", "v", "o", "qb", "kb", "vb"])
    p = {
        "q": {"kernel": param(k["q"], (embed_dim, num_heads, head_dim), ("embed", "heads", "head_dim"), normal(std))},
        "k": {"kernel": param(k["k"], (embed_dim, kv_heads, head_dim), ("embed", "kv_heads", "head_dim"), normal(std))},
        "v": {"kernel": param(k["v"], (embed_dim, kv_heads, head_dim), ("embed", "kv_heads", "head_dim"), normal(std))},
        "o": {"kernel": param(k["o"], (num_heads, head_dim, embed_dim), ("heads", "head_dim", "embed"), normal(std))},
    }
    if qkv_bias:
        p["q"]["bias"] = param(k["qb"], (num_heads, head_dim), ("heads", "head_dim"), zeros)
        p["k"]["bias"] = param(k["kb"], (kv_heads, head_dim), ("kv_heads", "head_dim"), zeros)
        p["v"]["bias"] = param(k["vb"], (kv_heads, head_dim), ("kv_heads", "head_dim"), zeros)
    if qk_norm and qk_norm_full:  # OLMoE: one RMSNorm over the whole q (k) projection
        p["q_norm"] = {"scale": param(k["q"], (num_heads, head_dim), ("heads", "head_dim"), ones)}
        p["k_norm"] = {"scale": param(k["k"], (kv_heads, head_dim), ("kv_heads", "head_dim"), ones)}
    elif qk_norm:
        p["q_norm"] = init_rmsnorm(head_dim, "head_dim")
        p["k_norm"] = init_rmsnorm(head_dim, "head_dim")
    return p


def _qk_norm(p, x, eps):
    """Per-head RMSNorm (scale ``[head_dim]``) or, for a ``[heads, head_dim]`` scale, one
    RMSNorm over all heads of a token (OLMoE)."""
    if p["scale"].ndim == 1:
        return rmsnorm(p, x, eps)
    b, s, h, d = x.shape
    return rmsnorm({"scale": p["scale"].reshape(h * d)}, x.reshape(b, s, h * d), eps).reshape(b, s, h, d)


def _project(p, x):
    y = jnp.einsum("bsd,dhk->bshk", x, p["kernel"].astype(x.dtype))
    if "bias" in p:
        y = y + p["bias"].astype(x.dtype)
    return y


def init_kv_cache(batch: int, max_len: int, kv_heads: int, head_dim: int, dtype=jnp.float32) -> dict:
    shape = (batch, max_len, kv_heads, head_dim)
    return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}


@functools.lru_cache(maxsize=None)
def _platform() -> str:
    return jax.default_backend()


def select_implementation(requested: str, dtype, has_cache: bool = False) -> str | None:
    """``jax.nn.dot_product_attention``'s ``implementation`` for ``attention_impl``
    ``requested`` (auto/xla/cudnn): auto picks cuDNN flash attention on GPU for bf16/fp16
    without a cache, XLA (None) otherwise."""
    if requested == "xla":
        return None
    if requested == "cudnn":
        return "cudnn"
    # auto: cuDNN flash attention on GPU for half-precision training/prefill.
    if _platform() == "gpu" and dtype in (jnp.bfloat16, jnp.float16) and not has_cache:
        return "cudnn"
    return None


def causal_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, scale: float, impl: str = "auto") -> jax.Array:
    """Causal ``dot_product_attention`` of ``q [batch, seq, heads, d]`` over ``k, v [batch,
    seq, kv_heads, d]`` with the kernel :func:`select_implementation` picks for ``impl``;
    when cuDNN is unavailable for this shape/dtype the XLA kernel runs instead."""
    implementation = select_implementation(impl, q.dtype, False)
    try:
        return jax.nn.dot_product_attention(q, k, v, scale=scale, is_causal=True, implementation=implementation)
    except Exception:  # cuDNN unavailable for this shape/dtype: fall back to XLA
        if implementation is None:
            raise
        return jax.nn.dot_product_attention(q, k, v, scale=scale, is_causal=True)


def rope_part(x: jax.Array, positions: jax.Array, theta: float, scaling: RopeScaling | None = None,
              rope_dims: int | None = None) -> jax.Array:
    """RoPE on the first ``rope_dims`` dims of each head of ``x [batch, seq, heads, head_dim]``
    (None: all of them); the other dims pass through unchanged."""
    if rope_dims is None or rope_dims == x.shape[-1]:
        return apply_rope(x, positions, theta, scaling)
    if rope_dims == 0:
        return x
    return jnp.concatenate([apply_rope(x[..., :rope_dims], positions, theta, scaling), x[..., rope_dims:]], axis=-1)


def attention(params, x: jax.Array, positions: jax.Array, *, rope_theta: float = 10000.0,
              norm_eps: float = 1e-6, cache: dict | None = None, cache_index: jax.Array | None = None,
              impl: str = "auto", rope_scaling: RopeScaling | None = None,
              rope_dims: int | None = None) -> tuple[jax.Array, dict | None]:
    """Causal self-attention.

    Args:
      x: ``[batch, seq, embed]``; positions: ``[batch, seq]`` absolute positions (RoPE).
      cache: optional ``{"k","v": [batch, max_len, kv_heads, head_dim]}``; cache_index: int
        scalar, where ``x``'s first token goes in the cache.
      rope_scaling: YaRN (:class:`~jaxmoe.nn.rope.RopeScaling`): rescaled frequencies and
        the attention factor on cos/sin (the softmax scale stays ``1/sqrt(head_dim)``).
      rope_dims: RoPE on the first ``rope_dims`` (even) dims of each head only; None: all.
    Returns ``(y [batch, seq, embed], updated cache or None)``.
    """
    q = _project(params["q"], x)
    k = _project(params["k"], x)
    v = _project(params["v"], x)
    if "q_norm" in params:
        q = _qk_norm(params["q_norm"], q, norm_eps)
        k = _qk_norm(params["k_norm"], k, norm_eps)
    q = rope_part(q, positions, rope_theta, rope_scaling, rope_dims)
    k = rope_part(k, positions, rope_theta, rope_scaling, rope_dims)
    head_dim = q.shape[-1]
    scale = 1.0 / float(head_dim) ** 0.5
    new_cache = None
    if cache is None:
        out = causal_attention(q, k, v, scale=scale, impl=impl)
    else:
        idx = jnp.asarray(cache_index, jnp.int32)
        ck = jax.lax.dynamic_update_slice(cache["k"], k.astype(cache["k"].dtype), (0, idx, 0, 0))
        cv = jax.lax.dynamic_update_slice(cache["v"], v.astype(cache["v"].dtype), (0, idx, 0, 0))
        new_cache = {"k": ck, "v": cv}
        s, max_len = x.shape[1], ck.shape[1]
        q_pos = idx + jnp.arange(s)
        mask = jnp.arange(max_len)[None, :] <= q_pos[:, None]  # [s, max_len]
        out = jax.nn.dot_product_attention(q, ck.astype(q.dtype), cv.astype(q.dtype), scale=scale,
                                           mask=mask[None, None])
    y = jnp.einsum("bshk,hkd->bsd", out, params["o"]["kernel"].astype(x.dtype))
    return y, new_cache
