"""Multi-head Latent Attention (DeepSeek-V2/V3).

Queries come from a low-rank bottleneck (``q_lora_rank``) or a plain projection; keys and
values come from one compressed latent per token::

    q            = q_b(rmsnorm(q_a x))  or  q x                  [b, s, heads, nope + rope]
    c_kv, k_pe   = split(kv_a x)                                  [b, s, kv_lora], [b, s, rope]
    c_kv         = rmsnorm(c_kv)
    k_nope, v    = split(c_kv @ kv_b)                             [b, s, heads, nope], [.., v_dim]
    q = [q_nope, rope(q_pe)],  k = [k_nope, rope(k_pe)]  (k_pe shared by all heads)
    y            = o(softmax(q k^T / sqrt(nope + rope)) v)

Params (logical axes)::

    q_a:  kernel [embed, q_lora]           q_a_norm: scale [q_lora]     (when q_lora_rank > 0)
    q_b:  kernel [q_lora, heads, nope + rope]
    q:    kernel [embed, heads, nope + rope]                          (when q_lora_rank == 0)
    kv_a: kernel [embed, kv_lora + rope]   kv_a_norm: scale [kv_lora]
    kv_b: kernel [kv_lora, heads, nope + v_dim]   (k_b = [..., :nope], v_b = [..., nope:])
    o:    kernel [heads, v_dim, embed]

RoPE uses the rotate-half layout on the ``rope`` dims. (Hugging Face's DeepSeek-V3 with
``rope_interleave=True`` rotates interleaved pairs; that is the same computation after a
fixed permutation of the ``rope`` output rows of ``q_b``/``q`` and ``kv_a``, which the
exporter applies, so no second RoPE variant is needed here.)

The decode cache of one layer holds only the normalised latent and the rotated shared key:
``{"c_kv": [batch, max_len, kv_lora], "k_pe": [batch, max_len, rope]}``. With a cache the
up-projections are absorbed: scores use ``(q_nope @ k_b^T) . c_kv`` and the output is
``(probs @ c_kv) @ v_b``, so keys/values are never expanded per head.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxmoe.nn.attention import causal_attention
from jaxmoe.nn.init import normal, param, split
from jaxmoe.nn.layers import init_rmsnorm, rmsnorm
from jaxmoe.nn.rope import RopeScaling, apply_rope, softmax_scale_factor

# The latent RMSNorms (q_a_layernorm, kv_a_layernorm) use a fixed eps in DeepSeek's code
# and in transformers, independent of the model's rms_norm_eps.
LATENT_NORM_EPS = 1e-6


def init_mla(key, embed_dim: int, num_heads: int, *, q_lora_rank: int, kv_lora_rank: int, qk_nope_head_dim: int,
             qk_rope_head_dim: int, v_head_dim: int, std: float = 0.02) -> dict:
    qk = qk_nope_head_dim + qk_rope_head_dim
    k = split(key, ["q_a", "q_b", "q", "kv_a", "kv_b", "o"])
    p = {}
    if q_lora_rank:
        p["q_a"] = {"kernel": param(k["q_a"], (embed_dim, q_lora_rank), ("embed", None), normal(std))}
        p["q_a_norm"] = init_rmsnorm(q_lora_rank, None)
        p["q_b"] = {"kernel": param(k["q_b"], (q_lora_rank, num_heads, qk), (None, "heads", "head_dim"), normal(std))}
    else:
        p["q"] = {"kernel": param(k["q"], (embed_dim, num_heads, qk), ("embed", "heads", "head_dim"), normal(std))}
    p["kv_a"] = {"kernel": param(k["kv_a"], (embed_dim, kv_lora_rank + qk_rope_head_dim), ("embed", None),
                                 normal(std))}
    p["kv_a_norm"] = init_rmsnorm(kv_lora_rank, None)
    p["kv_b"] = {"kernel": param(k["kv_b"], (kv_lora_rank, num_heads, qk_nope_head_dim + v_head_dim),
                                 (None, "heads", "head_dim"), normal(std))}
    p["o"] = {"kernel": param(k["o"], (num_heads, v_head_dim, embed_dim), ("heads", "head_dim", "embed"), normal(std))}
    return p


def init_mla_cache(batch: int, max_len: int, kv_lora_rank: int, qk_rope_head_dim: int, dtype=jnp.float32) -> dict:
    return {"c_kv": jnp.zeros((batch, max_len, kv_lora_rank), dtype),
            "k_pe": jnp.zeros((batch, max_len, qk_rope_head_dim), dtype)}


def _queries(params, x):
    dt = x.dtype
    if "q_a" in params:
        c_q = rmsnorm(params["q_a_norm"], x @ params["q_a"]["kernel"].astype(dt), LATENT_NORM_EPS)
        return jnp.einsum("bsc,chk->bshk", c_q, params["q_b"]["kernel"].astype(dt))
    return jnp.einsum("bsd,dhk->bshk", x, params["q"]["kernel"].astype(dt))


def mla(params, x: jax.Array, positions: jax.Array, *, rope_theta: float = 10000.0, cache: dict | None = None,
        cache_index: jax.Array | None = None, impl: str = "auto",
        rope_scaling: RopeScaling | None = None) -> tuple[jax.Array, dict | None]:
    """Causal MLA self-attention.

    Args:
      x: ``[batch, seq, embed]``; positions: ``[batch, seq]`` absolute positions (RoPE).
      cache: optional ``{"c_kv": [batch, max_len, kv_lora], "k_pe": [batch, max_len, rope]}``;
        cache_index: int scalar, where ``x``'s first token goes in the cache.
      rope_scaling: YaRN (:class:`~jaxmoe.nn.rope.RopeScaling`): rescaled frequencies and
        attention factor on the rope dims, and DeepSeek's ``mscale_all_dim`` correction of
        the softmax scale.
    Returns ``(y [batch, seq, embed], updated cache or None)``.
    """
    dt = x.dtype
    kv_lora = params["kv_a_norm"]["scale"].shape[0]
    rope = params["kv_a"]["kernel"].shape[-1] - kv_lora
    q = _queries(params, x)  # [b, s, h, nope + rope]
    nope = q.shape[-1] - rope
    q_nope, q_pe = q[..., :nope], q[..., nope:]
    scale = softmax_scale_factor(rope_scaling) / float(nope + rope) ** 0.5
    q_pe = apply_rope(q_pe, positions, rope_theta, rope_scaling)
    kv = x @ params["kv_a"]["kernel"].astype(dt)  # [b, s, kv_lora + rope]
    c_kv = rmsnorm(params["kv_a_norm"], kv[..., :kv_lora], LATENT_NORM_EPS)
    k_pe = apply_rope(kv[..., kv_lora:][:, :, None, :], positions, rope_theta, rope_scaling)[:, :, 0, :]  # [b, s, rope]
    kv_b = params["kv_b"]["kernel"].astype(dt)
    k_b, v_b = kv_b[..., :nope], kv_b[..., nope:]
    b, s, h, _ = q.shape
    new_cache = None
    if cache is None:
        k_nope = jnp.einsum("bsc,chn->bshn", c_kv, k_b)
        v = jnp.einsum("bsc,chv->bshv", c_kv, v_b)
        qf = jnp.concatenate([q_nope, q_pe], axis=-1)
        kf = jnp.concatenate([k_nope, jnp.broadcast_to(k_pe[:, :, None, :], (b, s, h, rope))], axis=-1)
        vd, qkd = v.shape[-1], qf.shape[-1]
        d = max(vd, qkd)  # dot_product_attention wants one head dim: zero-pad (scores are unchanged)
        pad = lambda t, n: jnp.pad(t, ((0, 0), (0, 0), (0, 0), (0, d - n))) if d > n else t
        out = causal_attention(pad(qf, qkd), pad(kf, qkd), pad(v, vd), scale=scale, impl=impl)[..., :vd]
    else:
        idx = jnp.asarray(cache_index, jnp.int32)
        cc = jax.lax.dynamic_update_slice(cache["c_kv"], c_kv.astype(cache["c_kv"].dtype), (0, idx, 0))
        cp = jax.lax.dynamic_update_slice(cache["k_pe"], k_pe.astype(cache["k_pe"].dtype), (0, idx, 0))
        new_cache = {"c_kv": cc, "k_pe": cp}
        max_len = cc.shape[1]
        q_lat = jnp.einsum("bshn,chn->bshc", q_nope, k_b)  # absorb k_b into the query
        scores = (jnp.einsum("bshc,btc->bhst", q_lat, cc.astype(dt))
                  + jnp.einsum("bshr,btr->bhst", q_pe, cp.astype(dt))).astype(jnp.float32) * scale
        q_pos = idx + jnp.arange(s)
        mask = jnp.arange(max_len)[None, :] <= q_pos[:, None]  # [s, max_len]
        scores = jnp.where(mask[None, None], scores, -jnp.inf)
        probs = jax.nn.softmax(scores, axis=-1).astype(dt)
        out_lat = jnp.einsum("bhst,btc->bshc", probs, cc.astype(dt))
        out = jnp.einsum("bshc,chv->bshv", out_lat, v_b)  # absorb v_b into the output
    y = jnp.einsum("bshv,hvd->bsd", out, params["o"]["kernel"].astype(dt))
    return y, new_cache
