"""The pre-norm decoder block shared by the transformer families (``lm``, ``time_moe``,
``moirai_moe``) and its decode cache.

One block is ``h += mixer(rmsnorm(h)); h += ffn(rmsnorm(h))`` (fp32 RMSNorms, eps
``model.norm_eps``). The families differ only in what they plug in: the mixer (attention
with or without biases, QK-norm, RoPE on part of each head, MLA, an SSM) and the FFN (a MoE
layer with its routing statistics, or a dense SwiGLU). Params of one block::

    {mixer_norm: {scale [embed]}, mixer: ..., ffn_norm: {scale [embed]}, ffn: ...}

The decode cache of a stack of identical attention blocks is ``{"index": int32, "layers":
{"k","v": [layers, batch, max_len, kv_heads, head_dim]}}``: each layer's KV cache with a
leading ``layers`` axis, scanned together with the stacked params. ``index`` is where the
next token goes; positions (RoPE) continue from it.

Also here: :func:`topk_moe_config`, how a family with a fixed MoE design derives its
:class:`~jaxmoe.moe.config.MoEConfig` from ``model.moe`` (a plain softmax top-k router with
every other router feature off, then the family's own fields).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from jaxmoe.moe.config import MoEConfig
from jaxmoe.nn import attention as attn_lib
from jaxmoe.nn.layers import init_rmsnorm, rmsnorm

Mixer = Callable[[Any, jax.Array], tuple[jax.Array, Any]]  # (params, x) -> (y, new layer cache or None)
FFN = Callable[[Any, jax.Array], tuple[jax.Array, Any]]  # (params, x) -> (y, statistics or None)


def init_block(mixer: Any, ffn: Any, embed_dim: int) -> dict:
    """Boxed params of one block from its mixer and FFN params."""
    return {"mixer_norm": init_rmsnorm(embed_dim), "mixer": mixer, "ffn_norm": init_rmsnorm(embed_dim), "ffn": ffn}


def block(p: dict, h: jax.Array, mixer: Mixer, ffn: FFN, norm_eps: float) -> tuple[jax.Array, Any, Any]:
    """One pre-norm block on ``h [batch, seq, embed]``: ``h += mixer(rmsnorm(h))``, then
    ``h += ffn(rmsnorm(h))``. Returns ``(h, the mixer's new cache, the FFN's statistics)``."""
    x = rmsnorm(p["mixer_norm"], h, norm_eps)
    y, new_cache = mixer(p["mixer"], x)
    h = h + y
    x = rmsnorm(p["ffn_norm"], h, norm_eps)
    y, stats = ffn(p["ffn"], x)
    return h + y, new_cache, stats


def attention_mixer(cfg, positions: jax.Array, layer_cache: dict | None, cache_index: jax.Array | None,
                    **options) -> Mixer:
    """The causal attention mixer (:func:`jaxmoe.nn.attention.attention`) of a transformer
    config (``rope_theta``, ``norm_eps``, ``attention_impl``) at ``positions [batch, seq]``,
    writing to ``layer_cache`` at ``cache_index`` when there is one; ``options`` go to the
    attention (``rope_scaling``, ``rope_dims``)."""

    def mixer(p, x):
        return attn_lib.attention(p, x, positions, rope_theta=cfg.rope_theta, norm_eps=cfg.norm_eps,
                                  cache=layer_cache, cache_index=cache_index, impl=cfg.attention_impl, **options)

    return mixer


def positions(cache: dict | None, batch: int, seq: int) -> tuple[jax.Array, jax.Array]:
    """``(index, positions [batch, seq])``: where the new tokens go in the cache (0 without
    one) and their absolute positions."""
    index = cache["index"] if cache is not None else jnp.zeros((), jnp.int32)
    return index, jnp.broadcast_to(index + jnp.arange(seq, dtype=jnp.int32), (batch, seq))


def stack_layers(one: Any, repeats: int) -> Any:
    """A per-layer cache (or state) broadcast to a leading ``[repeats]`` layers axis."""
    return jax.tree.map(lambda a: jnp.broadcast_to(a, (repeats,) + a.shape), one)


def init_kv_cache(cfg, batch: int, max_len: int, dtype) -> dict:
    """``{"index": 0, "layers": {"k","v": [num_layers, batch, max_len, kv_heads, head_dim]}}``
    for a stack of ``cfg.num_layers`` identical attention blocks."""
    one = attn_lib.init_kv_cache(batch, max_len, cfg.kv_heads, cfg.head_size, dtype)
    return {"index": jnp.zeros((), jnp.int32), "layers": stack_layers(one, cfg.num_layers)}


def advance(cache: dict | None, index: jax.Array, seq: int, layers: Any) -> dict | None:
    """The cache after ``seq`` new tokens (None without a cache)."""
    return None if cache is None else {"index": index + seq, "layers": layers}


def topk_moe_config(moe: MoEConfig, **fields) -> MoEConfig:
    """``moe`` with a plain top-k softmax router (no router options, selection bias, groups,
    routed scaling or dense prefix; an MoE FFN in every layer), then ``fields`` (the family's
    own choices: renormalisation, expert widths, shared experts, losses)."""
    return dataclasses.replace(
        moe, router="topk", router_options=None, score_func="softmax", selection_bias=False, bias_update_rate=0.0,
        routed_scaling_factor=1.0, num_groups=1, topk_groups=1, first_k_dense=0, moe_every=1, **fields)
