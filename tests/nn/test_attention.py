"""Attention with RoPE on part of each head (``rope_dims``) equals the separate Moirai-MoE
attention it replaced, bit for bit (without and with a KV cache); the cuDNN/XLA choice and its
fallback are one helper shared by attention and MLA."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmoe.nn import attention as attn
from jaxmoe.nn.layers import rmsnorm
from jaxmoe.nn.rope import apply_rope

EPS, THETA = 1e-6, 10000.0


def moirai_attention_reference(params, x, positions, *, cache=None, cache_index=None):
    """The attention that ``jaxmoe.models.moirai_moe`` carried before it used
    ``nn.attention`` (no biases, per-head QK RMSNorm, RoPE on the first ``2 * (head_dim //
    4)`` dims of each head), kept here as the reference."""

    def partial_rope(t):
        r = 2 * (t.shape[-1] // 4)
        if r == 0:
            return t
        return jnp.concatenate([apply_rope(t[..., :r], positions, THETA), t[..., r:]], axis=-1)

    proj = lambda p: jnp.einsum("bsd,dhk->bshk", x, p["kernel"].astype(x.dtype))  # noqa: E731
    q, k, v = proj(params["q"]), proj(params["k"]), proj(params["v"])
    q = partial_rope(rmsnorm(params["q_norm"], q, EPS))
    k = partial_rope(rmsnorm(params["k_norm"], k, EPS))
    scale = 1.0 / math.sqrt(q.shape[-1])
    new_cache = None
    if cache is None:
        out = jax.nn.dot_product_attention(q, k, v, scale=scale, is_causal=True)
    else:
        idx = jnp.asarray(cache_index, jnp.int32)
        ck = jax.lax.dynamic_update_slice(cache["k"], k.astype(cache["k"].dtype), (0, idx, 0, 0))
        cv = jax.lax.dynamic_update_slice(cache["v"], v.astype(cache["v"].dtype), (0, idx, 0, 0))
        new_cache = {"k": ck, "v": cv}
        s, max_len = x.shape[1], ck.shape[1]
        allowed = jnp.arange(max_len)[None, :] <= (idx + jnp.arange(s))[:, None]
        out = jax.nn.dot_product_attention(q, ck.astype(q.dtype), cv.astype(q.dtype), scale=scale,
                                           mask=allowed[None, None])
    return jnp.einsum("bshk,hkd->bsd", out, params["o"]["kernel"].astype(x.dtype)), new_cache


def _params(head_dim, heads=2, kv_heads=1, embed=12, seed=0):
    from jaxmoe.nn.init import unbox

    p = unbox(attn.init_attention(jax.random.PRNGKey(seed), embed, heads, kv_heads, head_dim, qk_norm=True, std=0.3))
    p["q_norm"]["scale"] = p["q_norm"]["scale"] * 1.5  # non-trivial norm scales
    return p


@pytest.mark.parametrize("head_dim", [8, 6, 2])
def test_partial_rope_attention_equals_moirai_attention(head_dim):
    p = _params(head_dim)
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 5, 12))
    pos = jnp.broadcast_to(jnp.arange(5) + 3, (2, 5))
    r = 2 * (head_dim // 4)
    new = jax.jit(lambda p, x: attn.attention(p, x, pos, rope_theta=THETA, norm_eps=EPS, rope_dims=r)[0])(p, x)
    ref = jax.jit(lambda p, x: moirai_attention_reference(p, x, pos)[0])(p, x)
    np.testing.assert_array_equal(np.asarray(new), np.asarray(ref))
    # with a cache: prefill 3 tokens, then 2 more
    cache = attn.init_kv_cache(2, 8, 1, head_dim)

    def run(fn):
        y1, c = fn(p, x[:, :3], pos[:, :3], cache, 0)
        y2, c = fn(p, x[:, 3:], pos[:, 3:], c, 3)
        return np.asarray(jnp.concatenate([y1, y2], axis=1)), c

    new_c = run(jax.jit(lambda p, x, pos, c, i: attn.attention(p, x, pos, rope_theta=THETA, norm_eps=EPS, cache=c,
                                                               cache_index=i, rope_dims=r)))
    ref_c = run(jax.jit(lambda p, x, pos, c, i: moirai_attention_reference(p, x, pos, cache=c, cache_index=i)))
    np.testing.assert_array_equal(new_c[0], ref_c[0])
    for a, b in zip(jax.tree.leaves(new_c[1]), jax.tree.leaves(ref_c[1])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_allclose(new_c[0], np.asarray(new), rtol=1e-5, atol=1e-6)  # cached == full


def test_rope_dims_none_or_all_is_full_rope_and_zero_is_none():
    x = jax.random.normal(jax.random.PRNGKey(2), (1, 4, 2, 8))
    pos = jnp.arange(4)[None] + 1
    full = apply_rope(x, pos, THETA)
    np.testing.assert_array_equal(np.asarray(attn.rope_part(x, pos, THETA)), np.asarray(full))
    np.testing.assert_array_equal(np.asarray(attn.rope_part(x, pos, THETA, rope_dims=8)), np.asarray(full))
    np.testing.assert_array_equal(np.asarray(attn.rope_part(x, pos, THETA, rope_dims=0)), np.asarray(x))
    half = np.asarray(attn.rope_part(x, pos, THETA, rope_dims=4))
    np.testing.assert_array_equal(half[..., 4:], np.asarray(x)[..., 4:])
    np.testing.assert_array_equal(half[..., :4], np.asarray(apply_rope(x[..., :4], pos, THETA)))


def test_implementation_choice_and_fallback(monkeypatch):
    assert attn.select_implementation("xla", jnp.bfloat16) is None
    assert attn.select_implementation("cudnn", jnp.float32) == "cudnn"
    assert attn.select_implementation("auto", jnp.float32) is None
    monkeypatch.setattr(attn, "_platform", lambda: "gpu")
    assert attn.select_implementation("auto", jnp.bfloat16) == "cudnn"
    assert attn.select_implementation("auto", jnp.bfloat16, has_cache=True) is None
    # cuDNN is unavailable here: the helper falls back to XLA and gives XLA's result
    q = jax.random.normal(jax.random.PRNGKey(3), (1, 4, 2, 8))
    want = jax.nn.dot_product_attention(q, q, q, scale=0.5, is_causal=True)
    got = attn.causal_attention(q, q, q, scale=0.5, impl="cudnn")
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
