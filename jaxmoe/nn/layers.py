"""Basic pure layers: linear, RMSNorm, LayerNorm, embedding, SwiGLU.

Each layer is a pair ``init_x(key, ...) -> boxed params`` and ``x(params, inputs, ...)``.
Weights are stored ``[in, out]``; computation happens in the dtype of the input
(cast weights to it), norms in fp32.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from jaxmoe.nn.init import Boxed, normal, ones, param, split, zeros


def init_linear(key, in_dim: int, out_dim: int, axes: Sequence[str | None], *, bias: bool = False,
                std: float = 0.02, bias_axis: str | None = None) -> dict[str, Boxed]:
    """Linear layer params: ``kernel [in_dim, out_dim]`` (+ ``bias [out_dim]``)."""
    k = split(key, ["kernel", "bias"])
    p = {"kernel": param(k["kernel"], (in_dim, out_dim), axes, normal(std))}
    if bias:
        p["bias"] = param(k["bias"], (out_dim,), (bias_axis if bias_axis is not None else axes[-1],), zeros)
    return p


def linear(params, x: jax.Array) -> jax.Array:
    """``x [..., in] @ kernel [in, out] (+ bias)`` in x's dtype."""
    y = x @ params["kernel"].astype(x.dtype)
    if "bias" in params:
        y = y + params["bias"].astype(x.dtype)
    return y


def init_rmsnorm(dim: int, axis: str | None = "embed") -> dict[str, Boxed]:
    return {"scale": param(jax.random.PRNGKey(0), (dim,), (axis,), ones)}


def rmsnorm(params, x: jax.Array, eps: float = 1e-6) -> jax.Array:
    """RMSNorm computed in fp32, returned in x's dtype."""
    xf = x.astype(jnp.float32)
    y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
    return (y * params["scale"].astype(jnp.float32)).astype(x.dtype)


def init_layernorm(dim: int, axis: str | None = "embed") -> dict[str, Boxed]:
    """LayerNorm params: ``scale [dim]`` (ones), ``bias [dim]`` (zeros)."""
    key = jax.random.PRNGKey(0)
    return {"scale": param(key, (dim,), (axis,), ones), "bias": param(key, (dim,), (axis,), zeros)}


def layernorm(params, x: jax.Array, eps: float = 1e-5) -> jax.Array:
    """LayerNorm over the last axis, computed in fp32, returned in x's dtype."""
    xf = x.astype(jnp.float32)
    mean = jnp.mean(xf, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(xf - mean), axis=-1, keepdims=True)
    y = (xf - mean) * jax.lax.rsqrt(var + eps)
    return (y * params["scale"].astype(jnp.float32) + params["bias"].astype(jnp.float32)).astype(x.dtype)


def init_embedding(key, vocab_size: int, dim: int, std: float = 0.02) -> dict[str, Boxed]:
    return {"embedding": param(key, (vocab_size, dim), ("vocab", "embed"), normal(std))}


def embed(params, tokens: jax.Array, dtype=jnp.float32) -> jax.Array:
    """``tokens [...] -> [..., embed]``."""
    return jnp.take(params["embedding"], tokens, axis=0).astype(dtype)


def attend_embedding(params, x: jax.Array) -> jax.Array:
    """Tied LM head: ``x [..., embed] @ embedding.T -> [..., vocab]``."""
    return x @ params["embedding"].astype(x.dtype).T


def init_swiglu(key, embed_dim: int, ffn_dim: int, std: float = 0.02) -> dict[str, Boxed]:
    """SwiGLU FFN: ``down(silu(x @ gate) * (x @ up))``."""
    k = split(key, ["gate", "up", "down"])
    return {
        "gate": param(k["gate"], (embed_dim, ffn_dim), ("embed", "mlp"), normal(std)),
        "up": param(k["up"], (embed_dim, ffn_dim), ("embed", "mlp"), normal(std)),
        "down": param(k["down"], (ffn_dim, embed_dim), ("mlp", "embed"), normal(std)),
    }


def swiglu(params, x: jax.Array) -> jax.Array:
    """``[..., embed] -> [..., embed]``."""
    dt = x.dtype
    h = jax.nn.silu(x @ params["gate"].astype(dt)) * (x @ params["up"].astype(dt))
    return h @ params["down"].astype(dt)
